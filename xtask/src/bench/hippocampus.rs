//! `cargo xtask bench hippocampus [--iters N] [--seed S] [--data DIR]`: trains the method and the
//! supervised baseline on MSD hippocampus (`configs/hippocampus.json`) with the same budget and seed on
//! the CPU, and writes `bench/hippocampus.json` with both evaluation summaries, the mean Dice over the
//! two hippocampus classes and the wall-clock time of each run. Skips (exit 0, with a message) when the
//! data folder is absent.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

pub fn run(args: &[String]) -> Result<()> {
    let root = util::root();
    let mut data = std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"))
        .join("hippocampus");
    let mut extra: Vec<String> = Vec::new();
    let mut seed = "1337".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--iters" => extra.extend(["--iters".to_string(), val()?]),
            "--seed" => seed = val()?,
            "--data" => data = PathBuf::from(val()?),
            other => bail!("unknown argument {other:?} (--iters N, --seed S, --data DIR)"),
        }
    }
    if !data.join("dataset.json").is_file() {
        eprintln!("skipping bench hippocampus: {} not found", data.display());
        return Ok(());
    }
    util::run(Command::new("cargo").args(["build", "--release", "-p", "cli"]))?;
    let bin = util::release_dir().join("duoseg");
    let mut out = serde_json::Map::new();
    for method in ["duoseg", "supervised"] {
        let dir = root.join("runs/bench-hippocampus").join(method);
        let t0 = Instant::now();
        util::run(
            Command::new(&bin)
                .args(["train", "--config"])
                .arg(root.join("configs/hippocampus.json"))
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&dir)
                // a benchmark times a whole run: a previous one's folder is replaced
                .args([
                    "--method",
                    method,
                    "--seed",
                    &seed,
                    "--no-progress",
                    "--overwrite",
                ])
                .args(&extra),
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let p = dir.join("summary.json");
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?,
        )?;
        let dice = |c: &str| summary["summary"][c]["dice"]["mean"].as_f64();
        out.insert(
            method.to_string(),
            json!({
                "mean_dice": dice("mean"),
                "dice_anterior": dice("1"),
                "dice_posterior": dice("2"),
                "wall_s": secs,
                "summary": summary,
            }),
        );
    }
    let d = |m: &str| out[m]["mean_dice"].as_f64().unwrap_or(f64::NAN);
    let result = json!({
        "config": "configs/hippocampus.json",
        "seed": seed,
        "extra_args": extra,
        "goal": "mean Dice over the two classes >= 0.85, method above the baseline",
        "method_minus_baseline_dice": d("duoseg") - d("supervised"),
        "runs": out,
    });
    println!(
        "duoseg mean Dice {:.4}, supervised {:.4}",
        d("duoseg"),
        d("supervised")
    );
    util::write_json(&root.join("bench/hippocampus.json"), &result)
}
