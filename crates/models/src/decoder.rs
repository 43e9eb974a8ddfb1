//! The V-Net decoder shared by both networks: `u5 b6 u6 b7 u7 b8 u8 b9 out`, additive skips,
//! Dropout3d(0.5) on the last decoder map `x9`.

use candle_core::{Result, Tensor};
use candle_nn::{Module, ModuleT, VarBuilder};
use duoseg_nn3d::{conv3d, Conv3d, Conv3dConfig, Dropout3d};

use crate::blocks::{ConvBlock, Up, Upsampling};

/// Drop probability of the Dropout3d layers (SPEC section 1).
pub const DROPOUT_P: f32 = 0.5;

#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    u5: Up,
    b6: ConvBlock,
    u6: Up,
    b7: ConvBlock,
    u7: Up,
    b8: ConvBlock,
    u8: Up,
    b9: ConvBlock,
    out: Conv3d,
    pub(crate) drop: Option<Dropout3d>,
}

impl Decoder {
    pub(crate) fn new(
        n: usize,
        n_classes: usize,
        dropout: bool,
        up: Upsampling,
        vb: &VarBuilder,
    ) -> Result<Self> {
        Ok(Decoder {
            u5: Up::new(16 * n, 8 * n, up, vb.pp("u5"))?,
            b6: ConvBlock::new(3, 8 * n, 8 * n, vb.pp("b6"))?,
            u6: Up::new(8 * n, 4 * n, up, vb.pp("u6"))?,
            b7: ConvBlock::new(3, 4 * n, 4 * n, vb.pp("b7"))?,
            u7: Up::new(4 * n, 2 * n, up, vb.pp("u7"))?,
            b8: ConvBlock::new(2, 2 * n, 2 * n, vb.pp("b8"))?,
            u8: Up::new(2 * n, n, up, vb.pp("u8"))?,
            b9: ConvBlock::new(1, n, n, vb.pp("b9"))?,
            out: conv3d(n, n_classes, 1, Conv3dConfig::default(), vb.pp("out"))?,
            drop: dropout.then(|| Dropout3d::new(DROPOUT_P)),
        })
    }

    /// Dropout if enabled, identity otherwise.
    pub(crate) fn dropout(&self, x: Tensor, train: bool) -> Result<Tensor> {
        match &self.drop {
            Some(d) => d.forward_t(&x, train),
            None => Ok(x),
        }
    }

    /// Reseeds the dropout masks (shared by every use of the layer in a forward pass).
    pub(crate) fn reseed_dropout(&self, seed: u64) {
        if let Some(d) = &self.drop {
            d.reseed(seed);
        }
    }

    /// `(logits, x9)` from the bottleneck `x5` and skips `x1..x4`.
    pub(crate) fn forward_t(&self, skips: [&Tensor; 5], train: bool) -> Result<(Tensor, Tensor)> {
        let [x1, x2, x3, x4, x5] = skips;
        let x = self
            .b6
            .forward_t(&self.u5.forward_skip_t(x5, x4, train)?, train)?;
        let x = self
            .b7
            .forward_t(&self.u6.forward_skip_t(&x, x3, train)?, train)?;
        let x = self
            .b8
            .forward_t(&self.u7.forward_skip_t(&x, x2, train)?, train)?;
        let x9 = self
            .b9
            .forward_t(&self.u8.forward_skip_t(&x, x1, train)?, train)?;
        let x9 = self.dropout(x9, train)?;
        let logits = self.out.forward(&x9)?;
        Ok((logits, x9))
    }
}
