//! Training methods: one type per method behind [`TrainingMethod`]. The learner owns the students
//! (both nets), the optimiser, the batches and the run folder; a method turns one batch into the
//! iteration's loss (its own forward passes included), updates whatever state it keeps after the SGD
//! step (EMA teachers), and saves and restores that state with the checkpoints.
//!
//! Adding a method means adding a type here and a line in [`for_config`], never a branch in the loop.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use duoseg_losses::{
    dtc_loss, ema_decay, mcf_loss, mean_teacher_consistency, predictive_entropy, review_terms,
    supervised_loss, uncertainty_masked_consistency, uncertainty_threshold, ConsistencyRamp,
    IterationInput, NetOutputs, Objective, PastedLabels,
};
use duoseg_models::SegNet;

use crate::checkpoint::{EMA_A, EMA_B};
use crate::config::{Method, Networks, StrongView, TrainConfig};
use crate::error::{Result, TrainError};
use crate::nets::{mix, Nets};

/// Dropout streams of the students (net A, net B) and of the EMA teachers, per iteration.
const STUDENT_DROPOUT: [u64; 2] = [3, 4];
const TEACHER_DROPOUT: [u64; 2] = [5, 6];
/// The per-iteration stream of the loss's own random draws (contrastive voxel sampling).
const LOSS_STREAM: u64 = 2;
/// The per-iteration stream of the noise added to the teacher's input (Mean Teacher, UA-MT); pass
/// `k` of UA-MT's Monte-Carlo passes draws from `NOISE_STREAM + 1 + k`, its dropout from
/// `MC_DROPOUT + k`.
const NOISE_STREAM: u64 = 100;
/// The per-iteration stream of the copy-paste cuboids.
const PASTE_STREAM: u64 = 400;
/// The per-iteration stream of the students' strong view.
const STRONG_STREAM: u64 = 500;
const MC_DROPOUT: u64 = 200;

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
    /// On diagnosis iterations, the unlabeled crops' hidden labels `[N_u, D, H, W]`, to score the
    /// pseudo-labels with ([`crate::diagnosis`]); never part of the loss.
    pub hidden_labels: Option<&'a [u8]>,
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

    /// Runs the forward passes of iteration `batch.iteration` and assembles its loss; with
    /// `batch.hidden_labels`, also scores its pseudo-labels (the `pl_*` terms).
    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss>;

    /// Whether the method makes pseudo-labels that [`StepBatch::hidden_labels`] can score.
    fn diagnoses_pseudo_labels(&self) -> bool {
        false
    }

    /// After the students' SGD step of 0-based iteration `iteration` (e.g. moving-average teachers
    /// follow them).
    fn after_update(&mut self, _students: &Nets, _iteration: usize) -> Result<()> {
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
    let b = &cfg.baseline;
    let ramp = ConsistencyRamp {
        weight: b.consistency_for(cfg.method),
        rampup_epochs: b.rampup_epochs,
        iterations_per_epoch: b.epoch_iterations,
    };
    Ok(match cfg.method {
        Method::Supervised => Box::new(SupervisedOnly {
            review_weight: cfg.loss.review_weight,
        }),
        Method::MeanTeacher | Method::UaMt => Box::new(MeanTeacher {
            // the teacher starts as an exact copy (same seed, same initialisation)
            teacher: Nets::build(&cfg.model, Networks::VNet, device, cfg.seed)?,
            ramp,
            ema_decay: b.ema_decay,
            noise_std: b.noise_std,
            noise_clip: b.noise_clip,
            mc_passes: (cfg.method == Method::UaMt).then_some(b.mc_passes),
            unlabeled_per_batch: cfg.batch.unlabeled,
        }),
        Method::Dtc => Box::new(Dtc {
            ramp,
            transform_k: b.transform_k,
            sdf_weight: b.sdf_weight,
            unlabeled_per_batch: cfg.batch.unlabeled,
        }),
        Method::Sassnet => Box::new(Sassnet::new(cfg, ramp, device)?),
        Method::McNet => Box::new(McNet {
            ramp,
            temperature: b.temperature,
            unlabeled_per_batch: cfg.batch.unlabeled,
        }),
        Method::Mcf => Box::new(Mcf {
            ramp,
            temperature: b.temperature,
            review_weight: b.review_weight,
            unlabeled_per_batch: cfg.batch.unlabeled,
        }),
        Method::Duoseg | Method::NoReg | Method::NoContrastive | Method::ReferenceCode => {
            let Some(loss) = cfg.method.effective_loss(&cfg.loss) else {
                return Err(TrainError::Tensor(candle_core::Error::Msg(format!(
                    "{} has no loss",
                    cfg.method.name()
                ))));
            };
            Box::new(DualStream {
                objective: Objective::new(loss, cfg.model.n_classes)?,
                unlabeled_per_batch: cfg.batch.unlabeled,
                copy_paste: cfg.copy_paste,
                strong_view: cfg.strong_view,
                teachers: match cfg.ema_teacher {
                    // the smoothed teachers start as exact copies (same seed, same initialisation)
                    Some(momentum) => Some(EmaTeachers {
                        nets: Nets::build(&cfg.model, cfg.method.networks(), device, cfg.seed)?,
                        momentum,
                    }),
                    None => None,
                },
            })
        }
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
    let b = students
        .require_b("the dual-stream loss")?
        .forward_t(batch.images, true)?;
    ensure_finite("logits_a", &a.0, batch.iteration)?;
    ensure_finite("logits_b", &b.0, batch.iteration)?;
    Ok([a, b])
}

fn host(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_scalar::<f32>()?))
}

/// Both nets trained on the labeled crops only: `L_s,A + L_s,B` (the lower bound every table needs),
/// plus `loss.review_weight` times MCF's review term of the pair when the config sets it: the term reads
/// labeled voxels only, so supervised-only with it is the baseline that isolates what the unlabeled scans
/// add to a method that uses it.
pub struct SupervisedOnly {
    /// Weight of [`review_terms`] (0: the plain `L_s,A + L_s,B`).
    pub review_weight: f64,
}

impl TrainingMethod for SupervisedOnly {
    fn unlabeled_per_batch(&self) -> usize {
        0
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let [(la, _), (lb, _)] = forward_students(students, batch)?;
        let sa = supervised_loss(&la, batch.labels, None)?;
        let sb = supervised_loss(&lb, batch.labels, None)?;
        let mut total = (sa.total()? + sb.total()?)?;
        let mut terms = BTreeMap::from([
            ("ce_a".to_string(), host(&sa.ce)?),
            ("dice_a".to_string(), host(&sa.dice)?),
            ("ce_b".to_string(), host(&sb.ce)?),
            ("dice_b".to_string(), host(&sb.dice)?),
        ]);
        if self.review_weight > 0.0 {
            let probs_a = candle_nn::ops::softmax(&la, 1)?;
            let probs_b = candle_nn::ops::softmax(&lb, 1)?;
            let r = review_terms(&probs_a, &probs_b, batch.labels)?;
            let review = (&r.review_a + &r.review_b)?;
            total = (total + (&review * self.review_weight)?)?;
            terms.insert("review".to_string(), host(&review)?);
            terms.insert("n_review".to_string(), r.n_disagree);
        }
        terms.insert("total".to_string(), host(&total)?);
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
    /// The pasted cuboid's share of each axis (`copy_paste`), when pasting.
    copy_paste: Option<f64>,
    /// The students' strong view of the unlabeled crops (`strong_view`), when on.
    strong_view: Option<StrongView>,
    teachers: Option<EmaTeachers>,
}

impl TrainingMethod for DualStream {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let paste = match self.copy_paste {
            Some(share) if batch.n_unlabeled > 0 => Some(CopyPaste::draw(batch, share)?),
            _ => None,
        };
        let pasted_batch;
        let batch = match &paste {
            Some(p) => {
                pasted_batch = StepBatch {
                    images: &p.images,
                    ..*batch
                };
                &pasted_batch
            }
            None => batch,
        };
        // the teachers see the crops as they are; with a strong view the students a perturbed copy
        let strong_images = match self.strong_view {
            Some(view) if batch.n_unlabeled > 0 => Some(strong_view(batch, view)?),
            _ => None,
        };
        let student_batch = match &strong_images {
            Some(images) => StepBatch { images, ..*batch },
            None => StepBatch { ..*batch },
        };
        let [(la, fa), (lb, fb)] = forward_students(students, &student_batch)?;
        let teacher_logits = match &self.teachers {
            Some(teachers) => {
                let xu = batch.images.narrow(0, batch.n_labeled, batch.n_unlabeled)?;
                let t = &teachers.nets;
                t.reseed_dropout(batch.seed, batch.iteration, TEACHER_DROPOUT);
                let ta = t.a.forward_t(&xu, true)?.0.detach();
                let tb = t
                    .require_b("the EMA teacher")?
                    .forward_t(&xu, true)?
                    .0
                    .detach();
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
            pasted: paste.as_ref().map(|p| PastedLabels {
                labels: &p.labels,
                mask: &p.mask,
            }),
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
        if let Some(truth) = batch.hidden_labels {
            let keep = paste.as_ref().map(|p| p.unpasted.as_slice());
            terms.extend(diagnose(&lt, truth, keep, self.objective.n_classes())?);
            terms.insert(
                "pl_disagree_fraction".into(),
                lt.n_disagree as f64 / n_u as f64,
            );
        }
        Ok(StepLoss {
            total: lt.total,
            terms,
        })
    }

    fn diagnoses_pseudo_labels(&self) -> bool {
        true
    }

    fn after_update(&mut self, students: &Nets, _iteration: usize) -> Result<()> {
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

/// The `pl_*` terms: the iteration's pseudo-labels and reliable mask scored against the unlabeled
/// crops' hidden labels `truth`, on the voxels where `keep` is true (all when `None`; pasted
/// voxels are left out, their targets being the pasted truth).
fn diagnose(
    lt: &duoseg_losses::LossTerms,
    truth: &[u8],
    keep: Option<&[bool]>,
    n_classes: usize,
) -> Result<BTreeMap<String, f64>> {
    let pseudo = lt.pseudo_labels.flatten_all()?.to_vec1::<u32>()?;
    let reliable: Vec<bool> = lt
        .reliable
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|r| r > 0.5)
        .collect();
    let q = match keep {
        None => crate::diagnosis::pseudo_label_quality(&pseudo, &reliable, truth, n_classes),
        Some(keep) => {
            let kept = |n: usize| (0..n).filter(|&i| keep.get(i) == Some(&true));
            let pseudo: Vec<u32> = kept(pseudo.len()).map(|i| pseudo[i]).collect();
            let reliable: Vec<bool> = kept(reliable.len()).map(|i| reliable[i]).collect();
            let truth: Vec<u8> = kept(truth.len()).map(|i| truth[i]).collect();
            crate::diagnosis::pseudo_label_quality(&pseudo, &reliable, &truth, n_classes)
        }
    }
    .map_err(|e| TrainError::Dataset(format!("pseudo-label diagnosis: {e}")))?;
    Ok(q.terms())
}

/// The batch's images with each unlabeled crop perturbed as [`StrongView`] says (the labeled crops
/// unchanged), from the iteration's own stream.
fn strong_view(batch: &StepBatch, view: StrongView) -> Result<Tensor> {
    use rand::{Rng as _, SeedableRng};
    let (n_l, n_u) = (batch.n_labeled, batch.n_unlabeled);
    let unlabeled = batch.images.narrow(0, n_l, n_u)?;
    let per_crop = unlabeled.elem_count() / n_u.max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(
        batch.seed,
        batch.iteration as u64,
        STRONG_STREAM,
    ));
    let mut scale = Vec::with_capacity(n_u * per_crop);
    let mut shift = Vec::with_capacity(n_u * per_crop);
    for _ in 0..n_u {
        let c = 1.0 + view.contrast * (2.0 * rng.random::<f64>() - 1.0);
        let b = view.brightness * (2.0 * rng.random::<f64>() - 1.0);
        scale.extend(std::iter::repeat_n(c as f32, per_crop));
        for _ in 0..per_crop {
            shift.push((b + view.noise_std * duoseg_models::standard_normal(&mut rng)) as f32);
        }
    }
    let dev = batch.images.device();
    let dims = unlabeled.dims();
    let scale = Tensor::from_vec(scale, dims, dev)?.to_dtype(unlabeled.dtype())?;
    let shift = Tensor::from_vec(shift, dims, dev)?.to_dtype(unlabeled.dtype())?;
    let strong = unlabeled.mul(&scale)?.add(&shift)?;
    Ok(Tensor::cat(
        &[&batch.images.narrow(0, 0, n_l)?, &strong],
        0,
    )?)
}

/// One iteration's copy-paste (as BCP does): into each unlabeled crop, a cuboid of a labeled crop of
/// the same batch, `share` of the crop along every axis, at a place drawn from the iteration's stream.
struct CopyPaste {
    /// The batch's images with the unlabeled crops pasted `[N_l + N_u, 1, D, H, W]`.
    images: Tensor,
    /// The pasted voxels' labels, read under `mask` `[N_u, D, H, W]` (u32).
    labels: Tensor,
    /// 1 where pasted `[N_u, D, H, W]` (f32).
    mask: Tensor,
    /// The complement of `mask` on the host, in the order of `[N_u, D, H, W]`.
    unpasted: Vec<bool>,
}

impl CopyPaste {
    fn draw(batch: &StepBatch, share: f64) -> Result<CopyPaste> {
        use rand::{Rng as _, SeedableRng};
        let (n_l, n_u) = (batch.n_labeled, batch.n_unlabeled);
        let &[n, _, d, h, w] = batch.images.dims() else {
            return Err(TrainError::Tensor(candle_core::Error::Msg(format!(
                "copy-paste needs images [N, 1, D, H, W], got {:?}",
                batch.images.dims()
            ))));
        };
        if n_l == 0 || n != n_l + n_u {
            return Err(TrainError::Tensor(candle_core::Error::Msg(format!(
                "copy-paste needs labeled crops and {} = {n_l} + {n_u} images, got {n}",
                n_l + n_u
            ))));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(
            batch.seed,
            batch.iteration as u64,
            PASTE_STREAM,
        ));
        let dims = [d, h, w];
        let voxels = d * h * w;
        let mut sources = Vec::with_capacity(n_u);
        let mut unpasted = vec![true; n_u * voxels];
        for item in unpasted.chunks_mut(voxels) {
            sources.push(rng.random_range(0..n_l) as u32);
            let mut lo = [0usize; 3];
            let mut hi = [0usize; 3];
            for a in 0..3 {
                let size = ((share * dims[a] as f64).round() as usize).clamp(1, dims[a]);
                lo[a] = rng.random_range(0..=dims[a] - size);
                hi[a] = lo[a] + size;
            }
            for z in lo[0]..hi[0] {
                for y in lo[1]..hi[1] {
                    let row = (z * h + y) * w;
                    item[row + lo[2]..row + hi[2]].fill(false);
                }
            }
        }
        let device = batch.images.device();
        let mask_host: Vec<u8> = unpasted.iter().map(|&keep| u8::from(!keep)).collect();
        let mask_u8 = Tensor::from_vec(mask_host, (n_u, d, h, w), device)?;
        let sources = Tensor::from_vec(sources, n_u, device)?;
        let labeled = batch.images.narrow(0, 0, n_l)?;
        let unlabeled = batch.images.narrow(0, n_l, n_u)?;
        let pasted = mask_u8
            .unsqueeze(1)?
            .where_cond(&labeled.index_select(&sources, 0)?, &unlabeled)?;
        Ok(CopyPaste {
            images: Tensor::cat(&[&labeled, &pasted], 0)?,
            labels: batch.labels.index_select(&sources, 0)?,
            mask: mask_u8.to_dtype(batch.images.dtype())?,
            unpasted,
        })
    }
}

/// `x + clamp(n, -clip, clip)` with `n ~ N(0, std^2)` drawn from `seed` (on the host, then moved to
/// `x`'s device): the noise Mean Teacher and UA-MT add to the teacher's input.
fn add_clipped_noise(x: &Tensor, std: f64, clip: f64, seed: u64) -> Result<Tensor> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let noise: Vec<f32> = (0..x.elem_count())
        .map(|_| (duoseg_models::standard_normal(&mut rng) * std).clamp(-clip, clip) as f32)
        .collect();
    let noise = Tensor::from_vec(noise, x.dims(), x.device())?.to_dtype(x.dtype())?;
    Ok((x + noise)?)
}

/// Mean Teacher and UA-MT (docs/methods.md sections 1-2): a V-Net student on labeled and unlabeled
/// crops, `0.5 (CE + Dice)` on the labeled ones, and the squared distance of its softmax to an EMA
/// teacher's (input noise, dropout and batch statistics on: the teacher runs in training mode, as in
/// the public code) on the unlabeled ones, weighted by the ramp. UA-MT (`mc_passes`) counts only
/// voxels whose uncertainty over T noisy teacher passes is below its threshold.
pub struct MeanTeacher {
    teacher: Nets,
    ramp: ConsistencyRamp,
    ema_decay: f64,
    noise_std: f64,
    noise_clip: f64,
    mc_passes: Option<usize>,
    unlabeled_per_batch: usize,
}

impl TrainingMethod for MeanTeacher {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let (t, seed) = (batch.iteration, batch.seed);
        students.reseed_dropout(seed, t, STUDENT_DROPOUT);
        let logits = students.a.forward_t(batch.images, true)?.0;
        ensure_finite("logits_a", &logits, t)?;
        let sup = supervised_loss(&logits.narrow(0, 0, batch.n_labeled)?, batch.labels, None)?;
        let student_u = logits.narrow(0, batch.n_labeled, batch.n_unlabeled)?;
        let xu = batch.images.narrow(0, batch.n_labeled, batch.n_unlabeled)?;
        let teacher = |x: &Tensor, noise: u64, dropout: [u64; 2]| -> Result<Tensor> {
            let noisy = add_clipped_noise(
                x,
                self.noise_std,
                self.noise_clip,
                mix(seed, t as u64, noise),
            )?;
            self.teacher.reseed_dropout(seed, t, dropout);
            Ok(self.teacher.a.forward_t(&noisy, true)?.0.detach())
        };
        let target = teacher(&xu, NOISE_STREAM, TEACHER_DROPOUT)?;
        let weight = self.ramp.at(t);
        let mut terms = BTreeMap::new();
        let consistency = match self.mc_passes {
            None => mean_teacher_consistency(&student_u, &target)?,
            Some(passes) => {
                // as the code: T/2 passes of the unlabeled crops repeated twice, each with its own
                // noise and dropout; row 2p + i of a pass is crop i
                let twice = Tensor::cat(&[&xu, &xu], 0)?;
                let mut samples = Vec::with_capacity(passes);
                for p in 0..passes / 2 {
                    let k = p as u64;
                    let z = teacher(
                        &twice,
                        NOISE_STREAM + 1 + k,
                        [MC_DROPOUT + k, MC_DROPOUT + k],
                    )?;
                    samples.push(z.narrow(0, 0, batch.n_unlabeled)?);
                    samples.push(z.narrow(0, batch.n_unlabeled, batch.n_unlabeled)?);
                }
                let uncertainty = predictive_entropy(&samples)?;
                let k = logits.dim(1)?;
                let threshold = uncertainty_threshold(t, batch.total_iterations, k);
                let (c, mask) =
                    uncertainty_masked_consistency(&student_u, &target, &uncertainty, threshold)?;
                terms.insert("uncertainty_threshold".to_string(), threshold);
                terms.insert("certain_fraction".to_string(), host(&mask.mean_all()?)?);
                c
            }
        };
        let supervised = (sup.total()? * 0.5)?;
        let total = (&supervised + (&consistency * weight)?)?;
        terms.extend([
            ("total".to_string(), host(&total)?),
            ("ce_a".to_string(), host(&sup.ce)?),
            ("dice_a".to_string(), host(&sup.dice)?),
            ("consistency".to_string(), host(&consistency)?),
            ("lambda_u".to_string(), weight),
        ]);
        Ok(StepLoss { total, terms })
    }

    fn after_update(&mut self, students: &Nets, iteration: usize) -> Result<()> {
        self.teacher
            .ema_update(students, ema_decay(iteration, self.ema_decay))
    }

    fn save_state(&self, tensors: &mut BTreeMap<String, Tensor>) -> Result<serde_json::Value> {
        tensors.extend(self.teacher.tensors([EMA_A, EMA_B])?);
        Ok(serde_json::json!({}))
    }

    fn load_state(
        &mut self,
        path: &Path,
        tensors: &BTreeMap<String, Tensor>,
        _state: &serde_json::Value,
    ) -> Result<()> {
        self.teacher.restore(path, [EMA_A, EMA_B], tensors)
    }
}

/// MCF (docs/methods.md section 6): the V-Net and the ResNet-34 V-Net on the same crops; each
/// `CE + Dice` plus the review of the labeled voxels where they disagree; the net with the lower
/// Dice loss gives sharpened pseudo-labels to the other on the unlabeled crops
/// ([`duoseg_losses::mcf_loss`]). One SGD step over both nets is the code's two optimisers: each
/// net's gradient comes from its own terms only (the pseudo-labels carry no gradient).
pub struct Mcf {
    ramp: ConsistencyRamp,
    temperature: f64,
    review_weight: f64,
    unlabeled_per_batch: usize,
}

impl TrainingMethod for Mcf {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let [(la, _), (lb, _)] = forward_students(students, batch)?;
        let weight = self.ramp.at(batch.iteration);
        let m = mcf_loss(
            &la,
            &lb,
            batch.labels,
            weight,
            self.temperature,
            self.review_weight,
        )?;
        let terms = BTreeMap::from([
            ("total".to_string(), host(&m.total)?),
            ("supervised_a".to_string(), host(&m.supervised_v)?),
            ("supervised_b".to_string(), host(&m.supervised_r)?),
            ("dice_a".to_string(), m.dice_v),
            ("dice_b".to_string(), m.dice_r),
            ("review_a".to_string(), host(&m.review_v)?),
            ("review_b".to_string(), host(&m.review_r)?),
            ("consistency".to_string(), host(&m.consistency)?),
            (
                "teacher_is_a".to_string(),
                f64::from(u8::from(m.vnet_teaches)),
            ),
            ("n_disagree".to_string(), m.n_disagree),
            ("lambda_u".to_string(), weight),
        ]);
        Ok(StepLoss {
            total: m.total,
            terms,
        })
    }
}

/// The normalised signed distance maps of the labeled crops, one channel per foreground class
/// (`duoseg_metrics::normalized_signed_distance`, DTC's `compute_sdf`), computed on the host:
/// `[N_l, K - 1, D, H, W]` f32 on `labels`' device.
fn signed_distance_targets(labels: &Tensor, n_classes: usize) -> Result<Tensor> {
    let dims = labels.dims().to_vec();
    let (n, shape) = (dims[0], [dims[1], dims[2], dims[3]]);
    let host: Vec<u32> = labels.flatten_all()?.to_vec1()?;
    let per = shape.iter().product::<usize>();
    let mut out = Vec::with_capacity(n * (n_classes - 1) * per);
    for item in host.chunks(per) {
        for c in 1..n_classes as u32 {
            let mask: Vec<bool> = item.iter().map(|&l| l == c).collect();
            let sdf = duoseg_metrics::normalized_signed_distance(&mask, shape)
                .map_err(|e| TrainError::Tensor(candle_core::Error::Msg(e.to_string())))?;
            out.extend(sdf.into_iter().map(|v| v as f32));
        }
    }
    Ok(Tensor::from_vec(
        out,
        (n, n_classes - 1, shape[0], shape[1], shape[2]),
        labels.device(),
    )?)
}

/// DTC (docs/methods.md section 4): a V-Net with a level-set head (`out_sdf`); Dice on the labeled
/// crops plus `sdf_weight` x the level set's squared error against the signed distance maps of the
/// labels, and on every crop the ramped consistency between the segmentation and
/// `sigmoid(-k level set)` ([`duoseg_losses::dtc_loss`]).
pub struct Dtc {
    ramp: ConsistencyRamp,
    transform_k: f64,
    sdf_weight: f64,
    unlabeled_per_batch: usize,
}

impl TrainingMethod for Dtc {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let t = batch.iteration;
        let (logits, sdf, target) = forward_with_level_set(students, batch, "dtc")?;
        let weight = self.ramp.at(t);
        let d = dtc_loss(
            &logits,
            &sdf,
            &target,
            batch.labels,
            self.transform_k,
            self.sdf_weight,
            weight,
        )?;
        let terms = BTreeMap::from([
            ("total".to_string(), host(&d.total)?),
            ("dice_a".to_string(), host(&d.dice)?),
            ("sdf_mse".to_string(), host(&d.sdf_mse)?),
            ("consistency".to_string(), host(&d.consistency)?),
            ("lambda_u".to_string(), weight),
        ]);
        Ok(StepLoss {
            total: d.total,
            terms,
        })
    }
}

/// MC-Net's weight of the Dice loss (`lamda` in `train_mcnet_3d.py`, 0.5).
const MC_NET_DICE_WEIGHT: f64 = 0.5;

/// MC-Net (docs/methods.md section 5): a V-Net with a second decoder that up-samples trilinearly
/// (`VNet::with_trilinear_decoder`); both decoders' Dice on the labeled crops and, on every crop,
/// each decoder's softmax against the other's sharpened softmax, with the ramp read at `t + 1`
/// as the code increments its counter first ([`duoseg_losses::mc_net_loss`]).
pub struct McNet {
    ramp: ConsistencyRamp,
    temperature: f64,
    unlabeled_per_batch: usize,
}

impl TrainingMethod for McNet {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let t = batch.iteration;
        students.reseed_dropout(batch.seed, t, STUDENT_DROPOUT);
        let outputs = students.a.decoder_outputs_t(batch.images, true)?;
        if outputs.len() < 2 {
            return Err(TrainError::Tensor(candle_core::Error::Msg(
                "mc_net needs the V-Net's second decoder".into(),
            )));
        }
        for (i, (logits, _)) in outputs.iter().enumerate() {
            ensure_finite(&format!("logits_dec{}", i + 1), logits, t)?;
        }
        let logits: Vec<&Tensor> = outputs.iter().map(|(l, _)| l).collect();
        let weight = self.ramp.at(t + 1);
        let m = duoseg_losses::mc_net_loss(
            &logits,
            batch.labels,
            weight,
            self.temperature,
            MC_NET_DICE_WEIGHT,
        )?;
        let terms = BTreeMap::from([
            ("total".to_string(), host(&m.total)?),
            ("dice_a".to_string(), host(&m.supervised_dice)?),
            ("consistency".to_string(), host(&m.consistency)?),
            ("lambda_u".to_string(), weight),
        ]);
        Ok(StepLoss {
            total: m.total,
            terms,
        })
    }
}

/// SASSNet's discriminator width (`ndf`), its Adam learning rate and betas (the code's values).
const SASSNET_NDF: usize = 64;
const SASSNET_D_LR: f64 = 1e-4;
const SASSNET_D_BETAS: (f64, f64) = (0.9, 0.99);
/// The per-iteration stream of the discriminator's dropout masks.
const DISCRIMINATOR_DROPOUT: u64 = 300;
/// Checkpoint prefixes of the discriminator's weights and of its Adam moments.
const DISC: &str = "disc";
const DISC_ADAM: &str = "disc_adam";

/// SASSNet (docs/methods.md section 3): the V-Net with the level-set head of DTC, trained on Dice
/// and the level set's squared error on the labeled crops plus, ramped, an adversarial term that
/// asks a discriminator to take the unlabeled crops' level sets for labeled ones
/// ([`duoseg_losses::sassnet_loss`]); after each segmenter step the discriminator
/// (`models::Discriminator`, dropout on) takes an Adam step on every crop's eval-mode level set,
/// labeled crops as class 1 ([`duoseg_losses::discriminator_loss`]).
pub struct Sassnet {
    ramp: ConsistencyRamp,
    sdf_weight: f64,
    unlabeled_per_batch: usize,
    discriminator: duoseg_models::Discriminator,
    d_vars: candle_nn::VarMap,
    adam: crate::adam::Adam,
    /// The batch of the segmenter's step, for the discriminator's step that follows it.
    pending: Option<PendingBatch>,
}

struct PendingBatch {
    images: Tensor,
    n_labeled: usize,
    seed: u64,
}

impl Sassnet {
    fn new(cfg: &TrainConfig, ramp: ConsistencyRamp, device: &Device) -> Result<Self> {
        let d_vars = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&d_vars, candle_core::DType::F32, device);
        let map_channels = cfg.model.n_classes.saturating_sub(1).max(1);
        let discriminator = duoseg_models::Discriminator::new(map_channels, 1, SASSNET_NDF, vb)?;
        duoseg_models::init_seeded(&d_vars, mix(cfg.seed, 2, 0xD15C))?;
        let params = crate::checkpoint::lock_vars(&d_vars)?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let adam = crate::adam::Adam::new(params, SASSNET_D_LR, SASSNET_D_BETAS)?;
        Ok(Sassnet {
            ramp,
            sdf_weight: cfg.baseline.sdf_weight,
            unlabeled_per_batch: cfg.batch.unlabeled,
            discriminator,
            d_vars,
            adam,
            pending: None,
        })
    }
}

impl TrainingMethod for Sassnet {
    fn unlabeled_per_batch(&self) -> usize {
        self.unlabeled_per_batch
    }

    fn loss(&mut self, students: &Nets, batch: &StepBatch) -> Result<StepLoss> {
        let t = batch.iteration;
        let (logits, sdf, target) = forward_with_level_set(students, batch, "sassnet")?;
        let (n_l, n_u) = (batch.n_labeled, batch.n_unlabeled);
        // the discriminator in eval mode judges the unlabeled level sets; its gradient reaches them
        let d_u = self.discriminator.forward_t(
            &sdf.narrow(0, n_l, n_u)?,
            &batch.images.narrow(0, n_l, n_u)?,
            false,
        )?;
        let weight = self.ramp.at(t);
        let s = duoseg_losses::sassnet_loss(
            &logits,
            &sdf,
            &target,
            batch.labels,
            &d_u,
            self.sdf_weight,
            weight,
        )?;
        self.pending = Some(PendingBatch {
            images: batch.images.clone(),
            n_labeled: n_l,
            seed: mix(batch.seed, t as u64, DISCRIMINATOR_DROPOUT),
        });
        let terms = BTreeMap::from([
            ("total".to_string(), host(&s.total)?),
            ("dice_a".to_string(), host(&s.dice)?),
            ("sdf_mse".to_string(), host(&s.sdf_mse)?),
            ("adversarial".to_string(), host(&s.adversarial)?),
            ("lambda_u".to_string(), weight),
        ]);
        Ok(StepLoss {
            total: s.total,
            terms,
        })
    }

    /// The discriminator's step: a second, eval-mode pass of the updated segmenter over every crop
    /// (no gradient), then cross-entropy of the discriminator (dropout on) against labeled = 1.
    fn after_update(&mut self, students: &Nets, _iteration: usize) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let (_, x9) = students.a.forward_t(&p.images, false)?;
        let sdf = level_set_head(students, "sassnet")?.forward(&x9)?.detach();
        self.discriminator.reseed_dropout(p.seed);
        let d_logits = self.discriminator.forward_t(&sdf, &p.images, true)?;
        let loss = duoseg_losses::discriminator_loss(&d_logits, p.n_labeled)?;
        self.adam.step(&loss.backward()?)?;
        Ok(())
    }

    fn save_state(&self, tensors: &mut BTreeMap<String, Tensor>) -> Result<serde_json::Value> {
        tensors.extend(crate::checkpoint::varmap_tensors(DISC, &self.d_vars)?);
        let (moments, steps) = self.adam.state();
        tensors.extend(
            moments
                .into_iter()
                .map(|(k, v)| (format!("{DISC_ADAM}.{k}"), v)),
        );
        Ok(serde_json::json!({ "discriminator_steps": steps }))
    }

    fn load_state(
        &mut self,
        path: &Path,
        tensors: &BTreeMap<String, Tensor>,
        state: &serde_json::Value,
    ) -> Result<()> {
        crate::checkpoint::restore_varmap(path, DISC, &self.d_vars, tensors)?;
        let prefix = format!("{DISC_ADAM}.");
        let moments: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
            .collect();
        let steps = state
            .get("discriminator_steps")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| TrainError::checkpoint(path, "lacks discriminator_steps"))?;
        self.adam
            .load_state(&moments, steps)
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        Ok(())
    }
}

/// The students' V-Net in train mode with this iteration's dropout masks (logits checked for
/// finiteness), its level-set head on the decoder features, and the signed distance targets of
/// the labeled crops: `(logits, level set, targets)` for DTC and SASSNet.
fn forward_with_level_set(
    students: &Nets,
    batch: &StepBatch,
    method: &str,
) -> Result<(Tensor, Tensor, Tensor)> {
    students.reseed_dropout(batch.seed, batch.iteration, STUDENT_DROPOUT);
    let (logits, x9) = students.a.forward_t(batch.images, true)?;
    ensure_finite("logits_a", &logits, batch.iteration)?;
    let sdf = level_set_head(students, method)?.forward(&x9)?;
    let target = signed_distance_targets(batch.labels, logits.dim(1)?)?;
    Ok((logits, sdf, target))
}

/// The V-Net's level-set head, or an error naming the method that needs it.
fn level_set_head<'a>(students: &'a Nets, method: &str) -> Result<&'a duoseg_models::SdfHead> {
    students.sdf_a.as_ref().ok_or_else(|| {
        TrainError::Tensor(candle_core::Error::Msg(format!(
            "{method} needs the V-Net's level-set head"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 labeled + 2 unlabeled crops of 4 x 6 x 5 with distinct values; labels 0..3.
    fn batch_parts() -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let n = 4 * 4 * 6 * 5;
        let images = Tensor::from_vec(
            (0..n).map(|i| i as f32).collect::<Vec<_>>(),
            (4, 1, 4, 6, 5),
            &dev,
        )
        .unwrap();
        let labels = Tensor::from_vec(
            (0..n / 2).map(|i| (i % 3) as u32).collect::<Vec<_>>(),
            (2, 4, 6, 5),
            &dev,
        )
        .unwrap();
        (images, labels)
    }

    #[test]
    fn copy_paste_puts_a_labeled_cuboid_into_each_unlabeled_crop() {
        let (images, labels) = batch_parts();
        let batch = StepBatch {
            images: &images,
            labels: &labels,
            n_labeled: 2,
            n_unlabeled: 2,
            iteration: 7,
            total_iterations: 10,
            seed: 5,
            hidden_labels: None,
        };
        let p = CopyPaste::draw(&batch, 0.5).unwrap();
        let x = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = labels.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let out = p.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pl = p.labels.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let mask = p.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let v = 4 * 6 * 5;
        // the labeled crops are untouched
        assert_eq!(out[..2 * v], x[..2 * v]);
        for u in 0..2 {
            // the source crop is the one whose values appear under the mask
            let pasted: Vec<usize> = (0..v).filter(|&i| mask[u * v + i] == 1.0).collect();
            // a cuboid of round(0.5 * dims) = 2 x 3 x 3 (2.5 rounds away from zero)
            assert_eq!(pasted.len(), 2 * 3 * 3, "crop {u}");
            assert_eq!(
                pasted
                    .iter()
                    .map(|&i| i / 30)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                2
            );
            let src = (out[2 * v + u * v + pasted[0]] as usize - pasted[0]) / v;
            assert!(src < 2);
            for i in 0..v {
                let under = mask[u * v + i] == 1.0;
                assert_eq!(p.unpasted[u * v + i], !under);
                let expected = if under {
                    x[src * v + i]
                } else {
                    x[(2 + u) * v + i]
                };
                assert_eq!(out[(2 + u) * v + i], expected, "crop {u} voxel {i}");
                assert_eq!(pl[u * v + i], y[src * v + i]);
            }
        }
        // the same seed and iteration give the same paste; another iteration another one
        let again = CopyPaste::draw(&batch, 0.5).unwrap();
        assert_eq!(again.unpasted, p.unpasted);
        let other = CopyPaste::draw(
            &StepBatch {
                iteration: 8,
                ..batch
            },
            0.5,
        )
        .unwrap();
        assert_ne!(other.unpasted, p.unpasted);
        // share 1 pastes the whole crop
        let all = CopyPaste::draw(&batch, 1.0).unwrap();
        assert!(all.unpasted.iter().all(|&k| !k));
    }

    #[test]
    fn the_strong_view_perturbs_the_unlabeled_crops_only() {
        let (images, labels) = batch_parts();
        let batch = StepBatch {
            images: &images,
            labels: &labels,
            n_labeled: 2,
            n_unlabeled: 2,
            iteration: 3,
            total_iterations: 10,
            seed: 5,
            hidden_labels: None,
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = flat(&images);
        let v = 4 * 6 * 5;
        // contrast alone: each unlabeled crop is scaled by one factor within the range
        let contrast = StrongView {
            contrast: 0.25,
            brightness: 0.0,
            noise_std: 0.0,
        };
        let out = flat(&strong_view(&batch, contrast).unwrap());
        assert_eq!(out[..2 * v], x[..2 * v]);
        for u in 2..4 {
            let c = out[u * v + 1] / x[u * v + 1];
            assert!((0.75..=1.25).contains(&c), "factor {c}");
            for i in 0..v {
                assert!((out[u * v + i] - c * x[u * v + i]).abs() <= 1e-3 * x[u * v + i].max(1.0));
            }
        }
        // noise: zero mean, about the asked spread; the same iteration draws the same view
        let noisy = StrongView {
            contrast: 0.0,
            brightness: 0.0,
            noise_std: 0.5,
        };
        let a = flat(&strong_view(&batch, noisy).unwrap());
        assert_eq!(a, flat(&strong_view(&batch, noisy).unwrap()));
        let n: Vec<f64> = (2 * v..4 * v).map(|i| f64::from(a[i] - x[i])).collect();
        let mean = n.iter().sum::<f64>() / n.len() as f64;
        let std = (n.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n.len() as f64).sqrt();
        assert!(
            mean.abs() < 0.1 && (std - 0.5).abs() < 0.1,
            "mean {mean} std {std}"
        );
    }

    /// Supervised-only with `review_weight` adds that weight times the review term, which a naive loop over
    /// both nets' softmax recomputes: the mean over the voxels where their argmax differ of each net's
    /// `sum_{c>=1} (p_c - y_c)^2`, the two nets' means summed.
    #[test]
    fn supervised_only_adds_the_weighted_review_of_the_labeled_crops() -> Result<()> {
        let m = crate::config::ModelConfig {
            n_classes: 3,
            base_width: 2,
            dropout: false,
        };
        let nets = Nets::build(&m, Networks::Pair, &Device::Cpu, 11)?;
        let dev = Device::Cpu;
        let n = 2 * 16 * 16 * 16;
        let images = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect::<Vec<_>>(),
            (2, 1, 16, 16, 16),
            &dev,
        )?;
        let labels = Tensor::from_vec(
            (0..n).map(|i| ((i / 7) % 3) as u32).collect::<Vec<_>>(),
            (2, 16, 16, 16),
            &dev,
        )?;
        let batch = StepBatch {
            images: &images,
            labels: &labels,
            n_labeled: 2,
            n_unlabeled: 0,
            iteration: 3,
            total_iterations: 10,
            seed: 5,
            hidden_labels: None,
        };
        let plain = SupervisedOnly { review_weight: 0.0 }.loss(&nets, &batch)?;
        let with = SupervisedOnly { review_weight: 0.5 }.loss(&nets, &batch)?;
        assert!(!plain.terms.contains_key("review"));

        let [(la, _), (lb, _)] = forward_students(&nets, &batch)?;
        // logits with the class axis last: voxel v's classes at 3 v .. 3 v + 3
        let channels_last = |l: &Tensor| -> Result<Vec<f32>> {
            Ok(l.permute((0, 2, 3, 4, 1))?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (za, zb) = (channels_last(&la)?, channels_last(&lb)?);
        let y = labels.flatten_all()?.to_vec1::<u32>()?;
        let softmax = |z: &[f32]| -> Vec<f64> {
            let mx = z.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f64> = z.iter().map(|v| f64::from(v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let argmax = |p: &[f64]| (0..3).fold(0, |b, c| if p[c] > p[b] { c } else { b });
        let (mut count, mut sum_a, mut sum_b) = (0.0f64, 0.0f64, 0.0f64);
        for v in 0..n {
            let pa = softmax(&za[3 * v..3 * v + 3]);
            let pb = softmax(&zb[3 * v..3 * v + 3]);
            if argmax(&pa) == argmax(&pb) {
                continue;
            }
            count += 1.0;
            for c in 1..3 {
                let t = if y[v] as usize == c { 1.0 } else { 0.0 };
                sum_a += (pa[c] - t).powi(2);
                sum_b += (pb[c] - t).powi(2);
            }
        }
        assert!(count > 0.0, "the two untrained nets agree everywhere");
        let review = (sum_a + sum_b) / count;
        assert!((with.terms["review"] - review).abs() < 1e-4 * review.max(1.0));
        assert_eq!(with.terms["n_review"], count);
        let expected = plain.terms["total"] + 0.5 * review;
        assert!(
            (with.terms["total"] - expected).abs() < 1e-4 * expected,
            "{} vs {expected}",
            with.terms["total"]
        );
        Ok(())
    }
}
