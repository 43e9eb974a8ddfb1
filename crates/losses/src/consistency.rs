//! Consistency regularisation: the disagreement mask `M_diff`, its L1 term and the dynamic threshold T.

use candle_core::{bail, DType, Result, Tensor};

use serde::{Deserialize, Serialize};

use crate::reduce;
use crate::supervised::div_by_count;

/// How the confidence threshold T of `M_diff` evolves (SPEC section 2, step 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdRule {
    /// `T_t = clamp(EMA_momentum(mean max p), min, max)`, initialised at 1 / n_classes (FreeMatch). Default.
    SelfAdaptive { momentum: f64, min: f64, max: f64 },
    /// A constant threshold (reference code: 0.6).
    Fixed { value: f64 },
    /// Linear ramp from `start` at t = 0 to `end` at t = t_max.
    Linear { start: f64, end: f64 },
}

impl Default for ThresholdRule {
    fn default() -> Self {
        ThresholdRule::SelfAdaptive {
            momentum: 0.999,
            min: 0.5,
            max: 0.95,
        }
    }
}

/// The threshold's state across iterations.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicThreshold {
    rule: ThresholdRule,
    ema: f64,
}

impl DynamicThreshold {
    /// A fresh threshold; the EMA starts at `1 / n_classes`.
    pub fn new(rule: ThresholdRule, n_classes: usize) -> Self {
        DynamicThreshold {
            rule,
            ema: 1.0 / n_classes.max(1) as f64,
        }
    }

    /// Folds in this iteration's mean confidence (mean over unlabeled voxels and both nets of `max_c p`)
    /// and returns T for this iteration. A non-finite confidence leaves the EMA unchanged.
    pub fn update(
        &mut self,
        mean_confidence: f64,
        iteration: usize,
        total_iterations: usize,
    ) -> f64 {
        match self.rule {
            ThresholdRule::SelfAdaptive { momentum, min, max } => {
                if mean_confidence.is_finite() {
                    self.ema = momentum * self.ema + (1.0 - momentum) * mean_confidence;
                }
                self.ema.clamp(min, max)
            }
            ThresholdRule::Fixed { value } => value,
            ThresholdRule::Linear { start, end } => {
                let progress = if total_iterations == 0 {
                    1.0
                } else {
                    (iteration as f64 / total_iterations as f64).min(1.0)
                };
                start + (end - start) * progress
            }
        }
    }

    /// The raw EMA (for logging and checkpoints).
    pub fn ema(&self) -> f64 {
        self.ema
    }

    /// Restores the EMA (resuming from a checkpoint).
    pub fn set_ema(&mut self, ema: f64) {
        self.ema = ema;
    }
}

/// Mean over voxels of `max_c p` for probabilities `[N, K, ...]` (host value).
pub fn mean_confidence(probs: &Tensor) -> Result<f64> {
    Ok(f64::from(
        reduce::mean_all(&probs.detach().max(1)?)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?,
    ))
}

/// `M_diff = (max p_A > T) & (max p_B > T) & (argmax p_A != argmax p_B)`: f32 0/1 `[N, 1, ...]`, detached.
pub fn disagreement_mask(probs_a: &Tensor, probs_b: &Tensor, threshold: f64) -> Result<Tensor> {
    if probs_a.dims() != probs_b.dims() || probs_a.rank() < 2 {
        bail!(
            "disagreement mask: probabilities {:?} and {:?} differ",
            probs_a.dims(),
            probs_b.dims()
        );
    }
    let (pa, pb) = (probs_a.detach(), probs_b.detach());
    let conf_a = pa.max_keepdim(1)?.gt(threshold)?;
    let conf_b = pb.max_keepdim(1)?.gt(threshold)?;
    let differ = pa.argmax_keepdim(1)?.ne(&pb.argmax_keepdim(1)?)?;
    (conf_a * conf_b)?.mul(&differ)?.to_dtype(DType::F32)
}

/// What `L_reg`'s masked L1 sum is divided by. The paper's Eq. 5 is an unnormalised sum; both choices
/// here are duoseg's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegNormalization {
    /// `max(1, |M_diff|)` (SPEC section 2 step 5; not the paper's Eq. 5, which does not divide). With few disagreeing voxels each
    /// of them gets a gradient of order 1, thousands of times the per-voxel gradient of the cross-entropy.
    Disagreement,
    /// The number of unlabeled voxels: a per-voxel mean, whose gradient per voxel never exceeds the
    /// cross-entropy's. Default: the only `L_reg` setting under which the method beat supervised-only on
    /// all three demo seeds (`bench/sweep-demo.md`); divided by `|M_diff|` it lost on two of three, and with
    /// T >= 0.8 one run collapsed to empty predictions.
    #[default]
    Voxels,
}

/// `L_reg = sum |M_diff p_A - M_diff p_B| / max(1, |M_diff|)`: L1 over classes, gradient into both nets.
pub fn consistency_l1(probs_a: &Tensor, probs_b: &Tensor, mdiff: &Tensor) -> Result<Tensor> {
    consistency_l1_normalized(probs_a, probs_b, mdiff, RegNormalization::Disagreement)
}

/// `L_reg` with the given normalisation (see [`RegNormalization`]); `mdiff` is `[N, 1, ...]`.
pub fn consistency_l1_normalized(
    probs_a: &Tensor,
    probs_b: &Tensor,
    mdiff: &Tensor,
    normalization: RegNormalization,
) -> Result<Tensor> {
    let mdiff = mdiff.to_dtype(probs_a.dtype())?;
    let diff = (probs_a - probs_b)?.broadcast_mul(&mdiff)?;
    let sum = reduce::sum_all(&diff.abs()?)?;
    match normalization {
        RegNormalization::Disagreement => div_by_count(&sum, &reduce::sum_all(&mdiff)?),
        RegNormalization::Voxels => sum.affine(1.0 / mdiff.elem_count().max(1) as f64, 0.0),
    }
}
