//! `cargo xtask reproduce-la` / `reproduce-pancreas`: the K-fold protocol of the paper (MCF's folds),
//! folds run in parallel across the listed devices, then a table of mean +- std across folds in the
//! paper's format (`bench/reproduce-<name>.json` / `.md`). `--slurm` writes an sbatch job-array script
//! (one fold per task) plus an aggregation step instead of running.
//!
//! Usage: `cargo xtask reproduce-la --data DIR [--folds 0,1,2,3,4] [--labeled 16|8]
//! [--devices cuda:0,cuda:1] [--iters N] [--method M] [--slurm]`

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

fn run(s: &Setting, args: &[String]) -> Result<()> {
    let mut data = None;
    let mut folds: Vec<usize> = (0..s.folds).collect();
    let mut labeled = s.labeled;
    let mut devices = vec!["cpu".to_string()];
    let mut extra: Vec<String> = Vec::new();
    let mut slurm = false;
    let mut aggregate_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
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
            "--slurm" => slurm = true,
            "--aggregate" => aggregate_only = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let Some(data) = data else {
        bail!("usage: cargo xtask reproduce-{} --data DIR [--folds ..] [--labeled N] [--devices ..] [--iters N] [--slurm]", s.name)
    };
    let root = util::root();
    let out_root = root
        .join("runs")
        .join(format!("reproduce-{}-l{labeled}", s.name));
    let fold_dir = |k: usize| out_root.join(format!("fold-{k}"));
    let train_args = |k: usize, device: &str| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "train".into(),
            "--config".into(),
            root.join(s.config).display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--out".into(),
            fold_dir(k).display().to_string(),
            "--labeled".into(),
            labeled.to_string(),
            "--device".into(),
            device.to_string(),
            "--set".into(),
            format!("data.split={{\"fold\":{{\"fold\":{k}}}}}"),
            "--no-progress".into(),
            // a fold stopped part-way continues from its checkpoint
            "--resume".into(),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    if slurm {
        return write_slurm(
            s,
            &out_root,
            &folds,
            &train_args(0, "cuda:0"),
            &args_without_slurm(args),
        );
    }
    if !aggregate_only {
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
        let bin = root.join("target/release/duoseg");
        let queue = Arc::new(Mutex::new(folds.clone()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for device in &devices {
                let (queue, failures, bin) = (queue.clone(), failures.clone(), bin.clone());
                let train_args = &train_args;
                scope.spawn(move || {
                    while let Some(k) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        if fold_dir(k).join("summary.json").exists() {
                            continue;
                        }
                        let r = util::run(Command::new(&bin).args(train_args(k, device)));
                        if let Err(e) = r {
                            if let Ok(mut f) = failures.lock() {
                                f.push(format!("fold {k}: {e:#}"));
                            }
                        }
                    }
                });
            }
        });
        let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
        if !failures.is_empty() {
            bail!("failed folds:\n{}", failures.join("\n"));
        }
    }
    aggregate(s, labeled, &folds, &fold_dir)
}

fn args_without_slurm(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.as_str() != "--slurm")
        .cloned()
        .collect()
}

fn aggregate(
    s: &Setting,
    labeled: usize,
    folds: &[usize],
    fold_dir: &dyn Fn(usize) -> PathBuf,
) -> Result<()> {
    let metrics = ["dice", "jaccard", "hd95_vox", "asd_vox"];
    let mut per_fold = Vec::new();
    for &k in folds {
        let p = fold_dir(k).join("summary.json");
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?,
        )?;
        let c = &v["summary"]["1"];
        let row: serde_json::Map<String, Value> = metrics
            .iter()
            .map(|m| (m.to_string(), c[*m]["mean"].clone()))
            .chain([("fold".to_string(), json!(k))])
            .collect();
        per_fold.push(Value::Object(row));
    }
    let mut table = format!(
        "| {} ({labeled} labeled), {} folds | Dice (%) | Jaccard (%) | 95HD (vox) | ASD (vox) |\n|---|---|---|---|---|\n| ours |",
        s.name,
        folds.len()
    );
    let mut summary = serde_json::Map::new();
    for m in metrics {
        let v: Vec<f64> = per_fold.iter().filter_map(|r| r[m].as_f64()).collect();
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
        &util::root()
            .join("bench")
            .join(format!("reproduce-{}-l{labeled}.json", s.name)),
        &json!({ "setting": s.name, "labeled": labeled, "folds": per_fold, "summary": summary }),
    )
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
