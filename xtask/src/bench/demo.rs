//! `cargo xtask bench demo [--seed S]`: runs `duoseg demo` (the method and the supervised baseline on
//! the built-in phantoms, CPU) exactly as a new user does and writes `bench/demo.json`: both
//! evaluation summaries, the table's headline numbers, the wall time and the code version.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

pub fn run(args: &[String]) -> Result<()> {
    let root = util::root();
    let mut extra: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => {
                let s = it.next().context("--seed needs a value")?;
                extra.extend(["--seed".to_string(), s.clone()]);
            }
            other => bail!("unknown argument {other:?} (--seed S)"),
        }
    }
    util::run(Command::new("cargo").args(["build", "--release", "-p", "cli"]))?;
    let out = root.join("runs/bench-demo");
    let t0 = Instant::now();
    util::run(
        Command::new(util::release_dir().join("duoseg"))
            .args(["demo", "--no-progress", "--out"])
            .arg(&out)
            .args(&extra),
    )?;
    let wall_s = t0.elapsed().as_secs_f64();
    let p = out.join("demo.json");
    let reports: Value = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
    )?;
    let headline = |m: &str| {
        let s = &reports[m]["summary"]["1"];
        json!({
            "dice": s["dice"]["mean"],
            "jaccard": s["jaccard"]["mean"],
            "hd95_vox": s["hd95_vox"]["mean"],
            "asd_vox": s["asd_vox"]["mean"],
            "test_cases": reports[m]["cases"].as_object().map_or(0, |c| c.len()),
        })
    };
    let result = json!({
        "command": "duoseg demo (configs/demo.json)",
        "extra_args": extra,
        "code": util::code_version(),
        "wall_s": wall_s,
        "duoseg": headline("duoseg"),
        "supervised": headline("supervised"),
        "reports": reports,
    });
    println!(
        "demo: duoseg Dice {}, supervised {} ({wall_s:.0} s)",
        result["duoseg"]["dice"], result["supervised"]["dice"]
    );
    util::write_json(&root.join("bench/demo.json"), &result)
}
