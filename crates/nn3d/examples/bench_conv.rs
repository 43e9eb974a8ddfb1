//! Timing of the CPU 3D convolution kernels (the conv engineer's own measurement; the project's
//! benchmark is `cargo xtask bench nn3d`).
//!
//! ```text
//! cargo run --release -p duoseg-nn3d --example bench_conv -- [N C D H W] [--runs R] [--k K] [--stride S] [--pad P] [--c-out O] [--transpose]
//! ```
//! Defaults: input (2, 16, 112, 112, 80), 16 -> 16 channels, kernel 3, padding 1, 3 runs. Prints one
//! JSON object with the medians of the forward and the forward + backward (gradients of input, weight
//! and bias): wall time, and CPU time of the process (a fair figure when other jobs share the cores).

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use duoseg_nn3d::ops::{conv3d, conv_transpose3d, Conv3dParams, ConvTranspose3dParams};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time (user + system) of this process in seconds, from `/proc/self/stat` (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Median wall time and median CPU time over `runs` calls of `f`.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, f64)> {
    let (mut wall, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        std::hint::black_box(f()?);
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    Ok((median(wall), median(cpu)))
}

fn main() -> Result<()> {
    duoseg_nn3d::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dims = vec![2usize, 16, 112, 112, 80];
    let (mut runs, mut k, mut stride, mut pad, mut c_out) = (3usize, 3usize, 1usize, 1usize, None);
    let mut transpose = false;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || -> Result<usize> {
            match it.next().map(|v| v.parse::<usize>()) {
                Some(Ok(v)) => Ok(v),
                _ => candle_core::bail!("{a} needs a number"),
            }
        };
        match a.as_str() {
            "--runs" => runs = value()?,
            "--k" => k = value()?,
            "--stride" => stride = value()?,
            "--pad" => pad = value()?,
            "--c-out" => c_out = Some(value()?),
            "--transpose" => transpose = true,
            other => match other.parse::<usize>() {
                Ok(v) => positional.push(v),
                Err(_) => candle_core::bail!("unknown argument {other:?}"),
            },
        }
    }
    if positional.len() == 5 {
        dims = positional;
    }
    let c_out = c_out.unwrap_or(dims[1]);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., dims.clone(), &dev)?)?;
    let w_shape = match transpose {
        true => (dims[1], c_out, k, k, k),
        false => (c_out, dims[1], k, k, k),
    };
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, w_shape, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(c_out, candle_core::DType::F32, &dev)?)?;
    let p = Conv3dParams::uniform(stride, pad, 1);
    let pt = ConvTranspose3dParams::uniform(stride, pad, 0, 1);
    let forward = || match transpose {
        true => conv_transpose3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), pt),
        false => conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p),
    };
    forward()?; // warm-up
    let t_fwd = time(runs, forward)?;
    let t_fwd_bwd = time(runs, || {
        let y = forward()?;
        y.sum_all()?.backward()
    })?;
    println!(
        "{{\"op\": \"{}\", \"input\": {dims:?}, \"c_out\": {c_out}, \"kernel\": {k}, \"stride\": {stride}, \"padding\": {pad}, \"threads\": {}, \"runs\": {runs}, \"forward_s\": {:.4}, \"forward_backward_s\": {:.4}, \"forward_cpu_s\": {:.2}, \"forward_backward_cpu_s\": {:.2}}}",
        if transpose { "conv_transpose3d" } else { "conv3d" },
        rayon::current_num_threads(), t_fwd.0, t_fwd_bwd.0, t_fwd.1, t_fwd_bwd.1
    );
    Ok(())
}
