//! `cargo xtask fuzz [--minutes N] [--target nifti|hdf5|all]`: fuzz the NIfTI and HDF5 readers of
//! duoseg-io with cargo-fuzz (libFuzzer) for N minutes in all (default 10), split evenly over the
//! targets of `fuzz/` (its own workspace; docs/reliability.md).
//!
//! Steps: install cargo-fuzz if `cargo fuzz --version` fails; pick a toolchain (nightly if rustup
//! lists one, else `rustup toolchain install nightly --profile minimal`, else stable with
//! `RUSTC_BOOTSTRAP=1` and `--sanitizer none`, which loses AddressSanitizer); write the seed corpora
//! with duoseg-io's example `fuzz_seeds` into `fuzz/corpus/<target>` (git-ignored, never real data);
//! build; run each target in one process (`--jobs 1`) with `-max_total_time`, a 10 s limit per
//! input (a hang) and a 512 MB limit per allocation (an input of a few KB must not ask for more).
//! The full libFuzzer log goes to `fuzz/logs/<target>.log`, crash, timeout and out-of-memory inputs
//! to `fuzz/artifacts/<target>/` (both git-ignored). Prints executions per target from libFuzzer's
//! final stats; exits non-zero naming the artifact of every target that failed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::util;

const TARGETS: [&str; 2] = ["nifti", "hdf5"];
const USAGE: &str = "usage: cargo xtask fuzz [--minutes N] [--target nifti|hdf5|all]";

/// How `cargo fuzz` is run: on nightly, or on stable with `RUSTC_BOOTSTRAP=1` and no sanitizer.
#[derive(Clone, Copy, PartialEq)]
enum Toolchain {
    Nightly,
    StableBootstrap,
}

impl Toolchain {
    /// `cargo [+nightly] fuzz <sub>` with the toolchain's flags.
    fn cargo_fuzz(self, sub: &str) -> Command {
        let mut cmd = Command::new("cargo");
        match self {
            Toolchain::Nightly => {
                cmd.args(["+nightly", "fuzz", sub]);
            }
            Toolchain::StableBootstrap => {
                cmd.args(["fuzz", sub, "--sanitizer", "none"])
                    .env("RUSTC_BOOTSTRAP", "1");
            }
        }
        cmd.arg("--fuzz-dir").arg(util::root().join("fuzz"));
        cmd
    }
}

/// What libFuzzer reported for one target.
#[derive(Default)]
struct Stats {
    execs: Option<u64>,
    execs_per_sec: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    /// `Done N runs in S second(s)`: the seconds.
    seconds: Option<u64>,
    /// The first `ERROR:` line and the panic message, if any.
    error: Vec<String>,
    /// `Test unit written to PATH`.
    artifacts: Vec<PathBuf>,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut minutes = 10.0f64;
    let mut targets: Vec<&str> = TARGETS.to_vec();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--minutes" => {
                minutes = value
                    .parse()
                    .with_context(|| format!("--minutes {value:?}"))?
            }
            "--target" => {
                targets = match value.as_str() {
                    "all" => TARGETS.to_vec(),
                    t => match TARGETS.iter().find(|&&x| x == t) {
                        Some(&x) => vec![x],
                        None => bail!("unknown fuzz target {t:?}\n{USAGE}"),
                    },
                }
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !(minutes.is_finite() && minutes > 0.0) {
        bail!("--minutes must be positive");
    }
    let seconds = ((minutes * 60.0 / targets.len() as f64).round() as u64).max(1);

    ensure_cargo_fuzz()?;
    let toolchain = pick_toolchain();
    let root = util::root();
    let fuzz_dir = root.join("fuzz");
    let corpus = fuzz_dir.join("corpus");
    util::run(
        Command::new("cargo")
            .args([
                "run",
                "--release",
                "-p",
                "duoseg-io",
                "--example",
                "fuzz_seeds",
                "--",
            ])
            .arg(&corpus),
    )?;
    for target in &targets {
        util::run(toolchain.cargo_fuzz("build").arg(target))?;
    }
    let logs = fuzz_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    eprintln!(
        "fuzzing {} for {seconds} s each, one process each{}",
        targets.join(", "),
        if toolchain == Toolchain::StableBootstrap {
            " (stable toolchain, RUSTC_BOOTSTRAP=1, no sanitizer)"
        } else {
            ""
        }
    );
    let mut results = Vec::new();
    for target in &targets {
        let stats = fuzz_one(
            toolchain,
            target,
            seconds,
            &logs.join(format!("{target}.log")),
        )?;
        results.push((*target, stats));
    }

    println!(
        "\n| target | seconds | executions | exec/s | new corpus units | peak RSS (MB) | result |"
    );
    println!("|---|---|---|---|---|---|---|");
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let mut failures = Vec::new();
    for (target, s) in &results {
        let result = if s.artifacts.is_empty() && s.error.is_empty() {
            "clean".to_string()
        } else {
            let names: Vec<String> = s
                .artifacts
                .iter()
                .map(|a| a.strip_prefix(&root).unwrap_or(a).display().to_string())
                .collect();
            failures.push(format!(
                "{target}: {} ({})",
                s.error.join("; "),
                if names.is_empty() {
                    "no artifact written".to_string()
                } else {
                    names.join(", ")
                }
            ));
            format!("FAILED: {}", names.join(", "))
        };
        println!(
            "| {target} | {} | {} | {} | {} | {} | {result} |",
            show(s.seconds),
            show(s.execs),
            show(s.execs_per_sec),
            show(s.new_units),
            show(s.peak_rss_mb),
        );
    }
    if !failures.is_empty() {
        let (cargo_fuzz, flags) = match toolchain {
            Toolchain::Nightly => ("cargo +nightly fuzz", ""),
            Toolchain::StableBootstrap => ("RUSTC_BOOTSTRAP=1 cargo fuzz", " --sanitizer none"),
        };
        bail!(
            "fuzzing found failures (reproduce: {cargo_fuzz} run{flags} <target> <artifact>; \
             minimise: {cargo_fuzz} tmin{flags} <target> <artifact>):\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Installs cargo-fuzz unless `cargo fuzz --version` works.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Nightly if rustup has (or can install) it, else stable with `RUSTC_BOOTSTRAP=1`.
fn pick_toolchain() -> Toolchain {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(listed) = listed else {
        eprintln!("rustup not found: fuzzing on the active toolchain with RUSTC_BOOTSTRAP=1 and --sanitizer none (no AddressSanitizer)");
        return Toolchain::StableBootstrap;
    };
    if listed.lines().any(|l| l.starts_with("nightly")) {
        return Toolchain::Nightly;
    }
    eprintln!("$ rustup toolchain install nightly --profile minimal");
    let installed = Command::new("rustup")
        .args(["toolchain", "install", "nightly", "--profile", "minimal"])
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        Toolchain::Nightly
    } else {
        eprintln!("no nightly toolchain: fuzzing on stable with RUSTC_BOOTSTRAP=1 and --sanitizer none (no AddressSanitizer)");
        Toolchain::StableBootstrap
    }
}

/// Runs one target for `seconds`, streaming libFuzzer's output (less its per-input lines, which
/// only go to `log`) and collecting its final stats.
fn fuzz_one(toolchain: Toolchain, target: &str, seconds: u64, log: &Path) -> Result<Stats> {
    let mut cmd = toolchain.cargo_fuzz("run");
    cmd.args([target, "--jobs", "1", "--"]).args([
        format!("-max_total_time={seconds}"),
        "-timeout=10".into(),
        "-rss_limit_mb=2048".into(),
        "-malloc_limit_mb=512".into(),
        "-print_final_stats=1".into(),
    ]);
    eprintln!("$ {cmd:?}");
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut child = cmd
        .current_dir(util::root())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut stats = Stats::default();
    let mut panic_next = false;
    let stderr = child.stderr.take().context("no stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        writeln!(file, "{line}").with_context(|| format!("cannot write {}", log.display()))?;
        // "#1234\tNEW    cov: ..." (a tab after the count): one line per new corpus input.
        let per_input = line.starts_with('#')
            && matches!(
                line.split_whitespace().nth(1),
                Some("NEW" | "REDUCE" | "RELOAD")
            );
        if !per_input && !line.contains("# Uses:") {
            eprintln!("{line}");
        }
        let num = |prefix: &str| -> Option<u64> {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.trim().parse().ok())
        };
        if let Some(n) = num("stat::number_of_executed_units:") {
            stats.execs = Some(n);
        } else if let Some(n) = num("stat::average_exec_per_sec:") {
            stats.execs_per_sec = Some(n);
        } else if let Some(n) = num("stat::new_units_added:") {
            stats.new_units = Some(n);
        } else if let Some(n) = num("stat::peak_rss_mb:") {
            stats.peak_rss_mb = Some(n);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 12345 runs in 300 second(s)"
            stats.seconds = rest.split_whitespace().nth(3).and_then(|s| s.parse().ok());
        } else if let Some(at) = line.find("Test unit written to ") {
            stats.artifacts.push(PathBuf::from(
                line[at + "Test unit written to ".len()..].trim(),
            ));
        } else if panic_next {
            stats.error.push(line.trim().to_string());
            panic_next = false;
        } else if line.contains("panicked at") {
            stats.error.push(line.trim().to_string());
            panic_next = true;
        } else if line.contains("ERROR: ") && stats.error.is_empty() {
            stats.error.push(line.trim().to_string());
        }
    }
    let status = child.wait().with_context(|| format!("{cmd:?}"))?;
    if stats.seconds.is_none() {
        stats.seconds = Some(clock.elapsed().as_secs());
    }
    if !status.success() {
        // Artifacts libFuzzer wrote that its output did not name (cargo-fuzz does the same).
        let dir = util::root().join("fuzz/artifacts").join(target);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let new = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started);
            let path = entry.path();
            if new && !stats.artifacts.contains(&path) {
                stats.artifacts.push(path);
            }
        }
        if stats.error.is_empty() {
            stats.error.push(format!("exited with {status}"));
        }
    }
    Ok(stats)
}
