//! `cargo xtask bench step`: one full training step of both nets (forward, all losses, backward, SGD)
//! at 2 labeled + 2 unlabeled crops on the CPU, beside PyTorch in the same invocation.
//!
//! Runs `crates/models/examples/bench_step.rs` (release) and
//! `../shared/reference/bench_torch.py --device cpu --crop D H W --modes default` (its sliding-window
//! part on a single crop-sized volume, so it costs one window) with the interpreter given by `--torch`
//! (default `$DUOSEG_PYTHON`, else `python3`; `--torch none` skips it), and writes `bench/step.json` with both
//! results, the time ratio (duoseg / PyTorch) and both peak resident memories.
//!
//! Options: `--crop D H W` (default 64 64 48), `--iters N` (default 3), `--warmup N` (default 1),
//! `--torch PYTHON`.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

const HELP: &str =
    "cargo xtask bench step [--crop D H W] [--iters N] [--warmup N] [--torch PYTHON|none]

One full training step of both nets (V-Net and ResNet-34 V-Net: forward of 2 labeled + 2 unlabeled
crops in train mode, every loss, backward, SGD update) on the CPU, timed by
crates/models/examples/bench_step.rs, beside ../shared/reference/bench_torch.py --device cpu in the
same invocation. Writes bench/step.json: both median / min step seconds, duoseg's per-phase times of
its last step, both peak resident memories, the ratio duoseg / PyTorch and the load average.

  --crop D H W     crop size, each a multiple of 16 (default 64 64 48)
  --iters N        timed steps per side (default 3)
  --warmup N       untimed steps first (default 1)
  --torch PYTHON   interpreter with torch (default $DUOSEG_PYTHON, else python3); none skips PyTorch

Other processes distort both timings (PyTorch's OpenMP threads far more): compare the ratio within
one run, and repeat it.";

/// Runs `cmd` and returns every JSON object it printed on stdout, one per line.
fn capture(cmd: &mut Command) -> Result<Vec<Value>> {
    eprintln!("$ {cmd:?}");
    let out = cmd
        .current_dir(util::root())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let values: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if values.is_empty() {
        bail!("no JSON line in the output of {cmd:?}");
    }
    Ok(values)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut crop = vec!["64".to_string(), "64".into(), "48".into()];
    let (mut iters, mut warmup) = ("3".to_string(), "1".to_string());
    let mut torch = Some(util::python());
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            "--crop" if i + 3 < args.len() => {
                crop = args[i + 1..i + 4].to_vec();
                i += 4;
            }
            "--iters" if i + 1 < args.len() => {
                iters = args[i + 1].clone();
                i += 2;
            }
            "--warmup" if i + 1 < args.len() => {
                warmup = args[i + 1].clone();
                i += 2;
            }
            "--torch" if i + 1 < args.len() => {
                torch = (args[i + 1] != "none").then(|| args[i + 1].clone());
                i += 2;
            }
            other => bail!("bad option {other:?}; options: --crop D H W, --iters N, --warmup N, --torch PYTHON|none (--help)"),
        }
    }
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.trim().to_string())
    };
    let loadavg_before = loadavg();
    util::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "duoseg-models",
        "--example",
        "bench_step",
    ]))?;
    let example = util::root().join("target/release/examples/bench_step");
    let ours = capture(
        Command::new(example)
            .arg("--crop")
            .args(&crop)
            .args(["--iters", &iters, "--warmup", &warmup]),
    )?
    .remove(0);
    let theirs = match &torch {
        None => Value::Null,
        Some(python) => {
            let script = util::root().join("../shared/reference/bench_torch.py");
            let argv: Vec<String> = [
                script.display().to_string(),
                "--device".into(),
                "cpu".into(),
                "--crop".into(),
            ]
            .into_iter()
            .chain(crop.iter().cloned())
            .chain(["--volume".to_string()])
            .chain(crop.iter().cloned())
            .chain(["--modes", "default", "--iters", &iters, "--warmup", &warmup].map(String::from))
            .collect();
            // run the script in-process so that the peak RSS measured afterwards is its own
            let code = format!(
                "import json, resource, runpy, sys\nsys.argv = {argv:?}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n\
                 print(json.dumps({{'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))"
            );
            let lines = capture(Command::new(python).args(["-c", &code]))?;
            let mut result = lines
                .iter()
                .find(|v| v["impl"] == "pytorch")
                .cloned()
                .context("no pytorch result")?;
            result["peak_rss_gib"] = lines
                .last()
                .map(|v| v["peak_rss_gib"].clone())
                .unwrap_or(Value::Null);
            result
        }
    };
    let ratio = match (
        ours["step_s_median"].as_f64(),
        theirs.get("step_s_median").and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    // other processes on a shared machine distort both timings (PyTorch's OpenMP threads far more)
    let report = json!({
        "benchmark": "one training step, both nets, 2+2 crops, CPU",
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "command": format!("cargo xtask bench step {}", args.join(" ")),
        "duoseg": ours,
        "pytorch": theirs,
        "ratio_duoseg_over_pytorch": ratio,
    });
    util::write_json(&util::root().join("bench").join("step.json"), &report)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
