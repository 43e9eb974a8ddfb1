//! `duoseg`: semi-supervised 3D medical image segmentation from the command line.
//!
//! Subcommands follow the pipeline's stages (nnU-Net style). Results go to stdout, logs to stderr.
//! Exit codes: 0 ok; 1 a runtime error (unreadable data, a failed run) or a failed check
//! (`--min-dice`, `inspect DIR` with errors); 2 a usage or config error; 130 / 143 a run stopped by
//! SIGINT / SIGTERM (after writing a checkpoint). A closed output pipe ends the process quietly.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod convert;
mod demo;
mod device;
mod evaluate;
mod folds;
mod infer;
mod inspect;
mod model;
mod plot;
mod signals;
mod train;
mod weights;

#[derive(Debug, Parser)]
#[command(
    name = "duoseg",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 ok; 1 runtime error or failed check (--min-dice, inspect DIR); 2 usage or \
                  config error; 130 / 143 a run stopped by SIGINT / SIGTERM after writing a checkpoint."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a volume's shape, spacing, data type, intensity statistics and label counts.
    Inspect(inspect::InspectArgs),
    Convert(convert::ConvertArgs),
    Evaluate(evaluate::EvaluateArgs),
    /// Write seeded K-fold cross-validation splits of a dataset folder (folds.json).
    Folds(folds::FoldsArgs),
    /// Train a method (duoseg: V-Net + ResNet-34 V-Net; or a comparison method), then evaluate.
    Train(train::TrainArgs),
    /// Predict label maps for new volumes with a trained run (sliding window).
    Infer(infer::InferArgs),
    /// The built-in first run: synthetic phantoms, the method vs the supervised baseline, on the CPU.
    Demo(demo::DemoArgs),
    /// Inspect the networks: `duoseg model summary --arch vnet|resnet34`.
    Model(model::ModelArgs),
    /// Draw a run's loss and pseudo-label diagnosis curves from its log.jsonl.
    Plot(plot::PlotArgs),
    /// Write one net of a trained model as a plain PyTorch state_dict (safetensors).
    Export(weights::ExportArgs),
    /// Build a duoseg model file from PyTorch state_dicts and a config.
    Import(weights::ImportArgs),
}

/// What a subcommand reports back to `main`: success, a failed check (exit code 1), or a run
/// stopped by a signal (its exit code).
enum Outcome {
    Ok,
    CheckFailed,
    Interrupted(u8),
}

/// 2 for a usage or config error (the user's command, config file or run folder choice must
/// change), else 1.
fn error_code(err: &anyhow::Error) -> u8 {
    let is_config = err.chain().any(|e| {
        e.is::<duoseg_train::config::ConfigError>()
            || matches!(
                e.downcast_ref::<duoseg_train::TrainError>(),
                Some(duoseg_train::TrainError::Config(_) | duoseg_train::TrainError::RunFolder(_))
            )
    });
    if is_config {
        2
    } else {
        1
    }
}

/// The error and its causes on one line, each cause once: typed errors already carry their cause
/// in their message, so a cause whose text is already there is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Folds(args) => folds::run(args),
        Command::Train(args) => train::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Model(args) => model::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Export(args) => weights::export(args),
        Command::Import(args) => weights::import(args),
    }
}

fn main() -> ExitCode {
    signals::quiet_broken_pipe();
    let cli = Cli::parse();
    // Training allocates the same large activation buffers every step: keep freed memory for reuse
    // instead of paying page faults for each new buffer (measured in duoseg_nn3d::memory).
    duoseg_nn3d::retain_freed_memory();
    // Candle's CPU workers otherwise spin long enough to slow the convolutions that follow them.
    duoseg_nn3d::calm_candle_workers();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted(code)) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(error_code(&err))
        }
    }
}
