//! The loss configuration: every option of SPEC section 2, with the defaults named there.

use serde::{Deserialize, Serialize};

use crate::consistency::{RegNormalization, ThresholdRule};
use crate::contrastive::{ContrastiveConfig, PullNormalization};
use crate::reliability::TeacherRule;
use crate::schedule::{LambdaSchedule, ScheduleShape};

/// Which objective is assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The method as SPEC section 2 defines it. Default.
    #[default]
    Paper,
    /// The effective objective of the published reference code (SPEC end of section 2): see
    /// [`crate::Objective::assemble`].
    ReferenceCode,
}

/// Which net(s) learn from a single teacher's pseudo-labels (with `TeacherRule::Ensemble` both nets always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudentRule {
    /// The other net only. Default.
    #[default]
    Other,
    /// Both nets (the teacher also fits its own pseudo-labels).
    Both,
}

/// How the `alpha_t` unreliable voxels are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reliability {
    /// The `alpha_t` share of highest teacher entropy over all unlabeled voxels (the paper). Default.
    #[default]
    Global,
    /// The `alpha_t` share of highest entropy within each pseudo-label class
    /// ([`crate::select_reliable_per_class`]).
    PerClass,
}

/// What the students of `L_u` fit on the unlabeled crops.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum UnsupTarget {
    /// The teacher's argmax on the reliable voxels: masked CE (+ Dice, `unsup_dice`). The paper. Default.
    #[default]
    Hard,
    /// MCF's target: the teacher's probabilities sharpened at `temperature` (`q^(1/T)` renormalised) on
    /// every unlabeled voxel, fitted by the mean squared error over classes and voxels; the reliability
    /// filter then only chooses the contrastive loss's voxels.
    Sharpened {
        /// The sharpening temperature (MCF's 0.1 when not given).
        #[serde(default = "mcf_temperature")]
        temperature: f64,
    },
}

fn mcf_temperature() -> f64 {
    0.1
}

/// Every option of the per-iteration loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Objective preset.
    pub preset: Preset,
    /// Teacher choice.
    pub teacher: TeacherRule,
    /// Student(s) of the pseudo-label loss.
    pub student: StudentRule,
    /// `alpha_0` of the unreliable fraction `alpha_t = alpha_0 (1 - t / t_max)`.
    pub alpha0: f64,
    /// Floor of `alpha_t`: `max(alpha_floor, alpha_t)` (0, SPEC's schedule, by default). With a floor the most
    /// uncertain voxels (the organ boundary) stay out of `L_u` late in training, when `lambda_u` is largest.
    pub alpha_floor: f64,
    /// How the unreliable voxels are chosen: over all voxels (paper) or within each class.
    pub reliability: Reliability,
    /// Threshold T of `M_diff`.
    pub threshold: ThresholdRule,
    /// What `L_reg` is divided by.
    pub reg_normalize: RegNormalization,
    /// Prototype contrastive loss options.
    pub contrastive: ContrastiveConfig,
    /// `lambda_u(t)`, weight of `L_u + L_reg`.
    pub lambda_u: LambdaSchedule,
    /// `lambda_c(t)`, weight of `L_c`.
    pub lambda_c: LambdaSchedule,
    /// What `L_u`'s students fit: hard pseudo-labels on reliable voxels, or sharpened soft ones everywhere.
    pub unsup_target: UnsupTarget,
    /// Weight of MCF's review term on the labeled crops (`baselines::review_terms`, both nets), added to the
    /// supervised terms; 0 (off) by default.
    pub review_weight: f64,
    /// Ablation switch: the pseudo-label loss `L_u`.
    pub use_unsup: bool,
    /// Whether `L_u` includes the Dice term on pseudo-labels (SPEC section 2 step 4: yes). Crops with
    /// little foreground make that term push predictions to zero (SPEC section 6), so it is a switch.
    pub unsup_dice: bool,
    /// Ablation switch: the consistency regularisation `L_reg`.
    pub use_reg: bool,
    /// Ablation switch: the contrastive loss `L_c`.
    pub use_contrastive: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            preset: Preset::Paper,
            teacher: TeacherRule::LowerSupervised,
            student: StudentRule::Other,
            alpha0: 0.2,
            alpha_floor: 0.0,
            reliability: Reliability::Global,
            threshold: ThresholdRule::default(),
            reg_normalize: RegNormalization::default(),
            contrastive: ContrastiveConfig::default(),
            lambda_u: LambdaSchedule {
                weight: 1.0,
                shape: ScheduleShape::RampUp,
            },
            lambda_c: LambdaSchedule {
                weight: 0.1,
                shape: ScheduleShape::RampUp,
            },
            unsup_target: UnsupTarget::Hard,
            review_weight: 0.0,
            use_unsup: true,
            unsup_dice: true,
            use_reg: true,
            use_contrastive: true,
        }
    }
}

impl LossConfig {
    /// Checks every value's range for `n_classes` classes; the message names the field and value.
    pub fn validate(&self, n_classes: usize) -> Result<(), String> {
        let unit = |name: &str, v: f64| -> Result<(), String> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("loss.{name} must lie in [0, 1], got {v}"))
            }
        };
        if n_classes < 2 {
            return Err(format!("need at least 2 classes, got {n_classes}"));
        }
        if self.preset == Preset::ReferenceCode && n_classes != 2 {
            return Err(format!(
                "the reference_code preset is defined for 2 classes, got {n_classes}"
            ));
        }
        if self.preset == Preset::ReferenceCode && self.unsup_target != UnsupTarget::Hard {
            return Err(
                "the reference_code preset's L_u is its own (hard, logged only): \
                        loss.unsup_target must stay \"hard\""
                    .into(),
            );
        }
        unit("alpha0", self.alpha0)?;
        unit("alpha_floor", self.alpha_floor)?;
        match self.threshold {
            ThresholdRule::Fixed { value } => unit("threshold.value", value)?,
            ThresholdRule::Linear { start, end } => {
                unit("threshold.start", start)?;
                unit("threshold.end", end)?;
            }
            ThresholdRule::SelfAdaptive { momentum, min, max } => {
                unit("threshold.min", min)?;
                unit("threshold.max", max)?;
                if min > max {
                    return Err(format!("loss.threshold: min {min} exceeds max {max}"));
                }
                if !(0.0..1.0).contains(&momentum) {
                    return Err(format!(
                        "loss.threshold.momentum must lie in [0, 1), got {momentum}"
                    ));
                }
            }
        }
        if let UnsupTarget::Sharpened { temperature } = self.unsup_target {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(format!(
                    "loss.unsup_target.temperature must be positive, got {temperature}"
                ));
            }
        }
        for (name, w) in [
            ("lambda_u.weight", self.lambda_u.weight),
            ("lambda_c.weight", self.lambda_c.weight),
            ("review_weight", self.review_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("loss.{name} must be finite and >= 0, got {w}"));
            }
        }
        let c = &self.contrastive;
        if !(c.tau.is_finite() && c.tau > 0.0) {
            return Err(format!(
                "loss.contrastive.tau must be positive, got {}",
                c.tau
            ));
        }
        if !c.margin.is_finite() {
            return Err(format!(
                "loss.contrastive.margin must be finite, got {}",
                c.margin
            ));
        }
        if c.max_samples == 0 {
            return Err("loss.contrastive.max_samples must be positive".into());
        }
        Ok(())
    }

    /// Supervised-only baseline: every unlabeled term switched off.
    pub fn supervised_only() -> Self {
        LossConfig {
            use_unsup: false,
            use_reg: false,
            use_contrastive: false,
            ..LossConfig::default()
        }
    }

    /// The `reference_code` preset with the reference code's fixed threshold 0.6 and lower-Dice teacher.
    pub fn reference_code() -> Self {
        LossConfig {
            preset: Preset::ReferenceCode,
            teacher: TeacherRule::LowerDice,
            threshold: ThresholdRule::Fixed { value: 0.6 },
            // the published code averages its (detached, logged-only) pull term over the sampled voxels
            contrastive: ContrastiveConfig {
                pull_normalize: PullNormalization::Sampled,
                ..ContrastiveConfig::default()
            },
            ..LossConfig::default()
        }
    }
}
