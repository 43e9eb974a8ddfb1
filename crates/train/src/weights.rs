//! Weights in and out as plain PyTorch `state_dict`s (safetensors, one file per net): what
//! `duoseg export` and `duoseg import` run.
//!
//! duoseg's own parameter names are those of `../shared/reference/vnet_ref.py` (`b1.0.weight`,
//! `d1.1.running_mean`, ..., `out.bias`), which `torch.nn.Module.state_dict()` of that reference
//! gives, batch-norm buffers included (`num_batches_tracked` as int64). The V-Net of the published
//! UA-MT code (yulequan/UA-MT `code/networks/vnet.py`, also used by SASSNet, DTC and MCF with
//! `normalization='batchnorm'`) names the same modules `block_one.conv.0.weight`,
//! `block_one_dw.conv.1.weight`, ..., `out_conv.bias`: [`NameScheme::UaMt`] maps between the two
//! for subnet A. Subnet B (ResNet-34 V-Net) has duoseg's names only.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::{self, CheckpointMeta, NET_A, NET_B};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::nets::Nets;

/// Parameter naming of a `state_dict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScheme {
    /// duoseg's names (`b1.0.weight`), those of `vnet_ref.py`.
    Duoseg,
    /// The UA-MT code's V-Net (`block_one.conv.0.weight`); subnet A only.
    UaMt,
}

/// duoseg's V-Net module prefixes and the UA-MT code's modules they are.
const UA_MT_MODULES: [(&str, &str); 18] = [
    ("b1", "block_one"),
    ("d1", "block_one_dw"),
    ("b2", "block_two"),
    ("d2", "block_two_dw"),
    ("b3", "block_three"),
    ("d3", "block_three_dw"),
    ("b4", "block_four"),
    ("d4", "block_four_dw"),
    ("b5", "block_five"),
    ("u5", "block_five_up"),
    ("b6", "block_six"),
    ("u6", "block_six_up"),
    ("b7", "block_seven"),
    ("u7", "block_seven_up"),
    ("b8", "block_eight"),
    ("u8", "block_eight_up"),
    ("b9", "block_nine"),
    ("out", "out_conv"),
];

/// A V-Net parameter's UA-MT name (`b1.0.weight` -> `block_one.conv.0.weight`,
/// `out.bias` -> `out_conv.bias`), `None` for a name outside the plain V-Net (a level-set head, a
/// second decoder).
pub fn to_ua_mt(name: &str) -> Option<String> {
    let (module, rest) = name.split_once('.')?;
    let (_, theirs) = UA_MT_MODULES.iter().find(|(ours, _)| *ours == module)?;
    Some(match module {
        "out" => format!("{theirs}.{rest}"),
        _ => format!("{theirs}.conv.{rest}"),
    })
}

/// The duoseg name of a UA-MT V-Net parameter (the inverse of [`to_ua_mt`]).
pub fn from_ua_mt(name: &str) -> Option<String> {
    let (module, rest) = name.split_once('.')?;
    let (ours, _) = UA_MT_MODULES.iter().find(|(_, theirs)| *theirs == module)?;
    let rest = match *ours {
        "out" => rest,
        _ => rest.strip_prefix("conv.")?,
    };
    Some(format!("{ours}.{rest}"))
}

/// Which net of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Subnet A, the V-Net.
    A,
    /// Subnet B, the ResNet-34 V-Net.
    B,
}

/// Net `net`'s tensors (weights and batch-norm buffers) named for a `state_dict` in `scheme`.
/// Errors when the nets lack B, or when a tensor has no name in `scheme` (UA-MT names exist for
/// subnet A's plain V-Net only).
pub fn export_state_dict(
    nets: &Nets,
    net: Net,
    scheme: NameScheme,
) -> Result<BTreeMap<String, Tensor>> {
    let bad = |m: String| TrainError::Tensor(candle_core::Error::Msg(m));
    let (prefix, tensors) = match net {
        Net::A => (NET_A, nets.tensors([NET_A, NET_B])?),
        Net::B => {
            if nets.b.is_none() {
                return Err(bad("this run has no subnet B (ResNet-34 V-Net)".into()));
            }
            (NET_B, nets.tensors([NET_A, NET_B])?)
        }
    };
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let Some(local) = name.strip_prefix(&format!("{prefix}.")) else {
            continue;
        };
        let key =
            match (scheme, net) {
                (NameScheme::Duoseg, _) => local.to_string(),
                (NameScheme::UaMt, Net::A) => to_ua_mt(local).ok_or_else(|| {
                    bad(format!(
                    "{local} has no name in the UA-MT V-Net (it is not part of the plain V-Net)"
                ))
                })?,
                (NameScheme::UaMt, Net::B) => return Err(bad(
                    "UA-MT names exist for subnet A (the V-Net) only; export B with duoseg names"
                        .into(),
                )),
            };
        out.insert(key, t);
    }
    Ok(out)
}

/// Builds the nets of `cfg` from `state_dict`s of A and (for pair methods) B in `scheme` on
/// `device`. Every parameter and batch-norm buffer the nets have must be present with its shape;
/// extra entries are errors too (a wrong architecture or width would otherwise pass unnoticed).
pub fn import_state_dicts(
    cfg: &TrainConfig,
    a: &BTreeMap<String, Tensor>,
    b: Option<&BTreeMap<String, Tensor>>,
    scheme: NameScheme,
    source: &Path,
    device: &Device,
) -> Result<Nets> {
    let nets = Nets::build(&cfg.model, cfg.method.networks(), device, cfg.seed)?;
    let mut tensors = BTreeMap::new();
    for (name, t) in a {
        let local = match scheme {
            NameScheme::Duoseg => Some(name.clone()),
            NameScheme::UaMt => from_ua_mt(name),
        }
        .ok_or_else(|| {
            TrainError::checkpoint(source, format!("{name} is not a UA-MT V-Net parameter"))
        })?;
        tensors.insert(format!("{NET_A}.{local}"), t.to_device(device)?);
    }
    match (b, nets.b.is_some()) {
        (Some(b), true) => {
            if scheme == NameScheme::UaMt {
                return Err(TrainError::checkpoint(
                    source,
                    "UA-MT names exist for subnet A only; give subnet B with duoseg names",
                ));
            }
            for (name, t) in b {
                tensors.insert(format!("{NET_B}.{name}"), t.to_device(device)?);
            }
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(TrainError::checkpoint(
                source,
                format!(
                    "method {} trains no subnet B, but a state_dict for B was given",
                    cfg.method.name()
                ),
            ))
        }
        (None, true) => {
            return Err(TrainError::checkpoint(
                source,
                format!(
                    "method {} trains subnet B (ResNet-34 V-Net): give its state_dict too",
                    cfg.method.name()
                ),
            ))
        }
    }
    let expected = nets.tensors([NET_A, NET_B])?;
    if let Some(extra) = tensors.keys().find(|k| !expected.contains_key(*k)) {
        return Err(TrainError::checkpoint(
            source,
            format!("{extra} is not a parameter of the config's nets"),
        ));
    }
    nets.restore(source, [NET_A, NET_B], &tensors)?;
    Ok(nets)
}

/// Writes `nets` with `cfg` as a duoseg model file (the layout of a run's `final.safetensors`,
/// atomically), which `duoseg infer --checkpoint` and `Nets::load` read.
pub fn save_model(path: &Path, cfg: &TrainConfig, nets: &Nets) -> Result<()> {
    let meta = CheckpointMeta {
        iteration: cfg.iterations,
        seed: cfg.seed,
        config: serde_json::to_value(cfg)
            .map_err(|e| TrainError::checkpoint(path, format!("config: {e}")))?,
        state: serde_json::json!({}),
        spacing: cfg.data.spacing,
    };
    checkpoint::save(path, &nets.tensors([NET_A, NET_B])?, &meta)
}

/// Writes a plain `state_dict` (no duoseg metadata) atomically.
pub fn save_state_dict(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::serialize(contiguous, None).map_err(|e| TrainError::checkpoint(path, e))?;
    duoseg_io::fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a `state_dict` written by PyTorch's `safetensors.torch.save_file` (or [`save_state_dict`]).
pub fn load_state_dict(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(TrainError::file(path))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    Ok(tensors.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ua_mt_names_round_trip() {
        for (ours, theirs) in [
            ("b1.0.weight", "block_one.conv.0.weight"),
            ("b3.7.running_var", "block_three.conv.7.running_var"),
            (
                "d4.1.num_batches_tracked",
                "block_four_dw.conv.1.num_batches_tracked",
            ),
            ("u8.0.weight", "block_eight_up.conv.0.weight"),
            ("out.bias", "out_conv.bias"),
        ] {
            assert_eq!(to_ua_mt(ours).as_deref(), Some(theirs));
            assert_eq!(from_ua_mt(theirs).as_deref(), Some(ours));
        }
        assert_eq!(to_ua_mt("out_sdf.weight"), None);
        assert_eq!(to_ua_mt("dec2.u5.1.weight"), None);
        assert_eq!(from_ua_mt("block_one.0.weight"), None);
        assert_eq!(from_ua_mt("decoder2.x.weight"), None);
    }
}
