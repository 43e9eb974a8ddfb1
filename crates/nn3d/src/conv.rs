//! `Conv3d` and `ConvTranspose3d` layers with PyTorch parameter names (`weight`, `bias`).
//!
//! Initialisation (when the `VarBuilder` creates the variables): weight kaiming-normal with PyTorch's
//! fan-in `weight.dim(1) * k^3` and gain sqrt(2), i.e. std = sqrt(2 / fan_in); bias zero.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::{self, Conv3dParams, ConvTranspose3dParams};

/// Settings of a cubic [`Conv3d`] (candle-nn naming): same padding, stride and dilation on every axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
        }
    }
}

/// A convolution layer: a weight, an optional bias and the op's settings `P`. Used as [`Conv3d`]
/// and [`ConvTranspose3d`], which differ only in `P` and in the op their `forward` runs.
#[derive(Clone, Debug)]
pub struct ConvLayer<P> {
    weight: Tensor,
    bias: Option<Tensor>,
    params: P,
}

impl<P: Copy> ConvLayer<P> {
    /// A layer from existing tensors: `weight [C_out, C_in, kd, kh, kw]` ([`Conv3d`]) or
    /// `[C_in, C_out, kd, kh, kw]` ([`ConvTranspose3d`]), `bias [C_out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, params: P) -> Self {
        Self {
            weight,
            bias,
            params,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn params(&self) -> P {
        self.params
    }
}

/// A 3D convolution layer, `[N, C_in, D, H, W] -> [N, C_out, OD, OH, OW]`, weight
/// `[C_out, C_in, kd, kh, kw]`.
pub type Conv3d = ConvLayer<Conv3dParams>;

impl Module for Conv3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv3d(xs, &self.weight, self.bias.as_ref(), self.params)
    }
}

/// Kaiming-normal std of a weight `[_, dim1, k, k, k]` as PyTorch computes it.
fn kaiming_normal(dim1: usize, k: usize) -> Init {
    let fan_in = (dim1 * k * k * k).max(1) as f64;
    Init::Randn {
        mean: 0.,
        stdev: (2.0 / fan_in).sqrt(),
    }
}

fn conv3d_impl(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv3dConfig,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = vb.get_with_hints((c_out, c_in, k, k, k), "weight", kaiming_normal(c_in, k))?;
    let bias = if bias {
        Some(vb.get_with_hints(c_out, "bias", Init::Const(0.))?)
    } else {
        None
    };
    let params = Conv3dParams::uniform(cfg.stride, cfg.padding, cfg.dilation);
    Ok(Conv3d::new(weight, bias, params))
}

/// A cubic `k^3` convolution with bias: variables `weight [c_out, c_in, k, k, k]` and `bias [c_out]`.
pub fn conv3d(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    conv3d_impl(c_in, c_out, k, cfg, true, vb)
}

/// A cubic `k^3` convolution without bias: variable `weight [c_out, c_in, k, k, k]`.
pub fn conv3d_no_bias(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    conv3d_impl(c_in, c_out, k, cfg, false, vb)
}

/// Settings of a cubic [`ConvTranspose3d`]; `output_padding` must be smaller than `stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose3dConfig {
    pub padding: usize,
    pub output_padding: usize,
    pub stride: usize,
    pub dilation: usize,
}

impl Default for ConvTranspose3dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            output_padding: 0,
            stride: 1,
            dilation: 1,
        }
    }
}

/// A transposed 3D convolution layer (PyTorch `ConvTranspose3d`), weight `[C_in, C_out, k, k, k]`.
pub type ConvTranspose3d = ConvLayer<ConvTranspose3dParams>;

impl Module for ConvTranspose3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv_transpose3d(xs, &self.weight, self.bias.as_ref(), self.params)
    }
}

/// A cubic transposed convolution with bias: `weight [c_in, c_out, k, k, k]`, `bias [c_out]`.
/// The weight's fan-in is `c_out * k^3`, as PyTorch computes it from `weight.dim(1)`.
pub fn conv_transpose3d(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: ConvTranspose3dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    let weight = vb.get_with_hints((c_in, c_out, k, k, k), "weight", kaiming_normal(c_out, k))?;
    let bias = Some(vb.get_with_hints(c_out, "bias", Init::Const(0.))?);
    let params =
        ConvTranspose3dParams::uniform(cfg.stride, cfg.padding, cfg.output_padding, cfg.dilation);
    Ok(ConvTranspose3d::new(weight, bias, params))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;

    fn std_of(t: &Tensor) -> f64 {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn constructors_use_pytorch_names_shapes_and_kaiming_init() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let cfg = Conv3dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = conv3d(16, 32, 3, cfg, vb.pp("block.conv.0")).unwrap();
        let no_bias = conv3d_no_bias(8, 4, 1, Conv3dConfig::default(), vb.pp("proj")).unwrap();
        let up_cfg = ConvTranspose3dConfig {
            stride: 2,
            ..Default::default()
        };
        let up = conv_transpose3d(32, 16, 2, up_cfg, vb.pp("up")).unwrap();
        let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "block.conv.0.bias",
                "block.conv.0.weight",
                "proj.weight",
                "up.bias",
                "up.weight"
            ]
        );
        assert_eq!(conv.weight().dims(), [32, 16, 3, 3, 3]);
        assert_eq!(no_bias.weight().dims(), [4, 8, 1, 1, 1]);
        assert!(no_bias.bias().is_none());
        assert_eq!(up.weight().dims(), [32, 16, 2, 2, 2]);
        // std = sqrt(2 / (weight.dim(1) * k^3)), as PyTorch's kaiming_normal_ (fan_in, gain sqrt 2)
        let s = std_of(conv.weight());
        let want = (2.0 / (16.0 * 27.0f64)).sqrt();
        assert!((s / want - 1.0).abs() < 0.05, "conv std {s}, want {want}");
        let s = std_of(up.weight());
        let want = (2.0 / (16.0 * 8.0f64)).sqrt();
        assert!(
            (s / want - 1.0).abs() < 0.05,
            "conv-transpose std {s}, want {want}"
        );
        let bias: Vec<f32> = conv.bias().unwrap().to_vec1().unwrap();
        assert!(bias.iter().all(|&b| b == 0.0));
        // the layers run the ops with their settings
        let x = Tensor::randn(0f32, 1., (1, 16, 4, 6, 5), &Device::Cpu).unwrap();
        let y = conv.forward(&x).unwrap();
        assert_eq!(y.dims(), [1, 32, 4, 6, 5]);
        assert_eq!(up.forward(&y).unwrap().dims(), [1, 16, 8, 12, 10]);
        let direct = crate::ops::conv3d(&x, conv.weight(), conv.bias(), conv.params()).unwrap();
        let diff = (y - direct)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}
