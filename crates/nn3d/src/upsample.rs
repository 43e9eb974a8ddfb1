//! Trilinear up-sampling with `align_corners = true`: PyTorch's
//! `nn.Upsample(scale_factor=s, mode="trilinear", align_corners=True)`, the up-sampling of
//! MC-Net's second decoder.
//!
//! Separable: along each spatial axis the output is `U x` with an interpolation matrix
//! `U [out, in]` of at most two non-zeros per row, applied as a matmul, so candle's autograd gives
//! the backward (a transposed matmul) and any device that has matmul runs it. Output voxel `o`
//! of an axis of `n_in` voxels up-sampled to `n_out` reads source position
//! `o * (n_in - 1) / (n_out - 1)` (0 when `n_out` is 1) and blends its two neighbours linearly.

use candle_core::{bail, Device, Result, Tensor};

/// The interpolation matrix `U [n_out, n_in]` (row-major) of one axis.
pub fn interpolation_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut u = vec![0f32; n_out * n_in];
    if n_in == 0 {
        return u;
    }
    let scale = if n_out > 1 {
        (n_in - 1) as f64 / (n_out - 1) as f64
    } else {
        0.0
    };
    for o in 0..n_out {
        let src = o as f64 * scale;
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let frac = (src - i0 as f64) as f32;
        u[o * n_in + i0] += 1.0 - frac;
        u[o * n_in + i1] += frac;
    }
    u
}

/// `x [N, C, D, H, W]` up-sampled by `factor` along each spatial axis, trilinear, corners aligned.
pub fn upsample_trilinear(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    if factor == 0 {
        bail!("upsample_trilinear: the factor must be positive")
    }
    let (d2, h2, w2) = (d * factor, h * factor, w * factor);
    let dev = x.device();
    // [rows, len] -> [rows, len * factor] along the last axis
    let along_last = |t: &Tensor, len: usize, out: usize| -> Result<Tensor> {
        let u = matrix(len, out, dev)?.to_dtype(t.dtype())?;
        t.matmul(&u.t()?)
    };
    // W: [N C D H, W] -> [N C D H, W2]
    let y = along_last(&x.contiguous()?.reshape((n * c * d * h, w))?, w, w2)?;
    // H: [N C D, H, W2] -> [N C D, W2, H] -> [.., H2] -> [N C D, H2, W2]
    let y = y
        .reshape((n * c * d, h, w2))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * c * d * w2, h))?;
    let y = along_last(&y, h, h2)?
        .reshape((n * c * d, w2, h2))?
        .transpose(1, 2)?;
    // D: [N C, D, H2 W2] -> [N C, H2 W2, D] -> [.., D2] -> [N C, D2, H2 W2]
    let y = y
        .contiguous()?
        .reshape((n * c, d, h2 * w2))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * c * h2 * w2, d))?;
    along_last(&y, d, d2)?
        .reshape((n * c, h2 * w2, d2))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, c, d2, h2, w2))
}

fn matrix(n_in: usize, n_out: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(interpolation_matrix(n_in, n_out), (n_out, n_in), dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Direct trilinear interpolation at every output voxel (align_corners), in f64.
    fn naive(x: &[f32], [n, c, d, h, w]: [usize; 5], f: usize) -> Vec<f64> {
        let src = |o: usize, len: usize| -> (usize, usize, f64) {
            let out = len * f;
            let s = if out > 1 {
                o as f64 * (len - 1) as f64 / (out - 1) as f64
            } else {
                0.0
            };
            let i0 = (s.floor() as usize).min(len - 1);
            (i0, (i0 + 1).min(len - 1), s - i0 as f64)
        };
        let mut y = Vec::new();
        for nc in 0..n * c {
            let at = |a: usize, b: usize, e: usize| x[nc * d * h * w + (a * h + b) * w + e] as f64;
            for od in 0..d * f {
                let (a0, a1, fa) = src(od, d);
                for oh in 0..h * f {
                    let (b0, b1, fb) = src(oh, h);
                    for ow in 0..w * f {
                        let (e0, e1, fe) = src(ow, w);
                        let mut v = 0.0;
                        for (a, wa) in [(a0, 1.0 - fa), (a1, fa)] {
                            for (b, wb) in [(b0, 1.0 - fb), (b1, fb)] {
                                for (e, we) in [(e0, 1.0 - fe), (e1, fe)] {
                                    v += wa * wb * we * at(a, b, e);
                                }
                            }
                        }
                        y.push(v);
                    }
                }
            }
        }
        y
    }

    fn input(shape: [usize; 5]) -> Vec<f32> {
        let len: usize = shape.iter().product();
        (0..len)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
            .collect()
    }

    #[test]
    fn matches_direct_trilinear_interpolation() -> Result<()> {
        for shape in [[2, 3, 3, 4, 5], [1, 1, 1, 2, 3], [1, 2, 4, 1, 2]] {
            let x = input(shape);
            let t = Tensor::from_vec(x.clone(), shape.to_vec(), &Device::Cpu)?;
            let got = upsample_trilinear(&t, 2)?.flatten_all()?.to_vec1::<f32>()?;
            let want = naive(&x, shape, 2);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{shape:?}: {g} vs {w}");
            }
        }
        Ok(())
    }

    #[test]
    fn rows_blend_two_neighbours_and_keep_the_corners() {
        // 3 -> 6: sources 0, 0.4, 0.8, 1.2, 1.6, 2
        let u = interpolation_matrix(3, 6);
        let want = [
            [1.0, 0.0, 0.0],
            [0.6, 0.4, 0.0],
            [0.2, 0.8, 0.0],
            [0.0, 0.8, 0.2],
            [0.0, 0.4, 0.6],
            [0.0, 0.0, 1.0],
        ];
        for (row, w) in u.chunks(3).zip(want) {
            for (a, b) in row.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{row:?} vs {w:?}");
            }
        }
        assert_eq!(interpolation_matrix(1, 2), vec![1.0, 1.0]);
    }

    /// `tests/fixtures/nn3d/upsample.safetensors`, written by `tests/reference/nn3d_upsample.py`:
    /// PyTorch's `F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)` in f64
    /// and the gradient of `sum(y * g)`.
    #[test]
    fn matches_pytorch_fixture() -> Result<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/nn3d/upsample.safetensors"
        );
        let t = candle_core::safetensors::load(path, &Device::Cpu)?;
        for name in ["odd", "flat", "cube"] {
            let get = |k: &str| t[&format!("{name}.{k}")].clone();
            let x = Var::from_tensor(&get("x"))?;
            let y = upsample_trilinear(x.as_tensor(), 2)?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                let err = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 1e-5, "{name} {what}: max error {err}");
                Ok(())
            };
            close(&y, &get("y"), "y")?;
            let grads = (&y * get("g"))?.sum_all()?.backward()?;
            close(
                grads.get(x.as_tensor()).expect("gradient"),
                &get("dx"),
                "dx",
            )?;
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let shape = [1, 2, 2, 3, 2];
        let x0 = input(shape);
        let x = Var::from_vec(x0.clone(), shape.to_vec(), &Device::Cpu)?;
        let len = 8 * x0.len();
        let g: Vec<f32> = (0..len)
            .map(|i| ((i * 31 % 17) as f32) / 17.0 - 0.5)
            .collect();
        let gt = Tensor::from_vec(g.clone(), len, &Device::Cpu)?;
        let loss = |t: &Tensor| -> Result<Tensor> {
            (upsample_trilinear(t, 2)?.flatten_all()? * &gt)?.sum_all()
        };
        let grads = loss(x.as_tensor())?.backward()?;
        let dx = grads
            .get(x.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        // the map is linear, so a central difference is exact up to rounding
        let eps = 0.5f32;
        for i in 0..x0.len() {
            let at = |delta: f32| -> Result<f64> {
                let mut v = x0.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, shape.to_vec(), &Device::Cpu)?;
                Ok(loss(&t)?.to_scalar::<f32>()? as f64)
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps as f64);
            assert!(
                (fd - dx[i] as f64).abs() < 1e-4,
                "x[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        Ok(())
    }
}
