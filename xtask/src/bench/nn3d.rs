//! `cargo xtask bench nn3d`: the 3D layer ops at V-Net training size, optionally beside PyTorch.
//!
//! Runs `crates/nn3d/examples/bench_nn3d.rs` (release, `--json`): conv3d 16 -> 16 3^3 pad 1,
//! BatchNorm3d training forward + backward, down conv 16 -> 32 2^3 stride 2 on (2, 16, 112, 112, 80)
//! and up conv-transpose 32 -> 16 2^3 stride 2 on (2, 32, 56, 56, 40); median of several runs after
//! a warm-up, forward and forward + backward. With `--torch PYTHON` it also runs
//! `tests/reference/bench_nn3d_torch.py` (same ops through `torch.nn.functional`, cudnn.benchmark
//! on) with that interpreter in the same invocation and adds a per-op ratio. Writes `bench/nn3d.json`
//! (`bench/nn3d-cuda.json` for `--device cuda`).
//!
//! Options: `--device cpu|cuda` (cuda builds the example with `--features cuda`), `--runs N`
//! (default 5), `--warmup N` (default 1), `--only SUBSTRING` (ops whose name contains it),
//! `--torch PYTHON`, and for results measured elsewhere (the GPU machine has no Rust toolchain:
//! run the example and the script there and bring their JSON back) `--rust-json FILE` /
//! `--torch-json FILE`, used instead of running the respective side here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

struct Options {
    device: String,
    runs: usize,
    warmup: usize,
    only: Option<String>,
    torch: Option<String>,
    rust_json: Option<PathBuf>,
    torch_json: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        device: "cpu".into(),
        runs: 5,
        warmup: 1,
        only: None,
        torch: None,
        rust_json: None,
        torch_json: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => o.device = value.clone(),
            "--runs" => o.runs = value.parse().context("--runs")?,
            "--warmup" => o.warmup = value.parse().context("--warmup")?,
            "--only" => o.only = Some(value.clone()),
            "--torch" => o.torch = Some(value.clone()),
            "--rust-json" => o.rust_json = Some(PathBuf::from(value)),
            "--torch-json" => o.torch_json = Some(PathBuf::from(value)),
            other => bail!(
                "unknown option {other:?}; options: --device cpu|cuda, --runs N, --warmup N, \
                 --only SUBSTRING, --torch PYTHON, --rust-json FILE, --torch-json FILE"
            ),
        }
    }
    if !matches!(o.device.as_str(), "cpu" | "cuda") {
        bail!("--device must be cpu or cuda, got {:?}", o.device);
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let mut common = vec![
        "--device".to_string(),
        o.device.clone(),
        "--runs".into(),
        o.runs.to_string(),
        "--warmup".into(),
        o.warmup.to_string(),
    ];
    if let Some(only) = &o.only {
        common.extend(["--only".to_string(), only.clone()]);
    }

    let rust = match &o.rust_json {
        Some(path) => read_json(path)?,
        None => {
            let mut build = Command::new("cargo");
            build.args([
                "build",
                "--release",
                "-p",
                "duoseg-nn3d",
                "--example",
                "bench_nn3d",
            ]);
            if o.device == "cuda" {
                build.args(["--features", "cuda"]);
            }
            util::run(&mut build)?;
            let example = util::release_dir().join("examples/bench_nn3d");
            capture(Command::new(example).arg("--json").args(&common))?
        }
    };
    let torch = match (&o.torch_json, &o.torch) {
        (Some(path), _) => Some(read_json(path)?),
        (None, Some(python)) => {
            let script = util::root().join("tests/reference/bench_nn3d_torch.py");
            Some(capture(Command::new(python).arg(script).args(&common))?)
        }
        (None, None) => None,
    };

    let mut comparison = Vec::new();
    if let Some(torch) = &torch {
        for r in results(&rust)? {
            let Some(t) = results(torch)?.iter().find(|t| t["name"] == r["name"]) else {
                continue;
            };
            let ratio = |key: &str| match (r[key].as_f64(), t[key].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 => json!(a / b),
                _ => Value::Null,
            };
            comparison.push(json!({
                "name": r["name"],
                "duoseg_forward_s": r["forward_s"],
                "torch_forward_s": t["forward_s"],
                "duoseg_forward_backward_s": r["forward_backward_s"],
                "torch_forward_backward_s": t["forward_backward_s"],
                "forward_ratio_duoseg_over_torch": ratio("forward_s"),
                "forward_backward_ratio_duoseg_over_torch": ratio("forward_backward_s"),
            }));
        }
    }
    let mut command = format!("cargo xtask bench nn3d {}", args.join(" "));
    command.truncate(command.trim_end().len());
    let report = json!({
        "benchmark": "nn3d ops at V-Net training size (f32): median seconds of forward and of forward + backward",
        "command": command,
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "device": o.device,
        "duoseg": rust,
        "torch": torch,
        "comparison": comparison,
    });
    let name = if o.device == "cuda" {
        "nn3d-cuda.json"
    } else {
        "nn3d.json"
    };
    let out = util::root().join("bench").join(name);
    util::write_json(&out, &report)?;
    for r in results(&report["duoseg"])? {
        match (r["forward_s"].as_f64(), r["forward_backward_s"].as_f64()) {
            (Some(f), Some(fb)) => eprintln!(
                "{:<55} forward {f:.4} s, forward+backward {fb:.4} s",
                r["name"].as_str().unwrap_or("?")
            ),
            _ => eprintln!(
                "{:<55} error: {}",
                r["name"].as_str().unwrap_or("?"),
                r["error"]
            ),
        }
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn results(v: &Value) -> Result<&Vec<Value>> {
    v["results"]
        .as_array()
        .context("benchmark output has no \"results\" list")
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// Runs a command in the workspace root and parses its stdout as one JSON value.
fn capture(cmd: &mut Command) -> Result<Value> {
    eprintln!("$ {cmd:?}");
    let out = cmd
        .current_dir(util::root())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{cmd:?} printed no JSON"))
}
