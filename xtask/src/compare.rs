//! `cargo xtask compare`: the comparison table of the seed paper's Tables 1-2 on any config: the
//! method and the comparison methods, each on the same seeds, crops, iterations and evaluation,
//! next to supervised-only, with the per-seed paired differences (a `sweep` whose variants are
//! methods). Writes `bench/sweep-<name>.{json,md}`.

use anyhow::{bail, Context, Result};

/// Every method `--methods all` runs besides supervised-only (which always runs). The binary
/// checks the names, so a method added to duoseg only needs adding here to join `all`.
const ALL: [&str; 7] = [
    "duoseg",
    "mean_teacher",
    "ua_mt",
    "sassnet",
    "dtc",
    "mc_net",
    "mcf",
];

const USAGE: &str =
    "usage: cargo xtask compare --config FILE [--methods all|duoseg,mean_teacher,ua_mt,sassnet,dtc,mc_net,mcf]
       [--seeds 1,2,3] [--name NAME] [--iters N] [--data DIR] [--set key=value]... [--emit-jobs FILE]";

pub fn run(args: &[String]) -> Result<()> {
    let mut methods: Vec<String> = ALL.iter().map(|m| m.to_string()).collect();
    let mut config = None;
    let mut name = None;
    let mut passed: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--methods" => {
                let v = val()?;
                if v != "all" {
                    methods = v.split(',').map(|m| m.trim().to_string()).collect();
                }
            }
            "--config" => config = Some(val()?),
            "--name" => name = Some(val()?),
            "--seeds" | "--iters" | "--data" | "--set" | "--emit-jobs" => {
                let v = val()?;
                passed.extend([a.clone(), v]);
            }
            other => bail!("unknown compare argument {other:?}\n{USAGE}"),
        }
    }
    let Some(config) = config else {
        bail!("{USAGE}")
    };
    let stem = std::path::Path::new(&config)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config")
        .to_string();
    let mut sweep = vec![
        "--config".to_string(),
        config,
        "--name".to_string(),
        name.unwrap_or(format!("compare-{stem}")),
    ];
    sweep.extend(passed);
    if !methods.iter().any(|m| m == "duoseg") {
        sweep.push("--no-default".into());
    }
    for m in methods
        .iter()
        .filter(|m| *m != "duoseg" && *m != "supervised")
    {
        // the comparison methods read `baseline.*`, not duoseg's `ema_teacher`
        sweep.extend([
            "--variant".to_string(),
            format!("{m}:method={m},ema_teacher=null"),
        ]);
    }
    crate::sweep::run(&sweep)
}
