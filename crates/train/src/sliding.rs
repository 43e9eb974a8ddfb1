//! Sliding-window inference exactly as SPEC section 4 (the MCF / UA-MT `test_single_case` protocol).
//!
//! Per axis, when the volume is smaller than the window it is zero-padded centrally
//! (`left = (roi - size) / 2`, the rest on the right) and the result is cropped back. On the padded
//! size there are `n = ceil((size - roi) / stride) + 1` windows starting at `min(stride * i, size - roi)`.
//! The predictor's class probabilities are accumulated with a blending weight (constant 1 by default,
//! MONAI / nnU-Net Gaussian as an option), divided by the per-voxel accumulated weight, and argmaxed.

use candle_core::{bail, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How overlapping window predictions are weighted (MONAI names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Blend {
    /// Every window voxel has weight 1 (the papers' protocol).
    #[default]
    Constant,
    /// Separable Gaussian centred in the window with sigma = `sigma_scale * roi`, max 1, clamped above
    /// zero to its smallest positive value (nnU-Net `compute_gaussian`).
    Gaussian {
        /// Sigma as a fraction of the window size per axis (nnU-Net: 0.125).
        sigma_scale: f64,
    },
}

/// Sliding-window settings (MONAI names: `roi`, `stride`, `sw_batch`, `blend`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindow {
    /// Window size per axis, normally the training crop.
    pub roi: [usize; 3],
    /// Step between window starts per axis.
    pub stride: [usize; 3],
    /// Windows evaluated per predictor call.
    pub sw_batch: usize,
    /// Blending of overlapping windows.
    #[serde(default)]
    pub blend: Blend,
}

/// Window start positions along one axis of (already padded) length `size >= roi`.
pub fn window_starts(size: usize, roi: usize, stride: usize) -> Vec<usize> {
    if size <= roi {
        return vec![0];
    }
    let stride = stride.max(1);
    let n = (size - roi).div_ceil(stride) + 1;
    (0..n).map(|i| (stride * i).min(size - roi)).collect()
}

/// Central zero-padding `(left, right)` to reach at least `roi` on one axis.
pub fn central_pad(size: usize, roi: usize) -> (usize, usize) {
    if size >= roi {
        (0, 0)
    } else {
        let total = roi - size;
        (total / 2, total - total / 2)
    }
}

fn blend_weights(roi: [usize; 3], blend: Blend) -> Vec<f32> {
    let n = roi[0] * roi[1] * roi[2];
    match blend {
        Blend::Constant => vec![1.0; n],
        Blend::Gaussian { sigma_scale } => {
            let axis = |len: usize| -> Vec<f64> {
                let c = (len / 2) as f64;
                let s = (sigma_scale * len as f64).max(1e-6);
                (0..len)
                    .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * s * s)).exp())
                    .collect()
            };
            let (a, b, c) = (axis(roi[0]), axis(roi[1]), axis(roi[2]));
            let mut w = Vec::with_capacity(n);
            for x in &a {
                for y in &b {
                    for z in &c {
                        w.push((x * y * z) as f32);
                    }
                }
            }
            let max = w.iter().cloned().fold(0f32, f32::max);
            w.iter_mut().for_each(|v| *v /= max);
            let min_pos = w.iter().cloned().filter(|v| *v > 0.0).fold(1f32, f32::min);
            w.iter_mut().for_each(|v| *v = v.max(min_pos));
            w
        }
    }
}

/// Per-voxel class probabilities `[n_classes, x, y, z]` (C-order) plus, for tests, the accumulated weight.
pub struct WindowOutput {
    /// Averaged probabilities, `n_classes * prod(shape)` values.
    pub probs: Vec<f32>,
    /// Accumulated blending weight per voxel of the original volume (the count for constant blending).
    pub weight: Vec<f32>,
}

impl SlidingWindow {
    /// Runs `predictor` over all windows of `volume` (shape `shape`, one channel, C-order).
    ///
    /// `predictor` receives a batch `[B, 1, roi]` on `device` and returns probabilities `[B, K, roi]`.
    pub fn probabilities(
        &self,
        volume: &[f32],
        shape: [usize; 3],
        n_classes: usize,
        device: &Device,
        predictor: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<WindowOutput> {
        if volume.len() != shape.iter().product::<usize>() {
            bail!(
                "sliding window: {} values for shape {shape:?}",
                volume.len()
            )
        }
        if self.roi.contains(&0) || n_classes == 0 {
            bail!(
                "sliding window: roi {:?} with {n_classes} classes",
                self.roi
            )
        }
        let roi = self.roi;
        let pads: Vec<(usize, usize)> = (0..3).map(|a| central_pad(shape[a], roi[a])).collect();
        let ps = [0, 1, 2].map(|a| shape[a] + pads[a].0 + pads[a].1);
        // padded volume
        let mut padded = vec![0f32; ps[0] * ps[1] * ps[2]];
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                let src = (i * shape[1] + j) * shape[2];
                let dst = ((i + pads[0].0) * ps[1] + j + pads[1].0) * ps[2] + pads[2].0;
                padded[dst..dst + shape[2]].copy_from_slice(&volume[src..src + shape[2]]);
            }
        }
        let starts: Vec<Vec<usize>> = (0..3)
            .map(|a| window_starts(ps[a], roi[a], self.stride[a]))
            .collect();
        let mut windows = Vec::new();
        for &x in &starts[0] {
            for &y in &starts[1] {
                for &z in &starts[2] {
                    windows.push([x, y, z]);
                }
            }
        }
        let wgt = blend_weights(roi, self.blend);
        let nv = ps[0] * ps[1] * ps[2];
        let wn = roi[0] * roi[1] * roi[2];
        let mut acc = vec![0f32; n_classes * nv];
        let mut cnt = vec![0f32; nv];
        for chunk in windows.chunks(self.sw_batch.max(1)) {
            let mut batch = Vec::with_capacity(chunk.len() * wn);
            for s in chunk {
                for i in 0..roi[0] {
                    for j in 0..roi[1] {
                        let o = ((s[0] + i) * ps[1] + s[1] + j) * ps[2] + s[2];
                        batch.extend_from_slice(&padded[o..o + roi[2]]);
                    }
                }
            }
            let input = Tensor::from_vec(batch, (chunk.len(), 1, roi[0], roi[1], roi[2]), device)?;
            let out = predictor(&input)?;
            let want = [chunk.len(), n_classes, roi[0], roi[1], roi[2]];
            if out.dims() != want {
                bail!(
                    "sliding window: predictor returned {:?}, expected {want:?}",
                    out.dims()
                )
            }
            let out: Vec<f32> = out.flatten_all()?.to_vec1()?;
            for (b, s) in chunk.iter().enumerate() {
                for i in 0..roi[0] {
                    for j in 0..roi[1] {
                        let dst = ((s[0] + i) * ps[1] + s[1] + j) * ps[2] + s[2];
                        let wrow = (i * roi[1] + j) * roi[2];
                        for z in 0..roi[2] {
                            cnt[dst + z] += wgt[wrow + z];
                        }
                        for k in 0..n_classes {
                            let src =
                                ((b * n_classes + k) * roi[0] + i) * roi[1] * roi[2] + j * roi[2];
                            let a = &mut acc[k * nv + dst..k * nv + dst + roi[2]];
                            for z in 0..roi[2] {
                                a[z] += out[src + z] * wgt[wrow + z];
                            }
                        }
                    }
                }
            }
        }
        // divide and crop back
        let n = shape[0] * shape[1] * shape[2];
        let mut probs = vec![0f32; n_classes * n];
        let mut weight = vec![0f32; n];
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for z in 0..shape[2] {
                    let src = ((i + pads[0].0) * ps[1] + j + pads[1].0) * ps[2] + z + pads[2].0;
                    let dst = (i * shape[1] + j) * shape[2] + z;
                    weight[dst] = cnt[src];
                    for k in 0..n_classes {
                        probs[k * n + dst] = if cnt[src] > 0.0 {
                            acc[k * nv + src] / cnt[src]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
        Ok(WindowOutput { probs, weight })
    }

    /// Label map (argmax over classes, first class wins ties) of [`SlidingWindow::probabilities`].
    pub fn predict(
        &self,
        volume: &[f32],
        shape: [usize; 3],
        n_classes: usize,
        device: &Device,
        predictor: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Vec<u8>> {
        let out = self.probabilities(volume, shape, n_classes, device, predictor)?;
        Ok(argmax_classes(&out.probs, n_classes))
    }
}

/// Argmax over the leading class axis of `[K, voxels]` probabilities (first maximum wins, like torch).
pub fn argmax_classes(probs: &[f32], n_classes: usize) -> Vec<u8> {
    let n = probs.len() / n_classes.max(1);
    (0..n)
        .map(|v| {
            let mut best = 0usize;
            for k in 1..n_classes {
                if probs[k * n + v] > probs[best * n + v] {
                    best = k;
                }
            }
            best as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_follow_the_protocol() {
        // LA: 190 x 142 x 88 volume, 112 x 112 x 80 patch, stride 18 x 18 x 4
        assert_eq!(window_starts(190, 112, 18), vec![0, 18, 36, 54, 72, 78]);
        assert_eq!(window_starts(142, 112, 18), vec![0, 18, 30]);
        assert_eq!(window_starts(88, 80, 4), vec![0, 4, 8]);
        assert_eq!(window_starts(112, 112, 18), vec![0]);
        assert_eq!(central_pad(35, 48), (6, 7));
    }

    fn fake(n_classes: usize) -> impl Fn(&Tensor) -> Result<Tensor> {
        // class 1 probability = the input value (in [0, 1]), class 0 its complement; more classes get 0
        move |x: &Tensor| {
            let p1 = x.clone();
            let p0 = (1.0 - x)?;
            let mut parts = vec![p0, p1];
            for _ in 2..n_classes {
                parts.push(x.zeros_like()?);
            }
            Tensor::cat(&parts, 1)
        }
    }

    fn counts_by_hand(shape: [usize; 3], roi: [usize; 3], stride: [usize; 3]) -> Vec<f32> {
        let pads: Vec<_> = (0..3).map(|a| central_pad(shape[a], roi[a])).collect();
        let ps: Vec<usize> = (0..3).map(|a| shape[a] + pads[a].0 + pads[a].1).collect();
        let mut c = vec![0f32; shape.iter().product()];
        for sx in window_starts(ps[0], roi[0], stride[0]) {
            for sy in window_starts(ps[1], roi[1], stride[1]) {
                for sz in window_starts(ps[2], roi[2], stride[2]) {
                    for i in 0..shape[0] {
                        for j in 0..shape[1] {
                            for k in 0..shape[2] {
                                let (pi, pj, pk) = (i + pads[0].0, j + pads[1].0, k + pads[2].0);
                                if (sx..sx + roi[0]).contains(&pi)
                                    && (sy..sy + roi[1]).contains(&pj)
                                    && (sz..sz + roi[2]).contains(&pk)
                                {
                                    c[(i * shape[1] + j) * shape[2] + k] += 1.0;
                                }
                            }
                        }
                    }
                }
            }
        }
        c
    }

    #[test]
    fn every_voxel_covered_and_counts_exact() -> Result<()> {
        let dev = Device::Cpu;
        // one axis smaller than the roi (padding), one with a clamped last window, one exact
        let shape = [13, 20, 8];
        let sw = SlidingWindow {
            roi: [16, 8, 8],
            stride: [4, 5, 3],
            sw_batch: 3,
            blend: Blend::Constant,
        };
        let vol: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| (i % 7) as f32 / 7.0)
            .collect();
        let out = sw.probabilities(&vol, shape, 3, &dev, fake(3))?;
        let want = counts_by_hand(shape, sw.roi, sw.stride);
        assert!(out.weight.iter().all(|w| *w >= 1.0));
        assert_eq!(out.weight, want);
        // a position-independent predictor is reproduced exactly after averaging
        let n = vol.len();
        for v in 0..n {
            assert!((out.probs[n + v] - vol[v]).abs() < 1e-6);
            assert!((out.probs[v] - (1.0 - vol[v])).abs() < 1e-6);
            assert_eq!(out.probs[2 * n + v], 0.0);
        }
        let labels = sw.predict(&vol, shape, 3, &dev, fake(3))?;
        for v in 0..n {
            assert_eq!(labels[v], u8::from(vol[v] > 0.5));
        }
        Ok(())
    }

    #[test]
    fn gaussian_blend_keeps_a_constant_prediction() -> Result<()> {
        let dev = Device::Cpu;
        let shape = [10, 12, 9];
        let sw = SlidingWindow {
            roi: [8, 8, 8],
            stride: [3, 3, 3],
            sw_batch: 4,
            blend: Blend::Gaussian { sigma_scale: 0.125 },
        };
        let vol = vec![0.25f32; shape.iter().product()];
        let out = sw.probabilities(&vol, shape, 2, &dev, fake(2))?;
        assert!(out.weight.iter().all(|w| *w > 0.0));
        let n = vol.len();
        assert!(out.probs[n..].iter().all(|p| (p - 0.25).abs() < 1e-5));
        Ok(())
    }

    #[test]
    fn rejects_bad_predictor_output() {
        let dev = Device::Cpu;
        let sw = SlidingWindow {
            roi: [4, 4, 4],
            stride: [2, 2, 2],
            sw_batch: 2,
            blend: Blend::Constant,
        };
        let r = sw.probabilities(&[0.0; 64], [4, 4, 4], 2, &dev, |x: &Tensor| Ok(x.clone()));
        assert!(r.is_err());
        assert!(sw
            .probabilities(&[0.0; 10], [4, 4, 4], 2, &dev, fake(2))
            .is_err());
    }
}
