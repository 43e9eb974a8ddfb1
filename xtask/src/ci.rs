//! `cargo xtask ci`: the checks a change must pass before it lands.

use std::process::Command;

use anyhow::Result;

use crate::util;

pub fn run(_args: &[String]) -> Result<()> {
    util::run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    util::run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    util::run(Command::new("cargo").args(["test", "--workspace", "--release"]))
}
