//! `VNet`, `ResNet34VNet`, their configuration and the `SegNet` interface.

use candle_core::{bail, Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use duoseg_nn3d::{
    batch_norm3d, conv3d_no_bias, BatchNorm3d, BatchNorm3dConfig, Conv3d, Conv3dConfig,
};
use serde::{Deserialize, Serialize};

use crate::blocks::{BasicBlock, ConvBlock, Down, Upsampling};
use crate::decoder::Decoder;

/// Each spatial side of the input must be a multiple of this (four stride-2 stages).
pub const INPUT_MULTIPLE: usize = 16;

/// A segmentation network returning `(logits [N, K, D, H, W], features [N, base_width, D, H, W])`,
/// the features being the last decoder map `x9` (after its dropout).
pub trait SegNet: std::fmt::Debug + Send + Sync {
    /// Forward pass; `train` selects batch statistics (and running-stat updates) and active dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)>;

    /// Reseeds the dropout masks (a no-op without dropout): the masks of the following training-mode
    /// forward passes are a function of `seed` alone, on every device.
    fn reseed_dropout(&self, seed: u64);
}

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Subnet A: V-Net.
    Vnet,
    /// Subnet B: ResNet-34 encoder + V-Net decoder.
    Resnet34,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "vnet" => Ok(Arch::Vnet),
            "resnet34" => Ok(Arch::Resnet34),
            other => Err(format!(
                "unknown architecture {other:?} (expected vnet or resnet34)"
            )),
        }
    }
}

/// Network hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Input channels (1 for LA / Pancreas).
    pub in_channels: usize,
    /// Output classes, background included (2 for LA).
    pub n_classes: usize,
    /// Width of the first stage (16); stages use 1, 2, 4, 8, 16 times it.
    pub base_width: usize,
    /// Dropout3d(0.5) layers on (V-Net: bottleneck and `x9`; ResNet-34 V-Net: `x9`).
    pub dropout: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            in_channels: 1,
            n_classes: 2,
            base_width: 16,
            dropout: true,
        }
    }
}

impl NetConfig {
    fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.base_width == 0 || self.n_classes < 2 {
            bail!(
                "invalid network config: in_channels {} (>= 1), n_classes {} (>= 2), base_width {} (>= 1)",
                self.in_channels,
                self.n_classes,
                self.base_width
            );
        }
        Ok(())
    }
}

/// Checks that `x` is `[N, in_channels, D, H, W]` with D, H, W multiples of 16.
pub fn check_input(x: &Tensor, in_channels: usize) -> Result<()> {
    let d = x.dims();
    if d.len() != 5 || d[1] != in_channels {
        bail!("expected input [N, {in_channels}, D, H, W], got shape {d:?}");
    }
    if d[2..].iter().any(|&s| s == 0 || s % INPUT_MULTIPLE != 0) {
        bail!("input spatial size {:?} (shape {d:?}) must be a positive multiple of {INPUT_MULTIPLE} in each axis", &d[2..]);
    }
    Ok(())
}

/// Builds either network as a trait object.
pub fn build(arch: Arch, cfg: NetConfig, vb: VarBuilder) -> Result<Box<dyn SegNet>> {
    Ok(match arch {
        Arch::Vnet => Box::new(VNet::new(cfg, vb)?),
        Arch::Resnet34 => Box::new(ResNet34VNet::new(cfg, vb)?),
    })
}

/// V-Net (SPEC section 1, subnet A): plain conv stages of 1/2/3/3/3 convs, stride-2 down / up convs,
/// additive skips. 9,448,866 parameters at the defaults.
#[derive(Debug, Clone)]
pub struct VNet {
    cfg: NetConfig,
    b1: ConvBlock,
    d1: Down,
    b2: ConvBlock,
    d2: Down,
    b3: ConvBlock,
    d3: Down,
    b4: ConvBlock,
    d4: Down,
    b5: ConvBlock,
    decoder: Decoder,
    /// MC-Net's second decoder (trilinear up-sampling), variables under `dec2`.
    decoder2: Option<Decoder>,
}

/// Seed offset of the second decoder's dropout masks (its own stream, as MC-Net's decoders each
/// hold their own `Dropout3d`).
const DECODER2_DROPOUT_STREAM: u64 = 0x0DEC_0002;

impl VNet {
    /// Creates (or loads, depending on the builder) the variables.
    pub fn new(cfg: NetConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_decoders(cfg, false, vb)
    }

    /// MC-Net's V-Net (`MCNet3d_v1`): the shared encoder, the V-Net decoder (conv-transpose
    /// up-sampling) and a second decoder with trilinear up-sampling ([`Upsampling::Trilinear`]),
    /// whose variables live under `dec2.` (`dec2.u5.1.weight`, ..., `dec2.out.bias`). `forward_t`
    /// is the first decoder's output (MC-Net's reported prediction); [`VNet::decoder_outputs_t`]
    /// gives both.
    pub fn with_trilinear_decoder(cfg: NetConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_decoders(cfg, true, vb)
    }

    fn with_decoders(cfg: NetConfig, second: bool, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.base_width;
        Ok(VNet {
            cfg,
            b1: ConvBlock::new(1, cfg.in_channels, n, vb.pp("b1"))?,
            d1: Down::new(n, 2 * n, vb.pp("d1"))?,
            b2: ConvBlock::new(2, 2 * n, 2 * n, vb.pp("b2"))?,
            d2: Down::new(2 * n, 4 * n, vb.pp("d2"))?,
            b3: ConvBlock::new(3, 4 * n, 4 * n, vb.pp("b3"))?,
            d3: Down::new(4 * n, 8 * n, vb.pp("d3"))?,
            b4: ConvBlock::new(3, 8 * n, 8 * n, vb.pp("b4"))?,
            d4: Down::new(8 * n, 16 * n, vb.pp("d4"))?,
            b5: ConvBlock::new(3, 16 * n, 16 * n, vb.pp("b5"))?,
            decoder: Decoder::new(n, cfg.n_classes, cfg.dropout, Upsampling::Transposed, &vb)?,
            decoder2: match second {
                true => Some(Decoder::new(
                    n,
                    cfg.n_classes,
                    cfg.dropout,
                    Upsampling::Trilinear,
                    &vb.pp("dec2"),
                )?),
                false => None,
            },
        })
    }

    /// The encoder's skips `x1..x4` and bottleneck `x5` (dropout applied to `x5`).
    fn encode_t(&self, x: &Tensor, train: bool) -> Result<[Tensor; 5]> {
        check_input(x, self.cfg.in_channels)?;
        let x1 = self.b1.forward_t(x, train)?;
        let x2 = self.b2.forward_t(&self.d1.forward_t(&x1, train)?, train)?;
        let x3 = self.b3.forward_t(&self.d2.forward_t(&x2, train)?, train)?;
        let x4 = self.b4.forward_t(&self.d3.forward_t(&x3, train)?, train)?;
        let x5 = self.b5.forward_t(&self.d4.forward_t(&x4, train)?, train)?;
        let x5 = self.decoder.dropout(x5, train)?;
        Ok([x1, x2, x3, x4, x5])
    }

    /// `(logits, x9)` of every decoder (one, or MC-Net's two) from one pass of the encoder.
    pub fn decoder_outputs_t(&self, x: &Tensor, train: bool) -> Result<Vec<(Tensor, Tensor)>> {
        let [x1, x2, x3, x4, x5] = self.encode_t(x, train)?;
        let skips = [&x1, &x2, &x3, &x4, &x5];
        let mut out = vec![self.decoder.forward_t(skips, train)?];
        if let Some(d) = &self.decoder2 {
            out.push(d.forward_t(skips, train)?);
        }
        Ok(out)
    }

    /// How many decoders the net has (2 for MC-Net's).
    pub fn decoders(&self) -> usize {
        1 + usize::from(self.decoder2.is_some())
    }

    /// The configuration.
    pub fn config(&self) -> NetConfig {
        self.cfg
    }
}

impl SegNet for VNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let [x1, x2, x3, x4, x5] = self.encode_t(x, train)?;
        self.decoder.forward_t([&x1, &x2, &x3, &x4, &x5], train)
    }

    fn reseed_dropout(&self, seed: u64) {
        self.decoder.reseed_dropout(seed);
        if let Some(d) = &self.decoder2 {
            d.reseed_dropout(seed ^ DECODER2_DROPOUT_STREAM);
        }
    }
}

/// ResNet-34 V-Net (SPEC section 1, subnet B): 7^3 stem (no max-pool), BasicBlock stages [3, 4, 6, 3]
/// each starting with stride 2, the V-Net decoder. 17,930,354 parameters at the defaults.
#[derive(Debug, Clone)]
pub struct ResNet34VNet {
    cfg: NetConfig,
    stem: (Conv3d, BatchNorm3d),
    layers: Vec<Vec<BasicBlock>>,
    decoder: Decoder,
}

/// BasicBlocks per encoder stage.
const RESNET34_BLOCKS: [usize; 4] = [3, 4, 6, 3];

impl ResNet34VNet {
    /// Creates (or loads, depending on the builder) the variables.
    pub fn new(cfg: NetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.base_width;
        let stem_cfg = Conv3dConfig {
            padding: 3,
            ..Default::default()
        };
        let stem = (
            conv3d_no_bias(cfg.in_channels, n, 7, stem_cfg, vb.pp("stem").pp(0))?,
            batch_norm3d(n, BatchNorm3dConfig::default(), vb.pp("stem").pp(1))?,
        );
        let mut layers = Vec::new();
        let mut c_in = n;
        for (stage, &blocks) in RESNET34_BLOCKS.iter().enumerate() {
            let c_out = n << (stage + 1);
            let vs = vb.pp("layers").pp(stage);
            let stage_blocks = (0..blocks)
                .map(|i| {
                    let (cin, stride) = if i == 0 { (c_in, 2) } else { (c_out, 1) };
                    BasicBlock::new(cin, c_out, stride, vs.pp(i))
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(stage_blocks);
            c_in = c_out;
        }
        Ok(ResNet34VNet {
            cfg,
            stem,
            layers,
            decoder: Decoder::new(n, cfg.n_classes, cfg.dropout, Upsampling::Transposed, &vb)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> NetConfig {
        self.cfg
    }
}

impl SegNet for ResNet34VNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        check_input(x, self.cfg.in_channels)?;
        let (conv, bn) = &self.stem;
        let x1 = bn.forward_conv_relu_t(conv, x, train)?;
        let mut skips = vec![x1];
        for stage in &self.layers {
            let mut y = skips[skips.len() - 1].clone();
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
            skips.push(y);
        }
        self.decoder.forward_t(
            [&skips[0], &skips[1], &skips[2], &skips[3], &skips[4]],
            train,
        )
    }

    fn reseed_dropout(&self, seed: u64) {
        self.decoder.reseed_dropout(seed);
    }
}
