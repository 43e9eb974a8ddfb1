//! `duoseg evaluate`: medpy-exact metrics of predicted label maps against reference labels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duoseg_metrics::{
    evaluate_labels, foreground_classes, per_case_table, summarize, EmptyRule, EvaluationReport,
    HausdorffDefinition, MetricDefinition,
};
use duoseg_train::run::RunDir;
use duoseg_train::Silent;

/// Score predicted label maps against reference labels (medpy-exact Dice, Jaccard, HD95, ASD).
///
/// Definitions of medpy 0.5 (the papers'): Dice, Jaccard, HD95 and ASD in voxels and mm, plus
/// ASSD, HD and normalised surface Dice in mm.
///
/// Files are paired by case name: `case.nii.gz` with `case.nii.gz`, an nnU-Net `_0000` suffix
/// accepted on either side. Every prediction needs a label; labels without a prediction are
/// skipped (so `--label` can be a whole `labelsTr` folder). Prints one row per case and class, then
/// mean +- std (population std, undefined values skipped) per class. An empty prediction or label
/// leaves HD95/ASD undefined: counted, listed, written as null, never 0.
///
/// `--run DIR` instead evaluates a training run's `final.safetensors` again on the test cases of its
/// config, by default with the config's net(s); `--nets a` or `--nets b` scores one subnetwork alone.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg evaluate --pred runs/la/pred --label ../shared/data/la2018/labelsTr
  duoseg evaluate --pred runs/la/pred --label labelsTr --json runs/la/metrics.json --lcc
  duoseg evaluate --pred case.nii.gz --label case_gt.nii.gz --spacing 1,1,2.5
  duoseg evaluate --pred runs/la/pred --label labelsTr --json summary.json --format nnunet
  duoseg evaluate --run runs/hippocampus-duoseg --nets a --json runs/hippocampus-duoseg/summary-a.json")]
pub struct EvaluateArgs {
    /// Predicted label map (.nii / .nii.gz) or a folder of them.
    #[arg(long, value_name = "DIR_OR_FILE", required_unless_present = "run")]
    pub pred: Option<PathBuf>,
    /// Reference label map or a folder of them.
    #[arg(long, value_name = "DIR_OR_FILE", required_unless_present = "run")]
    pub label: Option<PathBuf>,
    /// A training run folder: evaluate its final model on its config's test cases (medpy definitions).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["pred", "label", "spacing", "classes", "nsd_tolerance", "hausdorff", "reference_zeros", "lcc"])]
    pub run: Option<PathBuf>,
    /// With `--run`: which net(s) predict, both (average), a (V-Net) or b (ResNet-34 V-Net) [default: the config's].
    #[arg(long, value_parser = ["both", "a", "b"], requires = "run")]
    pub nets: Option<String>,
    /// With `--run`: dataset folder instead of the one in the run's config.
    #[arg(long, value_name = "DIR", requires = "run")]
    pub data: Option<PathBuf>,
    /// With `--run`: where the networks run.
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Fail (exit code 1) when the mean Dice over cases and foreground classes is below this value
    /// (0-1), e.g. to gate a pipeline on a model's quality.
    #[arg(long, value_name = "DICE", value_parser = parse_fraction)]
    pub min_dice: Option<f64>,
    /// Also write every number, the summary and the definitions used as JSON (atomically); `-`
    /// writes it to standard output instead of the table (which then goes to standard error).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Keep only the largest 26-connected component of each predicted class before scoring.
    #[arg(long)]
    pub lcc: bool,
    /// Voxel spacing in mm for the mm metrics, "X,Y,Z" or one value, instead of the label
    /// header's.
    #[arg(long, value_delimiter = ',', num_args = 1..=3, value_name = "MM")]
    pub spacing: Option<Vec<f64>>,
    /// Classes to score, e.g. "1,2" [default: every non-zero value in the labels or predictions].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub classes: Option<Vec<u8>>,
    /// Tolerance of the normalised surface Dice, in mm.
    #[arg(long, default_value_t = 1.0, value_name = "MM")]
    pub nsd_tolerance: f64,
    /// Percentile Hausdorff: `medpy` pools both directions (the papers'), `monai` takes the larger
    /// of the two per-direction percentiles.
    #[arg(long, value_enum, default_value_t = Hausdorff::Medpy)]
    pub hausdorff: Hausdorff,
    /// Score a case with an empty prediction or label as (0, 0, 0, 0), as the reference training
    /// code does. This flatters HD95/ASD: for comparison with published numbers only.
    #[arg(long)]
    pub reference_zeros: bool,
    /// Shape of the `--json` file: duoseg's report, or nnU-Net v2's `summary.json`
    /// (`foreground_mean`, `mean` per class, `metric_per_case` with Dice, IoU, TP, FP, FN, TN,
    /// n_pred, n_ref; an undefined Dice or IoU, both masks empty, is null where nnU-Net writes NaN).
    #[arg(long, value_enum, default_value_t = JsonFormat::Duoseg, requires = "json")]
    pub format: JsonFormat,
}

/// The `--format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonFormat {
    Duoseg,
    Nnunet,
}

/// The `--hausdorff` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hausdorff {
    Medpy,
    Monai,
}

/// One pair of files to compare.
struct Pair {
    case: String,
    pred: PathBuf,
    label: PathBuf,
}

pub fn run(args: EvaluateArgs) -> Result<crate::Outcome> {
    if let Some(dir) = &args.run {
        return run_again(&args, dir);
    }
    let (Some(pred_path), Some(label_path)) = (&args.pred, &args.label) else {
        bail!("give --pred and --label, or --run");
    };
    let definition = MetricDefinition {
        hausdorff: match args.hausdorff {
            Hausdorff::Medpy => HausdorffDefinition::MedpyPooled,
            Hausdorff::Monai => HausdorffDefinition::MaxOfDirected,
        },
        empty: if args.reference_zeros {
            EmptyRule::ReferenceZeros
        } else {
            EmptyRule::Medpy
        },
        nsd_tolerance_mm: args.nsd_tolerance,
        keep_largest_component: args.lcc,
        ..MetricDefinition::default()
    };
    definition.validate()?;
    let spacing = match args.spacing.as_deref() {
        None => None,
        Some(&[s]) => Some([s; 3]),
        Some(&[x, y, z]) => Some([x, y, z]),
        Some(other) => bail!("--spacing takes one or three values, got {}", other.len()),
    };
    let pairs = pair_files(pred_path, label_path)?;

    // Load everything first: the default classes are those found in any file.
    let mut loaded = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let pred = duoseg_io::read_volume(&pair.pred)?;
        let label = duoseg_io::read_volume(&pair.label)?;
        pred.check_same_geometry(&label)
            .with_context(|| format!("case {}", pair.case))?;
        let pred_labels = pred.to_labels()?;
        let label_labels = label.to_labels()?;
        loaded.push((label.shape, label.spacing, pred_labels, label_labels));
    }
    let classes: Vec<u8> = match &args.classes {
        Some(c) => c
            .iter()
            .copied()
            .collect::<BTreeSet<u8>>()
            .into_iter()
            .collect(),
        None => loaded
            .iter()
            .flat_map(|(_, _, p, l)| {
                foreground_classes(p)
                    .into_iter()
                    .chain(foreground_classes(l))
            })
            .collect::<BTreeSet<u8>>()
            .into_iter()
            .collect(),
    };
    if classes.is_empty() {
        bail!("no foreground class in any label or prediction; pass --classes");
    }

    if args.format == JsonFormat::Nnunet {
        let maps: Vec<(&Pair, &[u8], &[u8])> = pairs
            .iter()
            .zip(&loaded)
            .map(|(pair, (_, _, pred, label))| (pair, pred.as_slice(), label.as_slice()))
            .collect();
        let summary = nnunet_summary(&maps, &classes);
        if let Some(p) = args.json.as_deref() {
            if p == Path::new("-") {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                duoseg_train::run::write_json(p, &summary)?;
                eprintln!("wrote {}", p.display());
            }
        }
    }
    let mut cases = BTreeMap::new();
    for (pair, (shape, header_spacing, pred, label)) in pairs.iter().zip(&loaded) {
        let spacing = spacing.unwrap_or(*header_spacing);
        let metrics = evaluate_labels(pred, label, *shape, spacing, &classes, &definition)
            .with_context(|| format!("case {}", pair.case))?;
        cases.insert(pair.case.clone(), metrics);
    }
    let report = summarize(definition, cases);
    let json = match args.format {
        JsonFormat::Duoseg => args.json.as_deref(),
        // the nnU-Net file is written; the table goes to stderr when that file is stdout
        JsonFormat::Nnunet => None,
    };
    match (args.format, args.json.as_deref()) {
        (JsonFormat::Nnunet, Some(p)) if p == Path::new("-") => {
            eprint!("{}", per_case_table(&report))
        }
        _ => emit(&report, json)?,
    }
    check_min_dice(&report, args.min_dice)
}

/// nnU-Net v2's `summary.json` (`nnunetv2.evaluation.evaluate_predictions`) for the loaded pairs:
/// per case and class the voxel counts and `Dice = 2 TP / (2 TP + FP + FN)`,
/// `IoU = TP / (TP + FP + FN)` (undefined, null, when both masks are empty); `mean` per class
/// averages each value over the cases where it is defined; `foreground_mean` averages the
/// classes' means.
fn nnunet_summary(maps: &[(&Pair, &[u8], &[u8])], classes: &[u8]) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    const KEYS: [&str; 8] = ["Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"];
    let mut per_case = Vec::new();
    let mut sums: BTreeMap<u8, BTreeMap<&str, (f64, usize)>> = BTreeMap::new();
    for &(pair, pred, label) in maps {
        let mut metrics = Map::new();
        for &c in classes {
            let (mut tp, mut fp, mut fn_, mut tn) = (0u64, 0u64, 0u64, 0u64);
            for (&p, &l) in pred.iter().zip(label) {
                match (p == c, l == c) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => tn += 1,
                }
            }
            let union = tp + fp + fn_;
            let dice = (union > 0).then(|| 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64);
            let iou = (union > 0).then(|| tp as f64 / union as f64);
            let values: [Option<f64>; 8] = [
                dice,
                iou,
                Some(fp as f64),
                Some(tp as f64),
                Some(fn_ as f64),
                Some(tn as f64),
                Some((tp + fp) as f64),
                Some((tp + fn_) as f64),
            ];
            let mut m = Map::new();
            for (k, v) in KEYS.iter().zip(values) {
                if let Some(x) = v {
                    let e = sums.entry(c).or_default().entry(k).or_insert((0.0, 0));
                    e.0 += x;
                    e.1 += 1;
                }
                let value = match (*k, v) {
                    ("Dice" | "IoU", v) => json!(v),
                    (_, Some(x)) => json!(x as u64),
                    (_, None) => Value::Null,
                };
                m.insert(k.to_string(), value);
            }
            metrics.insert(c.to_string(), Value::Object(m));
        }
        per_case.push(json!({
            "metrics": metrics,
            "prediction_file": pair.pred.display().to_string(),
            "reference_file": pair.label.display().to_string(),
        }));
    }
    let mut mean = Map::new();
    let mut foreground: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for &c in classes {
        let mut m = Map::new();
        for k in KEYS {
            let v = sums
                .get(&c)
                .and_then(|s| s.get(k))
                .filter(|(_, n)| *n > 0)
                .map(|(sum, n)| sum / *n as f64);
            if let Some(x) = v {
                let e = foreground.entry(k).or_insert((0.0, 0));
                e.0 += x;
                e.1 += 1;
            }
            m.insert(k.to_string(), json!(v));
        }
        mean.insert(c.to_string(), Value::Object(m));
    }
    let foreground_mean: Map<String, Value> = KEYS
        .iter()
        .map(|k| {
            let v = foreground.get(k).map(|(sum, n)| sum / *n as f64);
            (k.to_string(), json!(v))
        })
        .collect();
    json!({
        "foreground_mean": foreground_mean,
        "mean": mean,
        "metric_per_case": per_case,
    })
}

/// `--min-dice` values: a fraction in [0, 1].
fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a Dice value between 0 and 1")),
    }
}

/// The mean Dice of a report: the "mean" row when there are several classes, else the one class's.
/// Checks `--min-dice`: a failed check is exit code 1, with one line saying by how much.
fn check_min_dice(report: &EvaluationReport, min: Option<f64>) -> Result<crate::Outcome> {
    let Some(min) = min else {
        return Ok(crate::Outcome::Ok);
    };
    match report.mean_dice() {
        Some(d) if d >= min => Ok(crate::Outcome::Ok),
        Some(d) => {
            eprintln!("check failed: mean Dice {d:.4} < --min-dice {min}");
            Ok(crate::Outcome::CheckFailed)
        }
        None => {
            eprintln!("check failed: no Dice value to compare with --min-dice {min}");
            Ok(crate::Outcome::CheckFailed)
        }
    }
}

/// `--run`: the run's final model on its test cases.
fn run_again(args: &EvaluateArgs, dir: &Path) -> Result<crate::Outcome> {
    let device = args.device.open()?;
    let run = RunDir::create(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let nets = args.nets.as_deref().map(crate::infer::parse_nets);
    let stop = crate::signals::install()?;
    let Some((cfg, report)) = duoseg_train::reevaluate_run(
        &run,
        nets,
        args.data.as_deref(),
        &device,
        &mut Silent,
        &stop.flag,
    )
    .with_context(|| format!("cannot evaluate {}", dir.display()))?
    else {
        eprintln!("interrupted; nothing written");
        return Ok(crate::Outcome::Interrupted(stop.exit_code()));
    };
    eprintln!(
        "{}: the run's model ({:?}), nets {:?}, {} test cases",
        dir.display(),
        cfg.eval.checkpoint,
        cfg.eval.nets,
        report.cases.len()
    );
    emit(&report, args.json.as_deref())?;
    check_min_dice(&report, args.min_dice)
}

/// The case name of a label file: the file name without `.nii.gz` / `.nii` and without an
/// nnU-Net `_0000` channel suffix; `None` for other files.
pub(crate) fn case_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))?;
    Some(stem.strip_suffix("_0000").unwrap_or(stem).to_string())
}

/// The label files of a folder by case name; two files of one case are an error.
fn list_cases(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut cases = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if !path.is_file() {
            continue;
        }
        let Some(case) = case_name(&path) else {
            continue;
        };
        if let Some(previous) = cases.insert(case.clone(), path.clone()) {
            bail!(
                "{} and {} are both case {case}",
                previous.display(),
                path.display()
            );
        }
    }
    Ok(cases)
}

/// Pairs predictions with labels by case name.
fn pair_files(pred: &Path, label: &Path) -> Result<Vec<Pair>> {
    let named = |path: &Path| {
        case_name(path).with_context(|| {
            format!(
                "{}: not a NIfTI label file (.nii or .nii.gz)",
                path.display()
            )
        })
    };
    match (pred.is_dir(), label.is_dir()) {
        (false, false) => Ok(vec![Pair {
            case: named(pred)?,
            pred: pred.to_path_buf(),
            label: label.to_path_buf(),
        }]),
        (true, false) => bail!(
            "--pred {} is a folder but --label {} is not",
            pred.display(),
            label.display()
        ),
        (pred_is_dir, true) => {
            let preds = if pred_is_dir {
                list_cases(pred)?
            } else {
                BTreeMap::from([(named(pred)?, pred.to_path_buf())])
            };
            if preds.is_empty() {
                bail!("{}: no .nii or .nii.gz files", pred.display());
            }
            let labels = list_cases(label)?;
            let mut pairs = Vec::with_capacity(preds.len());
            for (case, pred_path) in preds {
                let Some(label_path) = labels.get(&case) else {
                    bail!(
                        "{}: no label for case {case} in {}",
                        pred_path.display(),
                        label.display()
                    );
                };
                pairs.push(Pair {
                    case,
                    pred: pred_path,
                    label: label_path.clone(),
                });
            }
            if labels.len() > pairs.len() {
                eprintln!(
                    "note: {} of {} labels in {} have no prediction and are skipped",
                    labels.len() - pairs.len(),
                    labels.len(),
                    label.display()
                );
            }
            Ok(pairs)
        }
    }
}

/// The per-case table on standard output, and the JSON report to `json` (atomically); with
/// `json` = `-` the JSON goes to standard output and the table to standard error.
fn emit(report: &EvaluationReport, json: Option<&Path>) -> Result<()> {
    match json {
        Some(p) if p == Path::new("-") => {
            eprint!("{}", per_case_table(report));
            println!("{}", serde_json::to_string_pretty(report)?);
        }
        Some(p) => {
            print!("{}", per_case_table(report));
            duoseg_train::run::write_json(p, report)?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{}", per_case_table(report)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_drop_extension_and_channel_suffix() {
        assert_eq!(
            case_name(Path::new("a/LA_01.nii.gz")).as_deref(),
            Some("LA_01")
        );
        assert_eq!(
            case_name(Path::new("LA_01_0000.nii")).as_deref(),
            Some("LA_01")
        );
        assert_eq!(
            case_name(Path::new("x_0001.nii.gz")).as_deref(),
            Some("x_0001")
        );
        assert_eq!(case_name(Path::new("notes.txt")), None);
        assert_eq!(case_name(Path::new("img.h5")), None);
    }
}
