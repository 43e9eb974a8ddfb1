//! Deterministic preprocessing (SPEC section 3): z-score, CT window, crop to the label bounding box,
//! resampling to a target spacing, central zero padding. All on C-order buffers with a `[usize; 3]`
//! shape (see the crate docs for the axis convention).

use crate::error::{Error, Result};
use crate::volume::check_len;

/// Per-volume z-score `(x - mean) / max(std, 1e-8)` with mean and (population) std taken over
/// `mask` when given, else over every voxel; applied to every voxel.
pub fn zscore(data: &mut [f32], mask: Option<&[bool]>) -> Result<()> {
    if let Some(m) = mask {
        if m.len() != data.len() {
            return Err(Error::Invalid(format!(
                "zscore: mask has {} voxels, image {}",
                m.len(),
                data.len()
            )));
        }
    }
    let (mut n, mut sum, mut sq) = (0usize, 0f64, 0f64);
    for (i, &v) in data.iter().enumerate() {
        if mask.is_none_or(|m| m[i]) {
            n += 1;
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
        }
    }
    if n == 0 {
        return Err(Error::Invalid("zscore: empty volume or empty mask".into()));
    }
    let mean = sum / n as f64;
    let std = (sq / n as f64 - mean * mean).max(0.0).sqrt().max(1e-8);
    for v in data.iter_mut() {
        *v = ((f64::from(*v) - mean) / std) as f32;
    }
    Ok(())
}

/// A CT intensity window in Hounsfield units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtWindow {
    pub lo: f32,
    pub hi: f32,
}

impl Default for CtWindow {
    /// The paper's pancreas window, [-120, 240] HU.
    fn default() -> Self {
        Self {
            lo: -120.0,
            hi: 240.0,
        }
    }
}

/// Clips to the window and rescales it to [0, 1].
pub fn ct_window(data: &mut [f32], w: CtWindow) -> Result<()> {
    if w.hi.partial_cmp(&w.lo) != Some(std::cmp::Ordering::Greater) {
        return Err(Error::Invalid(format!(
            "ct window [{}, {}] is empty",
            w.lo, w.hi
        )));
    }
    let scale = 1.0 / (w.hi - w.lo);
    for v in data.iter_mut() {
        *v = (v.clamp(w.lo, w.hi) - w.lo) * scale;
    }
    Ok(())
}

/// A box inside a volume: `start` and `size` per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop3 {
    pub start: [usize; 3],
    pub size: [usize; 3],
}

/// Bounding box of the voxels with label > 0, or `None` when there are none.
pub fn label_bbox(labels: &[u8], shape: [usize; 3]) -> Result<Option<Crop3>> {
    check_len("labels", labels.len(), shape)?;
    let [_, ny, nz] = shape;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (idx, &l) in labels.iter().enumerate() {
        if l > 0 {
            let p = [idx / (ny * nz), (idx / nz) % ny, idx % nz];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
    }
    if lo[0] == usize::MAX {
        return Ok(None);
    }
    Ok(Some(Crop3 {
        start: lo,
        size: [0, 1, 2].map(|a| hi[a] - lo[a] + 1),
    }))
}

/// The label bounding box grown by `margin` on each side, then (centred) to at least `min_size`,
/// clamped to the volume. An axis whose `min_size` exceeds the volume keeps the whole axis (pad
/// later with [`pad_center`]). Errors when there is no foreground.
pub fn bbox_crop(
    labels: &[u8],
    shape: [usize; 3],
    margin: [usize; 3],
    min_size: [usize; 3],
) -> Result<Crop3> {
    let bb = label_bbox(labels, shape)?
        .ok_or_else(|| Error::Invalid("bbox_crop: label has no foreground".into()))?;
    let mut crop = Crop3 {
        start: [0; 3],
        size: [0; 3],
    };
    for a in 0..3 {
        let mut lo = bb.start[a].saturating_sub(margin[a]);
        let mut hi = (bb.start[a] + bb.size[a] + margin[a]).min(shape[a]);
        let want = min_size[a].min(shape[a]);
        if hi - lo < want {
            let extra = want - (hi - lo);
            let before = (extra / 2).min(lo);
            lo -= before;
            hi += extra - before;
            if hi > shape[a] {
                lo -= hi - shape[a];
                hi = shape[a];
            }
        }
        crop.start[a] = lo;
        crop.size[a] = hi - lo;
    }
    Ok(crop)
}

/// Copies the box `crop` out of a volume.
pub fn crop<T: Copy>(data: &[T], shape: [usize; 3], crop: Crop3) -> Result<Vec<T>> {
    check_len("crop input", data.len(), shape)?;
    for a in 0..3 {
        if crop.start[a] + crop.size[a] > shape[a] {
            return Err(Error::Invalid(format!(
                "crop {crop:?} exceeds shape {shape:?}"
            )));
        }
    }
    let [_, ny, nz] = shape;
    let mut out = Vec::with_capacity(crop.size.iter().product());
    for i in crop.start[0]..crop.start[0] + crop.size[0] {
        for j in crop.start[1]..crop.start[1] + crop.size[1] {
            let row = (i * ny + j) * nz;
            out.extend_from_slice(&data[row + crop.start[2]..row + crop.start[2] + crop.size[2]]);
        }
    }
    Ok(out)
}

/// Zero-pads a volume by `before[a]` / `after[a]` voxels on each axis.
pub fn pad<T: Copy + Default>(
    data: &[T],
    shape: [usize; 3],
    before: [usize; 3],
    after: [usize; 3],
) -> Result<(Vec<T>, [usize; 3])> {
    check_len("pad input", data.len(), shape)?;
    let out_shape = [0, 1, 2].map(|a| shape[a] + before[a] + after[a]);
    let [_, oy, oz] = out_shape;
    let [_, ny, nz] = shape;
    let mut out = vec![T::default(); out_shape.iter().product()];
    for i in 0..shape[0] {
        for j in 0..ny {
            let src = (i * ny + j) * nz;
            let dst = ((i + before[0]) * oy + j + before[1]) * oz + before[2];
            out[dst..dst + nz].copy_from_slice(&data[src..src + nz]);
        }
    }
    Ok((out, out_shape))
}

/// Central zero padding up to at least `target` per axis (axes already as large are unchanged);
/// the odd voxel goes after. Returns the padded volume, its shape and the `before` offsets.
pub fn pad_center<T: Copy + Default>(
    data: &[T],
    shape: [usize; 3],
    target: [usize; 3],
) -> Result<(Vec<T>, [usize; 3], [usize; 3])> {
    let extra = [0, 1, 2].map(|a| target[a].saturating_sub(shape[a]));
    let before = extra.map(|e| e / 2);
    let after = [0, 1, 2].map(|a| extra[a] - before[a]);
    let (out, s) = pad(data, shape, before, after)?;
    Ok((out, s, before))
}

/// Most voxels a resampled volume may have (2^31, as the readers allow): a target spacing far below
/// the source's is an error instead of an allocation the machine cannot make.
pub const MAX_RESAMPLED_VOXELS: usize = 1 << 31;

/// The shape after resampling from `spacing` to `target` (rounded, at least 1), nnU-Net's
/// `round(shape * spacing / target)`. Errors on a spacing that is not positive and finite, and on a
/// result of more than [`MAX_RESAMPLED_VOXELS`] voxels.
pub fn resampled_shape(
    shape: [usize; 3],
    spacing: [f64; 3],
    target: [f64; 3],
) -> Result<[usize; 3]> {
    let mut out = [0; 3];
    for a in 0..3 {
        if !(spacing[a] > 0.0 && target[a] > 0.0 && spacing[a].is_finite() && target[a].is_finite())
        {
            return Err(Error::Invalid(format!(
                "resample: spacing {spacing:?} -> {target:?} must be positive"
            )));
        }
        let n = (shape[a] as f64 * spacing[a] / target[a]).round().max(1.0);
        if n > MAX_RESAMPLED_VOXELS as f64 {
            return Err(too_many(shape, spacing, target));
        }
        out[a] = n as usize;
    }
    if out
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .is_none_or(|n| n > MAX_RESAMPLED_VOXELS)
    {
        return Err(too_many(shape, spacing, target));
    }
    Ok(out)
}

fn too_many(shape: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> Error {
    Error::Invalid(format!(
        "resample: {shape:?} voxels of {spacing:?} mm at {target:?} mm would exceed \
         {MAX_RESAMPLED_VOXELS} voxels"
    ))
}

/// The spacing and affine of a grid of `out_shape` voxels over the field of view of `shape` voxels
/// with `spacing` and `affine`, as [`resize_trilinear`] and [`resize_nearest`] place it: the outer
/// faces of the two grids coincide, so output voxel `d` sits at input index
/// `(d + 0.5) * shape / out_shape - 0.5` (the spacing is the target's up to the rounding of the shape).
pub fn resized_geometry(
    shape: [usize; 3],
    out_shape: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
) -> ([f64; 3], [[f64; 4]; 4]) {
    let scale: [f64; 3] = std::array::from_fn(|a| shape[a] as f64 / out_shape[a].max(1) as f64);
    let mut out = *affine;
    for r in 0..4 {
        for a in 0..3 {
            out[r][a] = affine[r][a] * scale[a];
            out[r][3] += affine[r][a] * (0.5 * scale[a] - 0.5);
        }
    }
    (std::array::from_fn(|a| spacing[a] * scale[a]), out)
}

/// Source coordinate of output index `d` (PyTorch `align_corners=False`).
fn src_coord(d: usize, scale: f64) -> f64 {
    ((d as f64 + 0.5) * scale - 0.5).max(0.0)
}

/// Trilinear resampling to `out_shape`, as PyTorch `F.interpolate(mode="trilinear",
/// align_corners=False)`.
pub fn resize_trilinear(
    data: &[f32],
    shape: [usize; 3],
    out_shape: [usize; 3],
) -> Result<Vec<f32>> {
    check_len("resize input", data.len(), shape)?;
    if out_shape.contains(&0) {
        return Err(Error::Invalid(format!(
            "resize to empty shape {out_shape:?}"
        )));
    }
    // Per axis: (lower index, upper index, weight of upper) for every output index.
    let taps: Vec<Vec<(usize, usize, f32)>> = (0..3)
        .map(|a| {
            let scale = shape[a] as f64 / out_shape[a] as f64;
            (0..out_shape[a])
                .map(|d| {
                    let s = src_coord(d, scale);
                    let lo = (s.floor() as usize).min(shape[a] - 1);
                    let hi = (lo + 1).min(shape[a] - 1);
                    (lo, hi, (s - lo as f64) as f32)
                })
                .collect()
        })
        .collect();
    let [_, ny, nz] = shape;
    let at = |i: usize, j: usize, k: usize| data[(i * ny + j) * nz + k];
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for &(i0, i1, wi) in &taps[0] {
        for &(j0, j1, wj) in &taps[1] {
            for &(k0, k1, wk) in &taps[2] {
                let c = |i: usize, j: usize| at(i, j, k0) * (1.0 - wk) + at(i, j, k1) * wk;
                let c0 = c(i0, j0) * (1.0 - wj) + c(i0, j1) * wj;
                let c1 = c(i1, j0) * (1.0 - wj) + c(i1, j1) * wj;
                out.push(c0 * (1.0 - wi) + c1 * wi);
            }
        }
    }
    Ok(out)
}

/// Nearest-neighbour resampling (labels), as PyTorch `mode="nearest-exact"`: output voxel `d`
/// takes input voxel `floor((d + 0.5) * shape / out_shape)`, the one whose centre is nearest
/// (ties to the higher index), so every output value is an input value.
pub fn resize_nearest<T: Copy>(
    data: &[T],
    shape: [usize; 3],
    out_shape: [usize; 3],
) -> Result<Vec<T>> {
    check_len("resize input", data.len(), shape)?;
    if out_shape.contains(&0) {
        return Err(Error::Invalid(format!(
            "resize to empty shape {out_shape:?}"
        )));
    }
    let idx: Vec<Vec<usize>> = (0..3)
        .map(|a| {
            // floor((d + 0.5) * n / n_out) in integers: exact, also where it is a tie
            let (n, m) = (shape[a] as u128, out_shape[a] as u128);
            (0..out_shape[a])
                .map(|d| ((((2 * d as u128 + 1) * n) / (2 * m)) as usize).min(shape[a] - 1))
                .collect()
        })
        .collect();
    let [_, ny, nz] = shape;
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for &i in &idx[0] {
        for &j in &idx[1] {
            for &k in &idx[2] {
                out.push(data[(i * ny + j) * nz + k]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscore_matches_numpy_definition_with_and_without_mask() {
        let mut v = vec![1.0f32, 2.0, 3.0, 4.0];
        zscore(&mut v, None).unwrap();
        // numpy: (x - 2.5) / x.std() with std = sqrt(1.25).
        let s = 1.25f32.sqrt();
        assert!(v
            .iter()
            .zip([-1.5f32, -0.5, 0.5, 1.5])
            .all(|(a, b)| (a - b / s).abs() < 1e-6));
        let mut v = vec![1.0f32, 3.0, 100.0];
        zscore(&mut v, Some(&[true, true, false])).unwrap();
        assert_eq!(v, vec![-1.0, 1.0, 98.0]);
        assert!(zscore(&mut v, Some(&[false; 3])).is_err());
        let mut flat = vec![5.0f32; 4];
        zscore(&mut flat, None).unwrap();
        assert_eq!(flat, vec![0.0; 4]);
    }

    #[test]
    fn ct_window_clips_and_rescales() {
        let mut v = vec![-1000.0f32, -120.0, 60.0, 240.0, 3000.0];
        ct_window(&mut v, CtWindow::default()).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        assert!(ct_window(&mut v, CtWindow { lo: 1.0, hi: 1.0 }).is_err());
    }

    #[test]
    fn bbox_crop_grows_by_margin_and_to_min_size() {
        let shape = [10, 10, 4];
        let mut lab = vec![0u8; 400];
        lab[(4 * 10 + 5) * 4 + 2] = 1;
        lab[(5 * 10 + 6) * 4 + 2] = 1;
        let bb = label_bbox(&lab, shape).unwrap().unwrap();
        assert_eq!(
            bb,
            Crop3 {
                start: [4, 5, 2],
                size: [2, 2, 1]
            }
        );
        let c = bbox_crop(&lab, shape, [1, 1, 0], [0, 0, 0]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [3, 4, 2],
                size: [4, 4, 1]
            }
        );
        // At least 6 in-plane, the whole z axis (min size 8 > 4 keeps the axis).
        let c = bbox_crop(&lab, shape, [1, 1, 0], [6, 6, 8]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [2, 3, 0],
                size: [6, 6, 4]
            }
        );
        // Near the border the box shifts inwards.
        let mut edge = vec![0u8; 400];
        edge[(9 * 10 + 9) * 4 + 3] = 1;
        let c = bbox_crop(&edge, shape, [0; 3], [4, 4, 2]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [6, 6, 2],
                size: [4, 4, 2]
            }
        );
        assert!(bbox_crop(&[0u8; 400], shape, [0; 3], [0; 3]).is_err());
        let data: Vec<u16> = (0..400).collect();
        let out = crop(
            &data,
            shape,
            Crop3 {
                start: [1, 2, 3],
                size: [1, 1, 1],
            },
        )
        .unwrap();
        assert_eq!(out, vec![(10 + 2) * 4 + 3]);
    }

    #[test]
    fn pad_center_puts_the_volume_in_the_middle() {
        let (out, shape, before) = pad_center(&[1u8, 2], [1, 1, 2], [3, 2, 2]).unwrap();
        assert_eq!((shape, before), ([3, 2, 2], [1, 0, 0]));
        assert_eq!(out, vec![0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]);
    }

    // import torch, torch.nn.functional as F
    // x = torch.arange(12.).reshape(1, 1, 2, 3, 2)
    // F.interpolate(x, size=(3, 4, 3), mode="trilinear", align_corners=False).ravel()
    // F.interpolate(x, size=(3, 4, 3), mode="nearest-exact").ravel()
    #[test]
    fn resize_matches_pytorch_interpolate() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let tri = resize_trilinear(&x, [2, 3, 2], [3, 4, 3]).unwrap();
        let want = [
            0.0, 0.5, 1.0, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.0, 4.5, 5.0, 3.0, 3.5, 4.0, 4.25,
            4.75, 5.25, 5.75, 6.25, 6.75, 7.0, 7.5, 8.0, 6.0, 6.5, 7.0, 7.25, 7.75, 8.25, 8.75,
            9.25, 9.75, 10.0, 10.5, 11.0,
        ];
        assert!(
            tri.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{tri:?}"
        );
        let near = resize_nearest(&x, [2, 3, 2], [3, 4, 3]).unwrap();
        let want = [
            0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 2.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0, 7.0, 7.0, 8.0, 9.0,
            9.0, 8.0, 9.0, 9.0, 10.0, 11.0, 11.0, 6.0, 7.0, 7.0, 8.0, 9.0, 9.0, 8.0, 9.0, 9.0,
            10.0, 11.0, 11.0,
        ];
        assert_eq!(near, want);
        assert_eq!(
            resampled_shape([100, 100, 40], [0.8, 0.8, 2.5], [1.0; 3]).unwrap(),
            [80, 80, 100]
        );
        assert!(resampled_shape([1, 1, 1], [0.0, 1.0, 1.0], [1.0; 3]).is_err());
        // Same shape is the identity.
        assert_eq!(resize_trilinear(&x, [2, 3, 2], [2, 3, 2]).unwrap(), x);
    }

    /// Trilinear interpolation written out plainly: each output voxel's centre mapped to a
    /// continuous input index (`align_corners=False`, clamped to the grid), then the eight corner
    /// voxels weighted by the products of their 1-D weights, in f64.
    fn naive_trilinear(data: &[f32], shape: [usize; 3], out: [usize; 3]) -> Vec<f32> {
        let mut v = Vec::new();
        for i in 0..out[0] {
            for j in 0..out[1] {
                for k in 0..out[2] {
                    let x: [f64; 3] = std::array::from_fn(|a| {
                        let d = [i, j, k][a] as f64;
                        let s = (d + 0.5) * shape[a] as f64 / out[a] as f64 - 0.5;
                        s.clamp(0.0, (shape[a] - 1) as f64)
                    });
                    let mut sum = 0.0f64;
                    for corner in 0..8 {
                        let mut w = 1.0;
                        let mut idx = [0usize; 3];
                        for a in 0..3 {
                            let lo = x[a].floor();
                            let up = (corner >> a) & 1 == 1;
                            w *= if up { x[a] - lo } else { 1.0 - (x[a] - lo) };
                            idx[a] = (lo as usize + usize::from(up)).min(shape[a] - 1);
                        }
                        sum +=
                            w * f64::from(data[(idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]]);
                    }
                    v.push(sum as f32);
                }
            }
        }
        v
    }

    /// Nearest neighbour written out plainly: the input voxel whose centre lies nearest to the
    /// output voxel's centre, both as fractions of the field of view, compared in integers
    /// (`(2i + 1) / 2n` vs `(2d + 1) / 2m`), ties to the higher index.
    fn naive_nearest<T: Copy>(data: &[T], shape: [usize; 3], out: [usize; 3]) -> Vec<T> {
        let pick = |a: usize, d: usize| -> usize {
            let (n, m) = (shape[a] as i64, out[a] as i64);
            let dist = |i: usize| ((2 * i as i64 + 1) * m - (2 * d as i64 + 1) * n).abs();
            let mut best = 0usize;
            for i in 1..shape[a] {
                if dist(i) <= dist(best) {
                    best = i;
                }
            }
            best
        };
        let mut v = Vec::new();
        for i in 0..out[0] {
            for j in 0..out[1] {
                for k in 0..out[2] {
                    let (x, y, z) = (pick(0, i), pick(1, j), pick(2, k));
                    v.push(data[(x * shape[1] + y) * shape[2] + z]);
                }
            }
        }
        v
    }

    fn random_volume(shape: [usize; 3], seed: u64) -> Vec<f32> {
        use rand::{Rng as _, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-3.0f32..5.0))
            .collect()
    }

    /// Down, up, mixed, to and from single voxels: the resampler equals the plain definitions.
    #[test]
    fn resize_matches_the_naive_definitions() {
        let cases = [
            ([8, 6, 5], [4, 3, 5]),
            ([5, 7, 3], [9, 4, 6]),
            ([1, 4, 6], [3, 2, 6]),
            ([6, 1, 2], [1, 5, 3]),
            ([10, 9, 7], [7, 13, 2]),
        ];
        for (n, (shape, out)) in cases.into_iter().enumerate() {
            let x = random_volume(shape, n as u64);
            let got = resize_trilinear(&x, shape, out).unwrap();
            let want = naive_trilinear(&x, shape, out);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{shape:?} -> {out:?} voxel {i}: {g} vs {w}"
                );
            }
            let labels: Vec<u8> = x.iter().map(|v| (v.abs() as u8) % 4 * 3).collect();
            let got = resize_nearest(&labels, shape, out).unwrap();
            assert_eq!(
                got,
                naive_nearest(&labels, shape, out),
                "{shape:?} -> {out:?}"
            );
        }
    }

    /// A linear ramp is reproduced exactly: `f(x) = 2x - 3y + 0.5z + 7` read at each output voxel's
    /// position in the input grid (clamped to it, where upsampling reaches past the outer centres).
    #[test]
    fn trilinear_reproduces_a_linear_ramp() {
        let ramp = |p: [f64; 3]| 2.0 * p[0] - 3.0 * p[1] + 0.5 * p[2] + 7.0;
        for (shape, out) in [
            ([8, 6, 4], [4, 3, 2]),
            ([3, 4, 5], [7, 9, 11]),
            ([9, 4, 6], [6, 10, 4]),
        ] {
            let mut x = Vec::new();
            for i in 0..shape[0] {
                for j in 0..shape[1] {
                    for k in 0..shape[2] {
                        x.push(ramp([i as f64, j as f64, k as f64]) as f32);
                    }
                }
            }
            let got = resize_trilinear(&x, shape, out).unwrap();
            let mut at = 0;
            for i in 0..out[0] {
                for j in 0..out[1] {
                    for k in 0..out[2] {
                        let p: [f64; 3] = std::array::from_fn(|a| {
                            let d = [i, j, k][a] as f64;
                            ((d + 0.5) * shape[a] as f64 / out[a] as f64 - 0.5)
                                .clamp(0.0, (shape[a] - 1) as f64)
                        });
                        assert!(
                            (f64::from(got[at]) - ramp(p)).abs() < 1e-4,
                            "{shape:?} -> {out:?} at {i} {j} {k}: {} vs {}",
                            got[at],
                            ramp(p)
                        );
                        at += 1;
                    }
                }
            }
        }
    }

    /// Nearest keeps label values (no value that is not in the input, none lost on a finer grid);
    /// a coarser grid and back keeps the shape, and the geometry of the way back is the source's.
    #[test]
    fn nearest_keeps_labels_and_a_round_trip_keeps_shape_and_geometry() {
        let shape = [12, 10, 6];
        let labels: Vec<u8> = random_volume(shape, 7)
            .iter()
            .map(|v| [0u8, 2, 5][(v.abs() as usize) % 3])
            .collect();
        let spacing = [0.625, 0.625, 1.25];
        let coarse = resampled_shape(shape, spacing, [1.0, 1.0, 2.5]).unwrap();
        assert_eq!(coarse, [8, 6, 3]);
        let down = resize_nearest(&labels, shape, coarse).unwrap();
        assert!(down.iter().all(|l| [0, 2, 5].contains(l)));
        let fine = resize_nearest(&labels, shape, [24, 20, 12]).unwrap();
        let mut seen: Vec<u8> = fine.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![0, 2, 5]);
        // doubling repeats every voxel: halving that again gives the labels back exactly
        assert_eq!(resize_nearest(&fine, [24, 20, 12], shape).unwrap(), labels);
        let back = resize_nearest(&down, coarse, shape).unwrap();
        assert_eq!(back.len(), labels.len());
        let image = random_volume(shape, 8);
        let back = resize_trilinear(
            &resize_trilinear(&image, shape, coarse).unwrap(),
            coarse,
            shape,
        )
        .unwrap();
        assert_eq!(back.len(), image.len());

        // an oblique affine with an origin: the coarse grid's voxel (0, 0, 0) lies half a coarse
        // voxel inside the field of view, its spacing is the target's; the way back is the source
        let mut affine = [[0.0; 4]; 4];
        affine[0] = [0.0, 0.0, -1.25, 30.0];
        affine[1] = [0.625 * 0.6, 0.625 * 0.8, 0.0, -12.0];
        affine[2] = [0.625 * 0.8, -0.625 * 0.6, 0.0, 4.5];
        affine[3][3] = 1.0;
        let (cs, ca) = resized_geometry(shape, coarse, spacing, &affine);
        for a in 0..3 {
            assert!(
                (cs[a] - [0.9375, 1.0416666666666667, 2.5][a]).abs() < 1e-12,
                "{cs:?}"
            );
        }
        let world = |m: &[[f64; 4]; 4], p: [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
        };
        // coarse voxel 0 = source index (0.5 * 12 / 8 - 0.5, ...) = (0.25, 0.333.., 0.5)
        let w0 = world(&ca, [0.0; 3]);
        let s0 = world(&affine, [0.25, 1.0 / 3.0, 0.5]);
        assert!(
            (0..3).all(|r| (w0[r] - s0[r]).abs() < 1e-12),
            "{w0:?} vs {s0:?}"
        );
        let (bs, ba) = resized_geometry(coarse, shape, cs, &ca);
        assert!((0..3).all(|a| (bs[a] - spacing[a]).abs() < 1e-12), "{bs:?}");
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (ba[r][c] - affine[r][c]).abs() < 1e-12,
                    "{ba:?} vs {affine:?}"
                );
            }
        }
    }

    #[test]
    fn resampled_shape_refuses_bad_spacings_and_huge_results() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(resampled_shape([4; 3], [1.0, bad, 1.0], [1.0; 3]).is_err());
            assert!(resampled_shape([4; 3], [1.0; 3], [1.0, 1.0, bad]).is_err());
        }
        let e = resampled_shape([512, 512, 300], [1.0; 3], [1e-3; 3]).unwrap_err();
        assert!(e.to_string().contains("would exceed"), "{e}");
        assert!(resampled_shape([4; 3], [1.0; 3], [1e-300; 3]).is_err());
        assert_eq!(
            resampled_shape([4; 3], [1.0; 3], [100.0; 3]).unwrap(),
            [1; 3]
        );
    }
}
