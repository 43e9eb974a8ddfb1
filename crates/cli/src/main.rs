//! `duoseg`: semi-supervised 3D medical image segmentation from the command line.
//!
//! Subcommands follow the pipeline's stages (nnU-Net style). Results go to stdout, logs to stderr.
//! Exit codes (ripgrep's convention): 0 ok, 1 a check failed (e.g. `--min-dice`), 2 error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod device;
mod evaluate;
mod infer;
mod inspect;
mod model;
mod train;

#[derive(Debug, Parser)]
#[command(name = "duoseg", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a volume's shape, spacing, data type, intensity statistics and label counts.
    Inspect(inspect::InspectArgs),
    Evaluate(evaluate::EvaluateArgs),
    /// Train both nets (V-Net + ResNet-34 V-Net) with the dual-stream method, then evaluate.
    Train(train::TrainArgs),
    /// Predict label maps for new volumes with a trained run (sliding window).
    Infer(infer::InferArgs),
    /// The built-in first run: synthetic phantoms, the method vs the supervised baseline, on the CPU.
    Demo(demo::DemoArgs),
    /// Inspect the networks: `duoseg model summary --arch vnet|resnet34`.
    Model(model::ModelArgs),
}

/// What a subcommand reports back to `main`: success, or a failed check (exit code 1).
enum Outcome {
    Ok,
    CheckFailed,
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
        Command::Evaluate(args) => evaluate::run(args),
        Command::Train(args) => train::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Model(args) => model::run(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Training allocates the same large activation buffers every step: keep freed memory for reuse
    // instead of paying page faults for each new buffer (measured in duoseg_nn3d::memory).
    duoseg_nn3d::retain_freed_memory();
    // Candle's CPU workers otherwise spin long enough to slow the convolutions that follow them.
    duoseg_nn3d::calm_candle_workers();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}
