//! `duoseg train`: train both nets on a dataset, then evaluate the final model on the test cases.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use duoseg_metrics::{table_rows, TABLE_HEADER};
use duoseg_train::run::{LogRecord, RunDir};
use duoseg_train::{Method, TrainConfig};
use duoseg_train::{Observer, RunOutcome, TrainOptions};

/// Train the dual-stream method (V-Net + ResNet-34 V-Net) on labeled and unlabeled volumes.
///
/// Writes the run folder OUT: config.json (the resolved config, before step 1), log.jsonl (one line
/// per iteration: every loss term, T, alpha_t, lambda_c, lr, teacher, reliable fraction, |M_diff|,
/// s/step), checkpoints/iter-N.safetensors (the newest `checkpoint.keep_last`), final.safetensors,
/// then evaluates the final model on the test list: summary.json, summary.md, figures/, predictions/.
/// Ctrl-C writes a checkpoint and exits; `--resume` continues from the newest checkpoint.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  duoseg train --config configs/la.json --data ../shared/data/la2018 --out runs/la
  duoseg train --config configs/hippocampus.json --iters 300 --method supervised --out runs/hip-sup
  duoseg train --config configs/la.json --out runs/la --resume
  duoseg train --config configs/la.json --set loss.alpha0=0.1 --set eval.nets=a --device cuda:0")]
pub struct TrainArgs {
    /// Run config (JSON, see configs/).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Dataset folder (MSD layout, UA-MT h5 layout, or images/ + labels/); overrides data.root.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run folder [default: runs/<name>-<method>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Total iterations (overrides `iterations`; the lr steps stay where the config puts them).
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,
    /// Number of labeled training cases (overrides data.labeled).
    #[arg(long, value_name = "N")]
    pub labeled: Option<usize>,
    /// Method: duoseg, supervised, no_reg, no_contrastive, reference_code, mean_teacher, ua_mt, sassnet, dtc, mc_net, mcf (docs/methods.md).
    #[arg(long, value_name = "METHOD")]
    pub method: Option<Method>,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    /// Seed of every random stream (overrides `seed`).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Continue from the newest checkpoint in OUT/checkpoints (it must come from the same config and
    /// cases; iterations, checkpoint, log_every and eval may change).
    #[arg(long)]
    pub resume: bool,
    /// Replace the outputs of a previous run in OUT (without it, or --resume, such a folder is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Set any config field, e.g. `loss.alpha0=0.1` or `eval.nets="a"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// Renders progress on stderr: a live line on a terminal, else a plain line every `every` iterations.
pub struct Progress {
    tty: bool,
    every: usize,
    label: String,
    started: Instant,
    first_iter: Option<usize>,
}

impl Progress {
    /// Progress for a run called `label`.
    pub fn new(label: &str, every: usize, no_progress: bool) -> Self {
        Progress {
            tty: !no_progress && std::io::stderr().is_terminal(),
            every: every.max(1),
            label: label.to_string(),
            started: Instant::now(),
            first_iter: None,
        }
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Observer for Progress {
    fn iteration(&mut self, rec: &LogRecord, total: usize) {
        let first = *self.first_iter.get_or_insert(rec.iter - 1);
        let done = rec.iter - first;
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = elapsed / done.max(1) as f64 * (total - rec.iter) as f64;
        let g = |k: &str| rec.terms.get(k).copied().unwrap_or(f64::NAN);
        let semi = match (rec.terms.get("unsup"), rec.terms.get("reg")) {
            (Some(u), Some(r)) => format!(" unsup {u:.3} reg {r:.3}"),
            _ => String::new(),
        };
        // each net's supervised loss: its CE + Dice terms, or the one term a method logs for both
        let t = |k: &str| rec.terms.get(k).copied();
        let sup_of = |net: &str| {
            t(&format!("supervised_{net}"))
                .or_else(|| Some(t(&format!("ce_{net}"))? + t(&format!("dice_{net}"))?))
        };
        let sup = match (sup_of("a"), sup_of("b")) {
            (Some(a), Some(b)) => format!(" sup {a:.3}/{b:.3}"),
            (Some(a), None) => format!(" sup {a:.3}"),
            _ => String::new(),
        };
        let line = format!(
            "[{}] {}/{} loss {:.4}{sup}{semi} lr {:.0e} {:.2}s/it eta {}",
            self.label,
            rec.iter,
            total,
            g("total"),
            rec.lr,
            rec.s_per_step,
            fmt_secs(eta)
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            if rec.iter == total {
                eprintln!();
            }
        } else if rec.iter % self.every == 0 || rec.iter == total || done == 1 {
            eprintln!("{line}");
        }
    }

    fn message(&mut self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("[{}] {msg}", self.label);
    }
}

/// Applies the command-line overrides to a loaded config.
pub fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::load(&args.config)?;
    if let Some(n) = args.iters {
        cfg.iterations = n;
    }
    if let Some(n) = args.labeled {
        cfg.data.labeled = duoseg_train::config::LabeledCases::Count(n);
        if let Some(s) = cfg.data.synthetic.as_mut() {
            s.labeled = n;
        }
    }
    if let Some(m) = args.method {
        cfg.method = m;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    for a in &args.set {
        cfg = cfg.with_override(a)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `duoseg train`.
pub fn run(args: TrainArgs) -> Result<crate::Outcome> {
    let cfg = resolve_config(&args)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", cfg.name, cfg.method.name()))
    });
    let run = RunDir::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let device = args.device.open()?;
    let stop = crate::signals::install()?;
    let mut progress = Progress::new(
        &format!("{}/{}", cfg.name, cfg.method.name()),
        cfg.log_every,
        args.no_progress,
    );
    let opts = TrainOptions {
        run,
        device,
        resume: args.resume,
        overwrite: args.overwrite,
        stop: stop.flag.clone(),
        observer: &mut progress,
    };
    match duoseg_train::run_training(&cfg, args.data.as_deref(), opts)? {
        RunOutcome::TrainingStopped(n) => {
            eprintln!(
                "interrupted after {n} iterations (checkpoint written); continue with --resume --out {}",
                out.display()
            );
            Ok(crate::Outcome::Interrupted(stop.exit_code()))
        }
        RunOutcome::EvaluationStopped => {
            eprintln!(
                "interrupted during evaluation; training is complete ({}); evaluate with --resume --out {}",
                out.join("final.safetensors").display(),
                out.display()
            );
            Ok(crate::Outcome::Interrupted(stop.exit_code()))
        }
        RunOutcome::Evaluated(report) => {
            println!("{TABLE_HEADER}");
            for row in table_rows(cfg.method.name(), &report) {
                println!("{row}");
            }
            eprintln!("run folder: {}", out.display());
            Ok(crate::Outcome::Ok)
        }
    }
}
