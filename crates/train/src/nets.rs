//! A method's networks as one unit: the V-Net (subnet A) and, for the methods that train a pair, the
//! ResNet-34 V-Net (subnet B). Building them with seeded weights, their trainable variables, the
//! moving-average (EMA) update, checkpoint round trips and eval-mode prediction.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use duoseg_models::{init_seeded, NetConfig, ResNet34VNet, SdfHead, SegNet, VNet};

use crate::checkpoint::{self, lock_vars};
use crate::config::{EvalNets, ModelConfig, Networks, TrainConfig};
use crate::error::{Result, TrainError};
use crate::sgd::is_buffer_name;

/// The networks a method trains and their variables: always subnet A (V-Net), and subnet B
/// (ResNet-34 V-Net) for the methods that train a pair ([`Networks::Pair`]).
pub struct Nets {
    /// Subnet A, V-Net.
    pub a: VNet,
    /// Subnet B, ResNet-34 V-Net (pair methods only).
    pub b: Option<ResNet34VNet>,
    /// A's level-set head (DTC), its variables in `vars_a` as `out_sdf.*`.
    pub sdf_a: Option<SdfHead>,
    /// Variables of A (PyTorch names).
    pub vars_a: VarMap,
    /// Variables of B (PyTorch names), when B exists.
    pub vars_b: Option<VarMap>,
}

/// SplitMix64-style mixing of the run seed with stream identifiers: every random stream of a run
/// (initialisation, dropout masks, loss sampling) is `mix(seed, t, stream)`.
pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first floating-point tensor of `tensors` (in name order) that holds NaN or infinity.
pub fn first_non_finite(tensors: &BTreeMap<String, Tensor>) -> Result<Option<String>> {
    let floats: Vec<(&String, &Tensor)> = tensors
        .iter()
        .filter(|(_, t)| t.dtype().is_float())
        .collect();
    if floats.is_empty() {
        return Ok(None);
    }
    let sums = floats
        .iter()
        .map(|(_, t)| t.sum_all()?.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    Ok(sums
        .iter()
        .position(|s| !s.is_finite())
        .map(|i| floats[i].0.clone()))
}

/// A checkpoint's stored config, refused when it could not predict (a damaged or hand-edited one).
fn config_of(path: &Path, stored: serde_json::Value) -> Result<TrainConfig> {
    let cfg: TrainConfig = serde_json::from_value(stored)
        .map_err(|e| TrainError::checkpoint(path, format!("config: {e}")))?;
    cfg.validate_model()
        .map_err(|e| TrainError::checkpoint(path, format!("its {e}")))?;
    Ok(cfg)
}

impl Nets {
    /// Builds the nets `networks` names on `device`, weights drawn from `seed`
    /// (`duoseg_models::init_seeded`, one stream per net: A's weights do not depend on whether B
    /// exists), so that initialisation is reproducible.
    pub fn build(
        model: &ModelConfig,
        networks: Networks,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let cfg = NetConfig {
            in_channels: 1,
            n_classes: model.n_classes,
            base_width: model.base_width,
            dropout: model.dropout,
        };
        let vars_a = VarMap::new();
        let vb_a = VarBuilder::from_varmap(&vars_a, DType::F32, device);
        let a = match networks {
            Networks::VNetTwoDecoders => VNet::with_trilinear_decoder(cfg, vb_a.clone())?,
            _ => VNet::new(cfg, vb_a.clone())?,
        };
        let sdf_a = match networks {
            Networks::VNetSdf => Some(SdfHead::new(cfg, vb_a.pp("out_sdf"))?),
            Networks::Pair | Networks::VNet | Networks::VNetTwoDecoders => None,
        };
        init_seeded(&vars_a, mix(seed, 0, 0xA11CE))?;
        let (b, vars_b) = match networks {
            Networks::VNet | Networks::VNetSdf | Networks::VNetTwoDecoders => (None, None),
            Networks::Pair => {
                let vars_b = VarMap::new();
                let b =
                    ResNet34VNet::new(cfg, VarBuilder::from_varmap(&vars_b, DType::F32, device))?;
                init_seeded(&vars_b, mix(seed, 1, 0xA11CE))?;
                (Some(b), Some(vars_b))
            }
        };
        Ok(Nets {
            a,
            b,
            sdf_a,
            vars_a,
            vars_b,
        })
    }

    /// The nets with their variables and checkpoint prefixes (`prefix[0]` for A, `prefix[1]` for B).
    fn members<'a>(&'a self, prefix: [&'a str; 2]) -> Vec<(&'a str, &'a VarMap)> {
        let mut out = vec![(prefix[0], &self.vars_a)];
        if let Some(vb) = &self.vars_b {
            out.push((prefix[1], vb));
        }
        out
    }

    /// Loads the nets (and nothing else) from a checkpoint or `final.safetensors`, with its config.
    pub fn load(path: &Path, device: &Device) -> Result<(TrainConfig, Self)> {
        let (tensors, meta) = checkpoint::load(path, device)?;
        if let Some(name) = first_non_finite(&tensors)? {
            return Err(TrainError::checkpoint(
                path,
                format!("{name} holds NaN or infinity; this model cannot be used"),
            ));
        }
        let cfg = config_of(path, meta.config)?;
        let nets = Nets::build(&cfg.model, cfg.method.networks(), device, cfg.seed)?;
        nets.restore(path, [checkpoint::NET_A, checkpoint::NET_B], &tensors)?;
        Ok((cfg, nets))
    }

    /// The config a checkpoint or `final.safetensors` was written with, read from its header alone
    /// (no tensor is loaded), checked as [`Nets::load`] checks it.
    pub fn load_config(path: &Path) -> Result<TrainConfig> {
        config_of(path, checkpoint::load_meta(path)?.config)
    }

    /// Every tensor of the nets, named `<prefix[0]>.<name>` (A) / `<prefix[1]>.<name>` (B).
    pub fn tensors(&self, prefix: [&str; 2]) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (p, vm) in self.members(prefix) {
            out.extend(checkpoint::varmap_tensors(p, vm)?);
        }
        Ok(out)
    }

    /// The first tensor of both nets (weights and batch-norm buffers) that holds NaN or infinity,
    /// named as in checkpoints. One pass over each tensor (a sum: NaN and infinity propagate), one
    /// device-to-host copy in all.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        first_non_finite(&self.tensors([checkpoint::NET_A, checkpoint::NET_B])?)
    }

    /// Sets the nets from `tensors` named as [`Nets::tensors`] names them (read from `path`).
    pub fn restore(
        &self,
        path: &Path,
        prefix: [&str; 2],
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        for (p, vm) in self.members(prefix) {
            checkpoint::restore_varmap(path, p, vm, tensors)?;
        }
        Ok(())
    }

    /// Trainable parameters of the nets, named `net_a.<name>` / `net_b.<name>`.
    pub fn trainable(&self) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for (prefix, vm) in self.members([checkpoint::NET_A, checkpoint::NET_B]) {
            for (n, v) in lock_vars(vm)?.iter() {
                if !is_buffer_name(n) {
                    out.push((format!("{prefix}.{n}"), v.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Draws the nets' Dropout3d masks of the next forward pass from `(seed, t)` streams `streams`.
    pub fn reseed_dropout(&self, seed: u64, t: usize, streams: [u64; 2]) {
        self.a.reseed_dropout(mix(seed, t as u64, streams[0]));
        if let Some(b) = &self.b {
            b.reseed_dropout(mix(seed, t as u64, streams[1]));
        }
    }

    /// `self = m self + (1 - m) live` for every trainable variable (batch-norm buffers: the copies keep
    /// their own, from their own forward passes).
    pub fn ema_update(&self, live: &Nets, momentum: f64) -> Result<()> {
        let pairs = self
            .members(["", ""])
            .into_iter()
            .zip(live.members(["", ""]));
        if self.vars_b.is_some() != live.vars_b.is_some() {
            return Err(TrainError::Tensor(candle_core::Error::Msg(
                "the EMA copy and the live nets are different sets of networks".into(),
            )));
        }
        for ((_, e), (_, l)) in pairs {
            let e = lock_vars(e)?.clone();
            let l = lock_vars(l)?.clone();
            for (name, live_var) in l.iter().filter(|(n, _)| !is_buffer_name(n)) {
                let Some(ema_var) = e.get(name) else {
                    return Err(TrainError::Tensor(candle_core::Error::Msg(format!(
                        "the EMA copy lacks variable {name}"
                    ))));
                };
                let (ema, live) = (ema_var.as_tensor(), live_var.as_tensor());
                if crate::inplace::applies(&[ema, live]) {
                    crate::inplace::ema_mix(ema, live, momentum)?;
                    continue;
                }
                let mixed = ((ema.detach() * momentum)? + (live.detach() * (1.0 - momentum))?)?;
                ema_var.set(&mixed)?;
            }
        }
        Ok(())
    }

    /// Subnet B, or an error naming what needed it.
    pub fn require_b(&self, what: &str) -> candle_core::Result<&ResNet34VNet> {
        self.b.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{what} needs subnet B (ResNet-34 V-Net), which this method does not train"
            ))
        })
    }

    /// The nets' current weights for eval-mode prediction, without autograd (see [`Predictor`]).
    pub fn predictor(&self, device: &Device) -> Result<Predictor> {
        let detached = |vm: &VarMap| -> Result<std::collections::HashMap<String, Tensor>> {
            Ok(lock_vars(vm)?
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
                .collect())
        };
        let cfg = self.a.config();
        let vb_a = VarBuilder::from_tensors(detached(&self.vars_a)?, DType::F32, device);
        let a = match self.a.decoders() {
            1 => VNet::new(cfg, vb_a)?,
            _ => VNet::with_trilinear_decoder(cfg, vb_a)?,
        };
        let b = match (&self.b, &self.vars_b) {
            (Some(b), Some(vm)) => Some(ResNet34VNet::new(
                b.config(),
                VarBuilder::from_tensors(detached(vm)?, DType::F32, device),
            )?),
            _ => None,
        };
        Ok(Predictor { a, b })
    }
}

/// Eval-mode prediction from a snapshot of [`Nets`]: the same modules over the weights as plain
/// tensors that share the variables' storage (no copy), so a forward pass records no autograd
/// graph and frees each activation once the next layer has used it. The batch-norm running
/// statistics are copied when it is made: make a new one after further training.
///
/// Measured on one 144x144x96 volume, 45 windows of 112x112x80, 4 per batch (`cargo xtask bench
/// step`, the `infer` workload): see bench/step.json.
pub struct Predictor {
    a: VNet,
    b: Option<ResNet34VNet>,
}

impl Predictor {
    /// Softmax probabilities `[B, K, ...]` of the chosen net(s) in eval mode (both: their mean;
    /// with subnet A alone, `Both` is A).
    pub fn predict_probs(&self, which: EvalNets, x: &Tensor) -> candle_core::Result<Tensor> {
        let p = |l: Tensor| candle_nn::ops::softmax(&l, 1);
        match (which, &self.b) {
            (EvalNets::A, _) | (EvalNets::Both, None) => p(self.a.forward_t(x, false)?.0),
            (EvalNets::B, None) => Err(candle_core::Error::Msg(
                "eval.nets = \"b\" needs subnet B (ResNet-34 V-Net), which this method does not train"
                    .into(),
            )),
            (EvalNets::B, Some(b)) => p(b.forward_t(x, false)?.0),
            (EvalNets::Both, Some(b)) => {
                (p(self.a.forward_t(x, false)?.0)? + p(b.forward_t(x, false)?.0)?)? * 0.5
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NET_B;

    #[test]
    fn seeded_initialisation_is_reproducible() -> Result<()> {
        let m = ModelConfig {
            n_classes: 2,
            base_width: 2,
            dropout: false,
        };
        let a = Nets::build(&m, Networks::Pair, &Device::Cpu, 3)?;
        let b = Nets::build(&m, Networks::Pair, &Device::Cpu, 3)?;
        let c = Nets::build(&m, Networks::Pair, &Device::Cpu, 4)?;
        let ta = checkpoint::varmap_tensors(NET_B, a.vars_b.as_ref().unwrap())?;
        let tb = checkpoint::varmap_tensors(NET_B, b.vars_b.as_ref().unwrap())?;
        let tc = checkpoint::varmap_tensors(NET_B, c.vars_b.as_ref().unwrap())?;
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let mut differs = false;
        for (k, t) in &ta {
            assert_eq!(flat(t)?, flat(&tb[k])?, "{k}");
            differs |= flat(t)? != flat(&tc[k])?;
        }
        assert!(differs);
        // kaiming-normal std sqrt(2 / fan_in) (the 7^3 stem conv, one input channel)
        let w = flat(&ta["net_b.stem.0.weight"])?;
        let sd = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        let fan_in = ta["net_b.stem.0.weight"].dims()[1..]
            .iter()
            .product::<usize>() as f32;
        assert!((sd / (2.0 / fan_in).sqrt() - 1.0).abs() < 0.2, "std {sd}");
        Ok(())
    }

    #[test]
    fn ema_update_mixes_trainable_variables_only() -> Result<()> {
        let m = ModelConfig {
            n_classes: 2,
            base_width: 2,
            dropout: false,
        };
        let live = Nets::build(&m, Networks::Pair, &Device::Cpu, 1)?;
        let ema = Nets::build(&m, Networks::Pair, &Device::Cpu, 2)?;
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        // host copies: a variable's tensor shares its storage, which the update overwrites
        let host = |n: &Nets| -> Result<BTreeMap<String, Vec<f32>>> {
            n.tensors(["a", "b"])?
                .iter()
                .map(|(k, t)| Ok((k.clone(), flat(t)?)))
                .collect()
        };
        let (before, live_t) = (host(&ema)?, host(&live)?);
        ema.ema_update(&live, 0.75)?;
        let mut mixed = 0;
        for (k, got) in host(&ema)? {
            let (e, l) = (&before[&k], &live_t[&k]);
            for i in 0..got.len() {
                let want = if is_buffer_name(&k) {
                    e[i]
                } else {
                    0.75 * e[i] + 0.25 * l[i]
                };
                assert!(
                    (got[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{k}[{i}]"
                );
            }
            mixed += usize::from(!is_buffer_name(&k) && e != l);
        }
        assert!(mixed > 0);
        Ok(())
    }
}
