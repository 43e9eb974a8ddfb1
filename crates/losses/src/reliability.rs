//! Entropy of the teacher's prediction, reliable / unreliable voxel selection, pseudo-labels, teacher rule.

use candle_core::{bail, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::reduce;

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
///
/// The threshold is found on the host (`select_nth`) for CPU tensors, and on the tensor's device by a
/// bisection over f32 values for f32 tensors elsewhere, so a GPU step copies no voxel to the host; both
/// give the same mask ([`reliable_threshold_by_bisection`] is tested against the host selection).
pub fn select_reliable(entropy: &Tensor, alpha: f64) -> Result<Tensor> {
    if !alpha.is_finite() || alpha < 0.0 {
        bail!("alpha must be finite and >= 0, got {alpha}");
    }
    let n = entropy.elem_count();
    select_unreliable_count(entropy, ((alpha * n as f64).floor() as usize).min(n))
}

/// Class-balanced reliable-voxel mask (f32 0/1, detached): within each pseudo-label class `c` of
/// `yhat` (u32, the shape of `entropy`), the `floor(alpha * n_c)` voxels of highest entropy are
/// unreliable, with [`select_reliable`]'s tie guard. The global rule lets the rare foreground classes,
/// whose voxels are the uncertain ones, fall out of the reliable set almost entirely; this keeps each
/// class's reliable share equal to its pseudo-label share.
pub fn select_reliable_per_class(
    entropy: &Tensor,
    yhat: &Tensor,
    n_classes: usize,
    alpha: f64,
) -> Result<Tensor> {
    if !alpha.is_finite() || alpha < 0.0 {
        bail!("alpha must be finite and >= 0, got {alpha}");
    }
    if yhat.dims() != entropy.dims() {
        bail!(
            "pseudo-labels {:?} must match the entropy {:?}",
            yhat.dims(),
            entropy.dims()
        );
    }
    let entropy = entropy.detach();
    let yhat = yhat.to_dtype(DType::U32)?;
    let mut reliable = Tensor::ones(entropy.shape(), DType::F32, entropy.device())?;
    for c in 0..n_classes {
        let in_class = yhat.eq(c as u32)?;
        let n_c = reduce::sum_all(&in_class.to_dtype(DType::U32)?)?.to_scalar::<u32>()? as usize;
        let n_unreliable = ((alpha * n_c as f64).floor() as usize).min(n_c);
        if n_unreliable == 0 {
            continue;
        }
        // other classes' voxels below every entropy (which is >= 0): always reliable in this pass
        let below =
            Tensor::full(-1f32, entropy.shape(), entropy.device())?.to_dtype(entropy.dtype())?;
        let masked = in_class.where_cond(&entropy, &below)?;
        reliable = reliable.minimum(&select_unreliable_count(&masked, n_unreliable)?)?;
    }
    Ok(reliable)
}

/// [`select_reliable`] with the number of unreliable voxels given.
fn select_unreliable_count(entropy: &Tensor, n_unreliable: usize) -> Result<Tensor> {
    let entropy = entropy.detach();
    let n = entropy.elem_count();
    let n_unreliable = n_unreliable.min(n);
    let ones = Tensor::ones(entropy.shape(), DType::F32, entropy.device())?;
    if n_unreliable == 0 {
        return check_finite(&entropy).and(Ok(ones));
    }
    let n_reliable = n - n_unreliable;
    if n_reliable == 0 {
        return check_finite(&entropy).and(ones.zeros_like());
    }
    if entropy.device().is_cpu() || entropy.dtype() != DType::F32 {
        let threshold = reliable_threshold_on_host(&entropy, n_reliable)?;
        entropy
            .to_dtype(DType::F64)?
            .le(threshold)?
            .to_dtype(DType::F32)
    } else {
        let threshold = reliable_threshold_by_bisection(&entropy, n_reliable)?;
        entropy.le(f64::from(threshold))?.to_dtype(DType::F32)
    }
}

fn check_finite(entropy: &Tensor) -> Result<()> {
    let sum = reduce::sum_all(&entropy.to_dtype(DType::F64)?)?.to_scalar::<f64>()?;
    if !sum.is_finite() {
        bail!("entropy contains a non-finite value");
    }
    Ok(())
}

/// The `n_reliable`-th smallest entropy (1-based), selected on the host.
fn reliable_threshold_on_host(entropy: &Tensor, n_reliable: usize) -> Result<f64> {
    let mut values = entropy
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    if values.iter().any(|v| !v.is_finite()) {
        bail!("entropy contains a non-finite value");
    }
    let (_, kth, _) = values.select_nth_unstable_by(n_reliable - 1, f64::total_cmp);
    Ok(*kth)
}

/// Maps an f32 to a u32 whose unsigned order is the float's total order (negative values reversed).
fn order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The inverse of [`order_key`].
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// The `n_reliable`-th smallest value (1-based, `1 <= n_reliable <= n`) of an f32 tensor, found on its
/// device: the smallest f32 `t` with `count(entropy <= t) >= n_reliable`, by bisection over the 2^32 f32
/// bit patterns in value order between the minimum and the maximum. At most 32 rounds, each one
/// comparison, one sum and one scalar copy; that count only changes at the tensor's own values, so `t` is
/// one of them and equals the host selection exactly.
pub fn reliable_threshold_by_bisection(entropy: &Tensor, n_reliable: usize) -> Result<f32> {
    let flat = entropy.flatten_all()?.to_dtype(DType::F32)?;
    let n = flat.elem_count();
    if n_reliable == 0 || n_reliable > n {
        bail!("reliable threshold: asked for value {n_reliable} of {n}");
    }
    // min, max and sum in one copy; the sum is NaN or infinite exactly when a value is.
    let stats = Tensor::stack(
        &[
            reduce::min_all(&flat)?.to_dtype(DType::F64)?,
            reduce::max_all(&flat)?.to_dtype(DType::F64)?,
            reduce::sum_all(&flat.to_dtype(DType::F64)?)?,
        ],
        0,
    )?
    .to_vec1::<f64>()?;
    if stats.iter().any(|v| !v.is_finite()) {
        bail!("entropy contains a non-finite value");
    }
    let (mut lo, mut hi) = (order_key(stats[0] as f32), order_key(stats[1] as f32));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let below = flat
            .le(f64::from(from_order_key(mid)))?
            .to_dtype(DType::U32)?;
        let count = reduce::sum_all(&below)?.to_scalar::<u32>()? as usize;
        if count >= n_reliable {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(from_order_key(lo))
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
    /// The mean of both nets' probabilities; both nets are its students. Once the labeled set is fitted, the
    /// lower supervised loss picks whichever net memorised the labeled batch better, not the one that
    /// generalises better (SPEC section 6, confirmation bias); the mean lets neither net's own mistakes
    /// alone set the pseudo-labels.
    Ensemble,
}

/// Who gives the pseudo-labels in one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teacher {
    /// One subnetwork.
    Net(Net),
    /// The mean of both subnetworks' probabilities.
    Ensemble,
}

impl Teacher {
    /// Share of net A in the teacher's probabilities: 1, 0, or 0.5 for the ensemble (the log's `teacher_is_a`).
    pub fn share_of_a(self) -> f64 {
        match self {
            Teacher::Net(Net::A) => 1.0,
            Teacher::Net(Net::B) => 0.0,
            Teacher::Ensemble => 0.5,
        }
    }
}

/// Picks the teacher from each net's `(ce, dice)` values; ties go to A.
pub fn choose_teacher(rule: TeacherRule, a: (f64, f64), b: (f64, f64)) -> Teacher {
    let (score_a, score_b) = match rule {
        TeacherRule::LowerSupervised => (a.0 + a.1, b.0 + b.1),
        TeacherRule::LowerDice => (a.1, b.1),
        TeacherRule::Ensemble => return Teacher::Ensemble,
    };
    if score_a <= score_b {
        Teacher::Net(Net::A)
    } else {
        Teacher::Net(Net::B)
    }
}
