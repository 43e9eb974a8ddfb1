//! One CPU workload of `cargo xtask bench step`, run through duoseg's own training and inference
//! code (not a re-implementation), printed as one JSON line:
//!
//! - `--workload step --config FILE`: training steps of the config's method at its patch and batch
//!   sizes (hippocampus default: 2 labeled + 1 unlabeled crop of 32x48x32, the ensemble of both EMA
//!   teachers): the method's forwards and losses, backward, the SGD step and the method's update
//!   (EMA teachers), exactly as the learner runs them, on random crops (no data loading). Median
//!   and minimum step seconds, the median of each phase, the last step's time per nn3d op.
//! - `--workload infer --config FILE --volume D H W`: sliding-window inference of one random volume
//!   with net A in eval mode, the config's patch, stride and windows per batch (LA: 112x112x80
//!   windows, stride 18x18x4, on a 144x144x96 volume: 45 windows), once untimed, once timed.
//!
//! Both report the process's peak resident memory, so run one workload per process.
//!
//! `--device cuda` (a `--features cuda` build, `cargo xtask gpu-build`) runs the same workload on
//! the GPU with TF32 convolutions (as the CLI) and freed memory kept in the pool; the device is
//! synchronised before every clock reading, so each phase gets the GPU time it queued. Peak device
//! memory is sampled from outside (`xtask/gpu-bench.sh`), the same way for PyTorch.
//!
//! ```text
//! bench_workload --workload step|infer --config FILE [--iters N] [--warmup N] [--volume D H W]
//!                [--sw-batch N] (infer: windows per forward pass instead of the config's)
//!                [--device cpu|cuda]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use duoseg_train::config::{EvalNets, TrainConfig};
use duoseg_train::method::{self, StepBatch};
use duoseg_train::{Nets, Sgd};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The nn3d op accounts since the last call, as JSON, with the rest of `seconds` as `other_s`.
fn op_profile(seconds: f64) -> serde_json::Value {
    let ops = duoseg_nn3d::profile::take();
    let in_ops: f64 = ops.values().map(|t| t.seconds).sum();
    let ops: serde_json::Map<String, serde_json::Value> = ops
        .into_iter()
        .map(|(op, t)| {
            (
                op.to_string(),
                serde_json::json!({"calls": t.calls, "s": t.seconds}),
            )
        })
        .collect();
    serde_json::json!({"s": seconds, "nn3d_ops": ops, "other_s": seconds - in_ops})
}

/// `cpu`, or `cuda` / `cuda:N` with TF32 convolutions and a memory pool that keeps freed memory.
fn open_device(name: &str) -> Res<Device> {
    let dev = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::new_cuda(n)?,
            None => return Err(format!("unknown device {other:?} (cpu, cuda or cuda:N)").into()),
        },
    };
    duoseg_nn3d::cuda::set_allow_tf32(true);
    duoseg_nn3d::cuda::retain_freed_gpu_memory(&dev)?;
    Ok(dev)
}

/// Seconds since `t0`, after the device has finished what was queued.
fn elapsed(dev: &Device, t0: Instant) -> Res<f64> {
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64())
}

fn step_workload(
    cfg: &TrainConfig,
    dev: &Device,
    iters: usize,
    warmup: usize,
) -> Res<serde_json::Value> {
    let dev = dev.clone();
    let students = Nets::build(&cfg.model, cfg.method.networks(), &dev, cfg.seed)?;
    let mut opt = Sgd::new(students.trainable()?, &cfg.optim)?;
    let mut method = method::for_config(cfg, &dev)?;
    let (n_l, n_u) = (cfg.batch.labeled, method.unlabeled_per_batch());
    let [d, h, w] = cfg.patch;
    let images = Tensor::randn(0f32, 1.0, (n_l + n_u, 1, d, h, w), &dev)?;
    let labels = Tensor::rand(0f32, cfg.model.n_classes as f32, (n_l, d, h, w), &dev)?
        .floor()?
        .to_dtype(DType::U32)?;
    let mut times = Vec::new();
    let mut phases: Vec<[f64; 4]> = Vec::new();
    let mut profile = serde_json::Map::new();
    for t in 0..warmup + iters {
        let last = t + 1 == warmup + iters;
        duoseg_nn3d::profile::enable(last);
        dev.synchronize()?;
        let t0 = Instant::now();
        let batch = StepBatch {
            images: &images,
            labels: &labels,
            n_labeled: n_l,
            n_unlabeled: n_u,
            iteration: t,
            total_iterations: cfg.iterations,
            seed: cfg.seed,
            hidden_labels: None,
        };
        let loss = method.loss(&students, &batch)?;
        let t_loss = elapsed(&dev, t0)?;
        let p_loss = op_profile(t_loss);
        opt.set_lr(cfg.optim.lr_at(t));
        let grads = loss.total.backward()?;
        let t_back = elapsed(&dev, t0)?;
        let p_back = op_profile(t_back - t_loss);
        opt.step(&grads)?;
        drop(grads);
        let t_sgd = elapsed(&dev, t0)?;
        let p_sgd = op_profile(t_sgd - t_back);
        method.after_update(&students, t)?;
        let t_end = elapsed(&dev, t0)?;
        let p_update = op_profile(t_end - t_sgd);
        duoseg_nn3d::profile::enable(false);
        if last {
            for (k, v) in [
                ("forwards_and_losses", p_loss),
                ("backward", p_back),
                ("sgd", p_sgd),
                ("method_update", p_update),
            ] {
                profile.insert(k.into(), v);
            }
        }
        if t >= warmup {
            times.push(t_end);
            phases.push([t_loss, t_back - t_loss, t_sgd - t_back, t_end - t_sgd]);
        }
    }
    let phase = |k: usize| median(phases.iter().map(|p| p[k]).collect());
    Ok(serde_json::json!({
        "impl": "duoseg",
        "workload": "step",
        "config": cfg.name,
        "method": cfg.method.name(),
        "ema_teacher": cfg.ema_teacher,
        "patch": cfg.patch,
        "device": device_name(&dev),
        "batch": format!("{n_l}+{n_u}"),
        "iters": iters,
        "step_s_median": median(times.clone()),
        "step_s_min": times.iter().copied().reduce(f64::min),
        "phases_median_s": {
            "forwards_and_losses": phase(0), "backward": phase(1), "sgd": phase(2),
            "method_update": phase(3)
        },
        "profile_last_step": profile,
        "peak_rss_gib": peak_rss_gib(),
        "threads": rayon::current_num_threads(),
    }))
}

fn device_name(dev: &Device) -> &'static str {
    if dev.is_cpu() {
        "cpu"
    } else {
        "cuda"
    }
}

fn infer_workload(
    cfg: &TrainConfig,
    dev: &Device,
    volume: [usize; 3],
    sw_batch: Option<usize>,
) -> Res<serde_json::Value> {
    let dev = dev.clone();
    let nets = Nets::build(&cfg.model, cfg.method.networks(), &dev, cfg.seed)?;
    let mut sw = cfg.sliding_window();
    if let Some(b) = sw_batch {
        sw.sw_batch = b.max(1);
    }
    let n = volume.iter().product::<usize>();
    let vol = Tensor::randn(0f32, 1.0, n, &dev)?.to_vec1::<f32>()?;
    let windows: usize = (0..3)
        .map(|a| {
            let padded = volume[a].max(sw.roi[a]);
            duoseg_train::sliding::window_starts(padded, sw.roi[a], sw.stride[a]).len()
        })
        .product();
    let run = || -> duoseg_train::Result<_> {
        let predictor = nets.predictor(&dev)?;
        Ok(
            sw.probabilities(&vol, volume, cfg.model.n_classes, &dev, |x| {
                predictor.predict_probs(EvalNets::A, x)
            })?,
        )
    };
    run()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    let out = run()?;
    let infer_s = elapsed(&dev, t0)?;
    drop(out);
    Ok(serde_json::json!({
        "impl": "duoseg",
        "workload": "infer",
        "config": cfg.name,
        "volume": volume,
        "device": device_name(&dev),
        "roi": sw.roi,
        "stride": sw.stride,
        "sw_batch": sw.sw_batch,
        "windows": windows,
        "nets": "a",
        "infer_s": infer_s,
        "peak_rss_gib": peak_rss_gib(),
        "threads": rayon::current_num_threads(),
    }))
}

fn main() -> Res<()> {
    // as the `duoseg` binary does
    duoseg_nn3d::retain_freed_memory();
    duoseg_nn3d::calm_candle_workers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut workload, mut config) = (None, None);
    let (mut iters, mut warmup) = (5usize, 1usize);
    let mut volume = [144usize, 144, 96];
    let mut device = "cpu".to_string();
    let mut sw_batch = None;
    let mut i = 0;
    let value = |i: usize| -> Res<&String> {
        args.get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]).into())
    };
    while i < args.len() {
        match args[i].as_str() {
            "--workload" => workload = Some(value(i)?.clone()),
            "--config" => config = Some(value(i)?.clone()),
            "--iters" => iters = value(i)?.parse()?,
            "--warmup" => warmup = value(i)?.parse()?,
            "--device" => device = value(i)?.clone(),
            "--sw-batch" => sw_batch = Some(value(i)?.parse()?),
            "--volume" => {
                for (k, v) in volume.iter_mut().enumerate() {
                    *v = args
                        .get(i + 1 + k)
                        .ok_or("--volume needs 3 values")?
                        .parse()?;
                }
                i += 2;
            }
            other => return Err(format!("unknown option {other:?}").into()),
        }
        i += 2;
    }
    let config = config.ok_or("--config FILE is required")?;
    let cfg = TrainConfig::load(std::path::Path::new(&config))?;
    let dev = open_device(&device)?;
    let report = match workload.as_deref() {
        Some("step") => step_workload(&cfg, &dev, iters, warmup)?,
        Some("infer") => infer_workload(&cfg, &dev, volume, sw_batch)?,
        other => return Err(format!("--workload must be step or infer, got {other:?}").into()),
    };
    println!("{report}");
    Ok(())
}
