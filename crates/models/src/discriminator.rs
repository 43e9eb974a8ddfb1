//! SASSNet's discriminator (`FC3DDiscriminator`, kleinzcy/SASSnet `networks/discriminator.py`):
//! it tells a labeled crop's signed-distance map from an unlabeled crop's, given the image.
//!
//! `x = LeakyReLU_0.2(conv0(map) + conv1(image))`, Dropout3d(0.5); `conv2`, `conv3`, each
//! LeakyReLU + Dropout3d; `conv4` + LeakyReLU; the mean over the remaining voxels (the code's
//! `AvgPool3d((7, 7, 5))`, which at the LA patch 112x112x80 is that mean); `classifier`, a linear
//! layer to 2 logits (class 1: "from a labeled crop"). Every conv is 4^3, stride 2, padding 1; the
//! widths are `ndf`, `2 ndf`, `4 ndf`, `8 ndf` (64 in the code). Parameter names are PyTorch's
//! (`conv0.weight`, ..., `classifier.bias`).

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, ModuleT, VarBuilder};
use duoseg_nn3d::{conv3d, Conv3d, Conv3dConfig, Dropout3d};

/// LeakyReLU slope of the code.
const SLOPE: f64 = 0.2;

/// SASSNet's discriminator (see the module documentation).
#[derive(Debug, Clone)]
pub struct Discriminator {
    conv0: Conv3d,
    conv1: Conv3d,
    conv2: Conv3d,
    conv3: Conv3d,
    conv4: Conv3d,
    classifier: Linear,
    drop: Dropout3d,
}

impl Discriminator {
    /// A discriminator for maps of `map_channels` channels (the level-set head's, K - 1) and images
    /// of `image_channels`, width `ndf` (64 in the code).
    pub fn new(
        map_channels: usize,
        image_channels: usize,
        ndf: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv3dConfig {
            padding: 1,
            stride: 2,
            dilation: 1,
        };
        Ok(Discriminator {
            conv0: conv3d(map_channels, ndf, 4, cfg, vb.pp("conv0"))?,
            conv1: conv3d(image_channels, ndf, 4, cfg, vb.pp("conv1"))?,
            conv2: conv3d(ndf, 2 * ndf, 4, cfg, vb.pp("conv2"))?,
            conv3: conv3d(2 * ndf, 4 * ndf, 4, cfg, vb.pp("conv3"))?,
            conv4: conv3d(4 * ndf, 8 * ndf, 4, cfg, vb.pp("conv4"))?,
            classifier: candle_nn::linear(8 * ndf, 2, vb.pp("classifier"))?,
            drop: Dropout3d::new(0.5),
        })
    }

    /// Logits `[N, 2]` for maps `[N, map_channels, D, H, W]` and images `[N, image_channels, D, H, W]`
    /// (each spatial size at least 16: four halvings); dropout only when `train`.
    pub fn forward_t(&self, map: &Tensor, image: &Tensor, train: bool) -> Result<Tensor> {
        let leaky = |x: Tensor| candle_nn::ops::leaky_relu(&x, SLOPE);
        let x = leaky((self.conv0.forward(map)? + self.conv1.forward(image)?)?)?;
        let x = self.drop.forward_t(&x, train)?;
        let x = self
            .drop
            .forward_t(&leaky(self.conv2.forward(&x)?)?, train)?;
        let x = self
            .drop
            .forward_t(&leaky(self.conv3.forward(&x)?)?, train)?;
        let x = leaky(self.conv4.forward(&x)?)?;
        let (n, c, _, _, _) = x.dims5()?;
        let pooled = x.reshape((n, c, ()))?.mean(2)?;
        self.classifier.forward(&pooled)
    }

    /// Draws the dropout masks of the next training-mode forward pass from `seed`.
    pub fn reseed_dropout(&self, seed: u64) {
        self.drop.reseed(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// `tests/fixtures/methods/sassnet.safetensors` (`tests/reference/methods.py`): PyTorch's
    /// discriminator at width 2 in eval mode on a 32x16x16 input, its logits and the gradient of
    /// `CE(logits, [1, 1])` into the map (the adversarial path into the segmenter).
    #[test]
    fn matches_the_pytorch_discriminator() -> Result<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/methods/sassnet.safetensors"
        );
        let t = candle_core::safetensors::load(path, &Device::Cpu)?;
        let weights = t
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("d.")?;
                let is_weight = name.starts_with("conv") || name.starts_with("classifier");
                is_weight.then(|| (name.to_string(), v.clone()))
            })
            .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let d = Discriminator::new(1, 1, 2, vb)?;
        let map = Var::from_tensor(&t["d.in_map"])?;
        let logits = d.forward_t(map.as_tensor(), &t["d.in_image"], false)?;
        let err = (&logits - t["d.out_logits"].to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(err < 1e-5, "logits differ by {err}");
        let target = Tensor::new(&[1u32, 1], &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        let grad = loss
            .backward()?
            .get(map.as_tensor())
            .cloned()
            .expect("gradient");
        let want = &t["d.grad_map"];
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let err = (&grad - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            err <= 1e-4 * scale,
            "map gradient differs by {err} (max {scale})"
        );
        Ok(())
    }

    #[test]
    fn training_mode_drops_and_eval_mode_is_deterministic() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let d = Discriminator::new(1, 1, 2, vb)?;
        let map = Tensor::randn(0f32, 1.0, (2, 1, 16, 16, 16), &Device::Cpu)?;
        let image = Tensor::randn(0f32, 1.0, (2, 1, 16, 16, 16), &Device::Cpu)?;
        let a = d
            .forward_t(&map, &image, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = d
            .forward_t(&map, &image, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        d.reseed_dropout(7);
        let c = d
            .forward_t(&map, &image, true)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        d.reseed_dropout(7);
        let e = d
            .forward_t(&map, &image, true)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(c, e, "the same seed draws the same masks");
        Ok(())
    }
}
