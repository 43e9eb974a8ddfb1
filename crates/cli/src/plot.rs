//! `duoseg plot RUN`: draws a run's training curves from its `log.jsonl` again, during training
//! or after it (training and evaluation draw them too).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Draw a run's loss curves (figures/losses.png) and pseudo-label diagnosis (figures/diagnosis.png)
/// from its log.jsonl; works while the run is still training.
///
/// Examples:
///   duoseg plot runs/hippocampus
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PlotArgs {
    /// The run folder (holding log.jsonl).
    run: PathBuf,
}

/// Runs `duoseg plot`.
pub fn run(args: PlotArgs) -> Result<crate::Outcome> {
    let log = args.run.join("log.jsonl");
    if !log.is_file() {
        anyhow::bail!(
            "{}: no log.jsonl; is this a run folder?",
            args.run.display()
        );
    }
    let run = duoseg_train::run::RunDir::create(&args.run)
        .with_context(|| format!("cannot use {}", args.run.display()))?;
    for p in duoseg_train::figures::plot_log(&run)? {
        println!("wrote {}", p.display());
    }
    Ok(crate::Outcome::Ok)
}
