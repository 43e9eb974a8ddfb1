//! Entropy of the teacher's prediction, reliable / unreliable voxel selection, pseudo-labels, teacher rule.

use candle_core::{bail, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Constant inside the logarithm of the entropy (SPEC section 2, step 3).
pub const ENTROPY_EPS: f64 = 1e-10;

/// Per-voxel entropy `H = -sum_c p log(p + 1e-10)` of probabilities `[N, K, ...]`, shape `[N, ...]`.
pub fn entropy(probs: &Tensor) -> Result<Tensor> {
    if probs.rank() < 2 {
        bail!(
            "entropy: expected probabilities [N, K, ...], got {:?}",
            probs.dims()
        );
    }
    (probs * (probs + ENTROPY_EPS)?.log()?)?.sum(1)?.neg()
}

/// `alpha_t = alpha_0 (1 - t / t_max)` (U2PL's schedule), clamped to [0, 1].
pub fn alpha_schedule(alpha0: f64, iteration: usize, total_iterations: usize) -> f64 {
    let progress = if total_iterations == 0 {
        1.0
    } else {
        iteration as f64 / total_iterations as f64
    };
    (alpha0 * (1.0 - progress)).clamp(0.0, 1.0)
}

/// Reliable-voxel mask (f32 0/1, same shape as `entropy`, detached): the `alpha` fraction of voxels with the
/// highest entropy (`floor(alpha * n)` of them at most) are unreliable, the rest reliable.
///
/// Tie guard: voxels whose entropy equals the largest reliable value stay reliable, so a tie never drops
/// a voxel; with identical entropy everywhere (a saturated softmax) every voxel is reliable.
/// `alpha >= 1` marks every voxel unreliable. Fails on a non-finite entropy or alpha.
pub fn select_reliable(entropy: &Tensor, alpha: f64) -> Result<Tensor> {
    if !alpha.is_finite() || alpha < 0.0 {
        bail!("alpha must be finite and >= 0, got {alpha}");
    }
    let mut values = entropy
        .detach()
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    if values.iter().any(|v| !v.is_finite()) {
        bail!("entropy contains a non-finite value");
    }
    let n = values.len();
    let n_unreliable = ((alpha * n as f64).floor() as usize).min(n);
    let ones = Tensor::ones(entropy.shape(), DType::F32, entropy.device())?;
    if n_unreliable == 0 {
        return Ok(ones);
    }
    let n_reliable = n - n_unreliable;
    if n_reliable == 0 {
        return ones.zeros_like();
    }
    let (_, largest_reliable, _) = values.select_nth_unstable_by(n_reliable - 1, f64::total_cmp);
    entropy
        .detach()
        .to_dtype(DType::F64)?
        .le(*largest_reliable)?
        .to_dtype(DType::F32)
}

/// Hard pseudo-labels `argmax_c p` of probabilities `[N, K, ...]`: u32 `[N, ...]`, detached.
pub fn pseudo_labels(probs: &Tensor) -> Result<Tensor> {
    probs.detach().argmax(1)
}

/// Which of the two subnetworks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Net {
    /// Subnet A (V-Net).
    A,
    /// Subnet B (ResNet-34 V-Net).
    B,
}

impl Net {
    /// The other subnetwork.
    pub fn other(self) -> Net {
        match self {
            Net::A => Net::B,
            Net::B => Net::A,
        }
    }
}

/// How the teacher is chosen each iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherRule {
    /// The net with the lower supervised loss `CE + Dice` (paper, Fig. 1). Default.
    #[default]
    LowerSupervised,
    /// The net with the lower Dice part only (reference code).
    LowerDice,
}

/// Picks the teacher from each net's `(ce, dice)` values; ties go to A.
pub fn choose_teacher(rule: TeacherRule, a: (f64, f64), b: (f64, f64)) -> Net {
    let (score_a, score_b) = match rule {
        TeacherRule::LowerSupervised => (a.0 + a.1, b.0 + b.1),
        TeacherRule::LowerDice => (a.1, b.1),
    };
    if score_a <= score_b {
        Net::A
    } else {
        Net::B
    }
}
