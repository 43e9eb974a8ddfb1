//! `cargo xtask reproduce-la` / `reproduce-pancreas`: the K-fold protocol of the paper (MCF's folds),
//! folds run in parallel across the listed devices, then a table of mean +- std across folds in the
//! paper's format (`bench/reproduce-<name>.json` / `.md`). `--slurm` writes an sbatch job-array script
//! (one fold per task, each asking for `--slurm-gpus N` GPUs, 1 by default; 0 runs the folds on the
//! CPU) instead of running; `--aggregate` makes the table from its results afterwards.
//!
//! `--protocol fixed` instead trains once on the config's own split (LA's fixed 80 / 20 lists).
//! `--config`, `--out`, `--report` and `--bin` (a built `duoseg`) let a test run the whole
//! reproduction on a small dataset; `tests` below does, on a few hippocampus cases.
//!
//! Usage: `cargo xtask reproduce-la --data DIR [--protocol kfold|fixed] [--folds 0,1,2,3,4]
//! [--labeled 16|8] [--devices cuda:0,cuda:1] [--iters N] [--method M] [--config FILE]
//! [--set key=value]... [--out DIR] [--report FILE.json] [--bin PATH] [--slurm] [--slurm-gpus N]
//! [--aggregate]`

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
       [--slurm-gpus N] [--aggregate]
--slurm-gpus N: the GPUs each array task asks for (1; 0 runs the fold on the task's CPUs)";

fn run(s: &Setting, args: &[String]) -> Result<()> {
    let mut data = None;
    let mut folds: Vec<usize> = (0..s.folds).collect();
    let mut labeled = s.labeled;
    let mut devices = vec!["cpu".to_string()];
    let mut extra: Vec<String> = Vec::new();
    let mut slurm = false;
    let mut slurm_gpus = 1usize;
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
            "--slurm-gpus" => slurm_gpus = val()?.parse().context("--slurm-gpus")?,
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
        // each task sees the GPUs Slurm gave it, numbered from 0
        let device = if slurm_gpus > 0 { "cuda:0" } else { "cpu" };
        return write_slurm(
            s,
            &out_root,
            &folds,
            &SlurmJob {
                example: train_args("fold-0", Some(0), device),
                aggregate_args: args_without_slurm(args),
                gpus: slurm_gpus,
                bin: bin.as_deref(),
            },
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
                util::release_dir().join("duoseg")
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

/// What an sbatch array task runs, besides its fold.
struct SlurmJob<'a> {
    /// Fold 0's `duoseg` arguments; the task substitutes its own fold.
    example: Vec<String>,
    /// The reproduction's arguments without `--slurm`, for the `--aggregate` line of the script.
    aggregate_args: Vec<String>,
    /// The GPUs each task asks for (`--gres=gpu:N`); 0 asks for none.
    gpus: usize,
    /// `--bin`: the `duoseg` the tasks run; the release build's (`util::release_dir`) without it.
    bin: Option<&'a Path>,
}

/// A shell word that stands for `word` as it is.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn write_slurm(s: &Setting, out_root: &Path, folds: &[usize], job: &SlurmJob) -> Result<()> {
    std::fs::create_dir_all(out_root)?;
    let list = folds
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // the fold index appears in --out and in the split override; substitute the task id there
    let cmd: Vec<String> = job
        .example
        .iter()
        .map(|a| {
            a.replace("fold-0", "fold-${SLURM_ARRAY_TASK_ID}")
                .replace("\"fold\":0", "\"fold\":${SLURM_ARRAY_TASK_ID}")
        })
        .map(|a| sh_quote(&a).replace("${SLURM_ARRAY_TASK_ID}", "'\"${SLURM_ARRAY_TASK_ID}\"'"))
        .collect();
    let gres = if job.gpus > 0 {
        format!("#SBATCH --gres=gpu:{}\n", job.gpus)
    } else {
        String::new()
    };
    // the script runs in the workspace root: a relative --bin is taken from here, made absolute
    let bin = match job.bin {
        Some(b) => sh_quote(
            &std::path::absolute(b)
                .with_context(|| format!("--bin {}", b.display()))?
                .display()
                .to_string(),
        ),
        None => sh_quote(&util::release_dir().join("duoseg").display().to_string()),
    };
    let script = format!(
        "#!/bin/bash\n#SBATCH --job-name=duoseg-{name}\n#SBATCH --array={list}\n{gres}#SBATCH --time=24:00:00\n#SBATCH --output={out}/slurm-%A_%a.out\n# one fold per array task; afterwards aggregate with:\n#   cargo xtask reproduce-{name} {agg} --aggregate\nset -euo pipefail\ncd {root}\n{bin} {cmd}\n",
        name = s.name,
        out = out_root.display(),
        agg = job.aggregate_args.join(" "),
        root = sh_quote(&util::root().display().to_string()),
        cmd = cmd.join(" ")
    );
    let path = out_root.join("job.sbatch");
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let build = match (job.bin, job.gpus) {
        (Some(_), _) => String::new(),
        (None, 0) => "build first: cargo build --release -p cli; ".to_string(),
        (None, _) => "build first: cargo build --release -p cli --features cuda; ".to_string(),
    };
    println!(
        "wrote {} ({build}submit: sbatch {})",
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

    /// 8 hippocampus cases linked into a dataset folder of their own under a fresh temporary
    /// folder, with `duoseg folds --k 2` written, and the built `duoseg`.
    struct Fixture {
        root: PathBuf,
        tmp: PathBuf,
        data: PathBuf,
        bin: PathBuf,
    }

    impl Fixture {
        /// `None`, saying why, without the shared data (`DUOSEG_SHARED_DATA`, else
        /// `../shared/data`) or the built `duoseg` (which `cargo test --workspace --release`
        /// builds for the CLI's tests).
        fn new(name: &str) -> Option<Fixture> {
            let root = util::root();
            let shared = std::env::var_os("DUOSEG_SHARED_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("../shared/data"));
            let hip = shared.join("hippocampus");
            if !hip.join("dataset.json").exists() {
                eprintln!("skipped: {} is absent (the shared data)", hip.display());
                return None;
            }
            let bin = util::release_dir().join("duoseg");
            if !bin.exists() {
                eprintln!("skipped: {} is not built", bin.display());
                return None;
            }
            let tmp =
                std::env::temp_dir().join(format!("duoseg-xtask-{name}-{}", std::process::id()));
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
            Some(Fixture {
                root,
                tmp,
                data,
                bin,
            })
        }

        /// The reproduction's arguments: 2 labeled cases, 2 iterations, no figures, results under
        /// `tmp/<out>` and `tmp/<out>.json`; folds 0 and 1 under the k-fold protocol.
        fn args(&self, protocol: &str, out: &str) -> Vec<String> {
            let mut v: Vec<String> = [
                "--data",
                &self.data.display().to_string(),
                "--protocol",
                protocol,
                "--config",
                &self
                    .root
                    .join("configs/hippocampus.json")
                    .display()
                    .to_string(),
                "--labeled",
                "2",
                "--iters",
                "2",
                "--set",
                "eval.figure_cases=0",
                "--out",
                &self.tmp.join(out).display().to_string(),
                "--report",
                &self.tmp.join(format!("{out}.json")).display().to_string(),
                "--bin",
                &self.bin.display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            if protocol == "kfold" {
                v.extend(["--folds".to_string(), "0,1".to_string()]);
            }
            v
        }
    }

    /// The whole reproduction, small enough for CI: on the [`Fixture`]'s 8 hippocampus cases, both
    /// folds trained for 2 iterations and evaluated, the aggregation of both; then the fixed
    /// protocol (one run on a holdout split) and the Slurm script. Skips, saying why, without the
    /// shared data or the built `duoseg`.
    #[test]
    fn reproduction_trains_both_protocols_and_aggregates_them() {
        let Some(fx) = Fixture::new("reproduce") else {
            return;
        };
        let tmp = &fx.tmp;
        run(&LA, &fx.args("kfold", "kfold")).unwrap();
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

        let mut fixed = fx.args("fixed", "fixed");
        fixed.extend([
            "--set".into(),
            r#"data.split={"holdout":{"test":3}}"#.into(),
        ]);
        run(&LA, &fixed).unwrap();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.join("fixed.json")).unwrap())
                .unwrap();
        assert_eq!(report["runs"].as_array().unwrap().len(), 1);

        let mut slurm = fx.args("kfold", "slurm");
        slurm.push("--slurm".into());
        run(&LA, &slurm).unwrap();
        let script = std::fs::read_to_string(tmp.join("slurm/job.sbatch")).unwrap();
        assert!(script.contains("#SBATCH --array=0,1"), "{script}");
        assert!(script.contains("#SBATCH --gres=gpu:1\n"), "{script}");
        assert!(script.contains("'--device' 'cuda:0'"), "{script}");
        assert!(script.contains("--aggregate"), "{script}");
        let mut cpu = fx.args("kfold", "slurm-cpu");
        cpu.extend(["--slurm".into(), "--slurm-gpus".into(), "0".into()]);
        run(&LA, &cpu).unwrap();
        let script = std::fs::read_to_string(tmp.join("slurm-cpu/job.sbatch")).unwrap();
        assert!(!script.contains("--gres"), "{script}");
        assert!(script.contains("'--device' 'cpu'"), "{script}");
        std::fs::remove_dir_all(tmp).unwrap();
    }

    /// Whether `tool` is a file in one of `$PATH`'s folders.
    fn on_path(tool: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    }

    /// `--slurm` on a real Slurm: `tests/slurm/run.sh` starts munged, slurmctld and slurmd for this
    /// host alone, submits the script `--slurm --slurm-gpus 0` wrote for the [`Fixture`]'s 2 folds,
    /// waits until both array tasks completed with exit code 0, and stops the daemons; then
    /// `--aggregate` (which trains nothing) reads the two folds' results. Skips, saying why,
    /// without the shared data, the built `duoseg`, Slurm and munge (`.ci/run` installs them) or
    /// root (slurmd runs the jobs); `DUOSEG_REQUIRE_SLURM=1` (set by `.ci/run`) turns a missing
    /// Slurm or root into a failure.
    #[test]
    fn slurm_array_runs_the_folds_and_the_aggregation_reads_them() {
        let tools = [
            "munged",
            "mungekey",
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
        ];
        let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let why = if !missing.is_empty() {
            Some(format!(
                "{} not on PATH (slurm-wlm, munge)",
                missing.join(", ")
            ))
        } else if !root_user {
            Some("not root (slurmd runs the jobs)".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            assert!(
                std::env::var_os("DUOSEG_REQUIRE_SLURM").is_none_or(|v| v != "1"),
                "DUOSEG_REQUIRE_SLURM=1 but {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
        let Some(fx) = Fixture::new("slurm") else {
            return;
        };
        let mut args = fx.args("kfold", "slurm");
        args.extend(["--slurm".into(), "--slurm-gpus".into(), "0".into()]);
        run(&LA, &args).unwrap();
        let out = fx.tmp.join("slurm");
        let script = out.join("job.sbatch");
        util::run(
            Command::new(fx.root.join("tests/slurm/run.sh"))
                .arg(&script)
                .arg("300"),
        )
        .unwrap();
        // the array's own output: one file per task, each with its fold's training in it
        let mut logs: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("slurm-") && n.ends_with(".out"))
            .collect();
        logs.sort();
        assert_eq!(logs.len(), 2, "{logs:?}");
        for (k, log) in logs.iter().enumerate() {
            assert!(log.ends_with(&format!("_{k}.out")), "{logs:?}");
            let text = std::fs::read_to_string(out.join(log)).unwrap();
            eprintln!("--- {log}\n{text}");
            let summary = out.join(format!("fold-{k}/summary.json"));
            assert!(summary.exists(), "task {k} wrote no {}", summary.display());
        }

        let mut aggregate = fx.args("kfold", "slurm");
        aggregate.push("--aggregate".into());
        run(&LA, &aggregate).unwrap();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(fx.tmp.join("slurm.json")).unwrap())
                .unwrap();
        let runs = report["runs"].as_array().unwrap();
        let names: Vec<&str> = runs.iter().filter_map(|r| r["run"].as_str()).collect();
        assert_eq!(names, ["fold-0", "fold-1"]);
        for r in runs {
            let dice = r["dice"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&dice), "{r}");
        }
        assert_eq!(report["summary"]["dice"]["n"], 2);
        std::fs::remove_dir_all(&fx.tmp).unwrap();
    }
}
