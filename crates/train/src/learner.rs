//! The training loop (SPEC section 2) as short named steps: set up (or resume), then per iteration
//! take a batch, let the method compute the loss, check it, take an SGD step, log, checkpoint.
//!
//! Reproducibility: every random draw of iteration `t` (crop choice, crop offsets, augmentation, the
//! contrastive loss's voxel sampling, the Dropout3d masks of each net) comes from a stream seeded by
//! `(seed, t)`, so the RNG state of a checkpoint is just `(seed, iteration)`, and weights are initialised
//! from `seed` too. On the CPU a resumed run therefore equals the uninterrupted one exactly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use duoseg_io::loader::{Loader, LoaderConfig};
use duoseg_io::PreparedCase;

use crate::checkpoint::{self, CheckpointMeta, MOMENTUM, NET_A, NET_B};
use crate::config::{CheckpointChoice, TrainConfig};
use crate::data::TrainData;
use crate::error::{Result, TrainError};
use crate::method::{self, StepBatch, TrainingMethod};
use crate::nets::Nets;
use crate::run::{LogRecord, LogWriter, RunDir};
use crate::sgd::Sgd;

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
    /// Continue from the newest checkpoint in `run/checkpoints` (which must belong to this run).
    pub resume: bool,
    /// Replace the outputs of a previous run in the folder (without it, or `resume`, a folder holding
    /// another run's files is refused).
    pub overwrite: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current iteration with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Progress receiver.
    pub observer: &'a mut dyn Observer,
}

/// Trains both nets as `cfg` says, writing the run folder; returns how it ended.
pub fn train(cfg: &TrainConfig, data: &TrainData, opts: TrainOptions) -> Result<Finish> {
    Learner::new(cfg, data, opts)?.run()
}

/// The state of one training run between iterations.
struct Learner<'c, 'o> {
    /// Held while the run writes into its folder.
    _lock: duoseg_io::fs::FolderLock,
    cfg: &'c TrainConfig,
    run: RunDir,
    device: Device,
    stop: Arc<AtomicBool>,
    observer: &'o mut dyn Observer,
    students: Nets,
    method: Box<dyn TrainingMethod>,
    opt: Sgd,
    log: LogWriter,
    loader: Loader,
    /// Iterations already done (0, or the resumed checkpoint's).
    start: usize,
    /// `eval.checkpoint = best_val`: the validation cases, and the best (iteration, mean Dice) so far.
    validation: &'c [PreparedCase],
    best: Option<BestModel>,
    /// Score the pseudo-labels every this many iterations (0: never; see [`crate::diagnosis`]).
    diagnose_every: usize,
    /// The spacing the nets learn at, recorded in every checkpoint for inference's warning.
    spacing: Option<[f64; 3]>,
}

/// The model `eval.checkpoint = best_val` keeps: `best.safetensors`, described by `best.json`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BestModel {
    /// Iterations done when it was saved.
    pub iteration: usize,
    /// Its mean Dice on the validation cases.
    pub val_dice: f64,
}

impl BestModel {
    /// Reads a run's `best.json`, when there is one.
    pub fn read(run: &RunDir) -> Result<Option<BestModel>> {
        let path = run.best_json();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::RunFolder(format!("{}: {e}", path.display())))
    }
}

impl<'c, 'o> Learner<'c, 'o> {
    /// Builds the nets, the method and the optimiser, resumes when asked, records the config and
    /// starts the batch loader.
    fn new(cfg: &'c TrainConfig, data: &'c TrainData, opts: TrainOptions<'o>) -> Result<Self> {
        let TrainOptions {
            run,
            device,
            resume,
            overwrite,
            stop,
            observer,
        } = opts;
        let method = method::for_config(cfg, &device)?;
        let n_unlabeled = method.unlabeled_per_batch();
        let best_val = cfg.eval.checkpoint == CheckpointChoice::BestVal;
        if best_val && data.validation.is_empty() {
            return Err(TrainError::Dataset(
                "eval.checkpoint = \"best_val\" needs validation cases (TrainData::carve_validation)"
                    .into(),
            ));
        }
        if data.labeled.is_empty() {
            return Err(TrainError::Dataset(format!(
                "{} needs labeled cases; the data has none",
                cfg.method.name()
            )));
        }
        if n_unlabeled > 0 && data.unlabeled.is_empty() {
            return Err(TrainError::Dataset(format!(
                "{} is semi-supervised but the data has no unlabeled case ({} labeled): add images \
                 without labels (imagesTr/ without a label, or imagesUnlabeled/), label fewer cases \
                 (data.labeled), or train --method supervised",
                cfg.method.name(),
                data.labeled.len()
            )));
        }
        let lock = run.lock()?;
        let stale = run.remove_stale_temp_files()?;
        if stale > 0 {
            observer.message(&format!(
                "removed {stale} temporary file(s) of an interrupted write"
            ));
        }
        claim_folder(&run, resume, overwrite)?;
        if resume {
            check_same_cases(&run, data)?;
        }
        let students = Nets::build(&cfg.model, cfg.method.networks(), &device, cfg.seed)?;
        let opt = Sgd::new(students.trainable()?, &cfg.optim)?;
        let mut learner_state = (students, method, opt);
        let start = if resume {
            resume_from_newest(cfg, &run, &device, &mut learner_state, observer)?
        } else {
            0
        };
        let (students, method, opt) = learner_state;
        crate::run::write_json(&run.config(), cfg)?;
        crate::run::write_json(&run.split(), &data.roles())?;
        let mut log = LogWriter::open(&run.log(), start)?;
        log.event(
            if resume { "resume" } else { "start" },
            start,
            serde_json::json!({
                "method": cfg.method.name(),
                "iterations": cfg.iterations,
                "seed": cfg.seed,
                "labeled_cases": data.labeled.len(),
                "unlabeled_cases": data.unlabeled.len(),
                "validation_cases": data.validation.len(),
                "test_cases": data.test.len(),
            }),
        )
        .map_err(TrainError::file(run.log()))?;
        let diagnose_every = diagnosis_period(cfg, data, method.as_ref(), observer);
        let loader_cfg = LoaderConfig {
            patch: cfg.patch,
            labeled_per_batch: cfg.batch.labeled,
            unlabeled_per_batch: n_unlabeled,
            rot_flip: cfg.data.augment,
            hidden_labels: diagnose_every > 0,
            seed: cfg.seed,
            workers: 1,
            prefetch: 2,
        };
        let unlabeled = if n_unlabeled > 0 {
            Arc::clone(&data.unlabeled)
        } else {
            Arc::from(Vec::new())
        };
        let loader = Loader::new(
            Arc::clone(&data.labeled),
            unlabeled,
            loader_cfg,
            start as u64,
        )?;
        // a best model saved after the resumed checkpoint is found again by the same iterations
        let best = match resume {
            true => BestModel::read(&run)?.filter(|b| b.iteration <= start),
            false => None,
        };
        Ok(Learner {
            _lock: lock,
            cfg,
            run,
            device,
            stop,
            observer,
            students,
            method,
            opt,
            log,
            loader,
            start,
            validation: if best_val { &data.validation } else { &[] },
            best,
            diagnose_every,
            spacing: data.training_spacing(cfg.data.spacing),
        })
    }

    /// Iterates from `start` to `cfg.iterations`, then writes `final.safetensors`.
    fn run(mut self) -> Result<Finish> {
        let t_max = self.cfg.iterations;
        for t in self.start..t_max {
            let mut rec = self.step(t)?;
            let done = t + 1;
            let every = self.cfg.eval.validate_every;
            if !self.validation.is_empty() && (done % every == 0 || done == t_max) {
                let dice = self.validate(done)?;
                rec.terms.insert("val_dice".into(), dice);
            }
            self.log
                .write(&rec)
                .map_err(TrainError::file(self.run.log()))?;
            self.observer.iteration(&rec, t_max);
            let interrupted = self.stop.load(Ordering::SeqCst) && done < t_max;
            let every = self.cfg.checkpoint.every;
            if (every > 0 && done % every == 0) || interrupted || done == t_max {
                self.checkpoint(done)?;
            }
            if interrupted {
                return Ok(Finish::Interrupted(done));
            }
        }
        self.save(&self.run.final_weights(), t_max)?;
        Ok(Finish::Completed)
    }

    /// Scores the students on the validation cases after `done` iterations; a better mean Dice than
    /// the best so far saves them as `best.safetensors` (then `best.json`). Returns the mean Dice
    /// (an undefined one, every validation label empty, counts as 0).
    fn validate(&mut self, done: usize) -> Result<f64> {
        let never = AtomicBool::new(false);
        let report = crate::evaluation::evaluate(
            self.cfg,
            &self.students,
            self.validation,
            &self.device,
            &mut Silent,
            &never,
        )?
        .map(|(report, _)| report);
        let dice = report.and_then(|r| r.mean_dice()).unwrap_or(0.0);
        if self.best.is_none_or(|b| dice > b.val_dice) {
            self.save(&self.run.best_weights(), done)?;
            let best = BestModel {
                iteration: done,
                val_dice: dice,
            };
            crate::run::write_json(&self.run.best_json(), &best)?;
            self.best = Some(best);
        }
        if let Some(b) = self.best {
            self.log
                .event(
                    "validation",
                    done,
                    serde_json::json!({
                        "val_dice": dice,
                        "best_val_dice": b.val_dice,
                        "best_iter": b.iteration,
                    }),
                )
                .map_err(TrainError::file(self.run.log()))?;
            self.observer.message(&format!(
                "validation after {done} iterations: mean Dice {dice:.4} (best {:.4} after {})",
                b.val_dice, b.iteration
            ));
        }
        Ok(dice)
    }

    /// Iteration `t` (0-based): batch, loss, checks, SGD step, the method's update; returns the log record.
    fn step(&mut self, t: usize) -> Result<LogRecord> {
        let t0 = Instant::now();
        let batch = self
            .loader
            .next()
            .ok_or(TrainError::LoaderStopped { iteration: t + 1 })??;
        let crop = self.cfg.patch;
        let n = batch.n_labeled + batch.n_unlabeled;
        let images =
            Tensor::from_vec(batch.image, (n, 1, crop[0], crop[1], crop[2]), &self.device)?;
        let labels: Vec<u32> = batch.label.iter().map(|&v| u32::from(v)).collect();
        let labels = Tensor::from_vec(
            labels,
            (batch.n_labeled, crop[0], crop[1], crop[2]),
            &self.device,
        )?;
        let step = StepBatch {
            images: &images,
            labels: &labels,
            n_labeled: batch.n_labeled,
            n_unlabeled: batch.n_unlabeled,
            iteration: t,
            total_iterations: self.cfg.iterations,
            seed: self.cfg.seed,
            hidden_labels: (self.diagnose_every > 0 && (t + 1) % self.diagnose_every == 0)
                .then_some(&batch.hidden_label[..]),
        };
        let loss = self
            .method
            .loss(&self.students, &step)
            .map_err(|e| self.with_last_checkpoint(e))?;
        let mut terms = loss.terms;
        if let Some((name, v)) = terms
            .iter()
            .find(|(k, v)| !v.is_finite() && k.as_str() != "threshold")
        {
            return Err(self.with_last_checkpoint(TrainError::NonFinite {
                iteration: t + 1,
                name: name.clone(),
                value: *v,
                last_checkpoint: None,
            }));
        }
        let lr = self.cfg.optim.lr_at(t);
        self.opt.set_lr(lr);
        let grads = loss.total.backward()?;
        self.opt.step(&grads)?;
        self.method.after_update(&self.students, t)?;
        // so that every checkpoint, and the model a finished run leaves, is finite
        if let Some(tensor) = self.students.first_non_finite()? {
            return Err(self.with_last_checkpoint(TrainError::NonFiniteState {
                iteration: t + 1,
                tensor,
                last_checkpoint: None,
            }));
        }
        let dt = t0.elapsed().as_secs_f64();
        terms.retain(|_, v| v.is_finite());
        Ok(LogRecord {
            iter: t + 1,
            lr,
            s_per_step: dt,
            samples_per_s: n as f64 / dt.max(1e-9),
            terms,
        })
    }

    /// Names the newest checkpoint on disk in a non-finite-loss error.
    fn with_last_checkpoint(&self, mut e: TrainError) -> TrainError {
        if let TrainError::NonFinite {
            last_checkpoint, ..
        }
        | TrainError::NonFiniteState {
            last_checkpoint, ..
        } = &mut e
        {
            *last_checkpoint = checkpoint::list(&self.run.checkpoints())
                .pop()
                .map(|(n, _)| n);
        }
        e
    }

    /// Writes the checkpoint after `done` iterations and prunes old ones.
    fn checkpoint(&mut self, done: usize) -> Result<()> {
        let dir = self.run.checkpoints();
        let path = checkpoint::iter_path(&dir, done);
        self.save(&path, done)?;
        checkpoint::prune(&dir, self.cfg.checkpoint.keep_last)?;
        self.log
            .event("checkpoint", done, serde_json::json!({ "file": path }))
            .map_err(TrainError::file(self.run.log()))?;
        self.observer
            .message(&format!("checkpoint {}", path.display()));
        Ok(())
    }

    /// Everything needed to continue: both nets, the momentum buffers, the method's state.
    fn save(&self, path: &Path, done: usize) -> Result<()> {
        let mut tensors = self.students.tensors([NET_A, NET_B])?;
        let state = self.method.save_state(&mut tensors)?;
        for (n, t) in self.opt.state()? {
            tensors.insert(format!("{MOMENTUM}.{n}"), t);
        }
        let meta = CheckpointMeta {
            iteration: done,
            seed: self.cfg.seed,
            config: serde_json::to_value(self.cfg)
                .map_err(|e| TrainError::checkpoint(path, format!("config: {e}")))?,
            state,
            spacing: self.spacing,
        };
        checkpoint::save(path, &tensors, &meta)
    }
}

/// How often to score the pseudo-labels: `cfg.diagnose_every` when the method makes pseudo-labels
/// and every unlabeled case has a hidden label, else 0 (saying why when the config asked for it).
fn diagnosis_period(
    cfg: &TrainConfig,
    data: &TrainData,
    method: &dyn TrainingMethod,
    observer: &mut dyn Observer,
) -> usize {
    if cfg.diagnose_every == 0 || !method.diagnoses_pseudo_labels() {
        return 0;
    }
    let without = data
        .unlabeled
        .iter()
        .filter(|c| c.hidden_label.is_none())
        .count();
    if without > 0 {
        observer.message(&format!(
            "pseudo-label diagnosis off: {without} of {} unlabeled cases have no label to score              against",
            data.unlabeled.len()
        ));
        return 0;
    }
    cfg.diagnose_every
}

/// Refuses a folder that holds another run's files unless the run resumes it or replaces them.
fn claim_folder(run: &RunDir, resume: bool, overwrite: bool) -> Result<()> {
    let found = run.run_files();
    if resume || found.is_empty() {
        return Ok(());
    }
    if overwrite {
        return run.clear_outputs().map_err(TrainError::file(&run.root));
    }
    Err(TrainError::RunFolder(format!(
        "{} holds another run's files ({}{}); continue it with --resume, replace it with \
         --overwrite, or choose another --out",
        run.root.display(),
        found[0].display(),
        if found.len() > 1 {
            format!(" and {} more", found.len() - 1)
        } else {
            String::new()
        }
    )))
}

/// On resume: the cases must be those the run started with (its `split.json`).
fn check_same_cases(run: &RunDir, data: &TrainData) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(run.split()) else {
        return Ok(());
    };
    let recorded: crate::data::CaseRoles = serde_json::from_str(&text)
        .map_err(|e| TrainError::RunFolder(format!("{}: {e}", run.split().display())))?;
    let now = data.roles();
    for (role, a, b) in [
        ("labeled", &recorded.labeled, &now.labeled),
        ("unlabeled", &recorded.unlabeled, &now.unlabeled),
        ("test", &recorded.test, &now.test),
        ("validation", &recorded.validation, &now.validation),
    ] {
        if a != b {
            return Err(TrainError::RunFolder(format!(
                "cannot resume {}: its {role} cases were {} ({}), the data now gives {} ({})",
                run.root.display(),
                a.len(),
                a.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                b.len(),
                b.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

/// Config fields a resumed run may change: how long it runs, how often it saves and logs, and how it
/// is evaluated afterwards. Everything else must equal the checkpoint's.
const RESUMABLE_CHANGES: [&str; 5] = [
    "iterations",
    "checkpoint",
    "log_every",
    "diagnose_every",
    "eval",
];

/// The dotted keys whose values differ between two configs (as JSON), outside [`RESUMABLE_CHANGES`].
fn config_differences(before: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if prefix.is_empty() && RESUMABLE_CHANGES.contains(&k.as_str()) {
                        continue;
                    }
                    let null = serde_json::Value::Null;
                    walk(
                        &key,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", before, now, &mut out);
    out
}

/// Restores nets, method state and momentum from the newest checkpoint of the run folder, if any;
/// returns the iterations it had done.
fn resume_from_newest(
    cfg: &TrainConfig,
    run: &RunDir,
    device: &Device,
    (students, method, opt): &mut (Nets, Box<dyn TrainingMethod>, Sgd),
    observer: &mut dyn Observer,
) -> Result<usize> {
    // the newest checkpoint that reads; a truncated one (killed mid-write before the atomic writer
    // existed, or a damaged disk) falls back to the one before, with a warning
    let mut found = None;
    for (n, path) in checkpoint::list(&run.checkpoints()).into_iter().rev() {
        match checkpoint::load(&path, device) {
            Ok(loaded) => {
                found = Some((n, path, loaded));
                break;
            }
            Err(e) => observer.message(&format!("warning: skipping checkpoint {e}")),
        }
    }
    let Some((n, path, (tensors, meta))) = found else {
        observer.message("no checkpoint to resume from; starting at iteration 0");
        return Ok(0);
    };
    let now = serde_json::to_value(cfg)
        .map_err(|e| TrainError::checkpoint(&path, format!("config: {e}")))?;
    let differences = config_differences(&meta.config, &now);
    if !differences.is_empty() {
        return Err(TrainError::RunFolder(format!(
            "cannot resume from {}: it was written by another config ({}); resume with the run's \
             config.json, or start a new run with --overwrite or another --out",
            path.display(),
            differences.join("; ")
        )));
    }
    students.restore(&path, [NET_A, NET_B], &tensors)?;
    method.load_state(&path, &tensors, &meta.state)?;
    let momentum = tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(&format!("{MOMENTUM}."))
                .map(|n| (n.to_string(), t.clone()))
        })
        .collect();
    opt.load_state(&momentum)?;
    observer.message(&format!("resumed from {} (iteration {n})", path.display()));
    Ok(n)
}
