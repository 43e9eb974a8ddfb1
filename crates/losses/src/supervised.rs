//! Supervised terms: one-hot encoding, cross-entropy with a voxel mask, Dice with a squared denominator.

use candle_core::{bail, DType, Result, Tensor};

use crate::reduce;

/// Smoothing constant of the Dice loss (SPEC section 2, step 1).
pub const DICE_EPS: f64 = 1e-5;

/// One-hot encoding of integer labels `[N, ...]` (any integer dtype) as f32 `[N, K, ...]`.
///
/// Fails when a label is `>= n_classes`.
pub fn one_hot(labels: &Tensor, n_classes: usize) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    if labels.elem_count() > 0 {
        let max = labels.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= n_classes {
            bail!("label value {max} out of range for {n_classes} classes");
        }
    }
    let mut class_shape = vec![1usize; labels.rank() + 1];
    class_shape[1] = n_classes;
    let classes = Tensor::arange(0u32, n_classes as u32, labels.device())?.reshape(class_shape)?;
    labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(DType::F32)
}

/// Checks that logits/probabilities are `[N, K, ...]` with K >= 2 and labels are `[N, ...]` to match.
pub(crate) fn check_pair(what: &str, scores: &Tensor, labels: &Tensor) -> Result<usize> {
    let s = scores.dims();
    if s.len() < 2 || s[1] < 2 {
        bail!("{what}: expected scores [N, K>=2, ...], got {:?}", s);
    }
    let mut expect = s.to_vec();
    expect.remove(1);
    if labels.dims() != expect.as_slice() {
        bail!(
            "{what}: scores {:?} do not match labels {:?}",
            s,
            labels.dims()
        );
    }
    Ok(s[1])
}

/// Checks that a voxel mask has the label shape `[N, ...]`.
pub(crate) fn check_mask(what: &str, mask: &Tensor, labels: &Tensor) -> Result<()> {
    if mask.dims() != labels.dims() {
        bail!(
            "{what}: mask {:?} does not match labels {:?}",
            mask.dims(),
            labels.dims()
        );
    }
    Ok(())
}

/// Sum over every axis except the class axis 1: `[N, K, ...]` -> `[K]`.
pub(crate) fn sum_except_class(x: &Tensor) -> Result<Tensor> {
    let mut x = x.clone();
    for d in (2..x.rank()).rev() {
        x = x.sum(d)?;
    }
    x.sum(0)
}

/// Divides a summed quantity by `max(1, count)` (count is a scalar tensor).
pub(crate) fn div_by_count(sum: &Tensor, count: &Tensor) -> Result<Tensor> {
    sum.broadcast_div(&count.maximum(1f64)?)
}

/// Cross-entropy of logits `[N, K, ...]` against labels `[N, ...]`.
///
/// Without a mask: the mean over all voxels (PyTorch `F.cross_entropy`). With a 0/1 f32 mask `[N, ...]`:
/// the sum over masked voxels divided by `max(1, |mask|)`, so an empty mask gives 0, never NaN.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let k = check_pair("cross-entropy", logits, labels)?;
    let log_p = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = (log_p * one_hot(labels, k)?.to_dtype(logits.dtype())?)?
        .sum(1)?
        .neg()?; // [N, ...]
    match mask {
        None => reduce::mean_all(&nll),
        Some(m) => {
            check_mask("cross-entropy", m, labels)?;
            let m = m.to_dtype(logits.dtype())?;
            div_by_count(&reduce::sum_all(&(nll * &m)?)?, &reduce::sum_all(&m)?)
        }
    }
}

/// Dice loss of probabilities `[N, K, ...]` against labels `[N, ...]`, over the whole batch.
///
/// Per foreground class c: `1 - (2 sum p_c y_c + 1e-5) / (sum p_c^2 + sum y_c^2 + 1e-5)`, averaged over
/// the foreground classes 1..K (2 classes: the foreground channel only). An optional 0/1 mask `[N, ...]`
/// multiplies both p and y. An empty mask gives 0.
pub fn dice_loss(probs: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let k = check_pair("dice", probs, labels)?;
    let mut p = probs.narrow(1, 1, k - 1)?;
    let mut y = one_hot(labels, k)?
        .to_dtype(probs.dtype())?
        .narrow(1, 1, k - 1)?;
    if let Some(m) = mask {
        check_mask("dice", m, labels)?;
        let m = m.to_dtype(probs.dtype())?.unsqueeze(1)?;
        p = p.broadcast_mul(&m)?;
        y = y.broadcast_mul(&m)?;
    }
    let inter = sum_except_class(&(&p * &y)?)?;
    let denom = (sum_except_class(&p.sqr()?)? + sum_except_class(&y.sqr()?)?)?;
    let ratio = ((inter * 2.0)? + DICE_EPS)?.div(&(denom + DICE_EPS)?)?;
    ratio.neg()?.affine(1.0, 1.0)?.mean_all()
}

/// The two parts of a supervised loss `L_s = CE + Dice`, kept apart for logging and the teacher rule.
#[derive(Debug, Clone)]
pub struct SupervisedTerms {
    /// Cross-entropy part (scalar).
    pub ce: Tensor,
    /// Dice part (scalar).
    pub dice: Tensor,
}

impl SupervisedTerms {
    /// `CE + Dice`.
    pub fn total(&self) -> Result<Tensor> {
        &self.ce + &self.dice
    }
}

/// `L_s = CE(logits, y) + Dice(softmax(logits), y)` with an optional voxel mask for both parts.
pub fn supervised_loss(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
) -> Result<SupervisedTerms> {
    let probs = candle_nn::ops::softmax(logits, 1)?;
    Ok(SupervisedTerms {
        ce: cross_entropy(logits, labels, mask)?,
        dice: dice_loss(&probs, labels, mask)?,
    })
}
