//! `cargo xtask bench metrics`: duoseg-metrics against medpy 0.5.2 on the 20 LA test labels.
//!
//! Each label (`<shared data>/la2018/labelsTr/<id>.nii.gz`, ids from `test.list`) is compared with
//! three perturbed copies of itself (shift by 2 voxels, erosion, dilation); Dice + Jaccard + HD95 +
//! ASD in voxels are timed per case by the Rust example `bench_metrics` (release, all cores, then
//! one thread) and by medpy on the very same masks in the same run (`xtask/src/bench/metrics.py`,
//! needs `pip install medpy==0.5.2 numpy scipy nibabel`; interpreter from `$DUOSEG_PYTHON`, else
//! `python3`). Both sides report a fingerprint of each mask, which must agree, and the values must
//! agree to 1e-9 relative. Writes `bench/metrics.json`.
//!
//! Options: `--repeats N` (median of N timings per case, default 3), `--cases N` (first N ids).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

const METRICS: [&str; 4] = ["dice", "jaccard", "hd95", "asd"];

pub fn run(args: &[String]) -> Result<()> {
    let mut repeats = 3usize;
    let mut limit = usize::MAX;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--repeats" => repeats = value.parse().context("--repeats")?,
            "--cases" => limit = value.parse().context("--cases")?,
            other => bail!("unknown option {other:?}; options: --repeats N, --cases N"),
        }
    }
    let data = std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("../shared/data"))
        .join("la2018");
    let list = data.join("test.list");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "{}: the LA data is needed for this benchmark",
            list.display()
        )
    })?;
    let ids: Vec<String> = text
        .split_whitespace()
        .take(limit)
        .map(str::to_string)
        .collect();
    let labels = data.join("labelsTr");
    let mut common = vec![labels.display().to_string(), repeats.to_string()];
    common.extend(ids.iter().cloned());

    util::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "duoseg-metrics",
        "--example",
        "bench_metrics",
    ]))?;
    let example = util::release_dir().join("examples/bench_metrics");
    let rust = capture(
        Command::new(&example)
            .args(&common)
            .env_remove("RAYON_NUM_THREADS"),
    )?;
    let rust_one = capture(
        Command::new(&example)
            .args(&common)
            .env("RAYON_NUM_THREADS", "1"),
    )?;
    let python = util::python();
    let script = util::root().join("xtask/src/bench/metrics.py");
    let medpy = capture(Command::new(&python).arg(&script).args(&common))?;

    let (rust_cases, one_cases, medpy_cases) = (cases(&rust)?, cases(&rust_one)?, cases(&medpy)?);
    if rust_cases.len() != medpy_cases.len() || one_cases.len() != medpy_cases.len() {
        bail!("rust and medpy measured different numbers of cases");
    }
    let mut rows = Vec::new();
    let (mut rust_total, mut one_total, mut medpy_total) = (0.0, 0.0, 0.0);
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    for ((r, one), m) in rust_cases.iter().zip(one_cases).zip(medpy_cases) {
        for key in ["case", "perturbation", "pred", "gt"] {
            if r[key] != m[key] {
                bail!("rust and medpy differ in {key}: {} vs {}", r[key], m[key]);
            }
        }
        let (rs, os, ms) = (secs(r)?, secs(one)?, secs(m)?);
        rust_total += rs;
        one_total += os;
        medpy_total += ms;
        let mut values = serde_json::Map::new();
        for metric in METRICS {
            let (a, b) = (num(r, metric)?, num(m, metric)?);
            max_abs = max_abs.max((a - b).abs());
            max_rel = max_rel.max((a - b).abs() / b.abs().max(1e-300));
            values.insert(metric.to_string(), json!({"duoseg": a, "medpy": b}));
        }
        rows.push(json!({
            "case": r["case"],
            "perturbation": r["perturbation"],
            "shape": r["shape"],
            "duoseg_s": rs,
            "duoseg_1thread_s": os,
            "medpy_s": ms,
            "speedup": ms / rs,
            "values": values,
        }));
    }
    let ratio = medpy_total / rust_total;
    let agree = max_rel <= 1e-9;
    let report = json!({
        "benchmark": "dice + jaccard + hd95 + asd (voxel units, medpy definitions), LA test labels vs shifted / eroded / dilated copies",
        "command": "cargo xtask bench metrics",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rayon_threads": rust["threads"],
        "repeats": repeats,
        "medpy": medpy["medpy"],
        "numpy": medpy["numpy"],
        "cases": rows,
        "duoseg_total_s": rust_total,
        "duoseg_1thread_total_s": one_total,
        "medpy_total_s": medpy_total,
        "speed_ratio": ratio,
        "speed_ratio_1thread": medpy_total / one_total,
        "max_abs_value_difference": max_abs,
        "max_rel_value_difference": max_rel,
        "values_agree_1e-9": agree,
    });
    let out = util::root().join("bench/metrics.json");
    util::write_json(&out, &report)?;
    eprintln!(
        "{} comparisons: duoseg {:.3} s ({:.3} s on 1 thread), medpy {:.3} s: {:.1}x faster \
         ({:.1}x on 1 thread); max value difference {max_abs:e} (rel {max_rel:e}); wrote {}",
        rows.len(),
        rust_total,
        one_total,
        medpy_total,
        ratio,
        medpy_total / one_total,
        out.display()
    );
    if !agree {
        bail!("values differ from medpy by {max_rel:e} relative (more than 1e-9)");
    }
    Ok(())
}

/// Runs a command in the workspace root and parses its stdout as JSON.
fn capture(cmd: &mut Command) -> Result<Value> {
    eprintln!("$ {cmd:?}");
    let output = cmd
        .current_dir(util::root())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{cmd:?}: output is not JSON"))
}

fn cases(v: &Value) -> Result<&Vec<Value>> {
    v["cases"].as_array().context("no \"cases\" array")
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no number {key:?} in {v}"))
}

fn secs(v: &Value) -> Result<f64> {
    num(v, "seconds")
}
