//! Extra heads of the comparison methods' model variants.

use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};
use duoseg_nn3d::{conv3d, Conv3d, Conv3dConfig};

use crate::nets::NetConfig;

/// The level-set (signed distance) head of DTC and SASSNet: a 1x1x1 convolution of the decoder's
/// last map `x9` (after its dropout, like the segmentation head) followed by tanh, one channel per
/// foreground class. Its parameters are `<prefix>.weight` and `<prefix>.bias`; duoseg names it
/// `out_sdf` beside the V-Net's `out` (the public code's `out_conv`, beside `out_conv2`).
#[derive(Debug, Clone)]
pub struct SdfHead {
    conv: Conv3d,
}

impl SdfHead {
    /// Creates (or loads) the head for a net of `cfg`.
    pub fn new(cfg: NetConfig, vb: VarBuilder) -> Result<Self> {
        let classes = cfg.n_classes.saturating_sub(1).max(1);
        Ok(SdfHead {
            conv: conv3d(cfg.base_width, classes, 1, Conv3dConfig::default(), vb)?,
        })
    }

    /// `tanh(conv(x9))`: `[N, K - 1, D, H, W]` from the decoder features `[N, base_width, D, H, W]`.
    pub fn forward(&self, x9: &Tensor) -> Result<Tensor> {
        self.conv.forward(x9)?.tanh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The head's gradient with respect to its input against central finite differences.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let cfg = NetConfig {
            n_classes: 3,
            base_width: 2,
            ..NetConfig::default()
        };
        let vm = VarMap::new();
        let head = SdfHead::new(
            cfg,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("out_sdf"),
        )?;
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"out_sdf.weight".to_string()), "{names:?}");
        let x: Vec<f32> = (0..2 * 8)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.2)
            .collect();
        let x = Var::from_vec(x, (1, 2, 2, 2, 2), &Device::Cpu)?;
        let w: Vec<f32> = (0..2 * 8)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.3)
            .collect();
        let w = Tensor::from_vec(w, (1, 2, 2, 2, 2), &Device::Cpu)?;
        let loss = |x: &Tensor| -> Result<Tensor> {
            let y = head.forward(x)?; // [1, 2, 2, 2, 2]
            (y * &w)?.sum_all()
        };
        let grads = loss(x.as_tensor())?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let base = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let h = 1e-2f32;
        for i in 0..base.len() {
            let at = |d: f32| -> Result<f32> {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (1, 2, 2, 2, 2), &Device::Cpu)?)?.to_scalar::<f32>()
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() <= 2e-3 * fd.abs().max(1.0),
                "{i}: fd {fd} vs {}",
                g[i]
            );
        }
        Ok(())
    }
}
