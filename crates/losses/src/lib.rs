//! The method's loss terms: supervised CE + Dice, entropy-filtered pseudo-labels, the L1 consistency
//! term, the prototype contrastive loss, their schedules and the assembly of one iteration's loss.
//!
//! Architecture invariant: pure tensor functions over candle; no model or I/O knowledge.
//!
//! Conventions: logits / probabilities / features are f32 `[N, K or C, D, H, W]` (class axis 1); labels and
//! pseudo-labels are integer tensors `[N, D, H, W]` (u32 internally); voxel masks are f32 0/1 `[N, D, H, W]`.
//! Every normalisation by a voxel count divides by `max(1, count)`, so empty sets give 0, never NaN.

mod baselines;
mod config;
mod consistency;
mod contrastive;
mod objective;
mod prototypes;
mod reduce;
mod reliability;
mod schedule;
mod supervised;

pub use baselines::{
    discriminator_loss, dtc_loss, ema_decay, mc_net_loss, mc_net_sharpen, mcf_loss,
    mean_teacher_consistency, predictive_entropy, review_terms, sassnet_loss, sharpen,
    sigmoid_rampup, softmax_squared_difference, uncertainty_masked_consistency,
    uncertainty_threshold, ConsistencyRamp, DtcTerms, McNetTerms, McfTerms, ReviewTerms,
    SassnetTerms,
};
pub use config::{LossConfig, Preset, Reliability, StudentRule, UnsupTarget};
pub use consistency::{
    consistency_l1, consistency_l1_normalized, disagreement_mask, mean_confidence,
    DynamicThreshold, RegNormalization, ThresholdRule,
};
pub use contrastive::{
    l2_normalize, prototype_contrastive, ContrastiveConfig, ContrastiveTerms, PullNormalization,
};
pub use objective::{IterationInput, LossTerms, NetOutputs, Objective, PastedLabels};
pub use prototypes::{normalized_class_sums, normalized_class_sums_reference};
pub use reliability::{
    alpha_schedule, choose_teacher, entropy, pseudo_labels, reliable_threshold_by_bisection,
    select_reliable, select_reliable_per_class, Net, Teacher, TeacherRule, ENTROPY_EPS,
};
pub use schedule::{LambdaSchedule, ScheduleShape};
pub use supervised::{
    cross_entropy, dice_loss, one_hot, supervised_loss, SupervisedTerms, DICE_EPS,
};
