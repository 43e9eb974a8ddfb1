//! Fused in-place updates of weights, momentum buffers and EMA copies on the CPU.
//!
//! Written as candle tensor ops, an SGD step is four full-tensor passes and three allocations per
//! parameter (`g + p wd`, `buf mu + d`, `p - buf lr`), and an EMA update three passes and two
//! allocations; for the many small tensors of a network the per-op dispatch costs more than the
//! arithmetic. These kernels do each update in one pass, in place, with the same float32
//! operations in the same order as those tensor ops (candle's `x * s` is `x * (s as f32) + 0`),
//! so the results are bit-identical. They apply to contiguous float32 tensors on the CPU; the
//! callers keep the tensor-op path for everything else (CUDA).

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Below this many elements a tensor is updated on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;
/// Elements per rayon task above [`PARALLEL_MIN`].
const PARALLEL_CHUNK: usize = 1 << 15;

/// Whether the in-place kernels apply to all of `tensors`: float32, contiguous, on the CPU.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.layout().is_contiguous())
}

/// `buf = buf * mu + (g + p * wd)` (PyTorch's SGD momentum buffer with L2 weight decay), or
/// `buf * mu + g` when `wd` is 0. All three must satisfy [`applies`] and have one shape.
pub(crate) fn momentum_update(
    buf: &Tensor,
    mu: f64,
    g: &Tensor,
    p: &Tensor,
    wd: f64,
) -> Result<()> {
    same_shape("sgd momentum", buf, &[g, p])?;
    buf.inplace_op3(
        g,
        p,
        &Momentum {
            mu: mu as f32,
            wd: wd as f32,
            decay: wd != 0.0,
        },
    )
}

/// `p = p - buf * lr`, the SGD step. Both must satisfy [`applies`] and have one shape.
pub(crate) fn sgd_step(p: &Tensor, buf: &Tensor, lr: f64) -> Result<()> {
    same_shape("sgd step", p, &[buf])?;
    p.inplace_op2(buf, &Step { lr: lr as f32 })
}

/// `ema = ema * m + live * (1 - m)`, the moving-average update. Both must satisfy [`applies`]
/// and have one shape.
pub(crate) fn ema_mix(ema: &Tensor, live: &Tensor, m: f64) -> Result<()> {
    same_shape("ema update", ema, &[live])?;
    ema.inplace_op2(
        live,
        &Mix {
            keep: m as f32,
            take: (1.0 - m) as f32,
        },
    )
}

fn same_shape(what: &str, dst: &Tensor, srcs: &[&Tensor]) -> Result<()> {
    if let Some(s) = srcs.iter().find(|s| s.dims() != dst.dims()) {
        bail!("{what}: shapes {:?} and {:?} differ", dst.dims(), s.dims())
    }
    if !applies(&[&[dst][..], srcs].concat()) {
        bail!("{what}: the in-place kernels need contiguous f32 tensors on the CPU")
    }
    Ok(())
}

/// The contiguous f32 values of `s` under `l`.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (Some((start, end)), CpuStorage::F32(v)) = (l.contiguous_offsets(), s) else {
        bail!("in-place update: expected a contiguous f32 tensor")
    };
    Ok(&v[start..end])
}

fn values_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let (Some((start, end)), CpuStorage::F32(v)) = (l.contiguous_offsets(), s) else {
        bail!("in-place update: expected a contiguous f32 tensor")
    };
    Ok(&mut v[start..end])
}

/// Runs `f(dst_chunk, offset)` over `dst`, in parallel chunks when it is large.
fn for_chunks(dst: &mut [f32], f: impl Fn(&mut [f32], usize) + Sync + Send) {
    if dst.len() < PARALLEL_MIN {
        f(dst, 0);
    } else {
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .enumerate()
            .for_each(|(i, c)| f(c, i * PARALLEL_CHUNK));
    }
}

struct Momentum {
    mu: f32,
    wd: f32,
    decay: bool,
}

impl InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
        p: &CpuStorage,
        p_l: &Layout,
    ) -> Result<()> {
        let buf = values_mut(dst, dst_l)?;
        let (g, p) = (values(g, g_l)?, values(p, p_l)?);
        let (mu, wd, decay) = (self.mu, self.wd, self.decay);
        for_chunks(buf, |b, off| {
            let (g, p) = (&g[off..off + b.len()], &p[off..off + b.len()]);
            if decay {
                for ((b, g), p) in b.iter_mut().zip(g).zip(p) {
                    *b = (*b * mu + 0.0) + (g + (p * wd + 0.0));
                }
            } else {
                for (b, g) in b.iter_mut().zip(g) {
                    *b = (*b * mu + 0.0) + g;
                }
            }
        });
        Ok(())
    }
}

struct Step {
    lr: f32,
}

impl InplaceOp2 for Step {
    fn name(&self) -> &'static str {
        "sgd-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        buf: &CpuStorage,
        buf_l: &Layout,
    ) -> Result<()> {
        let (p, buf, lr) = (values_mut(dst, dst_l)?, values(buf, buf_l)?, self.lr);
        for_chunks(p, |p, off| {
            let buf = &buf[off..off + p.len()];
            for (p, b) in p.iter_mut().zip(buf) {
                *p -= b * lr + 0.0;
            }
        });
        Ok(())
    }
}

struct Mix {
    keep: f32,
    take: f32,
}

impl InplaceOp2 for Mix {
    fn name(&self) -> &'static str {
        "ema-mix"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        live: &CpuStorage,
        live_l: &Layout,
    ) -> Result<()> {
        let (ema, live) = (values_mut(dst, dst_l)?, values(live, live_l)?);
        let (keep, take) = (self.keep, self.take);
        for_chunks(ema, |e, off| {
            let live = &live[off..off + e.len()];
            for (e, l) in e.iter_mut().zip(live) {
                *e = (*e * keep + 0.0) + (l * take + 0.0);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                x as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// Both kernels agree bit for bit with the candle tensor ops they replace, below and above the
    /// parallel threshold.
    #[test]
    fn bit_identical_to_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        for n in [1usize, 37, PARALLEL_MIN + PARALLEL_CHUNK / 3] {
            let t = |seed| Tensor::from_vec(data(n, seed), n, &dev);
            let (buf, g, p) = (t(1)?, t(2)?, t(3)?);
            for wd in [0.0, 1e-4] {
                let want = if wd != 0.0 {
                    ((&buf * 0.9)? + (&g + (&p * wd)?)?)?
                } else {
                    ((&buf * 0.9)? + &g)?
                };
                let got = buf.copy()?;
                momentum_update(&got, 0.9, &g, &p, wd)?;
                assert_eq!(
                    got.to_vec1::<f32>()?,
                    want.to_vec1::<f32>()?,
                    "n {n} wd {wd}"
                );
            }
            let want = (&p - (&buf * 0.03)?)?;
            let got = p.copy()?;
            sgd_step(&got, &buf, 0.03)?;
            assert_eq!(got.to_vec1::<f32>()?, want.to_vec1::<f32>()?, "step n {n}");
            let want = ((&p * 0.99)? + (&g * (1.0 - 0.99))?)?;
            let got = p.copy()?;
            ema_mix(&got, &g, 0.99)?;
            assert_eq!(got.to_vec1::<f32>()?, want.to_vec1::<f32>()?, "ema n {n}");
        }
        Ok(())
    }

    #[test]
    fn rejects_what_it_cannot_update() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let b = Tensor::zeros((3, 2), DType::F32, &dev)?;
        assert!(ema_mix(&a, &b, 0.5).is_err());
        let t = b.t()?;
        assert!(!applies(&[&t]));
        assert!(sgd_step(&a, &t, 0.1).is_err());
        let f64s = Tensor::zeros((2, 3), DType::F64, &dev)?;
        assert!(!applies(&[&f64s]));
        Ok(())
    }
}
