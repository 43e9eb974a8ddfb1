//! `cargo xtask bench step`: three CPU workloads, each beside PyTorch in the same invocation, and
//! where the time goes.
//!
//! - `dual`: one full training step of both nets (forward, all losses, backward, SGD) at 2
//!   labeled and 2 unlabeled crops (default 64x64x48): `crates/models/examples/bench_step.rs` against
//!   `../shared/reference/bench_torch.py --device cpu --modes default` (its sliding-window part on
//!   a single crop-sized volume, so it costs one window).
//! - `hippocampus`: the hippocampus default step (configs/hippocampus.json: 2 + 1 crops of 32x48x32,
//!   both EMA teachers) through duoseg's own method code, `crates/train/examples/bench_workload.rs
//!   --workload step`, against `tests/reference/bench_workloads_torch.py --workload step`.
//! - `infer`: sliding-window inference of one 144x144x96 volume with configs/la.json's windows
//!   (112x112x80, stride 18x18x4: 45 windows), one window per forward pass on both sides, net A,
//!   `bench_workload --workload infer --sw-batch 1` against `bench_workloads_torch.py --workload infer`.
//!
//! Each side runs in its own process, so each peak resident memory is its own. The duoseg steps
//! also report their last step's time per phase and per nn3d op (`profile_last_step`; the rest of a
//! phase, `other_s`, is candle's own element-wise ops and glue). PyTorch runs with the interpreter
//! given by `--torch` (default `$DUOSEG_PYTHON`, else `python3`; `--torch none` skips it).
//! Writes `bench/step.json` with the CPU model and its vector extensions, every result and each
//! workload's ratio duoseg / PyTorch.
//!
//! Options: `--workloads dual,hippocampus,infer` (default all), `--crop D H W` (dual; default
//! 64 64 48), `--iters N` (default 3), `--warmup N` (default 1), `--rounds N` (default 3),
//! `--torch PYTHON`.
//!
//! Rounds: each workload runs duoseg, then PyTorch, `N` times over, and reports each side's fastest
//! round (its full result) with the ratio of the two, and every round's pair of times and ratio.
//! On a shared 2-core VM the speed of both sides drifts by up to a third over tens of seconds
//! (the same hippocampus step read 0.95 and 1.26 s a minute apart), which one round per side
//! turns straight into the ratio.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

const HELP: &str = "cargo xtask bench step [--workloads dual,hippocampus,infer] [--crop D H W] [--iters N]
       [--warmup N] [--rounds N] [--torch PYTHON|none]

Three CPU workloads, each beside PyTorch in the same invocation:
  dual         one full training step of both nets (2 labeled + 2 unlabeled crops, every loss,
               backward, SGD): crates/models/examples/bench_step.rs vs ../shared/reference/bench_torch.py
  hippocampus  the hippocampus default step (2 + 1 crops of 32x48x32, both EMA teachers) through
               duoseg's method code: crates/train/examples/bench_workload.rs vs
               tests/reference/bench_workloads_torch.py
  infer        sliding-window inference of one 144x144x96 volume, LA windows (45 of 112x112x80)
Writes bench/step.json: per workload both median / min times, both peak resident memories, the ratio
duoseg / PyTorch of each side's fastest round and every round's times, duoseg's last step by phase and
by nn3d op; the CPU model, its vector extensions and the load average.

  --workloads W    comma-separated subset (default dual,hippocampus,infer)
  --crop D H W     dual crop size, each a multiple of 16 (default 64 64 48)
  --iters N        timed steps per side (default 3)
  --warmup N       untimed steps first (default 1)
  --rounds N       duoseg then PyTorch, N times over per workload (default 3); each side's fastest
                   round is reported and gives the ratio
  --torch PYTHON   interpreter with torch (default $DUOSEG_PYTHON, else python3); none skips PyTorch

Other processes distort both timings (PyTorch's OpenMP threads far more): compare the ratio within
one run, and repeat it.";

/// Runs `ours` and `theirs` (None: no PyTorch) alternately `rounds` times and returns the
/// workload's record: each side's fastest round by `key`, their ratio, and every round's times.
fn in_rounds(
    rounds: usize,
    what: &str,
    key: &str,
    mut ours: impl FnMut() -> Result<Value>,
    mut theirs: Option<impl FnMut() -> Result<Value>>,
) -> Result<Value> {
    let time = |v: &Value| v.get(key).and_then(Value::as_f64);
    // the result with the shorter time; one without a time only where there is nothing else
    let faster = |best: Option<Value>, new: Value| match (&best, time(&new)) {
        (Some(_), None) => best,
        (Some(b), Some(t)) if time(b).is_some_and(|bt| bt <= t) => best,
        _ => Some(new),
    };
    let (mut best_ours, mut best_theirs) = (None, None);
    let mut per_round = Vec::new();
    for _ in 0..rounds.max(1) {
        let o = ours()?;
        let t = match theirs.as_mut() {
            Some(f) => f()?,
            None => Value::Null,
        };
        per_round.push(json!({
            "duoseg_s": time(&o),
            "pytorch_s": time(&t),
            "ratio": ratio(&o, &t, key),
        }));
        best_ours = faster(best_ours, o);
        if !t.is_null() {
            best_theirs = faster(best_theirs, t);
        }
    }
    let (ours, theirs) = (
        best_ours.unwrap_or(Value::Null),
        best_theirs.unwrap_or(Value::Null),
    );
    Ok(json!({
        "what": what,
        "ratio_duoseg_over_pytorch": ratio(&ours, &theirs, key),
        "timed_by": key,
        "rounds": per_round,
        "duoseg": ours,
        "pytorch": theirs,
    }))
}

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

/// `python -c` code that runs `argv` (a script and its arguments) in-process and then prints the
/// process's peak RSS as one JSON line, so the measured peak is the script's own.
fn in_process(argv: &[String]) -> String {
    format!(
        "import json, resource, runpy, sys\nsys.argv = {argv:?}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n\
         print(json.dumps({{'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))"
    )
}

/// The CPU model and which of AVX2, FMA and AVX-512 (foundation) it has, from `/proc/cpuinfo`.
fn cpu_info() -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    json!({
        "model": field("model name"),
        "avx2": has("avx2"),
        "fma": has("fma"),
        "avx512f": has("avx512f"),
        "logical_cpus": info.lines().filter(|l| l.starts_with("processor")).count(),
    })
}

/// `a / b` of two JSON numbers `key` (null when either is missing).
fn ratio(ours: &Value, theirs: &Value, key: &str) -> Value {
    match (
        ours.get(key).and_then(Value::as_f64),
        theirs.get(key).and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

/// Runs a PyTorch script in-process and returns its `impl == "pytorch"` line with its peak RSS.
fn pytorch(python: &str, argv: &[String]) -> Result<Value> {
    let lines = capture(Command::new(python).args(["-c", &in_process(argv)]))?;
    let mut result = lines
        .iter()
        .find(|v| v["impl"] == "pytorch")
        .cloned()
        .context("no pytorch result")?;
    result["peak_rss_gib"] = lines
        .last()
        .map(|v| v["peak_rss_gib"].clone())
        .unwrap_or(Value::Null);
    Ok(result)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut crop = vec!["64".to_string(), "64".into(), "48".into()];
    let (mut iters, mut warmup) = ("3".to_string(), "1".to_string());
    let mut rounds = 3usize;
    let mut torch = Some(util::python());
    let mut workloads = vec!["dual".to_string(), "hippocampus".into(), "infer".into()];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            "--workloads" if i + 1 < args.len() => {
                workloads = args[i + 1].split(',').map(|w| w.trim().to_string()).collect();
                if let Some(w) = workloads
                    .iter()
                    .find(|w| !["dual", "hippocampus", "infer"].contains(&w.as_str()))
                {
                    bail!("unknown workload {w:?}: dual, hippocampus or infer");
                }
                i += 2;
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
            "--rounds" if i + 1 < args.len() => {
                rounds = args[i + 1]
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("--rounds {:?}: expected a count >= 1", args[i + 1]))?;
                i += 2;
            }
            "--torch" if i + 1 < args.len() => {
                torch = (args[i + 1] != "none").then(|| args[i + 1].clone());
                i += 2;
            }
            other => bail!("bad option {other:?}; options: --workloads W, --crop D H W, --iters N, --warmup N, --rounds N, --torch PYTHON|none (--help)"),
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
        "-p",
        "duoseg-train",
        "--example",
        "bench_workload",
    ]))?;
    let root = util::root();
    let examples = util::release_dir().join("examples");
    let mut results = serde_json::Map::new();
    let want = |w: &str| workloads.iter().any(|x| x == w);
    if want("dual") {
        let ours = || -> Result<Value> {
            Ok(capture(
                Command::new(examples.join("bench_step"))
                    .arg("--crop")
                    .args(&crop)
                    .args(["--iters", &iters, "--warmup", &warmup]),
            )?
            .remove(0))
        };
        let theirs = torch.as_ref().map(|python| {
            let script = root.join("../shared/reference/bench_torch.py");
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
            move || pytorch(python, &argv)
        });
        results.insert(
            "dual".into(),
            in_rounds(
                rounds,
                "one training step of both nets, 2 labeled + 2 unlabeled crops, every loss, backward, SGD",
                "step_s_median",
                ours,
                theirs,
            )?,
        );
    }
    let torch_script = root.join("tests/reference/bench_workloads_torch.py");
    for (name, workload, config, key, what) in [
        (
            "hippocampus",
            "step",
            "configs/hippocampus.json",
            "step_s_median",
            "the hippocampus default training step: 2 labeled + 1 unlabeled crop of 32x48x32, both students, both EMA teachers",
        ),
        (
            "infer",
            "infer",
            "configs/la.json",
            "infer_s",
            "sliding-window inference of one 144x144x96 volume, 45 windows of 112x112x80 (stride 18x18x4), one window per forward pass (as the PyTorch script), net A, eval mode",
        ),
    ] {
        if !want(name) {
            continue;
        }
        let ours = || -> Result<Value> {
            let mut cmd = Command::new(examples.join("bench_workload"));
            cmd.args(["--workload", workload, "--config", config])
                .args(["--iters", &iters, "--warmup", &warmup]);
            if workload == "infer" {
                // the PyTorch script runs one window per forward pass; configs/la.json's 4 take 13 %
                // less time here and 3x the memory (1.59 vs 0.52 GiB peak)
                cmd.args(["--sw-batch", "1"]);
            }
            Ok(capture(&mut cmd)?.remove(0))
        };
        let theirs = torch.as_ref().map(|python| {
            let argv: Vec<String> = vec![
                torch_script.display().to_string(),
                "--workload".into(),
                workload.into(),
                "--iters".into(),
                iters.clone(),
                "--warmup".into(),
                warmup.clone(),
            ];
            move || pytorch(python, &argv)
        });
        results.insert(name.into(), in_rounds(rounds, what, key, ours, theirs)?);
    }
    // other processes on a shared machine distort both timings (PyTorch's OpenMP threads far more)
    let report = json!({
        "benchmark": "CPU training steps and inference, duoseg beside PyTorch",
        "code": util::code_version(),
        "cpu": cpu_info(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "command": format!("cargo xtask bench step {}", args.join(" ")),
        "workloads": results,
    });
    util::write_json(&root.join("bench").join("step.json"), &report)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
