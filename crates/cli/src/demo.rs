//! `duoseg demo`: the built-in first run on synthetic phantoms (no data, no GPU needed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use duoseg_metrics::{summary_markdown, table_rows, TABLE_HEADER};
use duoseg_train::run::{write_atomic, write_json, RunDir};
use duoseg_train::{Method, TrainConfig};
use duoseg_train::{RunOutcome, TrainOptions};

use crate::train::Progress;

/// The demo's config (also in configs/demo.json).
const DEMO_CONFIG: &str = include_str!("../../../configs/demo.json");

/// Train the method and the supervised-only baseline on a generated dataset and compare them.
///
/// Generates deterministic 3D phantoms (a deformed ellipsoidal organ among tubes and blobs of
/// similar intensity, smooth bias field, noise): a few labeled and more unlabeled training volumes
/// plus held-out test volumes. Trains duoseg and the supervised baseline with the same budget and
/// seed on the CPU, evaluates both with the sliding window, prints the two rows side by side and
/// writes OUT/duoseg/, OUT/supervised/ (full run folders: predictions, figures, summaries),
/// OUT/summary.md and OUT/demo.json = {"duoseg": <evaluate --json>, "supervised": <evaluate --json>}.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg demo
  duoseg demo --out runs/my-demo --iters 100")]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/demo", value_name = "DIR")]
    pub out: PathBuf,
    /// Iterations per method (default: the demo config's).
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,
    /// Seed (default: the demo config's).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// The demo config with the command-line overrides applied.
pub fn demo_config(iters: Option<usize>, seed: Option<u64>) -> Result<TrainConfig> {
    let mut cfg: TrainConfig = serde_json::from_str(DEMO_CONFIG).context("built-in demo config")?;
    if let Some(n) = iters {
        cfg.iterations = n;
    }
    if let Some(s) = seed {
        cfg.seed = s;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `duoseg demo`.
pub fn run(args: DemoArgs) -> Result<crate::Outcome> {
    let base = demo_config(args.iters, args.seed)?;
    let device = args.device.open()?;
    let stop = crate::signals::install()?;
    let mut reports = Vec::new();
    for method in [Method::Duoseg, Method::Supervised] {
        let cfg = TrainConfig {
            method,
            ..base.clone()
        };
        let dir = args.out.join(method.name());
        let run =
            RunDir::create(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut progress = Progress::new(
            &format!("demo/{}", method.name()),
            cfg.log_every,
            args.no_progress,
        );
        let t0 = Instant::now();
        let opts = TrainOptions {
            run,
            device: device.clone(),
            resume: false,
            // the demo always starts afresh in its own folder
            overwrite: true,
            stop: stop.flag.clone(),
            observer: &mut progress,
        };
        let report = match duoseg_train::run_training(&cfg, None, opts)? {
            RunOutcome::Evaluated(report) => report,
            RunOutcome::TrainingStopped(n) => {
                eprintln!("interrupted after {n} iterations of {}", method.name());
                return Ok(crate::Outcome::Interrupted(stop.exit_code()));
            }
            RunOutcome::EvaluationStopped => {
                eprintln!("interrupted while evaluating {}", method.name());
                return Ok(crate::Outcome::Interrupted(stop.exit_code()));
            }
        };
        eprintln!(
            "[demo/{}] trained and evaluated in {:.0} s",
            method.name(),
            t0.elapsed().as_secs_f64()
        );
        reports.push((method.name().to_string(), report));
    }
    println!("{TABLE_HEADER}");
    for (m, r) in &reports {
        for row in table_rows(m, r) {
            println!("{row}");
        }
    }
    let json = serde_json::json!({ "duoseg": reports[0].1, "supervised": reports[1].1 });
    write_json(&args.out.join("demo.json"), &json).context("cannot write demo.json")?;
    let rows: Vec<(String, &_)> = reports.iter().map(|(m, r)| (m.clone(), r)).collect();
    let md = summary_markdown("duoseg demo (synthetic phantoms)", &rows);
    write_atomic(&args.out.join("summary.md"), md.as_bytes()).context("cannot write summary.md")?;
    eprintln!("wrote {}", args.out.join("demo.json").display());
    Ok(crate::Outcome::Ok)
}
