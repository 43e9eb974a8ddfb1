//! A layer table (stage, operation, output shape, parameters) for `duoseg model summary`.

use candle_core::{bail, DType, Device, Result};
use candle_nn::{VarBuilder, VarMap};
use duoseg_nn3d::is_batch_norm_buffer;

use crate::nets::{build, Arch, NetConfig, INPUT_MULTIPLE};

/// One stage of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    /// Module path prefix (`b1`, `layers.2`, `out`, ...).
    pub name: String,
    /// What the stage does.
    pub op: String,
    /// Output shape `[N, C, D, H, W]`.
    pub output: [usize; 5],
    /// Trainable parameters of the stage (BatchNorm buffers excluded, as PyTorch counts parameters).
    pub params: usize,
}

/// The stages of `arch` for an input `[batch, in_channels, D, H, W]`; the parameter counts come from
/// the variables the network actually creates, so their sum is the network's parameter count.
pub fn summary(
    arch: Arch,
    cfg: NetConfig,
    batch: usize,
    input: [usize; 3],
) -> Result<Vec<LayerRow>> {
    if input.iter().any(|&s| s == 0 || s % INPUT_MULTIPLE != 0) {
        bail!("input spatial size {input:?} must be a positive multiple of {INPUT_MULTIPLE} in each axis");
    }
    let varmap = VarMap::new();
    build(
        arch,
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let params_of = |prefix: &str| -> usize {
        data.iter()
            .filter(|(k, _)| k.starts_with(&format!("{prefix}.")) && !is_batch_norm_buffer(k))
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    let n = cfg.base_width;
    let shape = |c: usize, level: u32| {
        let s = 1usize << level;
        [batch, c, input[0] / s, input[1] / s, input[2] / s]
    };
    let mut rows: Vec<(String, String, [usize; 5])> = Vec::new();
    let mut push = |name: &str, op: String, out: [usize; 5]| rows.push((name.to_string(), op, out));
    match arch {
        Arch::Vnet => {
            let convs = [1, 2, 3, 3, 3];
            for (i, &k) in convs.iter().enumerate() {
                let c = n << i;
                push(
                    &format!("b{}", i + 1),
                    format!("{k} x (conv 3^3 + BN + ReLU)"),
                    shape(c, i as u32),
                );
                if i < 4 {
                    push(
                        &format!("d{}", i + 1),
                        "conv 2^3 stride 2 + BN + ReLU".into(),
                        shape(2 * c, i as u32 + 1),
                    );
                }
            }
        }
        Arch::Resnet34 => {
            push("stem", "conv 7^3 (no bias) + BN + ReLU".into(), shape(n, 0));
            for (i, blocks) in [3, 4, 6, 3].iter().enumerate() {
                let op = format!("{blocks} x BasicBlock, first stride 2");
                push(
                    &format!("layers.{i}"),
                    op,
                    shape(n << (i + 1), i as u32 + 1),
                );
            }
        }
    }
    for (u, b, convs, level) in [
        ("u5", "b6", 3, 3u32),
        ("u6", "b7", 3, 2),
        ("u7", "b8", 2, 1),
        ("u8", "b9", 1, 0),
    ] {
        let c = n << level;
        push(
            u,
            "conv-transpose 2^3 stride 2 + BN + ReLU, + skip".into(),
            shape(c, level),
        );
        push(
            b,
            format!("{convs} x (conv 3^3 + BN + ReLU)"),
            shape(c, level),
        );
    }
    push("out", "conv 1^3 -> logits".into(), shape(cfg.n_classes, 0));
    Ok(rows
        .into_iter()
        .map(|(name, op, output)| LayerRow {
            params: params_of(&name),
            name,
            op,
            output,
        })
        .collect())
}
