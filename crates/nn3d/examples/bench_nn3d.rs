//! Benchmark of the nn3d ops at V-Net training sizes; run by `cargo xtask bench nn3d`.
//!
//! ```text
//! cargo run --release -p duoseg-nn3d --example bench_nn3d -- [--json] [--device cpu|cuda]
//!     [--runs N] [--warmup N] [--only SUBSTRING] [--system-malloc]
//! ```
//! For every op: the median over `--runs` timed runs (after `--warmup` untimed ones) of the forward
//! alone and of forward + backward (`y.backward()`, i.e. upstream gradient ones, gradients for the
//! input and all parameters). With `--device cuda` (build with `--features cuda`) the device is
//! synchronised before each clock reading. `--json` prints one JSON object on stdout, otherwise a
//! table. An op that fails (e.g. no CUDA kernel yet) is reported with its error instead of timings.
//! Like the trainer, it first calls `duoseg_nn3d::retain_freed_memory()` so that activation buffers
//! are reused instead of page-faulted afresh each run; `--system-malloc` skips that to measure the
//! allocator's defaults (the JSON records which).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use duoseg_nn3d::ops::{conv3d, conv_transpose3d, Conv3dParams, ConvTranspose3dParams};
use duoseg_nn3d::{batch_norm3d, BatchNorm3dConfig};

struct Args {
    json: bool,
    device: String,
    runs: usize,
    warmup: usize,
    only: Option<String>,
    system_malloc: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        json: false,
        device: "cpu".into(),
        runs: 5,
        warmup: 1,
        only: None,
        system_malloc: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--json" => args.json = true,
            "--device" => args.device = value("--device")?,
            "--runs" => args.runs = value("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--warmup" => {
                args.warmup = value("--warmup")?
                    .parse()
                    .map_err(|e| format!("--warmup: {e}"))?
            }
            "--only" => args.only = Some(value("--only")?),
            "--system-malloc" => args.system_malloc = true,
            "-h" | "--help" => {
                return Err("usage: bench_nn3d [--json] [--device cpu|cuda] [--runs N] [--warmup N] [--only SUBSTRING] [--system-malloc]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(args)
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" | "cuda:0" => Device::new_cuda(0),
        #[cfg(not(feature = "cuda"))]
        "cuda" | "cuda:0" => Err(candle_core::Error::Msg(
            "built without the cuda feature: add --features cuda".into(),
        )),
        // plain messages: `bail!` would print a backtrace when RUST_BACKTRACE is set
        other => Err(candle_core::Error::Msg(format!(
            "unknown device {other:?} (cpu or cuda)"
        ))),
    }
}

/// One benchmarked op: a closure computing the forward output from captured tensors.
struct Case {
    name: String,
    op: &'static str,
    shape: Vec<usize>,
    forward: Box<dyn Fn() -> Result<Tensor>>,
}

/// Wall-clock seconds per run, and the process's CPU seconds (user + system, all threads) per run:
/// the CPU figure stays fair when other jobs share the cores.
struct Timing {
    forward: Vec<f64>,
    forward_backward: Vec<f64>,
    forward_cpu: Vec<f64>,
    forward_backward_cpu: Vec<f64>,
}

/// CPU time of this process so far, in seconds (0 where `getrusage` is unavailable).
fn cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(u.ru_utime) + tv(u.ru_stime);
        }
    }
    0.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn time(dev: &Device, case: &Case, runs: usize, warmup: usize) -> Result<Timing> {
    let mut t = Timing {
        forward: Vec::new(),
        forward_backward: Vec::new(),
        forward_cpu: Vec::new(),
        forward_backward_cpu: Vec::new(),
    };
    for i in 0..warmup + runs {
        dev.synchronize()?;
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let y = (case.forward)()?;
        dev.synchronize()?;
        let (elapsed, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        drop(y);
        if i >= warmup {
            t.forward.push(elapsed);
            t.forward_cpu.push(cpu);
        }
    }
    for i in 0..warmup + runs {
        dev.synchronize()?;
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let y = (case.forward)()?;
        let grads = y.backward()?;
        dev.synchronize()?;
        let (elapsed, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        drop((y, grads));
        if i >= warmup {
            t.forward_backward.push(elapsed);
            t.forward_backward_cpu.push(cpu);
        }
    }
    Ok(t)
}

fn var(shape: &[usize], std: f64, dev: &Device) -> Result<Var> {
    Var::from_tensor(&Tensor::randn(0f32, std as f32, shape, dev)?)
}

fn shape_name(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// The ops at the first V-Net level, input (2, 16, 112, 112, 80).
fn cases(dev: &Device) -> Result<Vec<Case>> {
    let full = [2usize, 16, 112, 112, 80];
    let half = [2usize, 32, 56, 56, 40];
    let mut cases = Vec::new();

    let x = var(&full, 1.0, dev)?;
    let w = var(&[16, 16, 3, 3, 3], (2.0f64 / (16.0 * 27.0)).sqrt(), dev)?;
    let b = var(&[16], 0.1, dev)?;
    let p = Conv3dParams {
        padding: [1; 3],
        ..Default::default()
    };
    cases.push(Case {
        name: format!("conv3d_f32_{}_c16_k3_p1", shape_name(&full)),
        op: "conv3d",
        shape: full.to_vec(),
        forward: Box::new(move || conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)),
    });

    let x = var(&full, 1.0, dev)?;
    let varmap = VarMap::new();
    let bn = batch_norm3d(
        16,
        BatchNorm3dConfig::default(),
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    cases.push(Case {
        name: format!("batch_norm3d_train_f32_{}", shape_name(&full)),
        op: "batch_norm3d_train",
        shape: full.to_vec(),
        forward: Box::new(move || bn.forward_t(x.as_tensor(), true)),
    });

    let x = var(&full, 1.0, dev)?;
    let w = var(&[32, 16, 2, 2, 2], 0.1, dev)?;
    let b = var(&[32], 0.1, dev)?;
    let p = Conv3dParams {
        stride: [2; 3],
        ..Default::default()
    };
    cases.push(Case {
        name: format!("conv3d_f32_{}_c32_k2_s2", shape_name(&full)),
        op: "conv3d",
        shape: full.to_vec(),
        forward: Box::new(move || conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)),
    });

    let x = var(&half, 1.0, dev)?;
    let w = var(&[32, 16, 2, 2, 2], 0.1, dev)?;
    let b = var(&[16], 0.1, dev)?;
    let p = ConvTranspose3dParams {
        stride: [2; 3],
        ..Default::default()
    };
    cases.push(Case {
        name: format!("conv_transpose3d_f32_{}_c16_k2_s2", shape_name(&half)),
        op: "conv_transpose3d",
        shape: half.to_vec(),
        forward: Box::new(move || {
            conv_transpose3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)
        }),
    });
    Ok(cases)
}

fn json_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            c if (c as u32) < 0x20 => vec![' '],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

fn json_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", items.join(", "))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("bench_nn3d: {e}");
        std::process::exit(2);
    }
}

fn run(args: &Args) -> Result<()> {
    let allocator = if !args.system_malloc && duoseg_nn3d::retain_freed_memory() {
        "system, freed memory retained (retain_freed_memory)"
    } else {
        "system defaults"
    };
    let dev = device(&args.device)?;
    let device_desc = match &dev {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        _ => args.device.clone(),
    };
    let mut entries = Vec::new();
    for case in cases(&dev)? {
        if let Some(only) = &args.only {
            if !case.name.contains(only.as_str()) {
                continue;
            }
        }
        eprintln!("timing {} ...", case.name);
        let common = format!(
            "\"name\": {}, \"op\": {}, \"dtype\": \"f32\", \"shape\": {:?}, \"device\": {}",
            json_str(&case.name),
            json_str(case.op),
            case.shape,
            json_str(&device_desc)
        );
        match time(&dev, &case, args.runs, args.warmup) {
            Ok(t) => {
                let (f, fb) = (median(&t.forward), median(&t.forward_backward));
                if !args.json {
                    println!(
                        "{:<55} forward {f:>8.4} s   forward+backward {fb:>8.4} s   (cpu {:.4} s / {:.4} s)",
                        case.name,
                        median(&t.forward_cpu),
                        median(&t.forward_backward_cpu)
                    );
                }
                entries.push(format!(
                    "{{{common}, \"forward_s\": {f:.6}, \"forward_backward_s\": {fb:.6}, \"forward_cpu_s\": {:.6}, \"forward_backward_cpu_s\": {:.6}, \"forward_runs_s\": {}, \"forward_backward_runs_s\": {}}}",
                    median(&t.forward_cpu),
                    median(&t.forward_backward_cpu),
                    json_list(&t.forward),
                    json_list(&t.forward_backward)
                ));
            }
            Err(e) => {
                if !args.json {
                    println!("{:<55} failed: {e}", case.name);
                }
                entries.push(format!(
                    "{{{common}, \"error\": {}}}",
                    json_str(&e.to_string())
                ));
            }
        }
    }
    if args.json {
        println!(
            "{{\"benchmark\": \"nn3d\", \"implementation\": \"duoseg-nn3d (candle)\", \"device\": {}, \"allocator\": {}, \"runs\": {}, \"warmup\": {}, \"statistic\": \"median\", \"backward_seed\": \"ones\", \"results\": [\n  {}\n]}}",
            json_str(&device_desc),
            json_str(allocator),
            args.runs,
            args.warmup,
            entries.join(",\n  ")
        );
    }
    Ok(())
}
