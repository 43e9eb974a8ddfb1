//! `Dropout3d`: drops whole channels of `[N, C, D, H, W]` tensors (PyTorch `nn.Dropout3d`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use candle_nn::ModuleT;
use rayon::prelude::*;

/// Channel dropout: in training each `(n, c)` channel is zeroed with probability `p` and the kept
/// ones are scaled by `1 / (1 − p)`; in eval it is the identity.
///
/// The masks are reproducible on every device: the mask of a call is a hash of `(seed, call, n, c)`,
/// where `call` counts the training-mode calls since the last [`Dropout3d::reseed`]. A trainer that
/// reseeds every iteration from `(run seed, iteration)` therefore gets the same masks in a resumed
/// run as in the uninterrupted one. Clones share the seed and the call counter (a layer applied twice
/// in one forward pass draws two different masks).
#[derive(Clone, Debug)]
pub struct Dropout3d {
    p: f32,
    stream: Arc<MaskStream>,
}

/// Seed and call counter of a dropout layer.
#[derive(Debug, Default)]
struct MaskStream {
    seed: AtomicU64,
    calls: AtomicU64,
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform draw in `[0, 1)` for channel `index` of call `call` under `seed`.
fn uniform(seed: u64, call: u64, index: u64) -> f64 {
    let h = mix64(mix64(mix64(seed) ^ call) ^ index);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Dropout3d {
    /// Drops channels with probability `p`, which must lie in `[0, 1]` (checked in `forward_t`).
    /// The seed is 0 until [`Dropout3d::reseed`].
    pub fn new(p: f32) -> Self {
        Self::seeded(p, 0)
    }

    /// Like [`Dropout3d::new`] with the given mask seed.
    pub fn seeded(p: f32, seed: u64) -> Self {
        let stream = MaskStream {
            seed: AtomicU64::new(seed),
            calls: AtomicU64::new(0),
        };
        Self {
            p,
            stream: Arc::new(stream),
        }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// Sets the mask seed and restarts the call counter (shared with every clone of this layer).
    pub fn reseed(&self, seed: u64) {
        self.stream.seed.store(seed, Ordering::SeqCst);
        self.stream.calls.store(0, Ordering::SeqCst);
    }

    /// The keep mask `[n * c]` (1 kept, 0 dropped) of the next training-mode call.
    fn next_keep_mask(&self, n: usize, c: usize) -> Vec<f32> {
        let seed = self.stream.seed.load(Ordering::SeqCst);
        let call = self.stream.calls.fetch_add(1, Ordering::SeqCst);
        let p = f64::from(self.p);
        (0..(n * c) as u64)
            .map(|i| f32::from(u8::from(uniform(seed, call, i) >= p)))
            .collect()
    }
}

impl ModuleT for Dropout3d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let p = self.p;
        if !(0.0..=1.0).contains(&p) {
            bail!("dropout probability must be in [0, 1], got {p}")
        }
        let Ok((n, c, _, _, _)) = x.dims5() else {
            bail!(
                "dropout3d expects a [N, C, D, H, W] input, got shape {:?}",
                x.dims()
            )
        };
        if !train || p == 0.0 {
            return Ok(x.clone());
        }
        if p == 1.0 {
            // everything dropped; keeps the graph so the input still gets a (zero) gradient
            return x.affine(0.0, 0.0);
        }
        let keep = self.next_keep_mask(n, c);
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // the same factors as the composition below: keep · f32(1 / (1 − p)) + 0
            let factor = (1.0 / (1.0 - p as f64)) as f32;
            let scale = keep.iter().map(|&k| k * factor + 0.0).collect();
            return x.contiguous()?.apply_op1(ChannelScale {
                scale: Arc::new(scale),
            });
        }
        let keep = Tensor::from_vec(keep, (n, c, 1, 1, 1), x.device())?;
        let mask = keep
            .to_dtype(x.dtype())?
            .affine(1.0 / (1.0 - p as f64), 0.0)?;
        x.broadcast_mul(&mask)
    }
}

/// `y[n, c, ..] = x[n, c, ..] · scale[n·C + c]` on contiguous f32 CPU tensors: the dropout product
/// as one graph node whose backward is the same product (candle's broadcast product would also
/// compute and accumulate an unused gradient for the mask, three extra passes).
#[derive(Debug, Clone)]
struct ChannelScale {
    scale: Arc<Vec<f32>>,
}

impl CustomOp1 for ChannelScale {
    fn name(&self) -> &'static str {
        "nn3d-channel-scale"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp1::name(self));
        let CpuStorage::F32(data) = s else {
            bail!("channel scale expects f32, got {:?}", s.dtype())
        };
        let Some((lo, hi)) = l.contiguous_offsets() else {
            bail!(
                "channel scale expects a contiguous input, got strides {:?}",
                l.stride()
            )
        };
        let x = &data[lo..hi];
        let planes = self.scale.len();
        if planes == 0 || x.len() % planes != 0 {
            bail!(
                "channel scale: {} factors for an input of shape {:?}",
                planes,
                l.dims()
            )
        }
        let plane = x.len() / planes;
        let mut out = crate::memory::f32_buffer(x.len());
        out.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .zip(self.scale.par_iter())
            .for_each(|((o, x), &f)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    o.write(v * f);
                }
            });
        // SAFETY: the planes cover the buffer (its length is `planes · plane`) and each was written
        let out = unsafe { crate::memory::assume_init(out) };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn drops_whole_channels_and_scales_the_rest() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c) = (4, 100);
        let x = Var::from_tensor(&Tensor::rand(1f32, 2f32, (n, c, 3, 2, 4), &dev)?)?;
        let drop = Dropout3d::new(0.25);
        let y = drop.forward_t(x.as_tensor(), true)?;
        let grads = y.sum_all()?.backward()?;
        let dx = grads.get(x.as_tensor()).expect("grad of x");
        let xs = x.as_tensor().flatten_from(2)?.to_vec3::<f32>()?;
        let ys = y.flatten_from(2)?.to_vec3::<f32>()?;
        let gs = dx.flatten_from(2)?.to_vec3::<f32>()?;
        let mut dropped = 0;
        for i in 0..n {
            for j in 0..c {
                let kept = ys[i][j][0] != 0.0;
                dropped += usize::from(!kept);
                let scale = if kept { 1.0 / 0.75 } else { 0.0 };
                for k in 0..xs[i][j].len() {
                    assert!((ys[i][j][k] - xs[i][j][k] * scale).abs() < 1e-6);
                    assert!((gs[i][j][k] - scale).abs() < 1e-6);
                }
            }
        }
        // 400 channels, p = 0.25: 100 expected, std 8.7; a 6-sigma window
        assert!((48..=152).contains(&dropped), "{dropped} of 400 dropped");
        Ok(())
    }

    #[test]
    fn cpu_op_equals_the_broadcast_product() -> Result<()> {
        // values and gradients bitwise equal to x · mask with mask = keep · f32(1 / (1 − p)), also
        // for a non-contiguous input
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 4, 2, 3), &dev)?)?;
        let dy = Tensor::randn(0f32, 1.0, (3, 5, 3, 2, 4), &dev)?;
        for p in [0.5f32, 0.3] {
            let drop = Dropout3d::seeded(p, 11);
            let xt = x.as_tensor().transpose(2, 4)?;
            let y = drop.forward_t(&xt, true)?;
            let g = (&y * &dy)?.sum_all()?.backward()?;
            let dx = g.get(x.as_tensor()).expect("grad of x").clone();
            drop.reseed(11);
            let keep = Tensor::from_vec(drop.next_keep_mask(3, 5), (3, 5, 1, 1, 1), &dev)?;
            let mask = keep.affine(1.0 / (1.0 - p as f64), 0.0)?;
            let y2 = xt.broadcast_mul(&mask)?;
            let g2 = (&y2 * &dy)?.sum_all()?.backward()?;
            let dx2 = g2.get(x.as_tensor()).expect("grad of x").clone();
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            assert_eq!(flat(&y)?, flat(&y2)?, "p {p}");
            assert_eq!(flat(&dx)?, flat(&dx2)?, "p {p}");
            assert!(flat(&y)?.contains(&0.0) && flat(&y)?.iter().any(|&v| v != 0.0));
        }
        Ok(())
    }

    #[test]
    fn eval_and_zero_p_are_identity_and_p_one_zeroes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::rand(1f32, 2f32, (2, 3, 2, 2, 2), &dev)?;
        let same = |a: &Tensor| -> Result<f32> { (a - &x)?.abs()?.max_all()?.to_scalar::<f32>() };
        assert_eq!(same(&Dropout3d::new(0.5).forward_t(&x, false)?)?, 0.0);
        assert_eq!(same(&Dropout3d::new(0.0).forward_t(&x, true)?)?, 0.0);
        let zeros = Dropout3d::new(1.0).forward_t(&x, true)?;
        assert_eq!(zeros.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!(zeros.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn bad_probability_and_rank_are_errors() -> Result<()> {
        let x = Tensor::zeros((2, 3, 2, 2, 2), DType::F32, &Device::Cpu)?;
        assert!(Dropout3d::new(1.5).forward_t(&x, true).is_err());
        assert!(Dropout3d::new(-0.1).forward_t(&x, false).is_err());
        let x4 = Tensor::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu)?;
        assert!(Dropout3d::new(0.5).forward_t(&x4, true).is_err());
        Ok(())
    }

    #[test]
    fn masks_follow_the_seed_and_change_between_calls() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 64, 1, 2, 1), DType::F32, &dev)?;
        let mask = |d: &Dropout3d| -> Result<Vec<f32>> {
            d.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()
        };
        let a = Dropout3d::seeded(0.5, 7);
        let b = Dropout3d::new(0.5);
        b.reseed(7);
        let (a1, a2) = (mask(&a)?, mask(&a)?);
        assert_eq!(a1, mask(&b)?, "same seed, same first mask");
        assert_ne!(a1, a2, "the second call draws a new mask");
        a.reseed(7);
        assert_eq!(a1, mask(&a)?, "reseeding restarts the stream");
        let shared = a.clone();
        shared.reseed(8);
        let c8 = mask(&a)?;
        assert_ne!(c8, a1, "clones share the seed");
        // 256 channels at p = 0.5: about half dropped
        let dropped = a1.iter().filter(|&&v| v == 0.0).count() / 2;
        assert!(
            (40..=88).contains(&dropped),
            "{dropped} of 128 channels dropped"
        );
        Ok(())
    }
}
