//! `duoseg model summary`: the layer table of one of the two networks.

use anyhow::Context;
use duoseg_models::{summary, Arch, NetConfig};

/// Inspect the networks.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ModelCommand {
    /// Print each stage's operation, output shape and parameter count, then `parameters: <count>`.
    ///
    /// Examples:
    ///   duoseg model summary --arch vnet
    ///   duoseg model summary --arch resnet34 --classes 3 --input 96,96,96
    #[command(verbatim_doc_comment)]
    Summary(SummaryArgs),
}

#[derive(Debug, clap::Args)]
struct SummaryArgs {
    /// Architecture: vnet (subnet A) or resnet34 (subnet B).
    #[arg(long)]
    arch: Arch,
    /// Output classes, background included.
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Input channels.
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    /// Width of the first stage.
    #[arg(long, default_value_t = 16)]
    base_width: usize,
    /// Input size D,H,W (each a multiple of 16).
    #[arg(long, default_value = "112,112,80")]
    input: String,
    /// Batch size shown in the shapes.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

fn parse_input(s: &str) -> anyhow::Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--input {s:?}: expected three integers D,H,W"))?;
    <[usize; 3]>::try_from(v)
        .map_err(|v| anyhow::anyhow!("--input {s:?}: expected 3 sizes, got {}", v.len()))
}

/// Runs `duoseg model ...`.
pub fn run(args: ModelArgs) -> anyhow::Result<crate::Outcome> {
    let ModelCommand::Summary(a) = args.command;
    let input = parse_input(&a.input)?;
    let cfg = NetConfig {
        in_channels: a.in_channels,
        n_classes: a.classes,
        base_width: a.base_width,
        dropout: true,
    };
    // candle errors may carry a backtrace after the first line; the CLI prints one clear line
    let rows = summary(a.arch, cfg, a.batch, input).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .lines()
                .next()
                .unwrap_or("model summary failed")
        )
    })?;
    let shape = |s: [usize; 5]| format!("{}x{}x{}x{}x{}", s[0], s[1], s[2], s[3], s[4]);
    println!(
        "{:<10} {:<52} {:>20} {:>12}",
        "stage", "operation", "output", "parameters"
    );
    println!(
        "{:<10} {:<52} {:>20} {:>12}",
        "input",
        "",
        shape([a.batch, a.in_channels, input[0], input[1], input[2]]),
        ""
    );
    for r in &rows {
        println!(
            "{:<10} {:<52} {:>20} {:>12}",
            r.name,
            r.op,
            shape(r.output),
            r.params
        );
    }
    println!(
        "parameters: {}",
        rows.iter().map(|r| r.params).sum::<usize>()
    );
    Ok(crate::Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes_parse() {
        assert_eq!(parse_input("112,112,80").unwrap(), [112, 112, 80]);
        assert_eq!(parse_input(" 96, 96 ,96").unwrap(), [96, 96, 96]);
        assert!(parse_input("96,96")
            .unwrap_err()
            .to_string()
            .contains("expected 3 sizes"));
        assert!(parse_input("96,x,96")
            .unwrap_err()
            .to_string()
            .contains("three integers"));
    }
}
