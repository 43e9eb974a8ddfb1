//! Small helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `cargo build --release` puts what it builds: `$CARGO_TARGET_DIR/release` when that is set
/// (relative to the workspace root, as cargo takes it), `target/release` otherwise. Every task that
/// builds a binary and then runs it takes the path from here, so a custom target directory never
/// runs a stale binary.
pub fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root().join(t) })
        .unwrap_or_else(|| root().join("target"));
    target.join("release")
}

/// Runs a command in the workspace root, streaming its output, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `path` atomically (temp file + rename), creating parent folders.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    Ok(duoseg_io::fs::write_atomic(path, (text + "\n").as_bytes())?)
}

/// Parses the comma-separated numbers given to `flag` (`--folds 0,1,2`, `--seeds 1,2,3`).
pub fn parse_list(text: &str, flag: &str) -> Result<Vec<u64>> {
    text.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .with_context(|| format!("{flag}: {x:?} is not a number"))
        })
        .collect()
}

/// The Python interpreter of the reference scripts (torch, nibabel, medpy): `$DUOSEG_PYTHON`, else
/// `python3`. Every bench that compares against Python uses it; `--torch PYTHON` overrides it per run.
pub fn python() -> String {
    std::env::var("DUOSEG_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The checked-out commit (`git rev-parse --short HEAD`), with `+dirty` when tracked files outside `bench/`
/// (where benchmarks write their results) differ from it;
/// `unknown` outside a git checkout. Recorded with benchmark runs so reused results name their code.
pub fn code_version() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => match git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench",
        ]) {
            Some(s) if s.is_empty() => head,
            _ => format!("{head}+dirty"),
        },
        None => "unknown".into(),
    }
}
