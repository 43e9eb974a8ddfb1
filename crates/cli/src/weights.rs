//! `duoseg export` / `duoseg import`: a trained net as a plain PyTorch `state_dict`, and a duoseg
//! model file built from `state_dict`s (docs/weights.md has the PyTorch side).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use duoseg_train::weights::{self, NameScheme, Net};
use duoseg_train::{Nets, TrainConfig};

/// Parameter names of the `state_dict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Names {
    /// duoseg's, those of ../shared/reference/vnet_ref.py (`b1.0.weight`).
    Duoseg,
    /// The V-Net of the UA-MT / SASSNet / DTC / MCF code (`block_one.conv.0.weight`); subnet A only.
    UaMt,
}

impl Names {
    fn scheme(self) -> NameScheme {
        match self {
            Names::Duoseg => NameScheme::Duoseg,
            Names::UaMt => NameScheme::UaMt,
        }
    }
}

/// Write one net of a trained model as a plain PyTorch state_dict (safetensors), batch-norm
/// buffers included, for `model.load_state_dict(safetensors.torch.load_file(...))`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg export --checkpoint runs/la/final.safetensors --net a --out vnet.safetensors
  duoseg export --checkpoint runs/la/final.safetensors --net a --names ua-mt --out vnet_uamt.safetensors")]
pub struct ExportArgs {
    /// A run's final.safetensors (or any checkpoint of it).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Which net: a (V-Net) or b (ResNet-34 V-Net).
    #[arg(long, value_parser = ["a", "b"])]
    pub net: String,
    /// Parameter names.
    #[arg(long, value_enum, default_value_t = Names::Duoseg)]
    pub names: Names,
    /// The state_dict file to write (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Build a duoseg model file from PyTorch state_dicts (safetensors) and a config, for `duoseg
/// infer --checkpoint` and `evaluate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg import --config configs/la.json --a vnet.safetensors --b resvnet.safetensors --out imported.safetensors
  duoseg import --config configs/la.json --set method=mean_teacher --a uamt_vnet.safetensors --names ua-mt --out uamt.safetensors")]
pub struct ImportArgs {
    /// The config the weights belong to (classes, width, method: which nets).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Override a config value (repeatable), as in `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// State_dict of subnet A (V-Net).
    #[arg(long, value_name = "FILE")]
    pub a: PathBuf,
    /// State_dict of subnet B (ResNet-34 V-Net), for the methods that train both nets.
    #[arg(long, value_name = "FILE")]
    pub b: Option<PathBuf>,
    /// Parameter names of the state_dicts.
    #[arg(long, value_enum, default_value_t = Names::Duoseg)]
    pub names: Names,
    /// The model file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<crate::Outcome> {
    let device = candle_core::Device::Cpu;
    let (_, nets) = Nets::load(&args.checkpoint, &device)?;
    let net = match args.net.as_str() {
        "a" => Net::A,
        "b" => Net::B,
        other => bail!("--net must be a or b, got {other:?}"),
    };
    let tensors = weights::export_state_dict(&nets, net, args.names.scheme())
        .with_context(|| format!("{}", args.checkpoint.display()))?;
    weights::save_state_dict(&args.out, &tensors)?;
    eprintln!("wrote {} ({} tensors)", args.out.display(), tensors.len());
    Ok(crate::Outcome::Ok)
}

pub fn import(args: ImportArgs) -> Result<crate::Outcome> {
    let device = candle_core::Device::Cpu;
    let mut cfg = TrainConfig::load(&args.config)?;
    for s in &args.set {
        cfg = cfg.with_override(s)?;
    }
    cfg.validate()?;
    let a = weights::load_state_dict(&args.a, &device)?;
    let b = match &args.b {
        Some(p) => Some(weights::load_state_dict(p, &device)?),
        None => None,
    };
    let nets =
        weights::import_state_dicts(&cfg, &a, b.as_ref(), args.names.scheme(), &args.a, &device)?;
    weights::save_model(&args.out, &cfg, &nets)?;
    eprintln!("wrote {}", args.out.display());
    Ok(crate::Outcome::Ok)
}
