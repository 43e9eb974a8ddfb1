//! Training methods: one type per method behind [`TrainingMethod`]. The learner owns the students
//! (both nets), the optimiser, the batches and the run folder; a method turns one batch into the
//! iteration's loss (its own forward passes included), updates whatever state it keeps after the SGD
//! step (EMA teachers), and saves and restores that state with the checkpoints.
//!
//! Adding a method means adding a type here and a line in [`for_config`], never a branch in the loop.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use duoseg_losses::{supervised_loss, IterationInput, NetOutputs, Objective};
use duoseg_models::SegNet;

use crate::checkpoint::{EMA_A, EMA_B};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::nets::{mix, Nets};

/// Dropout streams of the students (net A, net B) and of the EMA teachers, per iteration.
const STUDENT_DROPOUT: [u64; 2] = [3, 4];
const TEACHER_DROPOUT: [u64; 2] = [5, 6];
/// The per-iteration stream of the loss's own random draws (contrastive voxel sampling).
const LOSS_STREAM: u64 = 2;

/// One iteration's batch on the device.
pub struct StepBatch<'a> {
    /// Images `[N_l + N_u, 1, D, H, W]`, labeled crops first.
    pub images: &'a Tensor,
    /// Labels of the labeled crops `[N_l, D, H, W]` (u32).
    pub labels: &'a Tensor,
    /// Labeled crops in the batch.
    pub n_labeled: usize,
    /// Unlabeled crops in the batch.
    pub n_unlabeled: usize,
    /// Iteration t (0-based).
    pub iteration: usize,
    /// Total iterations t_max.
    pub total_iterations: usize,
    /// The run seed; every random stream of iteration t derives from `(seed, t)`.
    pub seed: u64,
}

/// One iteration's loss: the tensor to back-propagate and every term's value for the log.
pub struct StepLoss {
    /// The total loss (scalar).
    pub total: Tensor,
    /// Named host values (`total`, `ce_a`, ...); non-finite ones are reported by the learner.
    pub terms: BTreeMap<String, f64>,
}

/// A training method: how a batch becomes a loss, and the state it keeps.
pub trait TrainingMethod {
    /// Unlabeled crops the method wants per batch (0: it never sees unlabeled data).
    fn unlabeled_per_batch(&self) -> usize;

    /// Runs the forward passes of iteration `batch.iteration` and assembles its loss.
    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss>;

    /// After the students' SGD step (e.g. moving-average teachers follow them).
    fn after_update(&mut self, _students: &Nets) -> Result<()> {
        Ok(())
    }

    /// Adds the method's tensors to a checkpoint and returns its other state as JSON.
    fn save_state(&self, _tensors: &mut BTreeMap<String, Tensor>) -> Result<serde_json::Value> {
        Ok(serde_json::json!({}))
    }

    /// Restores what [`TrainingMethod::save_state`] wrote (from the checkpoint `path`).
    fn load_state(
        &mut self,
        _path: &Path,
        _tensors: &BTreeMap<String, Tensor>,
        _state: &serde_json::Value,
    ) -> Result<()> {
        Ok(())
    }
}

/// The method `cfg.method` names, on `device`.
pub fn for_config(cfg: &TrainConfig, device: &Device) -> Result<Box<dyn TrainingMethod>> {
    Ok(match cfg.method.effective_loss(&cfg.loss) {
        None => Box::new(SupervisedOnly),
        Some(loss) => Box::new(DualStream {
            objective: Objective::new(loss, cfg.model.n_classes)?,
            unlabeled_per_batch: cfg.batch.unlabeled,
            teachers: match cfg.ema_teacher {
                // the smoothed teachers start as exact copies (same seed, same initialisation)
                Some(momentum) => Some(EmaTeachers {
                    nets: Nets::build(&cfg.model, device, cfg.seed)?,
                    momentum,
                }),
                None => None,
            },
        }),
    })
}

/// Fails with [`TrainError::NonFinite`] when a net's output holds NaN or infinity.
fn ensure_finite(name: &str, logits: &Tensor, iteration: usize) -> Result<()> {
    let m = f64::from(logits.abs()?.max_all()?.to_scalar::<f32>()?);
    if m.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            iteration: iteration + 1,
            name: name.into(),
            value: m,
            last_checkpoint: None,
        })
    }
}

/// Students' forward passes in train mode with this iteration's dropout masks, checked for finiteness:
/// `(logits, features)` of A and of B.
fn forward_students(students: &Nets, batch: &StepBatch) -> Result<[(Tensor, Tensor); 2]> {
    students.reseed_dropout(batch.seed, batch.iteration, STUDENT_DROPOUT);
    let a = students.a.forward_t(batch.images, true)?;
    let b = students.b.forward_t(batch.images, true)?;
    ensure_finite("logits_a", &a.0, batch.iteration)?;
    ensure_finite("logits_b", &b.0, batch.iteration)?;
    Ok([a, b])
}

fn host(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_scalar::<f32>()?))
}

/// Both nets trained on the labeled crops only: `L_s,A + L_s,B` (the lower bound every table needs).
pub struct SupervisedOnly;

impl TrainingMethod for SupervisedOnly {
    fn unlabeled_per_batch(&self) -> usize {
        0
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let [(la, _), (lb, _)] = forward_students(students, batch)?;
        let sa = supervised_loss(&la, batch.labels, None)?;
        let sb = supervised_loss(&lb, batch.labels, None)?;
        let total = (sa.total()? + sb.total()?)?;
        let terms = BTreeMap::from([
            ("total".to_string(), host(&total)?),
            ("ce_a".to_string(), host(&sa.ce)?),
            ("dice_a".to_string(), host(&sa.dice)?),
            ("ce_b".to_string(), host(&sb.ce)?),
            ("dice_b".to_string(), host(&sb.dice)?),
        ]);
        Ok(StepLoss { total, terms })
    }
}

/// Moving-average copies of both students that give the pseudo-labels (`ema_teacher = m`).
struct EmaTeachers {
    nets: Nets,
    momentum: f64,
}

/// The paper's dual-stream method and its ablations (SPEC section 2): both nets on labeled and
/// unlabeled crops, the loss assembled by `duoseg_losses::Objective` as the config's preset says;
/// optionally with EMA teachers.
pub struct DualStream {
    objective: Objective,
    unlabeled_per_batch: usize,
    teachers: Option<EmaTeachers>,
}

impl TrainingMethod for DualStream {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let [(la, fa), (lb, fb)] = forward_students(students, batch)?;
        let teacher_logits = match &self.teachers {
            Some(teachers) => {
                let xu = batch.images.narrow(0, batch.n_labeled, batch.n_unlabeled)?;
                let t = &teachers.nets;
                t.reseed_dropout(batch.seed, batch.iteration, TEACHER_DROPOUT);
                let ta = t.a.forward_t(&xu, true)?.0.detach();
                let tb = t.b.forward_t(&xu, true)?.0.detach();
                Some((ta, tb))
            }
            None => None,
        };
        let input = IterationInput {
            a: NetOutputs {
                logits: &la,
                features: &fa,
            },
            b: NetOutputs {
                logits: &lb,
                features: &fb,
            },
            labels: batch.labels,
            iteration: batch.iteration,
            total_iterations: batch.total_iterations,
            seed: mix(batch.seed, batch.iteration as u64, LOSS_STREAM),
            teacher_logits: teacher_logits.as_ref().map(|(a, b)| [a, b]),
        };
        let lt = self.objective.assemble(&input)?;
        let mut terms: BTreeMap<String, f64> = lt
            .scalars()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let n_u = (lt.n_reliable + lt.n_unreliable).max(1);
        terms.insert(
            "reliable_fraction".into(),
            lt.n_reliable as f64 / n_u as f64,
        );
        Ok(StepLoss {
            total: lt.total,
            terms,
        })
    }

    fn after_update(&mut self, students: &Nets) -> Result<()> {
        match &self.teachers {
            Some(t) => t.nets.ema_update(students, t.momentum),
            None => Ok(()),
        }
    }

    fn save_state(&self, tensors: &mut BTreeMap<String, Tensor>) -> Result<serde_json::Value> {
        if let Some(t) = &self.teachers {
            tensors.extend(t.nets.tensors([EMA_A, EMA_B])?);
        }
        Ok(serde_json::json!({ "threshold_ema": self.objective.threshold().ema() }))
    }

    fn load_state(
        &mut self,
        path: &Path,
        tensors: &BTreeMap<String, Tensor>,
        state: &serde_json::Value,
    ) -> Result<()> {
        if let Some(t) = &self.teachers {
            t.nets.restore(path, [EMA_A, EMA_B], tensors)?;
        }
        if let Some(ema) = state.get("threshold_ema").and_then(|v| v.as_f64()) {
            self.objective.threshold_state().set_ema(ema);
        }
        Ok(())
    }
}
