//! Assembly of one iteration's total loss from the two nets' outputs, every term kept for logging.

use std::collections::BTreeMap;

use candle_core::{bail, DType, Result, Tensor};

use crate::baselines::{review_terms, sharpen};
use crate::config::{LossConfig, Preset, Reliability, StudentRule, UnsupTarget};
use crate::consistency::{
    consistency_l1_normalized, disagreement_mask, mean_confidence, DynamicThreshold,
};
use crate::contrastive::{prototype_contrastive, ContrastiveTerms};
use crate::reduce;
use crate::reliability::{
    alpha_schedule, choose_teacher, entropy, pseudo_labels, select_reliable,
    select_reliable_per_class, Net, Teacher,
};
use crate::supervised::{cross_entropy, dice_loss, one_hot, supervised_loss, SupervisedTerms};

/// Fixed parameters of the reference code's effective objective (SPEC end of section 2).
const REF_CONFIDENT: f64 = 0.6;
const REF_REG_WEIGHT: f64 = 0.5;
const REF_KEEP_FRACTION: f64 = 0.2;

/// One net's outputs on the whole batch (labeled items first).
#[derive(Debug, Clone, Copy)]
pub struct NetOutputs<'a> {
    /// Logits `[N, K, D, H, W]`.
    pub logits: &'a Tensor,
    /// Features `[N, C, D, H, W]` (not yet normalised).
    pub features: &'a Tensor,
}

/// Everything one iteration's loss needs.
#[derive(Debug, Clone, Copy)]
pub struct IterationInput<'a> {
    /// Subnet A's outputs.
    pub a: NetOutputs<'a>,
    /// Subnet B's outputs.
    pub b: NetOutputs<'a>,
    /// Ground truth of the labeled items `[N_l, D, H, W]` (integer dtype); `N_l` = the first `N_l` items.
    pub labels: &'a Tensor,
    /// Iteration t (0-based).
    pub iteration: usize,
    /// Total iterations t_max.
    pub total_iterations: usize,
    /// Seed of this iteration's voxel sampling (e.g. run seed + t).
    pub seed: u64,
    /// Logits `[N_u, K, D, H, W]` on the unlabeled items of smoothed (EMA) copies of A and B, when the
    /// trainer keeps them: the chosen teacher's copy (the mean of both copies' probabilities for the ensemble
    /// teacher) then gives the pseudo-labels and the entropy (Mean
    /// Teacher's damping of confirmation bias, SPEC section 6). `None`: the live nets teach (SPEC section 2).
    /// Used by `Preset::Paper` only.
    pub teacher_logits: Option<[&'a Tensor; 2]>,
    /// Ground truth pasted into the unlabeled items (copy-paste, as BCP does), when the trainer pastes:
    /// there the target is that truth, always reliable. `None`: the unlabeled items are untouched.
    pub pasted: Option<PastedLabels<'a>>,
}

/// Where the unlabeled items hold pasted labeled voxels, and those voxels' labels.
#[derive(Debug, Clone, Copy)]
pub struct PastedLabels<'a> {
    /// Labels `[N_u, D, H, W]` (integer dtype), read where `mask` is 1.
    pub labels: &'a Tensor,
    /// 1 where the voxel was pasted from a labeled item, else 0 `[N_u, D, H, W]` (f32).
    pub mask: &'a Tensor,
}

/// Every term of one iteration. Tensors are scalars; `total` is the one to back-propagate.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// `L = L_s,A + L_s,B + lambda_u (L_u + L_reg) + lambda_c (L_c,A + L_c,B)`.
    pub total: Tensor,
    /// Supervised terms of net A.
    pub sup_a: SupervisedTerms,
    /// Supervised terms of net B.
    pub sup_b: SupervisedTerms,
    /// `L_u`, summed over the student(s) (0 when switched off).
    pub unsup: Tensor,
    /// `L_reg` (0 when switched off).
    pub reg: Tensor,
    /// MCF's review term of both nets on the labeled half, unweighted (0 when `review_weight` is 0).
    pub review: Tensor,
    /// Contrastive terms of net A (zeros when switched off).
    pub contrast_a: ContrastiveTerms,
    /// Contrastive terms of net B (zeros when switched off).
    pub contrast_b: ContrastiveTerms,
    /// The teacher this iteration.
    pub teacher: Teacher,
    /// `alpha_t`.
    pub alpha: f64,
    /// T this iteration (NaN when `L_reg` is off).
    pub threshold: f64,
    /// `lambda_u(t)`.
    pub lambda_u: f64,
    /// `lambda_c(t)`.
    pub lambda_c: f64,
    /// Number of reliable unlabeled voxels.
    pub n_reliable: usize,
    /// Number of unreliable unlabeled voxels.
    pub n_unreliable: usize,
    /// `|M_diff|`.
    pub n_disagree: usize,
    /// Labeled voxels where the nets' argmax differ (the review term's mask; 0 when it is off).
    pub n_review: usize,
    /// The pseudo-labels `y_hat` of the unlabeled half `[N_u, D, H, W]` (u32), for diagnosis.
    pub pseudo_labels: Tensor,
    /// 1 where an unlabeled voxel is reliable, else 0 `[N_u, D, H, W]`, for diagnosis.
    pub reliable: Tensor,
}

impl LossTerms {
    /// Host values of every term, keyed by name (sorted), for the training log.
    pub fn scalars(&self) -> Result<BTreeMap<&'static str, f64>> {
        let v = |t: &Tensor| -> Result<f64> {
            Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
        };
        let mut m = BTreeMap::new();
        m.insert("total", v(&self.total)?);
        m.insert("ce_a", v(&self.sup_a.ce)?);
        m.insert("dice_a", v(&self.sup_a.dice)?);
        m.insert("ce_b", v(&self.sup_b.ce)?);
        m.insert("dice_b", v(&self.sup_b.dice)?);
        m.insert("unsup", v(&self.unsup)?);
        m.insert("reg", v(&self.reg)?);
        m.insert("review", v(&self.review)?);
        m.insert("pull_a", v(&self.contrast_a.pull)?);
        m.insert("push_a", v(&self.contrast_a.push)?);
        m.insert("pull_b", v(&self.contrast_b.pull)?);
        m.insert("push_b", v(&self.contrast_b.push)?);
        m.insert("teacher_is_a", self.teacher.share_of_a());
        m.insert("alpha", self.alpha);
        m.insert("threshold", self.threshold);
        m.insert("lambda_u", self.lambda_u);
        m.insert("lambda_c", self.lambda_c);
        m.insert("n_reliable", self.n_reliable as f64);
        m.insert("n_unreliable", self.n_unreliable as f64);
        m.insert("n_disagree", self.n_disagree as f64);
        m.insert("n_review", self.n_review as f64);
        Ok(m)
    }
}

/// The per-iteration objective with its state (the dynamic threshold's EMA).
#[derive(Debug, Clone)]
pub struct Objective {
    cfg: LossConfig,
    n_classes: usize,
    threshold: DynamicThreshold,
}

fn host(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

fn count(mask: &Tensor) -> Result<usize> {
    Ok(host(&reduce::sum_all(mask)?)?.round() as usize)
}

fn zero_contrast(zero: &Tensor) -> ContrastiveTerms {
    ContrastiveTerms {
        pull: zero.clone(),
        push: zero.clone(),
        n_sampled: 0,
        n_prototypes: 0,
    }
}

/// The halves of one net's outputs.
struct Halves {
    logits_l: Tensor,
    logits_u: Tensor,
    probs_l: Tensor,
    probs_u: Tensor,
    feat_l: Tensor,
    feat_u: Tensor,
}

fn split(out: NetOutputs, n_labeled: usize) -> Result<Halves> {
    let n = out.logits.dim(0)?;
    let n_u = n - n_labeled;
    let probs = candle_nn::ops::softmax(out.logits, 1)?;
    Ok(Halves {
        logits_l: out.logits.narrow(0, 0, n_labeled)?,
        logits_u: out.logits.narrow(0, n_labeled, n_u)?,
        probs_l: probs.narrow(0, 0, n_labeled)?,
        probs_u: probs.narrow(0, n_labeled, n_u)?,
        feat_l: out.features.narrow(0, 0, n_labeled)?,
        feat_u: out.features.narrow(0, n_labeled, n_u)?,
    })
}

impl Objective {
    /// A fresh objective for `n_classes` classes.
    pub fn new(cfg: LossConfig, n_classes: usize) -> Result<Self> {
        if let Err(reason) = cfg.validate(n_classes) {
            bail!("{reason}");
        }
        let threshold = DynamicThreshold::new(cfg.threshold, n_classes);
        Ok(Objective {
            cfg,
            n_classes,
            threshold,
        })
    }

    /// The number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The configuration.
    pub fn config(&self) -> &LossConfig {
        &self.cfg
    }

    /// The dynamic threshold (its EMA goes into checkpoints).
    pub fn threshold(&self) -> &DynamicThreshold {
        &self.threshold
    }

    /// The threshold state, to restore it from a checkpoint.
    pub fn threshold_state(&mut self) -> &mut DynamicThreshold {
        &mut self.threshold
    }

    fn check(&self, input: &IterationInput) -> Result<usize> {
        let la = input.a.logits.dims();
        if la.len() != 5 || la[1] != self.n_classes || input.b.logits.dims() != la {
            bail!(
                "logits must be [N, {}, D, H, W] for both nets, got {:?} and {:?}",
                self.n_classes,
                la,
                input.b.logits.dims()
            );
        }
        let fa = input.a.features.dims();
        if fa.len() != 5 || input.b.features.dims() != fa || fa[0] != la[0] || fa[2..] != la[2..] {
            bail!(
                "features {:?} / {:?} do not match logits {:?}",
                fa,
                input.b.features.dims(),
                la
            );
        }
        let n_labeled = input.labels.dim(0)?;
        if input.labels.dims()[1..] != la[2..] || n_labeled == 0 || n_labeled >= la[0] {
            bail!(
                "labels {:?} must be [N_l, D, H, W] with 0 < N_l < N for logits {:?}",
                input.labels.dims(),
                la
            );
        }
        Ok(n_labeled)
    }

    /// Assembles one iteration's loss.
    ///
    /// `Preset::Paper` (SPEC section 2): supervised terms of both nets on the labeled half; the teacher
    /// (lower `L_s`, option lower Dice) gives `y_hat = argmax p_teacher` on the unlabeled half; the `alpha_t`
    /// most uncertain voxels of the teacher are unreliable; `L_u` = masked CE + masked Dice (switch `unsup_dice`) of the
    /// student(s) on reliable voxels; `L_reg` = L1 on `M_diff` with the dynamic T (gradient into both nets); `L_c` per net
    /// (prototype pull + push); total with the lambda schedules. Switched-off terms are 0.
    ///
    /// `Preset::ReferenceCode` (our reading of the published code's effective objective): pseudo-label =
    /// union of both nets' foreground, reliable = in the lowest 20 % entropy of at least one net; `L_u` (both
    /// nets) and `L_c` are computed on detached tensors (logged, they train nothing); `L_reg` on the labeled
    /// half = sum over nets of `sum M (p_fg - y)^2 / max(1, |M|)` with `M` = exactly one net's `p_fg > 0.6`;
    /// total = `L_s,A + L_s,B + 0.5 L_reg + lambda_u L_u + lambda_c L_c` (the last two constant).
    pub fn assemble(&mut self, input: &IterationInput) -> Result<LossTerms> {
        let n_labeled = self.check(input)?;
        let (t, t_max) = (input.iteration, input.total_iterations);
        let a = split(input.a, n_labeled)?;
        let b = split(input.b, n_labeled)?;
        let labels = input.labels.to_dtype(DType::U32)?;
        let sup_a = supervised_loss(&a.logits_l, &labels, None)?;
        let sup_b = supervised_loss(&b.logits_l, &labels, None)?;
        let lambda_u = self.cfg.lambda_u.at(t, t_max);
        let lambda_c = self.cfg.lambda_c.at(t, t_max);
        let zero = Tensor::zeros((), input.a.logits.dtype(), input.a.logits.device())?;
        let cfg = self.cfg.clone();
        let teacher = choose_teacher(
            cfg.teacher,
            (host(&sup_a.ce)?, host(&sup_a.dice)?),
            (host(&sup_b.ce)?, host(&sup_b.dice)?),
        );
        let reference = cfg.preset == Preset::ReferenceCode;
        let targets = if reference {
            reference_targets(&a, &b)?
        } else {
            paper_targets(input, teacher, &a, &b, &cfg, self.n_classes)?
        };
        let targets = match input.pasted {
            Some(p) => targets.with_pasted(p)?,
            None => targets,
        };
        let n_reliable = count(&targets.reliable)?;
        let n_unreliable = targets.reliable.elem_count() - n_reliable;
        let unsup = match (cfg.use_unsup, reference) {
            (false, _) => zero.clone(),
            (true, false) => paper_unsup(&cfg, teacher, &a, &b, &targets, zero.clone())?,
            (true, true) => reference_unsup(&a, &b, &targets, zero.clone())?,
        };
        let (reg, threshold, n_disagree) = match (cfg.use_reg, reference) {
            (false, false) => (zero.clone(), f64::NAN, 0),
            (false, true) => (zero.clone(), REF_CONFIDENT, 0),
            (true, false) => self.paper_reg(&a, &b, t, t_max)?,
            (true, true) => reference_reg(&a, &b, &labels)?,
        };
        let (contrast_a, contrast_b) = if cfg.use_contrastive {
            let k = self.n_classes;
            contrastive_pair(&a, &b, &targets, &labels, k, &cfg, input.seed, reference)?
        } else {
            (zero_contrast(&zero), zero_contrast(&zero))
        };
        let (review, n_review) = if cfg.review_weight > 0.0 {
            let r = review_terms(&a.probs_l, &b.probs_l, &labels)?;
            ((r.review_a + r.review_b)?, r.n_disagree.round() as usize)
        } else {
            (zero.clone(), 0)
        };
        let lc = (contrast_a.total()? + contrast_b.total()?)?;
        let sup = ((sup_a.total()? + sup_b.total()?)? + (&review * cfg.review_weight)?)?;
        let total = if reference {
            (((sup + (&reg * REF_REG_WEIGHT)?)? + (&unsup * lambda_u)?)? + (lc * lambda_c)?)?
        } else {
            ((sup + ((&unsup + &reg)? * lambda_u)?)? + (lc * lambda_c)?)?
        };
        Ok(LossTerms {
            total,
            sup_a,
            sup_b,
            unsup,
            reg,
            review,
            contrast_a,
            contrast_b,
            teacher,
            alpha: targets.alpha,
            threshold,
            lambda_u,
            lambda_c,
            n_reliable,
            n_unreliable,
            n_disagree,
            n_review,
            pseudo_labels: targets.yhat,
            reliable: targets.reliable,
        })
    }

    /// The paper's `L_reg`: L1 between both nets' probabilities on `M_diff` under the dynamic T;
    /// returns it with T and `|M_diff|`.
    fn paper_reg(
        &mut self,
        a: &Halves,
        b: &Halves,
        t: usize,
        t_max: usize,
    ) -> Result<(Tensor, f64, usize)> {
        let conf = 0.5 * (mean_confidence(&a.probs_u)? + mean_confidence(&b.probs_u)?);
        let threshold = self.threshold.update(conf, t, t_max);
        let mdiff = disagreement_mask(&a.probs_u, &b.probs_u, threshold)?;
        let n_disagree = count(&mdiff)?;
        let reg =
            consistency_l1_normalized(&a.probs_u, &b.probs_u, &mdiff, self.cfg.reg_normalize)?;
        Ok((reg, threshold, n_disagree))
    }
}

/// Pseudo-labels of the unlabeled half and where they are trusted.
struct Targets {
    /// `y_hat` `[N_u, D, H, W]`.
    yhat: Tensor,
    /// 1 where the voxel is reliable.
    reliable: Tensor,
    /// The share of unreliable voxels (`alpha_t`; the reference code's fixed fraction).
    alpha: f64,
    /// The teacher's probabilities `[N_u, K, D, H, W]` (detached; one-hot truth where pasted), kept only
    /// when `L_u` fits soft targets; `None` for hard targets and for the reference code.
    probs: Option<Tensor>,
}

impl Targets {
    /// The pasted truth replaces the pseudo-labels under the paste mask, and is reliable there.
    fn with_pasted(self, pasted: PastedLabels) -> Result<Targets> {
        let (labels, mask) = (pasted.labels, pasted.mask);
        if labels.dims() != self.yhat.dims() || mask.dims() != self.yhat.dims() {
            bail!(
                "pasted labels {:?} and mask {:?} must match the unlabeled half {:?}",
                labels.dims(),
                mask.dims(),
                self.yhat.dims()
            );
        }
        let mask = mask.to_dtype(DType::F32)?;
        let labels = labels.to_dtype(self.yhat.dtype())?;
        let yhat = mask.gt(0.5)?.where_cond(&labels, &self.yhat)?;
        let reliable = self.reliable.maximum(&mask)?;
        let probs = match self.probs {
            Some(p) => {
                let truth =
                    one_hot(&labels.to_dtype(DType::U32)?, p.dim(1)?)?.to_dtype(p.dtype())?;
                let m = mask.unsqueeze(1)?.to_dtype(p.dtype())?;
                let keep = (1.0 - &m)?;
                Some((truth.broadcast_mul(&m)? + p.broadcast_mul(&keep)?)?)
            }
            None => None,
        };
        Ok(Targets {
            yhat,
            reliable,
            alpha: self.alpha,
            probs,
        })
    }
}

/// The paper's targets: the teacher's (or its EMA copy's) argmax, the `alpha_t` most uncertain voxels
/// unreliable.
fn paper_targets(
    input: &IterationInput,
    teacher: Teacher,
    a: &Halves,
    b: &Halves,
    cfg: &LossConfig,
    n_classes: usize,
) -> Result<Targets> {
    let (t, t_max) = (input.iteration, input.total_iterations);
    let probs_t = match input.teacher_logits {
        None => teacher_probs(teacher, &a.probs_u, &b.probs_u)?,
        Some([ta, tb]) => {
            for logits in [ta, tb] {
                if logits.dims() != a.probs_u.dims() {
                    bail!(
                        "teacher logits {:?} must match the unlabeled half {:?}",
                        logits.dims(),
                        a.probs_u.dims()
                    );
                }
            }
            let softmax = |l: &Tensor| candle_nn::ops::softmax(&l.detach(), 1);
            teacher_probs(teacher, &softmax(ta)?, &softmax(tb)?)?
        }
    };
    let yhat = pseudo_labels(&probs_t)?;
    let alpha = alpha_schedule(cfg.alpha0, t, t_max).max(cfg.alpha_floor);
    let h = entropy(&probs_t)?;
    let reliable = match cfg.reliability {
        Reliability::Global => select_reliable(&h, alpha)?,
        Reliability::PerClass => select_reliable_per_class(&h, &yhat, n_classes, alpha)?,
    };
    Ok(Targets {
        yhat,
        reliable,
        alpha,
        probs: matches!(cfg.unsup_target, UnsupTarget::Sharpened { .. }).then_some(probs_t),
    })
}

/// The reference code's targets: the union of both nets' foreground, reliable where at least one
/// net is in its lowest-entropy 80 %.
fn reference_targets(a: &Halves, b: &Halves) -> Result<Targets> {
    let (pa_u, pb_u) = (a.probs_u.detach(), b.probs_u.detach());
    let yhat = pseudo_labels(&pa_u)?.maximum(&pseudo_labels(&pb_u)?)?;
    let keep = 1.0 - REF_KEEP_FRACTION;
    let rel_a = select_reliable(&entropy(&pa_u)?, keep)?;
    let rel_b = select_reliable(&entropy(&pb_u)?, keep)?;
    Ok(Targets {
        yhat,
        reliable: rel_a.maximum(&rel_b)?,
        alpha: REF_KEEP_FRACTION,
        probs: None,
    })
}

/// The paper's `L_u`: masked CE (+ Dice) of the student(s) on the reliable voxels.
fn paper_unsup(
    cfg: &LossConfig,
    teacher: Teacher,
    a: &Halves,
    b: &Halves,
    targets: &Targets,
    mut unsup: Tensor,
) -> Result<Tensor> {
    let students: &[Net] = match (teacher, cfg.student) {
        (Teacher::Net(Net::A), StudentRule::Other) => &[Net::B],
        (Teacher::Net(Net::B), StudentRule::Other) => &[Net::A],
        _ => &[Net::A, Net::B],
    };
    let (yhat, reliable) = (&targets.yhat, &targets.reliable);
    let soft = match (cfg.unsup_target, &targets.probs) {
        (UnsupTarget::Hard, _) => None,
        (UnsupTarget::Sharpened { temperature }, Some(p)) => Some(sharpen(p, temperature)?),
        (UnsupTarget::Sharpened { .. }, None) => bail!("sharpened targets need a teacher"),
    };
    for s in students {
        let h = if *s == Net::A { a } else { b };
        if let Some(target) = &soft {
            unsup = (unsup + reduce::mean_all(&(&h.probs_u - target)?.sqr()?)?)?;
            continue;
        }
        unsup = (unsup + cross_entropy(&h.logits_u, yhat, Some(reliable))?)?;
        if cfg.unsup_dice {
            unsup = (unsup + dice_loss(&h.probs_u, yhat, Some(reliable))?)?;
        }
    }
    Ok(unsup)
}

/// The reference code's `L_u`: CE + Dice of both nets on detached tensors (logged, trains nothing).
fn reference_unsup(a: &Halves, b: &Halves, targets: &Targets, mut unsup: Tensor) -> Result<Tensor> {
    let (yhat, reliable) = (&targets.yhat, &targets.reliable);
    for h in [a, b] {
        let ce = cross_entropy(&h.logits_u.detach(), yhat, Some(reliable))?;
        let dice = dice_loss(&h.probs_u.detach(), yhat, Some(reliable))?;
        unsup = ((unsup + ce)? + dice)?;
    }
    Ok(unsup)
}

/// The reference code's `L_reg` on the labeled half: per net `sum M (p_fg - y)^2 / max(1, |M|)` with
/// `M` = exactly one net's `p_fg > 0.6`; returns it with that threshold and `|M|`.
fn reference_reg(a: &Halves, b: &Halves, labels: &Tensor) -> Result<(Tensor, f64, usize)> {
    let fg_a = a.probs_l.narrow(1, 1, 1)?.squeeze(1)?;
    let fg_b = b.probs_l.narrow(1, 1, 1)?.squeeze(1)?;
    let m = fg_a
        .detach()
        .gt(REF_CONFIDENT)?
        .ne(&fg_b.detach().gt(REF_CONFIDENT)?)?
        .to_dtype(fg_a.dtype())?;
    let n_disagree = count(&m)?;
    let y = labels.to_dtype(fg_a.dtype())?;
    let per_net = |fg: &Tensor| -> Result<Tensor> {
        crate::supervised::div_by_count(
            &reduce::sum_all(&(fg - &y)?.sqr()?.mul(&m)?)?,
            &reduce::sum_all(&m)?,
        )
    };
    Ok((
        (per_net(&fg_a)? + per_net(&fg_b)?)?,
        REF_CONFIDENT,
        n_disagree,
    ))
}

/// `L_c` of both nets (net B's voxel sampling on its own stream); on detached features for the
/// reference code, whose contrastive term trains nothing.
#[allow(clippy::too_many_arguments)]
fn contrastive_pair(
    a: &Halves,
    b: &Halves,
    targets: &Targets,
    labels: &Tensor,
    n_classes: usize,
    cfg: &LossConfig,
    seed: u64,
    detach: bool,
) -> Result<(ContrastiveTerms, ContrastiveTerms)> {
    let c = &cfg.contrastive;
    let (yhat, reliable) = (&targets.yhat, &targets.reliable);
    let feats = |h: &Halves| {
        if detach {
            (h.feat_u.detach(), h.feat_l.detach())
        } else {
            (h.feat_u.clone(), h.feat_l.clone())
        }
    };
    let (fa_u, fa_l) = feats(a);
    let (fb_u, fb_l) = feats(b);
    let contrast_a =
        prototype_contrastive(&fa_u, reliable, yhat, &fa_l, labels, n_classes, c, seed)?;
    let seed_b = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let contrast_b =
        prototype_contrastive(&fb_u, reliable, yhat, &fb_l, labels, n_classes, c, seed_b)?;
    Ok((contrast_a, contrast_b))
}

/// The teacher's probabilities on the unlabeled half, detached: one net's, or the mean of both.
fn teacher_probs(teacher: Teacher, probs_a: &Tensor, probs_b: &Tensor) -> Result<Tensor> {
    Ok(match teacher {
        Teacher::Net(Net::A) => probs_a.detach(),
        Teacher::Net(Net::B) => probs_b.detach(),
        Teacher::Ensemble => ((probs_a + probs_b)? * 0.5)?.detach(),
    })
}
