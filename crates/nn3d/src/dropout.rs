//! `Dropout3d`: drops whole channels of `[N, C, D, H, W]` tensors (PyTorch `nn.Dropout3d`).

use candle_core::{bail, Result, Tensor};
use candle_nn::ModuleT;

/// Channel dropout: in training each `(n, c)` channel is zeroed with probability `p` and the kept
/// ones are scaled by `1 / (1 − p)`; in eval it is the identity.
///
/// The mask `[N, C, 1, 1, 1]` comes from the tensor's device RNG (`Tensor::rand`); note that candle's
/// CPU RNG cannot be seeded, so CPU dropout masks are not reproducible between runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout3d {
    p: f32,
}

impl Dropout3d {
    /// Drops channels with probability `p`, which must lie in `[0, 1]` (checked in `forward_t`).
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
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
        let keep = Tensor::rand(0f32, 1f32, (n, c, 1, 1, 1), x.device())?.ge(p as f64)?;
        let mask = keep
            .to_dtype(x.dtype())?
            .affine(1.0 / (1.0 - p as f64), 0.0)?;
        x.broadcast_mul(&mask)
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
}
