//! `cargo xtask chaos`: kills a real training run at random points many times (SIGKILL mostly,
//! SIGTERM sometimes), resumes it each time, and checks that the final model, the log's loss terms
//! and the evaluation equal those of the same run left alone, bit for bit. Writes bench/chaos.json.
//!
//! The CI-sized version of this check is `tests/it/chaos.rs`; this one runs a bigger config (the demo
//! by default) long enough for kills to land in every phase: start-up, data loading, steps,
//! checkpoint writes, the final save and the evaluation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{code_version, release_dir, root, run, write_json};

const USAGE: &str = "usage: cargo xtask chaos [--kills N] [--config FILE] [--iters N] [--seed S] [--max-wait SECONDS]
  kills a training run N times (default 20) at random points, resumes it, and compares it with
  the same run uninterrupted (default config configs/demo.json, 40 iterations); waits before a
  kill are uniform in [0.05, 0.05 + MAX-WAIT] s (default: 2 x the reference run / N)";

struct Args {
    kills: usize,
    config: PathBuf,
    iters: usize,
    seed: u64,
    max_wait: f64,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        kills: 20,
        config: root().join("configs/demo.json"),
        iters: 40,
        seed: 1,
        max_wait: 0.0,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--kills" => a.kills = value()?.parse()?,
            "--config" => a.config = PathBuf::from(value()?),
            "--iters" => a.iters = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--max-wait" => a.max_wait = value()?.parse()?,
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// SplitMix64: the kill schedule is reproducible from `--seed`.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn train(bin: &Path, a: &Args, out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("train")
        .arg("--no-progress")
        .arg("--config")
        .arg(&a.config)
        .args(["--iters", &a.iters.to_string()])
        .args(["--set", "checkpoint.every=3"])
        .args(["--set", "checkpoint.keep_last=2"])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

/// The log's iteration lines without their timings and time stamps (which differ between any two
/// runs); event lines (start, resume, checkpoints) differ between an interrupted run and one that
/// was not, so they are left out.
fn log_terms(run: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run.join("log.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(l)?;
        if v["event"] != "iteration" {
            continue;
        }
        if let Some(o) = v.as_object_mut() {
            for k in ["time", "s_per_step", "samples_per_s"] {
                o.remove(k);
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// A safetensors file's header (parsed: the order of its metadata keys, a hash map's, varies from
/// process to process) and its tensor bytes. Equal contents mean every tensor is bit-identical.
fn safetensors_content(path: &Path) -> Result<(serde_json::Value, Vec<u8>)> {
    let bytes = read(path)?;
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .context("not a safetensors file")?;
    let header = bytes
        .get(8..8 + n)
        .with_context(|| format!("{}: truncated header", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(header)?;
    Ok((header, bytes[8 + n..].to_vec()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn chaos(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    run(Command::new("cargo").args(["build", "--release", "-p", "cli"]))?;
    let bin = release_dir().join("duoseg");
    let work = root().join("target/chaos");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    eprintln!(
        "chaos: the reference run ({} iterations, uninterrupted)",
        a.iters
    );
    let t0 = Instant::now();
    let reference = work.join("reference");
    let status = train(&bin, &a, &reference, false).status()?;
    if !status.success() {
        bail!("the reference run failed ({status}); run it by hand to see why");
    }
    let full_s = t0.elapsed().as_secs_f64();
    let max_wait = if a.max_wait > 0.0 {
        a.max_wait
    } else {
        full_s / 4.0
    };

    let chaotic = work.join("killed");
    let mut rng = Rng(a.seed);
    let mut events = Vec::new();
    let mut finished_alone = false;
    for k in 0..a.kills {
        let mut child = train(&bin, &a, &chaotic, k > 0).spawn()?;
        let wait = 0.05 + rng.uniform() * max_wait;
        let term = rng.uniform() < 0.2;
        let deadline = Instant::now() + Duration::from_secs_f64(wait);
        while Instant::now() < deadline && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(status) = child.try_wait()? {
            finished_alone = status.success();
            events
                .push(serde_json::json!({"after_s": wait, "signal": null, "exit": status.code()}));
            if finished_alone {
                break;
            }
            continue;
        }
        if term {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
        } else {
            child.kill()?;
        }
        let status = child.wait()?;
        let logged = log_terms(&chaotic).map_or(0, |l| l.len());
        eprintln!(
            "chaos: kill {}/{} after {wait:.2} s with {} at iteration {logged}: {status}",
            k + 1,
            a.kills,
            if term { "SIGTERM" } else { "SIGKILL" }
        );
        events.push(serde_json::json!({
            "after_s": wait,
            "signal": if term { "SIGTERM" } else { "SIGKILL" },
            "exit": status.code(),
            "logged_iterations": logged,
        }));
    }
    if !finished_alone {
        let status = train(&bin, &a, &chaotic, true).status()?;
        if !status.success() {
            bail!("the final --resume failed ({status})");
        }
    }
    let same_model = safetensors_content(&reference.join("final.safetensors"))?
        == safetensors_content(&chaotic.join("final.safetensors"))?;
    let same_log = log_terms(&reference)? == log_terms(&chaotic)?;
    let same_summary =
        read(&reference.join("summary.json"))? == read(&chaotic.join("summary.json"))?;
    let leftovers: Vec<String> = std::fs::read_dir(&chaotic)?
        .chain(std::fs::read_dir(chaotic.join("checkpoints"))?)
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    let ok = same_model && same_log && same_summary && leftovers.is_empty();
    let report = serde_json::json!({
        "benchmark": "chaos: a training run killed at random points and resumed vs the same run uninterrupted",
        "command": format!("cargo xtask chaos {}", args.join(" ")),
        "commit": code_version(),
        "config": a.config.strip_prefix(root()).unwrap_or(&a.config).display().to_string(),
        "iterations": a.iters,
        "seed": a.seed,
        "reference_run_s": full_s,
        "kills": events,
        "final_model_identical": same_model,
        "log_terms_identical": same_log,
        "summary_identical": same_summary,
        "temp_files_left": leftovers,
        "passed": ok,
    });
    write_json(&root().join("bench/chaos.json"), &report)?;
    eprintln!("wrote bench/chaos.json");
    if !ok {
        bail!("resumed run differs: model {same_model}, log {same_log}, summary {same_summary}, temp files {:?}", report["temp_files_left"]);
    }
    eprintln!(
        "chaos: {} interruptions, resumed run identical to the uninterrupted one",
        events.len()
    );
    Ok(())
}
