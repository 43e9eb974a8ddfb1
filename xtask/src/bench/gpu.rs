//! `cargo xtask bench gpu`: prepares the GPU benchmark's one device call and, once its results are
//! back, writes `bench/gpu.json`.
//!
//! - `cargo xtask bench gpu [--no-build]`: builds the CUDA binaries it needs (`gpu-build --only
//!   bench_step --only bench_workload --only gpu_check`), packs them xz-compressed with the PyTorch
//!   anchor (`../shared/reference/bench_torch.py`, `vnet_ref.py`) into `gpu/carry-bench` and prints
//!   the device call: carry `["gpu/carry-bench"]`, command `bash xtask/gpu-bench.sh gpu/carry-bench
//!   $OUT/gpu 20 && rm -rf $OUT/gpu`. Random data only: no dataset travels.
//! - `cargo xtask bench gpu --collect DIR`: `DIR` is the unpacked `gpu/` folder (or the `gpu.tgz`)
//!   that came back; writes `bench/gpu.json` from it (`xtask/gpu_bench_summary.py`) with this
//!   checkout's commit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

const USAGE: &str = "usage: cargo xtask bench gpu [--no-build] [--reference DIR] | --collect DIR";

/// The binaries the device script runs.
const BINARIES: [&str; 3] = ["gpu_check", "bench_step", "bench_workload"];

pub fn run(args: &[String]) -> Result<()> {
    let (mut build, mut collect) = (true, None);
    let mut reference = util::root().join("../shared/reference");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-build" => build = false,
            "--collect" => collect = Some(PathBuf::from(it.next().context("--collect needs DIR")?)),
            "--reference" => reference = PathBuf::from(it.next().context("--reference needs DIR")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    match collect {
        Some(dir) => collect_results(&dir),
        None => prepare(build, &reference),
    }
}

/// Builds (unless `--no-build`) and packs `gpu/carry-bench`; prints the device call.
fn prepare(build: bool, reference: &Path) -> Result<()> {
    if build {
        let only: Vec<String> = BINARIES
            .iter()
            .flat_map(|b| ["--only".to_string(), b.to_string()])
            .collect();
        crate::gpu::build(&only)?;
    }
    let root = util::root();
    let carry = root.join("gpu/carry-bench");
    if carry.exists() {
        fs::remove_dir_all(&carry).with_context(|| format!("cannot remove {}", carry.display()))?;
    }
    fs::create_dir_all(carry.join("bin"))?;
    fs::create_dir_all(carry.join("ref"))?;
    for name in BINARIES {
        let bin = root.join("gpu/bin").join(name);
        if !bin.is_file() {
            bail!(
                "{} is missing (cargo xtask gpu-build --only {name})",
                bin.display()
            );
        }
        let dest = carry.join("bin").join(format!("{name}.xz"));
        let file =
            fs::File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let status = Command::new("xz")
            .args(["-6", "-T0", "-c"])
            .arg(&bin)
            .stdout(file)
            .status()
            .context("cannot run xz (install the xz-utils package)")?;
        if !status.success() {
            bail!("xz failed on {}", bin.display());
        }
    }
    for file in ["bench_torch.py", "vnet_ref.py"] {
        let src = reference.join(file);
        fs::copy(&src, carry.join("ref").join(file)).with_context(|| {
            format!(
                "cannot copy {} (the PyTorch anchor; --reference DIR)",
                src.display()
            )
        })?;
    }
    let total = crate::gpu::dir_size(&carry)?;
    if total > crate::gpu::CARRY_LIMIT {
        bail!(
            "{} holds {:.1} MiB, more than the {} MiB one device call carries",
            carry.display(),
            total as f64 / (1 << 20) as f64,
            crate::gpu::CARRY_LIMIT >> 20
        );
    }
    println!(
        "gpu/carry-bench: {:.1} MiB. Device call (one, about 5 minutes):\n  carry [\"gpu/carry-bench\"]\n  command: bash xtask/gpu-bench.sh gpu/carry-bench $OUT/gpu 20 && rm -rf $OUT/gpu\nthen, with the returned gpu.tgz unpacked: cargo xtask bench gpu --collect <dir>/gpu",
        total as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Writes `bench/gpu.json` from a results folder of `xtask/gpu-bench.sh`.
fn collect_results(dir: &Path) -> Result<()> {
    let root = util::root();
    let mut folder = dir.to_path_buf();
    if dir.extension().is_some_and(|e| e == "tgz") {
        let into = std::env::temp_dir().join(format!("duoseg-gpu-bench-{}", std::process::id()));
        fs::create_dir_all(&into)?;
        util::run(Command::new("tar").arg("xzf").arg(dir).arg("-C").arg(&into))?;
        folder = into.join("gpu");
    }
    if !folder.join("phases.txt").is_file() {
        bail!(
            "{} has no phases.txt: not a gpu-bench.sh results folder",
            folder.display()
        );
    }
    let out = Command::new("python3")
        .arg(root.join("xtask/gpu_bench_summary.py"))
        .arg(&folder)
        .args(["--commit", &util::code_version()])
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "gpu_bench_summary.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("gpu_bench_summary.py printed no JSON")?;
    let path = root.join("bench/gpu.json");
    util::write_json(&path, &value)?;
    println!("wrote {}", path.display());
    Ok(())
}
