//! `duoseg infer`: sliding-window prediction of new volumes with a trained run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duoseg_train::config::EvalNets;
use duoseg_train::Nets;

/// Predict label maps for new volumes with the two trained nets (sliding window as in SPEC section 4:
/// patch, stride and classes come from the checkpoint's config; both nets' softmax averaged by default).
///
/// Writes one uint8 label NIfTI per input into OUT, with the input's file name, shape and geometry, and with
/// `--probs` one float32 probability map per foreground class (`<name>_prob<k>.nii.gz`).
///
/// With the config's `data.spacing` set, each volume is resampled to it, predicted, and its class
/// probabilities are resampled back to the input's grid before the argmax. A volume whose spacing
/// differs from the training spacing (`data.spacing`, else the training cases' median) by more than
/// 10 % on some axis gets a warning on stderr.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg infer --checkpoint runs/la/final.safetensors --input ../shared/data/la2018/imagesTr --out runs/la/pred
  duoseg infer --checkpoint runs/demo/duoseg/final.safetensors --input scan.nii.gz --out pred --probs --lcc")]
pub struct InferArgs {
    /// A run's final.safetensors (or any checkpoint of it).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// A volume (.nii / .nii.gz) or a folder of them.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub input: PathBuf,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Also write each case's class probabilities as one multi-channel float NIfTI (x, y, z, K;
    /// channel k = class k) into OUT/probabilities/, apart from the label maps.
    #[arg(long)]
    pub probs: bool,
    /// Keep only the largest connected component of each class.
    #[arg(long)]
    pub lcc: bool,
    /// Which net(s) predict: both (average), a (V-Net) or b (ResNet-34 V-Net) [default: the config's].
    #[arg(long, value_parser = ["both", "a", "b"])]
    pub nets: Option<String>,
}

/// A `--nets` value (clap has checked it is one of both, a, b).
pub fn parse_nets(s: &str) -> EvalNets {
    match s {
        "a" => EvalNets::A,
        "b" => EvalNets::B,
        _ => EvalNets::Both,
    }
}

fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// The case name of an input volume: the file name without `.nii.gz` / `.nii` and without the
/// nnU-Net channel suffix `_0000` (as nnU-Net names its predictions).
fn case_name(p: &Path) -> String {
    crate::evaluate::case_name(p).unwrap_or_else(|| "case".to_string())
}

/// The file name of a case's prediction: its case name with the input's extension.
fn prediction_name(p: &Path) -> String {
    let gz = p.to_string_lossy().ends_with(".gz");
    format!("{}.nii{}", case_name(p), if gz { ".gz" } else { "" })
}

/// Runs `duoseg infer`.
pub fn run(args: InferArgs) -> Result<crate::Outcome> {
    let device = args.device.open()?;
    let (mut cfg, nets) = Nets::load(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let training_spacing = match cfg.data.spacing {
        Some(s) => Some(s),
        None => {
            duoseg_train::checkpoint::load_meta(&args.checkpoint)
                .with_context(|| format!("cannot load {}", args.checkpoint.display()))?
                .spacing
        }
    };
    if training_spacing.is_none() {
        eprintln!(
            "note: {} does not record the spacing it was trained at; input spacings are not checked",
            args.checkpoint.display()
        );
    }
    cfg.eval.largest_component |= args.lcc;
    if let Some(n) = &args.nets {
        cfg.eval.nets = parse_nets(n);
    }
    let inputs: Vec<PathBuf> = if args.input.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&args.input)
            .with_context(|| format!("cannot list {}", args.input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_nifti(p))
            .collect();
        v.sort();
        v
    } else {
        vec![args.input.clone()]
    };
    if inputs.is_empty() {
        bail!("{}: no .nii / .nii.gz volumes", args.input.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for path in &inputs {
        let vol = duoseg_io::read_volume(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(training) = training_spacing {
            let resampled = cfg.data.spacing.is_some();
            if let Some(w) = duoseg_train::data::spacing_warning(
                &case_name(path),
                vol.spacing,
                training,
                resampled,
            ) {
                eprintln!("{w}");
            }
        }
        let like = duoseg_io::Volume {
            data: Vec::new(),
            ..vol.clone()
        };
        let case = duoseg_train::data::prepare(case_name(path), vol, None, &cfg.data)?;
        let t0 = std::time::Instant::now();
        let pred = duoseg_train::predict_case(&cfg, &nets, &case, &device, args.probs)?;
        let out = args.out.join(prediction_name(path));
        duoseg_io::write_labels(&out, case.original_shape, &pred.labels, &like)?;
        if let Some(p) = &pred.probs {
            let dir = args.out.join("probabilities");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let q = dir.join(format!("{}.nii.gz", case_name(path)));
            duoseg_io::write_probability_maps(
                &q,
                case.original_shape,
                p,
                cfg.model.n_classes,
                &like,
            )?;
        }
        let fg = pred.labels.iter().filter(|&&l| l > 0).count();
        println!(
            "{}\t{} foreground voxels\t{:.1}s",
            out.display(),
            fg,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(crate::Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_named_by_case_without_the_channel_suffix() {
        assert_eq!(
            prediction_name(Path::new("in/la_003_0000.nii.gz")),
            "la_003.nii.gz"
        );
        assert_eq!(prediction_name(Path::new("la_003.nii")), "la_003.nii");
        assert_eq!(prediction_name(Path::new("x_0001.nii.gz")), "x_0001.nii.gz");
    }
}
