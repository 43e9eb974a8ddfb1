//! One full training step of both nets (CPU, or CUDA with `--device cuda` in a `--features cuda`
//! build): forward of 2 labeled + 2 unlabeled crops through
//! V-Net and ResNet-34 V-Net (train mode, dropout on), every loss of SPEC section 2 (`Objective`, paper
//! preset), backward, and an SGD update (lr 0.01, momentum 0.9, weight decay 1e-4, PyTorch semantics).
//! The same workload as `../shared/reference/bench_torch.py --device cpu`; run by `cargo xtask bench step`.
//!
//! Usage: bench_step [--crop D H W] [--iters N] [--warmup N] [--device cpu|cuda] [--no-tf32]
//! [--release-gpu-memory] (leave the CUDA memory pool's release threshold at 0, as before the CLI kept
//! freed memory). Prints one
//! JSON object: median / min step seconds, the median of each phase (forward of each net, losses,
//! backward, SGD) over the timed steps, the last step's time per phase split by nn3d op (CPU;
//! `profile_last_step`: calls and seconds per op, and `other_s`, candle's own ops and glue), the
//! median of each part of the losses run alone
//! (`losses_median_s`: forward only), and the process's peak resident memory. On CUDA the device is
//! synchronised before every clock reading, so each phase gets the GPU time it queued; convolutions use
//! TF32 unless `--no-tf32` (as the CLI).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use duoseg_losses::{
    consistency_l1_normalized, cross_entropy, dice_loss, disagreement_mask, entropy,
    mean_confidence, prototype_contrastive, pseudo_labels, select_reliable, supervised_loss,
    IterationInput, LossConfig, NetOutputs, Objective,
};
use duoseg_models::{build, Arch, NetConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// PyTorch SGD: `d = g + wd p; buf = mu buf + d; p -= lr buf`.
struct Sgd {
    params: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        let (lr, mu, wd) = (0.01, 0.9, 1e-4);
        for (p, buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let d = (g + (p.as_tensor() * wd)?)?;
            // detach: gradients and `p` carry autograd history; a buffer that kept it would chain every
            // step's graph (activations included) and grow memory without bound
            let b = match buf.take() {
                Some(b) => ((b * mu)? + d)?,
                None => d,
            }
            .detach();
            p.set(&(p.as_tensor() - (&b * lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
    }
}

fn main() -> Res<()> {
    // As the `duoseg` binary does: reuse freed activation buffers instead of faulting in new ones.
    duoseg_nn3d::retain_freed_memory();
    duoseg_nn3d::calm_candle_workers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut crop = [64usize, 64, 48];
    let (mut iters, mut warmup) = (5usize, 1usize);
    let mut device = "cpu".to_string();
    let mut tf32 = true;
    let mut retain_gpu_memory = true;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--crop" => {
                for (k, c) in crop.iter_mut().enumerate() {
                    *c = args
                        .get(i + 1 + k)
                        .ok_or("--crop needs 3 values")?
                        .parse()?;
                }
                i += 4;
            }
            "--iters" => {
                iters = args.get(i + 1).ok_or("--iters needs a value")?.parse()?;
                i += 2;
            }
            "--warmup" => {
                warmup = args.get(i + 1).ok_or("--warmup needs a value")?.parse()?;
                i += 2;
            }
            "--device" => {
                device = args.get(i + 1).ok_or("--device needs a value")?.clone();
                i += 2;
            }
            "--no-tf32" => {
                tf32 = false;
                i += 1;
            }
            "--release-gpu-memory" => {
                retain_gpu_memory = false;
                i += 1;
            }
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }
    let dev = match device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("--device must be cpu or cuda, got {other:?}").into()),
    };
    duoseg_nn3d::cuda::set_allow_tf32(tf32);
    if retain_gpu_memory {
        duoseg_nn3d::cuda::retain_freed_gpu_memory(&dev)?;
    }
    // The clock is read after the device has finished what was queued (a no-op on the CPU).
    let now = |t0: &Instant| -> candle_core::Result<f64> {
        dev.synchronize()?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net_a = build(Arch::Vnet, NetConfig::default(), vb.pp("a"))?;
    let net_b = build(Arch::Resnet34, NetConfig::default(), vb.pp("b"))?;
    let params = duoseg_nn3d::trainable_vars(&varmap);
    let mut sgd = Sgd {
        buffers: vec![None; params.len()],
        params,
    };
    let [d, h, w] = crop;
    let x = Tensor::randn(0f32, 1.0, (4, 1, d, h, w), &dev)?;
    let y = Tensor::rand(0f32, 1.0, (2, d, h, w), &dev)?
        .gt(0.7)?
        .to_dtype(DType::U32)?;
    let mut objective = Objective::new(LossConfig::default(), 2)?;
    let mut times = Vec::new();
    let mut phases: Vec<[f64; 5]> = Vec::new();
    // the last step's time by phase and by nn3d op (the rest of a phase is candle's own ops)
    let mut profile = serde_json::Map::new();
    let mut account = |phase: &str, seconds: f64, last: bool| {
        if last {
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
            profile.insert(
                phase.to_string(),
                serde_json::json!({"s": seconds, "nn3d_ops": ops, "other_s": seconds - in_ops}),
            );
        }
    };
    for step in 0..warmup + iters {
        let last = step + 1 == warmup + iters;
        duoseg_nn3d::profile::enable(last && !dev.is_cuda());
        dev.synchronize()?;
        let t0 = Instant::now();
        let (la, fa) = net_a.forward_t(&x, true)?;
        let t_a = now(&t0)?;
        account("forward_vnet", t_a, last);
        let (lb, fb) = net_b.forward_t(&x, true)?;
        let t_b = now(&t0)?;
        account("forward_resnet34", t_b - t_a, last);
        let input = IterationInput {
            a: NetOutputs {
                logits: &la,
                features: &fa,
            },
            b: NetOutputs {
                logits: &lb,
                features: &fb,
            },
            labels: &y,
            iteration: step,
            total_iterations: 6000,
            seed: step as u64,
            teacher_logits: None,
            pasted: None,
        };
        let terms = objective.assemble(&input)?;
        let t_loss = now(&t0)?;
        account("losses", t_loss - t_b, last);
        let grads = terms.total.backward()?;
        let t_back = now(&t0)?;
        account("backward", t_back - t_loss, last);
        sgd.step(&grads)?;
        let t_end = now(&t0)?;
        account("sgd", t_end - t_back, last);
        duoseg_nn3d::profile::enable(false);
        if step >= warmup {
            phases.push([
                t_a,
                t_b - t_a,
                t_loss - t_b,
                t_back - t_loss,
                t_end - t_back,
            ]);
            times.push(t_end);
        }
    }
    times.sort_by(f64::total_cmp);
    let phase_median = |k: usize| {
        let mut v: Vec<f64> = phases.iter().map(|p| p[k]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let losses = loss_breakdown(
        &dev,
        &x,
        &y,
        |x| net_a.forward_t(x, true),
        |x| net_b.forward_t(x, true),
        warmup,
        iters,
    )?;
    let report = serde_json::json!({
        "impl": "duoseg",
        "device": device,
        "tf32": dev.is_cuda() && tf32,
        "retain_gpu_memory": dev.is_cuda() && retain_gpu_memory,
        "crop": crop,
        "batch": "2+2",
        "iters": iters,
        "step_s_median": times.get(times.len() / 2),
        "step_s_min": times.first(),
        "peak_rss_gib": peak_rss_kib().map(|k| k as f64 / (1024.0 * 1024.0)),
        "threads": rayon_threads(),
        "phases_median_s": serde_json::json!({
            "forward_vnet": phase_median(0), "forward_resnet34": phase_median(1), "losses": phase_median(2),
            "backward": phase_median(3), "sgd": phase_median(4)
        }),
        "losses_median_s": losses,
        "profile_last_step": profile,
    });
    println!("{report}");
    Ok(())
}

/// The parts of `Objective::assemble` (paper preset, default config) one at a time on one pair of
/// outputs, forward only, each timed to a device synchronisation: where the "losses" phase goes.
fn loss_breakdown(
    dev: &Device,
    x: &Tensor,
    y: &Tensor,
    fwd_a: impl Fn(&Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    fwd_b: impl Fn(&Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    warmup: usize,
    iters: usize,
) -> Res<serde_json::Value> {
    let (la, feat_a) = fwd_a(x)?;
    let (lb, feat_b) = fwd_b(x)?;
    let cfg = LossConfig::default();
    let n_l = y.dim(0)?;
    let n_u = la.dim(0)? - n_l;
    let mut parts: Vec<(&'static str, Vec<f64>)> = Vec::new();
    for step in 0..warmup + iters {
        dev.synchronize()?;
        let mut t = Instant::now();
        let mut times: Vec<(&'static str, f64)> = Vec::new();
        let mut lap = |name: &'static str| -> candle_core::Result<()> {
            dev.synchronize()?;
            times.push((name, t.elapsed().as_secs_f64()));
            t = Instant::now();
            Ok(())
        };
        let pa = candle_nn::ops::softmax(&la, 1)?;
        let pb = candle_nn::ops::softmax(&lb, 1)?;
        lap("softmax")?;
        let sa = supervised_loss(&la.narrow(0, 0, n_l)?, y, None)?;
        let sb = supervised_loss(&lb.narrow(0, 0, n_l)?, y, None)?;
        let _ = (sa.total()? + sb.total()?)?;
        lap("supervised")?;
        let (pa_u, pb_u) = (pa.narrow(0, n_l, n_u)?, pb.narrow(0, n_l, n_u)?);
        let yhat = pseudo_labels(&pa_u)?;
        let ent = entropy(&pa_u)?;
        lap("pseudo_labels_entropy")?;
        let reliable = select_reliable(&ent, cfg.alpha0)?;
        lap("select_reliable")?;
        let lu = (cross_entropy(&lb.narrow(0, n_l, n_u)?, &yhat, Some(&reliable))?
            + dice_loss(&pb_u, &yhat, Some(&reliable))?)?;
        let _ = lu;
        lap("unsup")?;
        let conf = 0.5 * (mean_confidence(&pa_u)? + mean_confidence(&pb_u)?);
        let mdiff = disagreement_mask(&pa_u, &pb_u, conf)?;
        let _ = consistency_l1_normalized(&pa_u, &pb_u, &mdiff, cfg.reg_normalize)?;
        lap("consistency")?;
        for (name, f) in [("contrastive_a", &feat_a), ("contrastive_b", &feat_b)] {
            let _ = prototype_contrastive(
                &f.narrow(0, n_l, n_u)?,
                &reliable,
                &yhat,
                &f.narrow(0, 0, n_l)?,
                y,
                2,
                &cfg.contrastive,
                step as u64,
            )?;
            lap(name)?;
        }
        if step >= warmup {
            for (name, secs) in times {
                match parts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(secs),
                    None => parts.push((name, vec![secs])),
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    for (name, mut v) in parts {
        v.sort_by(f64::total_cmp);
        out.insert(name.to_string(), serde_json::json!(v.get(v.len() / 2)));
    }
    Ok(serde_json::Value::Object(out))
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
