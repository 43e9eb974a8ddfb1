//! Building blocks shared by both networks, named as the PyTorch modules of the reference
//! (`nn.Sequential` indices count the parameter-free ReLUs too).

use candle_core::{Result, Tensor};
use candle_nn::{Module, ModuleT, VarBuilder};
use duoseg_nn3d::{
    batch_norm3d, conv3d, conv3d_no_bias, conv_transpose3d, BatchNorm3d, BatchNorm3dConfig, Conv3d,
    Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig, Epilogue,
};

/// `n` x (conv 3^3 pad 1 + BN + ReLU): `{3i}` conv, `{3i+1}` BN, `{3i+2}` ReLU.
#[derive(Debug, Clone)]
pub(crate) struct ConvBlock {
    layers: Vec<(Conv3d, BatchNorm3d)>,
}

impl ConvBlock {
    pub(crate) fn new(n: usize, c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv3dConfig {
            padding: 1,
            ..Default::default()
        };
        let layers = (0..n)
            .map(|i| {
                let cin = if i == 0 { c_in } else { c_out };
                let conv = conv3d(cin, c_out, 3, cfg, vb.pp(3 * i))?;
                let bn = batch_norm3d(c_out, BatchNorm3dConfig::default(), vb.pp(3 * i + 1))?;
                Ok((conv, bn))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ConvBlock { layers })
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, bn) in &self.layers {
            x = bn.forward_conv_relu_t(conv, &x, train)?;
        }
        Ok(x)
    }
}

/// Down-sampling: conv 2^3 stride 2 (`0`) + BN (`1`) + ReLU.
#[derive(Debug, Clone)]
pub(crate) struct Down {
    conv: Conv3d,
    bn: BatchNorm3d,
}

impl Down {
    pub(crate) fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv3dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Down {
            conv: conv3d(c_in, c_out, 2, cfg, vb.pp(0))?,
            bn: batch_norm3d(c_out, BatchNorm3dConfig::default(), vb.pp(1))?,
        })
    }
}

impl ModuleT for Down {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_conv_relu_t(&self.conv, x, train)
    }
}

/// How a decoder doubles the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upsampling {
    /// Conv-transpose 2^3 stride 2 (`0`) + BN (`1`) + ReLU: the V-Net's (and MC-Net's first decoder's).
    #[default]
    Transposed,
    /// Trilinear x2 with aligned corners (`0`, no parameters) + conv 3^3 pad 1 (`1`) + BN (`2`) +
    /// ReLU: MC-Net's second decoder (`Upsampling_function`, `mode_upsampling = 1`).
    Trilinear,
}

#[derive(Debug, Clone)]
enum UpConv {
    Transposed(ConvTranspose3d),
    Trilinear(Conv3d),
}

/// Up-sampling block (see [`Upsampling`]).
#[derive(Debug, Clone)]
pub(crate) struct Up {
    conv: UpConv,
    bn: BatchNorm3d,
}

impl Up {
    pub(crate) fn new(c_in: usize, c_out: usize, kind: Upsampling, vb: VarBuilder) -> Result<Self> {
        let bn = BatchNorm3dConfig::default();
        Ok(match kind {
            Upsampling::Transposed => {
                let cfg = ConvTranspose3dConfig {
                    stride: 2,
                    ..Default::default()
                };
                Up {
                    conv: UpConv::Transposed(conv_transpose3d(c_in, c_out, 2, cfg, vb.pp(0))?),
                    bn: batch_norm3d(c_out, bn, vb.pp(1))?,
                }
            }
            Upsampling::Trilinear => {
                let cfg = Conv3dConfig {
                    padding: 1,
                    ..Default::default()
                };
                Up {
                    conv: UpConv::Trilinear(conv3d(c_in, c_out, 3, cfg, vb.pp(1))?),
                    bn: batch_norm3d(c_out, bn, vb.pp(2))?,
                }
            }
        })
    }
}

impl Up {
    /// `relu(bn(up(x))) + skip` (the decoder's additive skip, fused into the batch-norm op).
    pub(crate) fn forward_skip_t(&self, x: &Tensor, skip: &Tensor, train: bool) -> Result<Tensor> {
        let z = match &self.conv {
            UpConv::Transposed(conv) => conv.forward(x)?,
            UpConv::Trilinear(conv) => conv.forward(&duoseg_nn3d::upsample_trilinear(x, 2)?)?,
        };
        self.bn.forward_act_t(&z, Epilogue::ReluAdd(skip), train)
    }
}

/// 3D ResNet BasicBlock: `c1`/`n1`, `c2`/`n2` (3^3, no bias), optional shortcut `down.0` (1^3 conv) + `down.1`.
#[derive(Debug, Clone)]
pub(crate) struct BasicBlock {
    c1: Conv3d,
    n1: BatchNorm3d,
    c2: Conv3d,
    n2: BatchNorm3d,
    down: Option<(Conv3d, BatchNorm3d)>,
}

impl BasicBlock {
    pub(crate) fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let bn = BatchNorm3dConfig::default();
        let c1 = conv3d_no_bias(
            c_in,
            c_out,
            3,
            Conv3dConfig {
                stride,
                padding: 1,
                ..Default::default()
            },
            vb.pp("c1"),
        )?;
        let c2 = conv3d_no_bias(
            c_out,
            c_out,
            3,
            Conv3dConfig {
                padding: 1,
                ..Default::default()
            },
            vb.pp("c2"),
        )?;
        let down = if stride != 1 || c_in != c_out {
            let vd = vb.pp("down");
            let cfg = Conv3dConfig {
                stride,
                ..Default::default()
            };
            Some((
                conv3d_no_bias(c_in, c_out, 1, cfg, vd.pp(0))?,
                batch_norm3d(c_out, bn, vd.pp(1))?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            c1,
            n1: batch_norm3d(c_out, bn, vb.pp("n1"))?,
            c2,
            n2: batch_norm3d(c_out, bn, vb.pp("n2"))?,
            down,
        })
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.n1.forward_conv_relu_t(&self.c1, x, train)?;
        let shortcut = match &self.down {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        // relu(n2(c2(y)) + shortcut) in one fused op
        self.n2
            .forward_act_t(&self.c2.forward(&y)?, Epilogue::AddRelu(&shortcut), train)
    }
}
