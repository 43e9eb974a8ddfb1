//! The dual-stream training loop (SPEC section 2), checkpoints and resume, end-of-training evaluation.
//!
//! Reproducibility: every random draw of iteration `t` (crop choice, crop offsets, augmentation, the
//! contrastive loss's voxel sampling, the Dropout3d masks of each net) comes from a stream seeded by
//! `(seed, t)`, so the RNG state of a checkpoint is just `(seed, iteration)`, and weights are initialised
//! from `seed` too. On the CPU a resumed run therefore equals the uninterrupted one exactly.
//!
//! With `ema_teacher = m` the run also keeps exponential-moving-average copies of both nets (updated after
//! every SGD step, saved in checkpoints as `ema_a.*` / `ema_b.*`); the copy of the net the teacher rule picks
//! gives the pseudo-labels and their entropy.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use duoseg_io::augment::Rng;
use duoseg_io::loader::{Loader, LoaderConfig};
use duoseg_io::{Sample, Volume};
use duoseg_losses::{supervised_loss, IterationInput, NetOutputs, Objective};
use duoseg_metrics::{EvaluationReport, MetricDefinition};
use duoseg_models::{NetConfig, ResNet34VNet, SegNet, VNet};
use rand::{Rng as _, SeedableRng};

use crate::checkpoint::{self, CheckpointMeta, EMA_A, EMA_B, MOMENTUM, NET_A, NET_B};
use crate::config::{EvalNets, Method, ModelConfig, TrainConfig};
use crate::data::{Case, TrainData};
use crate::run::{LogRecord, LogWriter, RunDir};
use crate::sgd::{is_buffer_name, Sgd};

/// The two subnetworks and their variables.
pub struct Nets {
    /// Subnet A, V-Net.
    pub a: VNet,
    /// Subnet B, ResNet-34 V-Net.
    pub b: ResNet34VNet,
    /// Variables of A (PyTorch names).
    pub vars_a: VarMap,
    /// Variables of B (PyTorch names).
    pub vars_b: VarMap,
}

fn net_config(m: &ModelConfig) -> NetConfig {
    NetConfig {
        in_channels: 1,
        n_classes: m.n_classes,
        base_width: m.base_width,
        dropout: m.dropout,
    }
}

/// Builds both nets on `device`; conv weights are re-drawn from `seed` (kaiming-normal, fan_in, gain
/// sqrt 2, as the nn3d constructors) so that initialisation is reproducible.
pub fn build_nets(model: &ModelConfig, device: &Device, seed: u64) -> Result<Nets> {
    let vars_a = VarMap::new();
    let vars_b = VarMap::new();
    let cfg = net_config(model);
    let a = VNet::new(cfg, VarBuilder::from_varmap(&vars_a, DType::F32, device))?;
    let b = ResNet34VNet::new(cfg, VarBuilder::from_varmap(&vars_b, DType::F32, device))?;
    for (i, vm) in [&vars_a, &vars_b].into_iter().enumerate() {
        let mut rng = Rng::seed_from_u64(mix(seed, i as u64, 0xA11CE));
        let data = vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let dims = var.dims();
            if dims.len() == 5 && name.ends_with("weight") {
                let fan_in = dims[1] * dims[2] * dims[3] * dims[4];
                let std = (2.0 / fan_in as f64).sqrt();
                let v: Vec<f32> = (0..var.elem_count())
                    .map(|_| (std * normal(&mut rng)) as f32)
                    .collect();
                var.set(&Tensor::from_vec(v, dims, device)?)?;
            }
        }
    }
    Ok(Nets {
        a,
        b,
        vars_a,
        vars_b,
    })
}

fn normal(rng: &mut Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// SplitMix64-style mixing of the run seed with stream identifiers.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trainable parameters of both nets, named `net_a.<name>` / `net_b.<name>`.
fn trainable(nets: &Nets) -> Result<Vec<(String, Var)>> {
    let mut out = Vec::new();
    for (prefix, vm) in [(NET_A, &nets.vars_a), (NET_B, &nets.vars_b)] {
        let data = vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        for (n, v) in data.iter() {
            if !is_buffer_name(n) {
                out.push((format!("{prefix}.{n}"), v.clone()));
            }
        }
    }
    Ok(out)
}

/// Receives progress; the CLI renders it (the library never prints).
pub trait Observer {
    /// After every iteration, with the log record and t_max.
    fn iteration(&mut self, _rec: &LogRecord, _total: usize) {}
    /// A notable event (checkpoint written, resumed, evaluation progress).
    fn message(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// All iterations done; `final.safetensors` written.
    Completed,
    /// Stopped by the stop flag (Ctrl-C) after this many iterations; a checkpoint was written.
    Interrupted(usize),
}

/// Run-time options that are not part of the config.
pub struct TrainOptions<'a> {
    /// The run folder.
    pub run: RunDir,
    /// Device for both nets.
    pub device: Device,
    /// Continue from the newest checkpoint in `run/checkpoints`.
    pub resume: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current iteration with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Progress receiver.
    pub observer: &'a mut dyn Observer,
}

/// `ema = m ema + (1 - m) live` for every trainable variable (batch-norm buffers: the copies keep their own,
/// from their own forward passes).
fn ema_update(ema: &Nets, live: &Nets, momentum: f64) -> Result<()> {
    for (e, l) in [(&ema.vars_a, &live.vars_a), (&ema.vars_b, &live.vars_b)] {
        let lock = |vm: &VarMap| {
            vm.data()
                .lock()
                .map(|d| d.clone())
                .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))
        };
        let (e, l) = (lock(e)?, lock(l)?);
        for (name, live_var) in l.iter().filter(|(n, _)| !is_buffer_name(n)) {
            let Some(ema_var) = e.get(name) else {
                bail!("the EMA copy lacks variable {name}")
            };
            let mixed = ((ema_var.as_tensor().detach() * momentum)?
                + (live_var.as_tensor().detach() * (1.0 - momentum))?)?;
            ema_var.set(&mixed)?;
        }
    }
    Ok(())
}

fn save_checkpoint(
    path: &Path,
    cfg: &TrainConfig,
    nets: &Nets,
    ema: Option<&Nets>,
    opt: &Sgd,
    obj: &mut Option<Objective>,
    done: usize,
) -> Result<()> {
    let mut tensors = checkpoint::varmap_tensors(NET_A, &nets.vars_a)?;
    tensors.extend(checkpoint::varmap_tensors(NET_B, &nets.vars_b)?);
    if let Some(e) = ema {
        tensors.extend(checkpoint::varmap_tensors(EMA_A, &e.vars_a)?);
        tensors.extend(checkpoint::varmap_tensors(EMA_B, &e.vars_b)?);
    }
    for (n, t) in opt.state() {
        tensors.insert(format!("{MOMENTUM}.{n}"), t);
    }
    let state = match obj {
        Some(o) => serde_json::json!({ "threshold_ema": o.threshold_state().ema() }),
        None => serde_json::json!({}),
    };
    let meta = CheckpointMeta {
        iteration: done,
        seed: cfg.seed,
        config: serde_json::to_value(cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        state,
    };
    checkpoint::save(path, &tensors, &meta)
}

/// Loads both nets (and nothing else) from a checkpoint or `final.safetensors`, with its config.
pub fn load_nets(path: &Path, device: &Device) -> Result<(TrainConfig, Nets)> {
    let (tensors, meta) = checkpoint::load(path, device)?;
    let cfg: TrainConfig = serde_json::from_value(meta.config)
        .map_err(|e| candle_core::Error::Msg(format!("{}: config: {e}", path.display())))?;
    let nets = build_nets(&cfg.model, device, cfg.seed)?;
    checkpoint::restore_varmap(NET_A, &nets.vars_a, &tensors)?;
    checkpoint::restore_varmap(NET_B, &nets.vars_b, &tensors)?;
    Ok((cfg, nets))
}

fn io_err(e: duoseg_io::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Trains both nets as `cfg` says, writing the run folder; returns how it ended.
pub fn train(cfg: &TrainConfig, data: &TrainData, opts: TrainOptions) -> Result<Finish> {
    let TrainOptions {
        run,
        device,
        resume,
        stop,
        observer,
    } = opts;
    let semi = cfg.method != Method::Supervised;
    if data.labeled.is_empty() || (semi && data.unlabeled.is_empty()) {
        bail!(
            "{} needs labeled{} cases; got {} labeled, {} unlabeled",
            cfg.method.name(),
            if semi { " and unlabeled" } else { "" },
            data.labeled.len(),
            data.unlabeled.len()
        )
    }
    let nets = build_nets(&cfg.model, &device, cfg.seed)?;
    // the smoothed teachers start as exact copies (same seed, same initialisation)
    let ema = match cfg.ema_teacher {
        Some(m) if semi => Some((build_nets(&cfg.model, &device, cfg.seed)?, m)),
        _ => None,
    };
    let mut opt = Sgd::new(trainable(&nets)?, &cfg.optim)?;
    let mut objective = match cfg.method.effective_loss(&cfg.loss) {
        Some(l) => Some(Objective::new(l, cfg.model.n_classes)?),
        None => None,
    };
    let ckpt_dir = run.checkpoints();
    let mut start = 0;
    if resume {
        if let Some((n, path)) = checkpoint::list(&ckpt_dir).pop() {
            let (tensors, meta) = checkpoint::load(&path, &device)?;
            checkpoint::restore_varmap(NET_A, &nets.vars_a, &tensors)?;
            checkpoint::restore_varmap(NET_B, &nets.vars_b, &tensors)?;
            if let Some((e, _)) = &ema {
                checkpoint::restore_varmap(EMA_A, &e.vars_a, &tensors)?;
                checkpoint::restore_varmap(EMA_B, &e.vars_b, &tensors)?;
            }
            let momentum = tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(&format!("{MOMENTUM}."))
                        .map(|n| (n.to_string(), t.clone()))
                })
                .collect();
            opt.load_state(&momentum)?;
            if let (Some(o), Some(ema)) = (
                objective.as_mut(),
                meta.state.get("threshold_ema").and_then(|v| v.as_f64()),
            ) {
                o.threshold_state().set_ema(ema);
            }
            if meta.seed != cfg.seed {
                bail!(
                    "{}: checkpoint seed {} differs from the config's {}",
                    path.display(),
                    meta.seed,
                    cfg.seed
                )
            }
            start = n;
            observer.message(&format!("resumed from {} (iteration {n})", path.display()));
        } else {
            observer.message("no checkpoint to resume from; starting at iteration 0");
        }
    }
    crate::run::write_json(&run.config(), cfg)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", run.config().display())))?;
    let mut log = LogWriter::open(&run.log(), start)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", run.log().display())))?;

    let t_max = cfg.iterations;
    let crop = cfg.patch;
    let samples = |cases: &[Case], labels: bool| -> Result<Vec<Sample>> {
        cases
            .iter()
            .map(|c| {
                let image =
                    Volume::from_data(c.shape, c.spacing, c.image.clone()).map_err(io_err)?;
                let label = if labels { c.label.clone() } else { None };
                Ok(Sample {
                    id: c.name.clone(),
                    image,
                    label,
                })
            })
            .collect()
    };
    let loader_cfg = LoaderConfig {
        patch: crop,
        labeled_per_batch: cfg.batch.labeled,
        unlabeled_per_batch: if semi { cfg.batch.unlabeled } else { 0 },
        rot_flip: cfg.data.augment,
        seed: cfg.seed,
        workers: 1,
        prefetch: 2,
    };
    let mut loader = Loader::new(
        Arc::new(samples(&data.labeled, true)?),
        Arc::new(if semi {
            samples(&data.unlabeled, false)?
        } else {
            Vec::new()
        }),
        loader_cfg,
        start as u64,
    )
    .map_err(io_err)?;
    for t in start..t_max {
        let t0 = Instant::now();
        let Some(batch) = loader.next() else {
            bail!("the batch loader stopped at iteration {}", t + 1)
        };
        let batch = batch.map_err(io_err)?;
        let n = batch.n_labeled + batch.n_unlabeled;
        let x = Tensor::from_vec(batch.image, (n, 1, crop[0], crop[1], crop[2]), &device)?;
        let yl: Vec<u32> = batch.label.iter().map(|&v| u32::from(v)).collect();
        let y = Tensor::from_vec(yl, (batch.n_labeled, crop[0], crop[1], crop[2]), &device)?;
        nets.a.reseed_dropout(mix(cfg.seed, t as u64, 3));
        nets.b.reseed_dropout(mix(cfg.seed, t as u64, 4));
        let (la, fa) = nets.a.forward_t(&x, true)?;
        let (lb, fb) = nets.b.forward_t(&x, true)?;
        let last_good = || {
            checkpoint::list(&ckpt_dir)
                .pop()
                .map(|(n, _)| format!("the last good checkpoint is iteration {n}"))
                .unwrap_or_else(|| "no checkpoint was written".into())
        };
        for (name, logits) in [("logits_a", &la), ("logits_b", &lb)] {
            let m = f64::from(logits.abs()?.max_all()?.to_scalar::<f32>()?);
            if !m.is_finite() {
                bail!(
                    "non-finite loss at iteration {}: {name} = {m}; stopping ({})",
                    t + 1,
                    last_good()
                )
            }
        }
        let teacher_logits = match &ema {
            Some((e, _)) => {
                let xu = x.narrow(0, batch.n_labeled, batch.n_unlabeled)?;
                e.a.reseed_dropout(mix(cfg.seed, t as u64, 5));
                e.b.reseed_dropout(mix(cfg.seed, t as u64, 6));
                let ta = e.a.forward_t(&xu, true)?.0.detach();
                let tb = e.b.forward_t(&xu, true)?.0.detach();
                Some((ta, tb))
            }
            None => None,
        };
        let (total, mut terms): (Tensor, BTreeMap<String, f64>) = match objective.as_mut() {
            Some(obj) => {
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
                    iteration: t,
                    total_iterations: t_max,
                    seed: mix(cfg.seed, t as u64, 2),
                    teacher_logits: teacher_logits.as_ref().map(|(a, b)| [a, b]),
                };
                let lt = obj.assemble(&input)?;
                let mut m: BTreeMap<String, f64> = lt
                    .scalars()?
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                let n_u = (lt.n_reliable + lt.n_unreliable).max(1);
                m.insert(
                    "reliable_fraction".into(),
                    lt.n_reliable as f64 / n_u as f64,
                );
                (lt.total, m)
            }
            None => {
                let sa = supervised_loss(&la, &y, None)?;
                let sb = supervised_loss(&lb, &y, None)?;
                let total = (sa.total()? + sb.total()?)?;
                let v = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_scalar::<f32>()?)) };
                let m = BTreeMap::from([
                    ("total".to_string(), v(&total)?),
                    ("ce_a".to_string(), v(&sa.ce)?),
                    ("dice_a".to_string(), v(&sa.dice)?),
                    ("ce_b".to_string(), v(&sb.ce)?),
                    ("dice_b".to_string(), v(&sb.dice)?),
                ]);
                (total, m)
            }
        };
        if let Some((name, v)) = terms
            .iter()
            .find(|(k, v)| !v.is_finite() && k.as_str() != "threshold")
        {
            bail!(
                "non-finite loss at iteration {}: {name} = {v}; stopping ({})",
                t + 1,
                last_good()
            )
        }
        let lr = cfg.optim.lr_at(t);
        opt.set_lr(lr);
        let grads = total.backward()?;
        opt.step(&grads)?;
        if let Some((e, m)) = &ema {
            ema_update(e, &nets, *m)?;
        }
        let dt = t0.elapsed().as_secs_f64();
        terms.retain(|_, v| v.is_finite());
        let rec = LogRecord {
            iter: t + 1,
            lr,
            s_per_step: dt,
            samples_per_s: n as f64 / dt.max(1e-9),
            terms,
        };
        log.write(&rec)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", run.log().display())))?;
        observer.iteration(&rec, t_max);
        let done = t + 1;
        let interrupted = stop.load(Ordering::SeqCst) && done < t_max;
        if (cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0)
            || interrupted
            || done == t_max
        {
            let p = checkpoint::iter_path(&ckpt_dir, done);
            let e = ema.as_ref().map(|(e, _)| e);
            save_checkpoint(&p, cfg, &nets, e, &opt, &mut objective, done)?;
            checkpoint::prune(&ckpt_dir, cfg.checkpoint.keep_last)?;
            observer.message(&format!("checkpoint {}", p.display()));
        }
        if interrupted {
            return Ok(Finish::Interrupted(done));
        }
    }
    save_checkpoint(
        &run.final_weights(),
        cfg,
        &nets,
        ema.as_ref().map(|(e, _)| e),
        &opt,
        &mut objective,
        t_max,
    )?;
    Ok(Finish::Completed)
}

/// Softmax probabilities `[B, K, ...]` of the configured net(s) in eval mode.
pub fn predict_probs(nets: &Nets, which: EvalNets, x: &Tensor) -> Result<Tensor> {
    let p = |l: Tensor| candle_nn::ops::softmax(&l, 1);
    match which {
        EvalNets::A => p(nets.a.forward_t(x, false)?.0),
        EvalNets::B => p(nets.b.forward_t(x, false)?.0),
        EvalNets::Both => {
            (p(nets.a.forward_t(x, false)?.0)? + p(nets.b.forward_t(x, false)?.0)?)? * 0.5
        }
    }
}

/// A test case's prediction, cropped back to the original geometry.
pub struct Prediction {
    /// Case name.
    pub name: String,
    /// Labels, original shape.
    pub labels: Vec<u8>,
    /// Probabilities `[K, original shape]`, when requested.
    pub probs: Option<Vec<f32>>,
}

/// Sliding-window prediction of one prepared case (labels in the case's original geometry).
pub fn predict_case(
    cfg: &TrainConfig,
    nets: &Nets,
    case: &Case,
    device: &Device,
    keep_probs: bool,
) -> Result<Prediction> {
    let sw = cfg.sliding_window();
    let k = cfg.model.n_classes;
    let out = sw.probabilities(&case.image, case.shape, k, device, |x| {
        predict_probs(nets, cfg.eval.nets, x)
    })?;
    let n = case.shape.iter().product::<usize>();
    let mut labels = crate::sliding::argmax_classes(&out.probs, k);
    let mut probs = keep_probs.then_some(out.probs);
    if case.shape != case.original_shape {
        labels = crate::data::crop_back(&labels, case.shape, case.pad_before, case.original_shape)?;
        if let Some(p) = probs.as_mut() {
            let mut cropped = Vec::new();
            for c in 0..k {
                cropped.extend(crate::data::crop_back(
                    &p[c * n..(c + 1) * n],
                    case.shape,
                    case.pad_before,
                    case.original_shape,
                )?);
            }
            *p = cropped;
        }
    }
    if cfg.eval.largest_component {
        for c in 1..k as u8 {
            let mut mask: Vec<bool> = labels.iter().map(|&l| l == c).collect();
            duoseg_metrics::keep_largest_component(&mut mask, case.original_shape)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            for (l, m) in labels.iter_mut().zip(mask) {
                if *l == c && !m {
                    *l = 0;
                }
            }
        }
    }
    Ok(Prediction {
        name: case.name.clone(),
        labels,
        probs,
    })
}

/// Evaluates the nets on the test cases: the metrics crate's report, plus each prediction.
pub fn evaluate(
    cfg: &TrainConfig,
    nets: &Nets,
    test: &[Case],
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(EvaluationReport, Vec<Prediction>)> {
    let classes: Vec<u8> = (1..cfg.model.n_classes as u8).collect();
    let definition = MetricDefinition::default();
    let mut cases = BTreeMap::new();
    let mut preds = Vec::new();
    for (i, case) in test.iter().enumerate() {
        let Some(gt) = &case.label else {
            bail!("test case {} has no label", case.name)
        };
        let pred = predict_case(cfg, nets, case, device, false)?;
        let gt = crate::data::crop_back(gt, case.shape, case.pad_before, case.original_shape)?;
        let m = duoseg_metrics::evaluate_labels(
            &pred.labels,
            &gt,
            case.original_shape,
            case.spacing,
            &classes,
            &definition,
        )
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", case.name)))?;
        cases.insert(case.name.clone(), m);
        observer.message(&format!(
            "evaluated {}/{}: {}",
            i + 1,
            test.len(),
            case.name
        ));
        preds.push(pred);
    }
    Ok((duoseg_metrics::summarize(definition, cases), preds))
}

fn io_msg(path: &Path, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {e}", path.display()))
}

/// After training: loads `final.safetensors`, evaluates on the test cases and writes `summary.json`,
/// `summary.md`, `figures/` (loss curves, overlays of the first `eval.figure_cases` test cases) and
/// `predictions/<case>.nii.gz`. Returns the report.
pub fn evaluate_run(
    run: &RunDir,
    test: &[Case],
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<EvaluationReport> {
    let (cfg, nets) = load_nets(&run.final_weights(), device)?;
    let (report, preds) = evaluate(&cfg, &nets, test, device, observer)?;
    crate::run::write_json(&run.summary_json(), &report)
        .map_err(|e| io_msg(&run.summary_json(), e))?;
    let md = crate::run::summary_markdown(&cfg.name, &[(cfg.method.name().to_string(), &report)]);
    crate::run::write_atomic(&run.summary_md(), md.as_bytes())
        .map_err(|e| io_msg(&run.summary_md(), e))?;
    let records = crate::run::read_log(&run.log()).map_err(|e| io_msg(&run.log(), e))?;
    let fig = run.figures().join("losses.png");
    crate::figures::loss_curves(&records, &fig).map_err(|e| io_msg(&fig, e))?;
    std::fs::create_dir_all(run.predictions()).map_err(|e| io_msg(&run.predictions(), e))?;
    for (i, (case, pred)) in test.iter().zip(&preds).enumerate() {
        let shape = case.original_shape;
        let image = crate::data::crop_back(&case.image, case.shape, case.pad_before, shape)?;
        if i < cfg.eval.figure_cases {
            let gt = crate::data::crop_back(
                case.label.as_deref().unwrap_or_default(),
                case.shape,
                case.pad_before,
                shape,
            )?;
            let p = run.figures().join(format!("{}.png", case.name));
            crate::figures::overlay_slices(&image, &gt, &pred.labels, shape, &case.name, &p)
                .map_err(|e| io_msg(&p, e))?;
        }
        let like = match &case.source {
            Some(v) => v.clone(),
            None => duoseg_io::Volume::from_data(shape, case.spacing, image)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        };
        let p = run.predictions().join(format!("{}.nii.gz", case.name));
        duoseg_io::write_labels(&p, shape, &pred.labels, &like).map_err(|e| io_msg(&p, e))?;
    }
    Ok(report)
}

/// Parses `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Device::new_cuda(n),
            None => bail!("unknown device {s:?} (cpu or cuda:N)"),
        },
    }
}

/// Sets a dotted `key=value` in a config (`loss.alpha0=0.1`, `method=no_reg`); the value is parsed as
/// JSON when it is valid JSON, else taken as a string. The result is validated.
pub fn apply_override(
    cfg: &TrainConfig,
    assignment: &str,
) -> std::result::Result<TrainConfig, String> {
    let Some((key, value)) = assignment.split_once('=') else {
        return Err(format!("--set {assignment:?}: expected key=value"));
    };
    let mut v = serde_json::to_value(cfg).map_err(|e| e.to_string())?;
    let mut node = &mut v;
    for part in key.split('.') {
        node = node
            .as_object_mut()
            .and_then(|o| o.get_mut(part))
            .ok_or_else(|| format!("--set {key}: no such config field {part:?}"))?;
    }
    *node = serde_json::from_str(value)
        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
    let out: TrainConfig =
        serde_json::from_value(v).map_err(|e| format!("--set {assignment}: {e}"))?;
    out.validate().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Evaluates a finished run's `final.safetensors` again on its test cases, optionally with other net(s)
/// than its config's `eval.nets` (e.g. to see which subnetwork carries the averaged result). Loads the
/// data the run's config names (or `data_root`); writes nothing. Returns the config used and the report.
pub fn reevaluate_run(
    run: &RunDir,
    nets: Option<EvalNets>,
    data_root: Option<&Path>,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(TrainConfig, EvaluationReport)> {
    let (mut cfg, loaded) = load_nets(&run.final_weights(), device)?;
    if let Some(n) = nets {
        cfg.eval.nets = n;
    }
    let data = crate::data::load(&cfg.data, data_root)?;
    if data.test.is_empty() {
        bail!(
            "{}: the run's split has no test case",
            run.config().display()
        );
    }
    let (report, _) = evaluate(&cfg, &loaded, &data.test, device, observer)?;
    Ok((cfg, report))
}

/// Everything `duoseg train` does: load the data, train (or resume), then evaluate the final model.
/// The report is `None` when the run was interrupted.
pub fn run_training(
    cfg: &TrainConfig,
    data_root: Option<&Path>,
    opts: TrainOptions,
) -> Result<(Finish, Option<EvaluationReport>)> {
    let TrainOptions {
        run,
        device,
        resume,
        stop,
        observer,
    } = opts;
    observer.message(&format!(
        "loading data for {} ({})",
        cfg.name,
        cfg.method.name()
    ));
    let data = crate::data::load(&cfg.data, data_root)?;
    observer.message(&format!(
        "{} labeled, {} unlabeled, {} test cases",
        data.labeled.len(),
        data.unlabeled.len(),
        data.test.len()
    ));
    let finish = train(
        cfg,
        &data,
        TrainOptions {
            run: run.clone(),
            device: device.clone(),
            resume,
            stop,
            observer: &mut *observer,
        },
    )?;
    match finish {
        Finish::Completed => {
            observer.message("evaluating the final model on the test cases");
            let report = evaluate_run(&run, &data.test, &device, observer)?;
            Ok((finish, Some(report)))
        }
        Finish::Interrupted(_) => Ok((finish, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrainConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.json");
        TrainConfig::load(&p).unwrap()
    }

    #[test]
    fn overrides_set_nested_fields_and_are_validated() {
        let c = apply_override(&cfg(), "loss.alpha0=0.1").unwrap();
        assert_eq!(c.loss.alpha0, 0.1);
        let c = apply_override(&c, "method=no_reg").unwrap();
        assert_eq!(c.method, Method::NoReg);
        let c = apply_override(&c, r#"data.split={"fold":{"fold":2}}"#).unwrap();
        assert_eq!(c.data.split, crate::config::Split::Fold { fold: 2 });
        assert!(apply_override(&c, "loss.alpha_zero=0.1").is_err());
        assert!(apply_override(&c, "patch=[30,32,32]").is_err());
        assert!(apply_override(&c, "iterations").is_err());
    }

    #[test]
    fn devices_parse() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("gpu").is_err());
    }

    #[test]
    fn seeded_initialisation_is_reproducible() -> Result<()> {
        let m = ModelConfig {
            n_classes: 2,
            base_width: 2,
            dropout: false,
        };
        let a = build_nets(&m, &Device::Cpu, 3)?;
        let b = build_nets(&m, &Device::Cpu, 3)?;
        let c = build_nets(&m, &Device::Cpu, 4)?;
        let ta = checkpoint::varmap_tensors(NET_B, &a.vars_b)?;
        let tb = checkpoint::varmap_tensors(NET_B, &b.vars_b)?;
        let tc = checkpoint::varmap_tensors(NET_B, &c.vars_b)?;
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let mut differs = false;
        for (k, t) in &ta {
            assert_eq!(flat(t)?, flat(&tb[k])?, "{k}");
            differs |= flat(t)? != flat(&tc[k])?;
        }
        assert!(differs);
        // kaiming-normal std sqrt(2 / fan_in) (the 7^3 stem conv, one input channel)
        let w = flat(&ta["net_b.stem.0.weight"])?;
        let sd = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        let fan_in = ta["net_b.stem.0.weight"].dims()[1..]
            .iter()
            .product::<usize>() as f32;
        assert!((sd / (2.0 / fan_in).sqrt() - 1.0).abs() < 0.2, "std {sd}");
        Ok(())
    }
}
