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

/// The shape after resampling from `spacing` to `target` (rounded, at least 1).
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
        out[a] = ((shape[a] as f64 * spacing[a] / target[a]).round() as usize).max(1);
    }
    Ok(out)
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

/// Nearest-neighbour resampling (labels), as PyTorch `mode="nearest-exact"`.
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
            let scale = shape[a] as f64 / out_shape[a] as f64;
            (0..out_shape[a])
                .map(|d| (((d as f64 + 0.5) * scale).floor() as usize).min(shape[a] - 1))
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
}
