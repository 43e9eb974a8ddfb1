//! `cargo xtask bench io`: decode all 100 LA cases (image + label, `.nii.gz`) with duoseg-io and
//! with nibabel in the same run, sequentially and with all cores.
//!
//! The Rust side is the example `bench_io` of duoseg-io (release; rayon over cases for the parallel
//! figure, `RAYON_NUM_THREADS=1` is not needed: its sequential loop is a plain loop). The Python side
//! is `tests/reference/io_bench.py` (needs `pip install nibabel numpy`; interpreter from
//! `$DUOSEG_PYTHON`, else `python3`), with a process pool of all cores. Both report the sum of all
//! image intensities and the foreground voxel count, which must agree. Each side reports the best
//! of `--repeats N` passes (default 3); the two sides run alternately `--rounds R` times (default
//! 2) and each figure is the best over the rounds, so that load from other processes on a shared
//! machine hits both sides alike. Writes `bench/io.json`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

pub fn run(args: &[String]) -> Result<()> {
    let mut repeats = 3usize;
    let mut rounds = 2usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--repeats" => repeats = value.parse().context("--repeats")?,
            "--rounds" => rounds = value.parse().context("--rounds")?,
            other => bail!("unknown option {other:?}; options: --repeats N, --rounds R"),
        }
    }
    if repeats == 0 || rounds == 0 {
        bail!("--repeats and --rounds must be at least 1");
    }
    let data = std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("../shared/data"))
        .join("la2018");
    if !data.join("dataset.json").is_file() {
        bail!(
            "{}: the LA data is needed for this benchmark",
            data.display()
        );
    }
    let common = [data.display().to_string(), repeats.to_string()];
    util::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "duoseg-io",
        "--example",
        "bench_io",
    ]))?;
    let example = util::release_dir().join("examples/bench_io");
    let python = util::python();
    let script = util::root().join("tests/reference/io_bench.py");
    let num = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("missing {k} in {v}"));
    let (mut rust_runs, mut nibabel_runs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let rust = capture(Command::new(&example).args(&common))?;
        let nibabel = capture(Command::new(&python).arg(&script).args(&common))?;
        let (rs, ns) = (num(&rust, "image_sum")?, num(&nibabel, "image_sum")?);
        if (rs - ns).abs() > 1e-6 * ns.abs().max(1.0)
            || rust["label_foreground"] != nibabel["label_foreground"]
        {
            bail!("duoseg and nibabel decoded different data: {rust} vs {nibabel}");
        }
        rust_runs.push(rust);
        nibabel_runs.push(nibabel);
    }
    let rust = best_of(&rust_runs)?;
    let nibabel = best_of(&nibabel_runs)?;
    let speedup = |k: &str| -> Result<f64> { Ok(num(&nibabel, k)? / num(&rust, k)?) };
    let result = json!({
        "benchmark": "decode LA image + label (.nii.gz, uint8 + scl_slope -> f32; label -> u8), 100 cases",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "duoseg": rust,
        "nibabel": nibabel,
        "speedup_sequential": speedup("sequential_s")?,
        "speedup_parallel": speedup("parallel_s")?,
        "duoseg_parallel_scaling": num(&rust, "sequential_s")? / num(&rust, "parallel_s")?,
        "nibabel_parallel_scaling": num(&nibabel, "sequential_s")? / num(&nibabel, "parallel_s")?,
    });
    let out = util::root().join("bench/io.json");
    util::write_json(&out, &result)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The first round's report with each timing replaced by its best over all rounds (and the
/// per-round times kept under `rounds_sequential_s` / `rounds_parallel_s`).
fn best_of(runs: &[Value]) -> Result<Value> {
    let mut best = runs.first().context("no benchmark round ran")?.clone();
    let cases = best["cases"].as_f64().context("missing cases")?;
    for kind in ["sequential", "parallel"] {
        let key = format!("{kind}_s");
        let times = runs
            .iter()
            .map(|r| {
                r[&key]
                    .as_f64()
                    .with_context(|| format!("missing {key} in {r}"))
            })
            .collect::<Result<Vec<f64>>>()?;
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        best[&key] = json!(min);
        best[format!("{kind}_ms_per_case")] = json!(1e3 * min / cases);
        best[format!("rounds_{key}")] = json!(times);
    }
    Ok(best)
}

/// Runs a command and parses its stdout as one JSON object.
fn capture(cmd: &mut Command) -> Result<Value> {
    eprintln!("$ {cmd:?}");
    let out = cmd
        .current_dir(util::root())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{cmd:?} printed no JSON object"))
}
