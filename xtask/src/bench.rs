//! `cargo xtask bench <name>`: benchmarks that write `bench/<name>.json`.
//!
//! Convention: the Rust side of a benchmark is an example binary of the crate it measures
//! (`crates/<crate>/examples/bench_<name>.rs`, run in release) that prints one JSON object on stdout;
//! the task runs it, runs the Python reference in the same invocation where the benchmark compares
//! against one, and writes the combined JSON atomically.

use anyhow::{bail, Result};

mod demo;
mod gpu;
mod hippocampus;
mod io;
mod metrics;
mod nn3d;
mod step;

const BENCHES: &str = "demo, gpu, hippocampus, io, metrics, nn3d, step";

pub fn run(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        bail!("usage: cargo xtask bench <name>; benchmarks: {BENCHES}");
    };
    match name.as_str() {
        "demo" => demo::run(&args[1..]),
        "gpu" => gpu::run(&args[1..]),
        "hippocampus" => hippocampus::run(&args[1..]),
        "io" => io::run(&args[1..]),
        "metrics" => metrics::run(&args[1..]),
        "nn3d" => nn3d::run(&args[1..]),
        "step" => step::run(&args[1..]),
        other => bail!("unknown benchmark {other:?}; benchmarks: {BENCHES}"),
    }
}
