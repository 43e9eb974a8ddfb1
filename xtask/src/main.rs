//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! Architecture invariant: xtask uses none of the duoseg crates; it drives them through `cargo`
//! (and Python reference tools where a benchmark compares against them).

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <task> [args]

tasks:
  ci                 run the checks CI runs (fmt, clippy, tests)
  chaos [--kills N] [--config FILE] [--iters N] [--seed S]
                     kill a training run N times at random points, resume it, and check it equals
                     the run left alone, bit for bit (bench/chaos.json)
  bench <name>       run a benchmark, write bench/<name>.json
  fuzz [--minutes N] [--target nifti|hdf5|all]
                     fuzz the NIfTI and HDF5 readers (cargo-fuzz, fuzz/), N minutes in all (10)
  compare --config FILE [--methods all|m1,m2] [--seeds 1,2,3] [--iters N] [--data DIR]
                     the method and the comparison methods (docs/methods.md) beside supervised-only on
                     the same seeds and budget: a sweep whose variants are methods (bench/sweep-compare-*)
  gpu-build          build the `cuda` feature here (CUDA wheels, stub libcuda) into gpu/bin
  gpu-run -- <bin>   print the device call that runs gpu/bin/<bin> on the GPU machine
  gpu-check          print (or --exec) the CUDA-vs-CPU op check for the GPU machine
  gpu-pack --data DIR  binaries (xz) + a data subset + the PyTorch anchor into gpu/carry for
                     xtask/gpu-la-bench.sh (the GPU figures: duoseg vs PyTorch seconds per step)
  sweep --config FILE --seeds 1,2,3 [--variant LABEL:k=v,...]... [--set k=v]...
                     train variants x seeds (supervised included), write bench/sweep-<name>.json
  reproduce-la --data DIR [--folds 0,1,2,3,4] [--labeled 16|8] [--devices cuda:0,..] [--iters N]
                     [--slurm [--slurm-gpus N]] [--aggregate]
  reproduce-pancreas --data DIR [...]   the K-fold protocol, mean +- std across folds";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn dispatch() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "ci" => ci::run(&rest),
        "chaos" => chaos::chaos(&rest),
        "compare" => compare::run(&rest),
        "bench" => bench::run(&rest),
        "fuzz" => fuzz::run(&rest),
        "gpu-build" => gpu::build(&rest),
        "gpu-run" => gpu::run(&rest),
        "gpu-check" => gpu::check(&rest),
        "gpu-pack" => gpu::pack(&rest),
        "sweep" => sweep::run(&rest),
        "reproduce-la" => reproduce::la(&rest),
        "reproduce-pancreas" => reproduce::pancreas(&rest),
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n{USAGE}"),
    }
}

mod bench;
mod chaos;
mod ci;
mod compare;
mod fuzz;
mod gpu;
mod reproduce;
mod sweep;
mod util;
