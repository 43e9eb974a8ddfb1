//! `duoseg inspect`: shape, spacing, data type and intensity statistics of volume files, or the check
//! of a whole dataset folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use duoseg_io::{h5_dataset_names, read_h5_dataset, read_volume, Volume};

/// Show a volume's shape, spacing, data type, min / max / mean / std of the intensities (after
/// NIfTI scaling) and, for integer volumes with at most 256 distinct values (label maps), the count
/// of each value.
///
/// Reads .nii, .nii.gz and .h5 (every 3-D dataset of an HDF5 file: `image` and `label` in the LA
/// distribution). A folder is checked as a dataset (any layout of data/README.md): every case read,
/// label values against dataset.json, spacing and orientation against the other cases; every problem
/// is listed with its case, and errors make the exit code 1. The shape is in the file's axis order (x, y, z). With `--json` each volume is
/// one JSON line with the keys `shape`, `spacing`, `dtype`, `min`, `max`, `mean`, `std` (population)
/// and `labels` (value as string -> count, null for non-integer data), plus `path` (and `dataset`
/// for HDF5).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg inspect ../shared/data/la2018/imagesTr/06SR5RBREL16DQ6M8LWS.nii.gz
  duoseg inspect --json ../shared/data/la2018/labelsTr/06SR5RBREL16DQ6M8LWS.nii.gz
  duoseg inspect '../shared/data/la2018-h5-sample/2018LA_Seg_Training Set/ZIJLJAVQV3FJ6JSQOH1E/mri_norm2.h5'
  duoseg inspect ../shared/data/hippocampus
  duoseg inspect --json my-dataset/ > check.json")]
pub struct InspectArgs {
    /// Volume files (.nii, .nii.gz, .h5) or dataset folders.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// One JSON object per volume (per dataset folder: the whole check) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Largest number of distinct values for which integer volumes get a value histogram.
const MAX_LABEL_VALUES: usize = 256;

/// Largest number of distinct values whose counts the text output lists one by one.
const MAX_TEXT_LABELS: usize = 32;

/// Statistics of one volume.
struct Stats {
    min: f64,
    max: f64,
    mean: f64,
    std: f64,
    labels: Option<BTreeMap<i64, u64>>,
}

fn stats(v: &Volume) -> Stats {
    let (mut min, mut max, mut sum, mut sq) = (f64::INFINITY, f64::NEG_INFINITY, 0f64, 0f64);
    for &x in &v.data {
        let x = f64::from(x);
        min = min.min(x);
        max = max.max(x);
        sum += x;
        sq += x * x;
    }
    let n = v.data.len().max(1) as f64;
    let mean = sum / n;
    let std = (sq / n - mean * mean).max(0.0).sqrt();
    let mut labels = None;
    if v.dtype.is_integer() && v.data.iter().all(|x| x.fract() == 0.0) {
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for &x in &v.data {
            *counts.entry(x as i64).or_default() += 1;
            if counts.len() > MAX_LABEL_VALUES {
                break;
            }
        }
        if counts.len() <= MAX_LABEL_VALUES {
            labels = Some(counts);
        }
    }
    Stats {
        min,
        max,
        mean,
        std,
        labels,
    }
}

/// What `inspect` says of the spacing of LA `.h5` files, which store none.
const H5_SPACING_NOTE: &str =
    "not stored in .h5 files: read as 1 mm; training takes data.spacing_mm \
     from the config (configs/la.json: 0.625 mm)";

/// Whether `path` names an HDF5 file (`.h5` / `.hdf5`).
fn is_h5(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "h5" || e == "hdf5")
}

fn report(path: &Path, dataset: Option<&str>, v: &Volume, json: bool) {
    let s = stats(v);
    if json {
        let labels = s.labels.as_ref().map(|l| {
            l.iter()
                .map(|(k, c)| (k.to_string(), serde_json::Value::from(*c)))
                .collect::<serde_json::Map<_, _>>()
        });
        let mut obj = serde_json::json!({
            "path": path.display().to_string(),
            "shape": v.shape,
            "spacing": if is_h5(path) { serde_json::Value::Null } else { serde_json::json!(v.spacing) },
            "dtype": v.dtype.name(),
            "min": s.min,
            "max": s.max,
            "mean": s.mean,
            "std": s.std,
            "labels": labels,
        });
        if let Some(d) = dataset {
            obj["dataset"] = d.into();
        }
        println!("{obj}");
        return;
    }
    match dataset {
        Some(d) => println!("{} [{d}]", path.display()),
        None => println!("{}", path.display()),
    }
    let [x, y, z] = v.shape;
    let [sx, sy, sz] = v.spacing;
    println!("  shape    {x} x {y} x {z} (x, y, z)");
    if is_h5(path) {
        println!("  spacing  {H5_SPACING_NOTE}");
    } else {
        println!("  spacing  {sx} x {sy} x {sz} mm");
    }
    println!("  dtype    {}", v.dtype);
    println!(
        "  min {:.6}  max {:.6}  mean {:.6}  std {:.6}",
        s.min, s.max, s.mean, s.std
    );
    if let Some(labels) = &s.labels {
        if labels.len() <= MAX_TEXT_LABELS {
            let parts: Vec<String> = labels.iter().map(|(k, c)| format!("{k}: {c}")).collect();
            println!("  labels   {}", parts.join(", "));
        } else {
            println!(
                "  labels   {} distinct values (--json lists the counts)",
                labels.len()
            );
        }
    }
}

/// Checks a dataset folder; `true` when it has errors.
fn check_folder(dir: &Path, json: bool) -> Result<bool> {
    use duoseg_io::check::{check_dataset, Severity};
    let ds = duoseg_io::Dataset::open(dir)
        .with_context(|| format!("cannot open {} as a dataset", dir.display()))?;
    let check = check_dataset(&ds);
    let errors = check.count(Severity::Error);
    if json {
        println!("{}", serde_json::to_string(&check)?);
        return Ok(errors > 0);
    }
    let (labelled, unlabelled) = check.labelled_unlabelled();
    println!(
        "{}: {:?} layout, {} readable cases ({labelled} labelled, {unlabelled} unlabelled) of {}",
        dir.display(),
        check.layout,
        check.cases.len(),
        ds.cases.len()
    );
    if !check.label_names.is_empty() {
        let mut by_value: Vec<(&u8, &String)> =
            check.label_names.iter().map(|(n, v)| (v, n)).collect();
        by_value.sort();
        let names: Vec<String> = by_value.iter().map(|(v, n)| format!("{v} {n}")).collect();
        println!("  labels       {}", names.join(", "));
    }
    if !check.cases.is_empty() {
        let range = |a: usize| {
            let it = check.cases.iter().map(|c| c.shape[a]);
            (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
        };
        let shape: Vec<String> = (0..3)
            .map(|a| match range(a) {
                (lo, hi) if lo == hi => lo.to_string(),
                (lo, hi) => format!("{lo}-{hi}"),
            })
            .collect();
        println!("  shapes       {} (x, y, z)", shape.join(" x "));
        if let Some([x, y, z]) = check.median_spacing {
            println!("  spacing      {x} x {y} x {z} mm (median)");
        } else if !check.spacing_stored {
            println!("  spacing      {H5_SPACING_NOTE}");
        }
        let o: Vec<String> = check
            .orientation_counts()
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect();
        println!("  orientation  {}", o.join(", "));
        let lo = check
            .cases
            .iter()
            .map(|c| c.intensity[0])
            .fold(f64::INFINITY, f64::min);
        let hi = check
            .cases
            .iter()
            .map(|c| c.intensity[1])
            .fold(f64::NEG_INFINITY, f64::max);
        println!("  intensity    {lo} .. {hi}");
    }
    println!(
        "  problems     {errors} errors, {} warnings",
        check.count(Severity::Warning)
    );
    for p in &check.problems {
        let level = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &p.case {
            Some(case) => println!("  {level}: {case}: {}", p.message),
            None => println!("  {level}: {}", p.message),
        }
    }
    Ok(errors > 0)
}

pub fn run(args: InspectArgs) -> Result<crate::Outcome> {
    let mut failed = false;
    for path in &args.paths {
        if path.is_dir() {
            failed |= check_folder(path, args.json)?;
            continue;
        }
        if is_h5(path) {
            let names = h5_dataset_names(path)
                .with_context(|| format!("cannot inspect {}", path.display()))?;
            let mut shown = 0;
            for name in &names {
                // Only the 3-D datasets are volumes; others (lists, attributes) are skipped.
                match read_h5_dataset(path, name) {
                    Ok(v) => {
                        report(path, Some(name), &v, args.json);
                        shown += 1;
                    }
                    Err(duoseg_io::Error::Hdf5 { .. }) if names.len() > 1 => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot inspect {}", path.display()))
                    }
                }
            }
            if shown == 0 {
                anyhow::bail!("{}: no 3-D dataset among {names:?}", path.display());
            }
        } else {
            let v =
                read_volume(path).with_context(|| format!("cannot inspect {}", path.display()))?;
            report(path, None, &v, args.json);
        }
    }
    Ok(if failed {
        crate::Outcome::CheckFailed
    } else {
        crate::Outcome::Ok
    })
}
