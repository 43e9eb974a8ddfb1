//! `cargo xtask reproduce-la` / `reproduce-pancreas`: the K-fold protocol of the paper (MCF's folds),
//! folds run in parallel across the listed devices, then a table of mean +- std across folds in the
//! paper's format (`bench/reproduce-<name>.json` / `.md`). `--slurm` writes an sbatch job-array script
//! (one fold per task) plus an aggregation step instead of running.
//!
//! `--protocol fixed` instead trains once on the config's own split (LA's fixed 80 / 20 lists).
//! `--config`, `--out`, `--report` and `--bin` (a built `duoseg`) let a test run the whole
//! reproduction on a small dataset; `tests` below does, on a few hippocampus cases.
//!
//! Usage: `cargo xtask reproduce-la --data DIR [--protocol kfold|fixed] [--folds 0,1,2,3,4]
//! [--labeled 16|8] [--devices cuda:0,cuda:1] [--iters N] [--method M] [--config FILE]
//! [--set key=value]... [--out DIR] [--report FILE.json] [--bin PATH] [--slurm] [--aggregate]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

struct Setting {
    name: &'static str,
    config: &'static str,
    folds: usize,
    labeled: usize,
}

const LA: Setting = Setting {
    name: "la",
    config: "configs/la.json",
    folds: 5,
    labeled: 16,
};
const PANCREAS: Setting = Setting {
    name: "pancreas",
    config: "configs/pancreas.json",
    folds: 4,
    labeled: 12,
};

/// `reproduce-la`.
pub fn la(args: &[String]) -> Result<()> {
    run(&LA, args)
}

/// `reproduce-pancreas`.
pub fn pancreas(args: &[String]) -> Result<()> {
    run(&PANCREAS, args)
}

/// The evaluation protocol of a reproduction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// K-fold cross-validation over the dataset's `folds.json` (the seed paper's, MCF's folds),
    /// the last checkpoint of each fold.
    Kfold,
    /// The config's own split (LA: the fixed 80 / 20 lists of UA-MT and most of the field), one run.
    Fixed,
}

const USAGE: &str = "usage: cargo xtask reproduce-{la|pancreas} --data DIR [--protocol kfold|fixed]
       [--folds 0,1,2,3,4] [--labeled N] [--devices cpu|cuda:0,cuda:1] [--iters N] [--method M]
       [--config FILE] [--set key=value]... [--out DIR] [--report FILE.json] [--bin PATH] [--slurm]
       [--aggregate]";

fn run(s: &Setting, args: &[String]) -> Result<()> {
    let mut data = None;
    let mut folds: Vec<usize> = (0..s.folds).collect();
    let mut labeled = s.labeled;
    let mut devices = vec!["cpu".to_string()];
    let mut extra: Vec<String> = Vec::new();
    let mut slurm = false;
    let mut aggregate_only = false;
    let mut protocol = Protocol::Kfold;
    let mut config = util::root().join(s.config);
    let (mut out, mut report, mut bin) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(val()?)),
            "--folds" => {
                folds = util::parse_list(&val()?, "--folds")?
                    .into_iter()
                    .map(|f| f as usize)
                    .collect()
            }
            "--labeled" => labeled = val()?.parse().context("--labeled")?,
            "--devices" => devices = val()?.split(',').map(str::to_string).collect(),
            "--iters" => extra.extend(["--iters".to_string(), val()?]),
            "--method" => extra.extend(["--method".to_string(), val()?]),
            "--set" => extra.extend(["--set".to_string(), val()?]),
            "--protocol" => {
                protocol = match val()?.as_str() {
                    "kfold" => Protocol::Kfold,
                    "fixed" => Protocol::Fixed,
                    other => bail!("--protocol must be kfold or fixed, got {other:?}"),
                }
            }
            "--config" => config = PathBuf::from(val()?),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--report" => report = Some(PathBuf::from(val()?)),
            "--bin" => bin = Some(PathBuf::from(val()?)),
            "--slurm" => slurm = true,
            "--aggregate" => aggregate_only = true,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let Some(data) = data else { bail!("{USAGE}") };
    let root = util::root();
    let tag = match protocol {
        Protocol::Kfold => format!("{}-l{labeled}", s.name),
        Protocol::Fixed => format!("{}-l{labeled}-fixed", s.name),
    };
    let out_root = out.unwrap_or_else(|| root.join("runs").join(format!("reproduce-{tag}")));
    let report = report.unwrap_or_else(|| root.join("bench").join(format!("reproduce-{tag}.json")));
    // the runs: one per fold, or the config's own split
    let runs: Vec<(String, Option<usize>)> = match protocol {
        Protocol::Kfold => folds
            .iter()
            .map(|&k| (format!("fold-{k}"), Some(k)))
            .collect(),
        Protocol::Fixed => vec![("fixed".to_string(), None)],
    };
    let run_dir = |name: &str| out_root.join(name);
    let train_args = |name: &str, fold: Option<usize>, device: &str| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "train".into(),
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--out".into(),
            run_dir(name).display().to_string(),
            "--labeled".into(),
            labeled.to_string(),
            "--device".into(),
            device.to_string(),
        ];
        if let Some(k) = fold {
            v.extend([
                "--set".into(),
                format!("data.split={{\"fold\":{{\"fold\":{k}}}}}"),
            ]);
        }
        v.extend([
            "--no-progress".to_string(),
            // a run stopped part-way continues from its checkpoint
            "--resume".into(),
        ]);
        v.extend(extra.iter().cloned());
        v
    };
    if slurm {
        if protocol == Protocol::Fixed {
            bail!("--slurm runs one fold per array task; the fixed protocol is one run: run it directly");
        }
        return write_slurm(
            s,
            &out_root,
            &folds,
            &train_args("fold-0", Some(0), "cuda:0"),
            &args_without_slurm(args),
        );
    }
    if !aggregate_only {
        let bin = match bin {
            Some(b) => b,
            None => {
                let features: &[&str] = if devices.iter().any(|d| d.starts_with("cuda")) {
                    &["--features", "cuda"]
                } else {
                    &[]
                };
                util::run(
                    Command::new("cargo")
                        .args(["build", "--release", "-p", "cli"])
                        .args(features),
                )?;
                root.join("target/release/duoseg")
            }
        };
        let queue = Arc::new(Mutex::new(runs.clone()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for device in &devices {
                let (queue, failures, bin) = (queue.clone(), failures.clone(), bin.clone());
                let (train_args, run_dir) = (&train_args, &run_dir);
                scope.spawn(move || {
                    while let Some((name, fold)) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        if run_dir(&name).join("summary.json").exists() {
                            continue;
                        }
                        let r = util::run(Command::new(&bin).args(train_args(&name, fold, device)));
                        if let Err(e) = r {
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("{name}: {e:#}"));
                            }
                        }
                    }
                });
            }
        });
        let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
        if !failures.is_empty() {
            bail!("failed runs:\n{}", failures.join("\n"));
        }
    }
    let names: Vec<String> = runs.iter().map(|(n, _)| n.clone()).collect();
    aggregate(s, labeled, protocol, &names, &out_root, &report)
}

fn args_without_slurm(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.as_str() != "--slurm")
        .cloned()
        .collect()
}

/// The metrics of the table, as `summary.json` names them.
const METRICS: [&str; 4] = ["dice", "jaccard", "hd95_vox", "asd_vox"];

/// One run's row: each metric's mean over the test cases, averaged over the foreground classes
/// (null where no class has it defined).
fn run_row(summary: &Value) -> serde_json::Map<String, Value> {
    // the class entries ("1", "2", ...), not the summary's own "mean" row of several classes
    let classes: Vec<&Value> = summary["summary"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.parse::<u8>().is_ok())
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    METRICS
        .iter()
        .map(|m| {
            let v: Vec<f64> = classes
                .iter()
                .filter_map(|c| c[*m]["mean"].as_f64())
                .collect();
            let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            (m.to_string(), json!(mean))
        })
        .collect()
}

/// Reads each run's `summary.json` and writes the table (mean +- std across runs, population std)
/// as `report` (JSON) and the same path with `.md`.
fn aggregate(
    s: &Setting,
    labeled: usize,
    protocol: Protocol,
    runs: &[String],
    out_root: &Path,
    report: &Path,
) -> Result<()> {
    let mut per_run = Vec::new();
    for name in runs {
        let p = out_root.join(name).join("summary.json");
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?;
        let mut row = run_row(&v);
        row.insert("run".into(), json!(name));
        per_run.push(Value::Object(row));
    }
    let protocol_name = match protocol {
        Protocol::Kfold => format!("{} folds, last checkpoint", runs.len()),
        Protocol::Fixed => "the config's fixed split".to_string(),
    };
    let mut table = format!(
        "| {} ({labeled} labeled), {protocol_name} | Dice (%) | Jaccard (%) | 95HD (vox) | ASD (vox) |\n|---|---|---|---|---|\n| ours |",
        s.name
    );
    let mut summary = serde_json::Map::new();
    for m in METRICS {
        let v: Vec<f64> = per_run.iter().filter_map(|r| r[m].as_f64()).collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let scale = if m == "dice" || m == "jaccard" {
            100.0
        } else {
            1.0
        };
        table.push_str(&format!(" {:.2} ± {:.2} |", mean * scale, sd * scale));
        summary.insert(
            m.to_string(),
            json!({ "mean": mean, "std": sd, "n": v.len() }),
        );
    }
    println!("{table}");
    util::write_json(
        report,
        &json!({
            "setting": s.name,
            "labeled": labeled,
            "protocol": match protocol { Protocol::Kfold => "kfold", Protocol::Fixed => "fixed" },
            "runs": per_run,
            "summary": summary,
            "metrics": "per run: each metric's mean over the test cases, averaged over the foreground classes",
        }),
    )?;
    let md = report.with_extension("md");
    std::fs::write(&md, format!("{table}\n"))
        .with_context(|| format!("cannot write {}", md.display()))
}

fn write_slurm(
    s: &Setting,
    out_root: &Path,
    folds: &[usize],
    example: &[String],
    args: &[String],
) -> Result<()> {
    std::fs::create_dir_all(out_root)?;
    let list = folds
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // the fold index appears in --out and in the split override; substitute the task id there
    let cmd: Vec<String> = example
        .iter()
        .map(|a| {
            a.replace("fold-0", "fold-${SLURM_ARRAY_TASK_ID}")
                .replace("\"fold\":0", "\"fold\":${SLURM_ARRAY_TASK_ID}")
        })
        .map(|a| {
            format!("'{}'", a.replace('\'', "'\\''"))
                .replace("${SLURM_ARRAY_TASK_ID}", "'\"${SLURM_ARRAY_TASK_ID}\"'")
        })
        .collect();
    let script = format!(
        "#!/bin/bash\n#SBATCH --job-name=duoseg-{name}\n#SBATCH --array={list}\n#SBATCH --gres=gpu:1\n#SBATCH --time=24:00:00\n#SBATCH --output={out}/slurm-%A_%a.out\n# one fold per array task; afterwards aggregate with:\n#   cargo xtask reproduce-{name} {agg} --aggregate\nset -euo pipefail\ncd {root}\ntarget/release/duoseg {cmd}\n",
        name = s.name,
        out = out_root.display(),
        agg = args.join(" "),
        root = util::root().display(),
        cmd = cmd.join(" ")
    );
    let path = out_root.join("job.sbatch");
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {} (build first: cargo build --release -p cli --features cuda; submit: sbatch {})",
        path.display(),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_row_averages_the_class_entries_only() {
        let summary = json!({"summary": {
            "1": {"dice": {"mean": 0.8}, "jaccard": {"mean": 0.7}, "hd95_vox": {"mean": 2.0}, "asd_vox": {"mean": 1.0}},
            "2": {"dice": {"mean": 0.6}, "jaccard": {"mean": 0.5}, "hd95_vox": {"mean": null}, "asd_vox": {"mean": 3.0}},
            "mean": {"dice": {"mean": 0.0}, "jaccard": {"mean": 0.0}, "hd95_vox": {"mean": 99.0}, "asd_vox": {"mean": 99.0}}
        }});
        let row = run_row(&summary);
        assert!((row["dice"].as_f64().unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(
            row["hd95_vox"].as_f64(),
            Some(2.0),
            "an undefined class is skipped"
        );
        assert_eq!(row["asd_vox"].as_f64(), Some(2.0));
        assert!(run_row(&json!({"summary": {}}))["dice"].is_null());
    }

    /// The whole reproduction, small enough for CI: 8 hippocampus cases linked into a dataset folder
    /// of their own, `duoseg folds --k 2`, both folds trained for 2 iterations and evaluated, the
    /// aggregation of both; then the fixed protocol (one run on a holdout split) and the Slurm
    /// script. Skips, saying why, without the shared data or the built `duoseg` (which
    /// `cargo test --workspace --release` builds for the CLI's tests).
    #[test]
    fn reproduction_trains_both_protocols_and_aggregates_them() {
        let root = util::root();
        let shared = std::env::var_os("DUOSEG_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/data"));
        let hip = shared.join("hippocampus");
        if !hip.join("dataset.json").exists() {
            eprintln!("skipped: {} is absent (the shared data)", hip.display());
            return;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("release/duoseg");
        if !bin.exists() {
            eprintln!("skipped: {} is not built", bin.display());
            return;
        }
        let tmp =
            std::env::temp_dir().join(format!("duoseg-xtask-reproduce-{}", std::process::id()));
        let data = tmp.join("data");
        for sub in ["imagesTr", "labelsTr"] {
            std::fs::create_dir_all(data.join(sub)).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(hip.join("labelsTr"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".nii.gz"))
            .collect();
        names.sort();
        names.truncate(8);
        for name in &names {
            for sub in ["imagesTr", "labelsTr"] {
                std::os::unix::fs::symlink(hip.join(sub).join(name), data.join(sub).join(name))
                    .unwrap();
            }
        }
        // the dataset's description with only these cases listed
        let mut description: Value =
            serde_json::from_str(&std::fs::read_to_string(hip.join("dataset.json")).unwrap())
                .unwrap();
        let listed = |e: &Value| {
            let label = e["label"].as_str().unwrap_or_default();
            names.iter().any(|n| label.ends_with(n.as_str()))
        };
        let training: Vec<Value> = description["training"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| listed(e))
            .cloned()
            .collect();
        assert_eq!(training.len(), 8);
        description["training"] = json!(training);
        description["numTraining"] = json!(8);
        util::write_json(&data.join("dataset.json"), &description).unwrap();
        util::run(
            Command::new(&bin)
                .args(["folds", "--k", "2", "--seed", "1"])
                .arg(&data),
        )
        .unwrap();
        let common = |protocol: &str, out: &str| -> Vec<String> {
            let mut v: Vec<String> = [
                "--data",
                &data.display().to_string(),
                "--protocol",
                protocol,
                "--config",
                &root.join("configs/hippocampus.json").display().to_string(),
                "--labeled",
                "2",
                "--iters",
                "2",
                "--set",
                "eval.figure_cases=0",
                "--out",
                &tmp.join(out).display().to_string(),
                "--report",
                &tmp.join(format!("{out}.json")).display().to_string(),
                "--bin",
                &bin.display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            if protocol == "kfold" {
                v.extend(["--folds".to_string(), "0,1".to_string()]);
            }
            v
        };
        run(&LA, &common("kfold", "kfold")).unwrap();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.join("kfold.json")).unwrap())
                .unwrap();
        assert_eq!(report["protocol"], "kfold");
        let runs = report["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for r in runs {
            let dice = r["dice"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&dice), "{r}");
        }
        assert_eq!(report["summary"]["dice"]["n"], 2);
        let table = std::fs::read_to_string(tmp.join("kfold.md")).unwrap();
        assert!(table.contains("2 folds, last checkpoint"), "{table}");
        // each fold tested its own cases: together, every case once
        let mut tested = Vec::new();
        for k in 0..2 {
            let split = tmp.join(format!("kfold/fold-{k}/split.json"));
            let v: Value = serde_json::from_str(&std::fs::read_to_string(split).unwrap()).unwrap();
            tested.extend(v["test"].as_array().unwrap().iter().map(|c| c.to_string()));
        }
        tested.sort();
        tested.dedup();
        assert_eq!(tested.len(), 8);

        let mut fixed = common("fixed", "fixed");
        fixed.extend([
            "--set".into(),
            r#"data.split={"holdout":{"test":3}}"#.into(),
        ]);
        run(&LA, &fixed).unwrap();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.join("fixed.json")).unwrap())
                .unwrap();
        assert_eq!(report["runs"].as_array().unwrap().len(), 1);

        let mut slurm = common("kfold", "slurm");
        slurm.push("--slurm".into());
        run(&LA, &slurm).unwrap();
        let script = std::fs::read_to_string(tmp.join("slurm/job.sbatch")).unwrap();
        assert!(script.contains("#SBATCH --array=0,1"), "{script}");
        assert!(script.contains("--aggregate"), "{script}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
