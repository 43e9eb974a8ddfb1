//! The loss terms of the comparison methods, as their public LA code computes them (docs/methods.md
//! gives each formula with its source): Mean Teacher and UA-MT (Yu et al. 2019, yulequan/UA-MT) and
//! MCF (Wang et al. 2023, WYC-321/MCF). The supervised parts reuse [`cross_entropy`] and
//! [`dice_loss`], which are that code's `F.cross_entropy` and `dice_loss` (squared denominators,
//! smooth 1e-5, foreground channel(s), pooled over the batch).
//!
//! Where the public code hard-codes two classes, these functions take K classes and reduce to the
//! code's formula at K = 2; each function says how.

use candle_core::{Result, Tensor};

use crate::reduce;
use crate::supervised::{check_pair, cross_entropy, dice_loss, one_hot};

/// The field's ramp (Laine & Aila; `utils/ramps.py` of every compared repository):
/// `exp(-5 (1 - c / L)^2)` with `c` clipped to `[0, L]`; a zero length gives 1.
pub fn sigmoid_rampup(current: f64, length: f64) -> f64 {
    if length <= 0.0 {
        return 1.0;
    }
    let phase = 1.0 - current.clamp(0.0, length) / length;
    (-5.0 * phase * phase).exp()
}

/// The consistency weight of the compared LA scripts: `weight * sigmoid_rampup(t / per_epoch,
/// rampup_epochs)` with integer division (`iter_num // 150`: "epochs" of 150 iterations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsistencyRamp {
    /// The weight reached at the end of the ramp (UA-MT 0.1).
    pub weight: f64,
    /// Ramp length in "epochs" (40).
    pub rampup_epochs: f64,
    /// Iterations per "epoch" (150).
    pub iterations_per_epoch: usize,
}

impl ConsistencyRamp {
    /// The weight at 0-based iteration `t`.
    pub fn at(&self, t: usize) -> f64 {
        let epoch = t / self.iterations_per_epoch.max(1);
        self.weight * sigmoid_rampup(epoch as f64, self.rampup_epochs)
    }
}

/// Mean Teacher's EMA decay at 0-based iteration `t`: `min(1 - 1 / (t + 1), alpha)`, so the first
/// update copies the student.
pub fn ema_decay(t: usize, alpha: f64) -> f64 {
    (1.0 - 1.0 / (t as f64 + 1.0)).min(alpha)
}

/// `(softmax(student) - softmax(teacher))^2` per class and voxel, `[N, K, ...]` (`softmax_mse_loss`
/// with `reduction='none'`); the teacher side carries no gradient.
pub fn softmax_squared_difference(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    if student.dims() != teacher.dims() {
        candle_core::bail!(
            "consistency: student logits {:?} vs teacher logits {:?}",
            student.dims(),
            teacher.dims()
        );
    }
    let ps = candle_nn::ops::softmax(student, 1)?;
    let pt = candle_nn::ops::softmax(&teacher.detach(), 1)?;
    (ps - pt)?.sqr()
}

/// Mean Teacher's consistency: the mean over every class and voxel of
/// [`softmax_squared_difference`].
pub fn mean_teacher_consistency(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    reduce::mean_all(&softmax_squared_difference(student, teacher)?)
}

/// UA-MT's uncertainty: the entropy of the mean softmax of T stochastic teacher passes,
/// `-sum_c p_c ln(p_c + 1e-6)`, `[N, 1, ...]`. `passes` are the T logits `[N, K, ...]`.
pub fn predictive_entropy(passes: &[Tensor]) -> Result<Tensor> {
    let Some(first) = passes.first() else {
        candle_core::bail!("uncertainty: no teacher pass");
    };
    let mut sum = candle_nn::ops::softmax(&first.detach(), 1)?;
    for p in &passes[1..] {
        sum = (sum + candle_nn::ops::softmax(&p.detach(), 1)?)?;
    }
    let mean = (sum / passes.len() as f64)?;
    let log = (&mean + 1e-6)?.log()?;
    (mean * log)?.sum_keepdim(1)?.neg()
}

/// UA-MT's uncertainty threshold at 0-based iteration `t` of `t_max`:
/// `(0.75 + 0.25 sigmoid_rampup(t, t_max)) ln K` (the code's `ln 2` at K = 2: the largest entropy).
pub fn uncertainty_threshold(t: usize, t_max: usize, n_classes: usize) -> f64 {
    (0.75 + 0.25 * sigmoid_rampup(t as f64, t_max as f64)) * (n_classes as f64).ln()
}

/// UA-MT's masked consistency: `sum(M d) / (K sum(M) + 1e-16)` with `d` the
/// [`softmax_squared_difference`] `[N, K, ...]` and `M = (uncertainty < threshold)` `[N, 1, ...]`
/// broadcast over the K classes (the code's hard-coded `2 * sum(M)` at K = 2). Returns the loss and
/// the mask.
pub fn uncertainty_masked_consistency(
    student: &Tensor,
    teacher: &Tensor,
    uncertainty: &Tensor,
    threshold: f64,
) -> Result<(Tensor, Tensor)> {
    let d = softmax_squared_difference(student, teacher)?;
    let k = d.dim(1)?;
    let mask = uncertainty.lt(threshold)?.to_dtype(d.dtype())?;
    let num = reduce::sum_all(&d.broadcast_mul(&mask)?)?;
    let den = ((reduce::sum_all(&mask)? * k as f64)? + 1e-16)?;
    Ok((num.div(&den)?, mask))
}

/// Sharpening of a probability map over its classes (MCF's pseudo-label):
/// `q^(1/T) / sum_c q^(1/T)`, computed as a softmax of `ln(q) / T` for stability; no gradient.
pub fn sharpen(probs: &Tensor, temperature: f64) -> Result<Tensor> {
    let log = probs.detach().clamp(1e-30, 1.0)?.log()?;
    candle_nn::ops::softmax(&(log / temperature)?, 1)
}

/// MCF's review term (CDR) of a pair of nets on the labeled crops (see [`review_terms`]).
#[derive(Debug, Clone)]
pub struct ReviewTerms {
    /// Net A's mean `sum_{c>=1} (p_c - y_c)^2` over the voxels where the nets disagree.
    pub review_a: Tensor,
    /// The same for net B.
    pub review_b: Tensor,
    /// The number of labeled voxels where the nets' argmax differ.
    pub n_disagree: f64,
}

/// MCF's review term (WYC-321/MCF `train_MCF.py`, CDR) for both nets' probabilities `[N_l, K, ...]` on the
/// labeled crops and their labels `[N_l, ...]`: on the voxels where the two nets' argmax differ, each net's
/// `sum_{c>=1} (p_c - y_c)^2`, summed and divided by `count + 1e-16` (0 when they agree everywhere).
/// The disagreement mask carries no gradient; each net's term trains that net.
pub fn review_terms(probs_a: &Tensor, probs_b: &Tensor, labels: &Tensor) -> Result<ReviewTerms> {
    let k = check_pair("review", probs_a, labels)?;
    if probs_b.dims() != probs_a.dims() {
        candle_core::bail!(
            "review: probabilities {:?} and {:?} differ in shape",
            probs_a.dims(),
            probs_b.dims()
        );
    }
    let disagree = probs_a
        .argmax(1)?
        .ne(&probs_b.argmax(1)?)?
        .to_dtype(probs_a.dtype())?
        .unsqueeze(1)?; // [N_l, 1, ...]
    let count = reduce::sum_all(&disagree)?;
    let y = one_hot(labels, k)?
        .to_dtype(probs_a.dtype())?
        .narrow(1, 1, k - 1)?;
    let review = |p: &Tensor| -> Result<Tensor> {
        let fg = p.narrow(1, 1, k - 1)?;
        let err = (fg - &y)?.sqr()?.broadcast_mul(&disagree)?;
        reduce::sum_all(&err)?.div(&(&count + 1e-16)?)
    };
    Ok(ReviewTerms {
        review_a: review(probs_a)?,
        review_b: review(probs_b)?,
        n_disagree: f64::from(
            count
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?,
        ),
    })
}

/// The terms of one MCF iteration (see [`mcf_loss`]).
#[derive(Debug, Clone)]
pub struct McfTerms {
    /// `CE + Dice` of the V-Net on the labeled crops.
    pub supervised_v: Tensor,
    /// `CE + Dice` of the ResNet-34 V-Net on the labeled crops.
    pub supervised_r: Tensor,
    /// The Dice parts (they choose the teacher).
    pub dice_v: f64,
    /// See `dice_v`.
    pub dice_r: f64,
    /// CDR: the squared error against the labels where the two nets disagree, V-Net.
    pub review_v: Tensor,
    /// See `review_v`, ResNet-34 V-Net.
    pub review_r: Tensor,
    /// Whether the V-Net teaches this iteration (its Dice loss is lower).
    pub vnet_teaches: bool,
    /// The student's squared distance to the sharpened pseudo-labels on the unlabeled crops.
    pub consistency: Tensor,
    /// Labeled voxels where the nets disagree.
    pub n_disagree: f64,
    /// The total: both supervised parts, 0.5 x both review terms, `weight` x the consistency.
    pub total: Tensor,
}

/// MCF's loss (WYC-321/MCF `train_MCF.py`; docs/methods.md section 6) for logits `[N_l + N_u, K,
/// ...]` of the V-Net (`logits_v`) and of the ResNet-34 V-Net (`logits_r`), labeled crops first:
///
/// - supervised: `CE + Dice` of each net on the labeled crops;
/// - teacher (DCPLG): the net with the lower Dice loss (ties: the ResNet, as the code's `<`);
/// - review (CDR): on the labeled crops, voxels where the nets' argmax differ (the code's XOR of
///   "argmax is foreground", the same at K = 2), each net's `sum_{c>=1} (p_c - y_c)^2` averaged over
///   them (`/ (count + 1e-16)`), weight `review_weight` (0.5);
/// - consistency: the other net's softmax on the unlabeled crops against the teacher's sharpened
///   (temperature `temperature`, 0.1), detached softmax, mean over classes and voxels, times `weight`.
pub fn mcf_loss(
    logits_v: &Tensor,
    logits_r: &Tensor,
    labels: &Tensor,
    weight: f64,
    temperature: f64,
    review_weight: f64,
) -> Result<McfTerms> {
    let n_l = labels.dim(0)?;
    let n = logits_v.dim(0)?;
    if logits_r.dims() != logits_v.dims() || n_l >= n {
        candle_core::bail!(
            "mcf: logits {:?} and {:?} need {} labeled crops first and at least one unlabeled",
            logits_v.dims(),
            logits_r.dims(),
            n_l
        );
    }
    let (lv, lr) = (logits_v.narrow(0, 0, n_l)?, logits_r.narrow(0, 0, n_l)?);
    check_pair("mcf", &lv, labels)?;
    let pv_all = candle_nn::ops::softmax(logits_v, 1)?;
    let pr_all = candle_nn::ops::softmax(logits_r, 1)?;
    let (pv, pr) = (pv_all.narrow(0, 0, n_l)?, pr_all.narrow(0, 0, n_l)?);
    let dice_v_t = dice_loss(&pv, labels, None)?;
    let dice_r_t = dice_loss(&pr, labels, None)?;
    let supervised_v = (cross_entropy(&lv, labels, None)? + &dice_v_t)?;
    let supervised_r = (cross_entropy(&lr, labels, None)? + &dice_r_t)?;
    let dice_v = f64::from(
        dice_v_t
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?,
    );
    let dice_r = f64::from(
        dice_r_t
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?,
    );

    let ReviewTerms {
        review_a: review_v,
        review_b: review_r,
        n_disagree,
    } = review_terms(&pv, &pr, labels)?;

    let vnet_teaches = dice_v < dice_r;
    let (teacher, student) = if vnet_teaches {
        (&pv_all, &pr_all)
    } else {
        (&pr_all, &pv_all)
    };
    let n_u = n - n_l;
    let target = sharpen(&teacher.narrow(0, n_l, n_u)?, temperature)?;
    let consistency = reduce::mean_all(&(student.narrow(0, n_l, n_u)? - target)?.sqr()?)?;
    let total = ((&supervised_v + &supervised_r)? + ((&review_v + &review_r)? * review_weight)?)?
        .add(&(&consistency * weight)?)?;
    Ok(McfTerms {
        supervised_v,
        supervised_r,
        dice_v,
        dice_r,
        review_v,
        review_r,
        vnet_teaches,
        consistency,
        n_disagree,
        total,
    })
}

/// The terms of one DTC iteration (see [`dtc_loss`]).
#[derive(Debug, Clone)]
pub struct DtcTerms {
    /// Dice of the segmentation on the labeled crops.
    pub dice: Tensor,
    /// Squared error of the level-set head against the signed distance targets (labeled crops).
    pub sdf_mse: Tensor,
    /// Dual-task consistency over every crop.
    pub consistency: Tensor,
    /// `dice + sdf_weight sdf_mse + weight consistency`.
    pub total: Tensor,
}

/// DTC's loss (HiLab-git/DTC `train_la_dtc.py`; docs/methods.md section 4) for segmentation logits
/// `[N_l + N_u, K, ...]`, the level-set head's output `sdf` (after tanh) `[N_l + N_u, K - 1, ...]`,
/// the signed distance targets `[N_l, K - 1, ...]` of the labeled crops and their labels:
///
/// - supervised: [`dice_loss`] of the softmax on the labeled crops, plus `sdf_weight` (0.3) times
///   the mean squared error of the level-set head against the targets (the code's BCE is only
///   logged, so it is left out);
/// - dual-task consistency on every crop: the mean of `(sigmoid(-k sdf) - p_c)^2` over the
///   foreground classes c (`k` = 1500), both sides carrying gradient, times `weight`.
///
/// The code's one-channel sigmoid head is the K = 2 case: softmax's `p_1` is the sigmoid of
/// `z_1 - z_0`.
pub fn dtc_loss(
    logits: &Tensor,
    sdf: &Tensor,
    sdf_target: &Tensor,
    labels: &Tensor,
    transform_k: f64,
    sdf_weight: f64,
    weight: f64,
) -> Result<DtcTerms> {
    let n_l = labels.dim(0)?;
    let k = logits.dim(1)?;
    let mut want = logits.dims().to_vec();
    want[1] = k - 1;
    if sdf.dims() != want.as_slice() || sdf_target.dim(0)? != n_l {
        candle_core::bail!(
            "dtc: logits {:?}, level-set head {:?} and targets {:?} do not fit ({} labeled crops)",
            logits.dims(),
            sdf.dims(),
            sdf_target.dims(),
            n_l
        );
    }
    let probs = candle_nn::ops::softmax(logits, 1)?;
    let dice = dice_loss(&probs.narrow(0, 0, n_l)?, labels, None)?;
    let sdf_mse = reduce::mean_all(&(sdf.narrow(0, 0, n_l)? - sdf_target)?.sqr()?)?;
    let to_mask = candle_nn::ops::sigmoid(&(sdf * -transform_k)?)?;
    let consistency = reduce::mean_all(&(to_mask - probs.narrow(1, 1, k - 1)?)?.sqr()?)?;
    let total = ((&dice + (&sdf_mse * sdf_weight)?)? + (&consistency * weight)?)?;
    Ok(DtcTerms {
        dice,
        sdf_mse,
        consistency,
        total,
    })
}

/// MC-Net's sharpening (ycwu1997/MC-Net `train_mcnet_3d.py`, `sharpening`): per class channel,
/// `p^(1/T) / (p^(1/T) + (1 - p)^(1/T))`, with its gradient (the code does not detach the
/// sharpened targets). Unlike [`sharpen`] the channels are not renormalised. With `p + (1 - p) = 1`
/// one of the two powers is at least `0.5^(1/T)`, so the quotient is finite for `T >= 0.01` in f32.
pub fn mc_net_sharpen(probs: &Tensor, temperature: f64) -> Result<Tensor> {
    let e = 1.0 / temperature;
    let num = probs.powf(e)?;
    let rest = probs.affine(-1.0, 1.0)?.clamp(0.0, 1.0)?.powf(e)?;
    num.div(&(&num + rest)?)
}

/// The terms of one MC-Net iteration (see [`mc_net_loss`]).
#[derive(Debug, Clone)]
pub struct McNetTerms {
    /// The sum over decoders of their Dice loss on the labeled crops.
    pub supervised_dice: Tensor,
    /// The sum over ordered decoder pairs `i != j` of the mean squared distance of `softmax(i)` to
    /// the sharpened `softmax(j)`, over every crop.
    pub consistency: Tensor,
    /// `dice_weight * supervised_dice + weight * consistency`.
    pub total: Tensor,
}

/// MC-Net's loss (Wu et al. 2021, ycwu1997/MC-Net `train_mcnet_3d.py` lines 134-166,
/// `utils/losses.py` `Binary_dice_loss`; docs/methods.md) for the logits `[N_l + N_u, K, ...]` of
/// each decoder, labeled crops first:
///
/// - Dice per decoder with linear sums and `1e-8`:
///   `1 - (2 sum p_c y_c + 1e-8) / (sum p_c + sum y_c + 1e-8)` over the labeled crops pooled, for
///   the foreground class (K = 2, the code's case);
///   for K > 2, its mean over the foreground classes `c = 1..K-1`. The code's cross-entropy is
///   computed and logged there but not in the loss, so it is left out here;
/// - consistency: for every ordered pair `i != j`, the mean over all crops, classes and voxels of
///   `(softmax_i - mc_net_sharpen(softmax_j, T))^2`, gradients through both sides;
/// - total: `dice_weight` (the code's `lamda`, 0.5) x the Dice sum + `weight` x the consistency sum.
pub fn mc_net_loss(
    logits: &[&Tensor],
    labels: &Tensor,
    weight: f64,
    temperature: f64,
    dice_weight: f64,
) -> Result<McNetTerms> {
    let Some(first) = logits.first() else {
        candle_core::bail!("mc_net: no decoder output")
    };
    if logits.iter().any(|l| l.dims() != first.dims()) {
        let dims: Vec<_> = logits.iter().map(|l| l.dims().to_vec()).collect();
        candle_core::bail!("mc_net: the decoders' logits differ in shape: {dims:?}");
    }
    let n_l = labels.dim(0)?;
    let k = check_pair("mc_net", &first.narrow(0, 0, n_l)?, labels)?;
    let y = one_hot(labels, k)?;
    let probs = logits
        .iter()
        .map(|l| candle_nn::ops::softmax(l, 1))
        .collect::<Result<Vec<_>>>()?;
    let mut supervised_dice = Tensor::zeros((), first.dtype(), first.device())?;
    for p in &probs {
        let p_l = p.narrow(0, 0, n_l)?;
        let mut per_class = Vec::with_capacity(k - 1);
        for c in 1..k {
            let (pc, yc) = (p_l.narrow(1, c, 1)?, y.narrow(1, c, 1)?);
            let inter = reduce::sum_all(&(&pc * &yc)?)?;
            let den = (reduce::sum_all(&pc)? + reduce::sum_all(&yc)?)?;
            let score = ((inter * 2.0)? + 1e-8)?.div(&(den + 1e-8)?)?;
            per_class.push(score.affine(-1.0, 1.0)?);
        }
        let dice = (Tensor::stack(&per_class, 0)?.sum(0)? / (k - 1) as f64)?;
        supervised_dice = (supervised_dice + dice)?;
    }
    let sharpened = probs
        .iter()
        .map(|p| mc_net_sharpen(p, temperature))
        .collect::<Result<Vec<_>>>()?;
    let mut consistency = Tensor::zeros((), first.dtype(), first.device())?;
    for (i, p) in probs.iter().enumerate() {
        for (j, s) in sharpened.iter().enumerate() {
            if i != j {
                let d = (p - s)?.sqr()?;
                let mean = (reduce::sum_all(&d)? / d.elem_count() as f64)?;
                consistency = (consistency + mean)?;
            }
        }
    }
    let total = ((&supervised_dice * dice_weight)? + (&consistency * weight)?)?;
    Ok(McNetTerms {
        supervised_dice,
        consistency,
        total,
    })
}

/// The terms of one SASSNet segmenter iteration (see [`sassnet_loss`]).
#[derive(Debug, Clone)]
pub struct SassnetTerms {
    /// Dice of the segmentation on the labeled crops.
    pub dice: Tensor,
    /// Squared error of the level-set head against the signed distance targets (labeled crops).
    pub sdf_mse: Tensor,
    /// `dice + sdf_weight sdf_mse`.
    pub supervised: Tensor,
    /// Cross-entropy of the discriminator's logits on the unlabeled crops against "labeled" (1).
    pub adversarial: Tensor,
    /// `supervised + weight adversarial`.
    pub total: Tensor,
}

/// SASSNet's segmenter loss (kleinzcy/SASSnet `train_gan_sdfloss.py` lines 152-176;
/// docs/methods.md section 3) for segmentation logits `[N_l + N_u, K, ...]`, the level-set head's
/// output (after tanh) `[N_l + N_u, K - 1, ...]`, the signed distance targets `[N_l, K - 1, ...]`
/// of the labeled crops, their labels, and the discriminator's logits `[N_u, 2]` on the unlabeled
/// crops' level sets (the discriminator in eval mode, its gradient flowing into the level set):
///
/// - supervised: [`dice_loss`] of the softmax on the labeled crops plus `sdf_weight` (0.3) times
///   the level set's mean squared error (the code's BCE is logged there, not used), as DTC;
/// - adversarial: the mean cross-entropy of the discriminator's logits against class 1, "from a
///   labeled crop": the segmenter wants its unlabeled level sets to look labeled;
/// - total: supervised + `weight` x adversarial (`weight`: 0.01 ramped).
///
/// At K = 2 the code's one sigmoid channel `z` is the softmax of `(0, z)`.
pub fn sassnet_loss(
    logits: &Tensor,
    sdf: &Tensor,
    sdf_target: &Tensor,
    labels: &Tensor,
    d_logits_unlabeled: &Tensor,
    sdf_weight: f64,
    weight: f64,
) -> Result<SassnetTerms> {
    let n_l = labels.dim(0)?;
    let (n, k) = (logits.dim(0)?, logits.dim(1)?);
    let mut want = logits.dims().to_vec();
    want[1] = k - 1;
    if sdf.dims() != want.as_slice()
        || sdf_target.dim(0)? != n_l
        || d_logits_unlabeled.dims() != [n - n_l, 2]
    {
        candle_core::bail!(
            "sassnet: logits {:?}, level-set head {:?}, targets {:?} and discriminator logits {:?} \
             do not fit ({} labeled crops)",
            logits.dims(),
            sdf.dims(),
            sdf_target.dims(),
            d_logits_unlabeled.dims(),
            n_l
        );
    }
    let probs = candle_nn::ops::softmax(logits, 1)?;
    let dice = dice_loss(&probs.narrow(0, 0, n_l)?, labels, None)?;
    let sdf_mse = reduce::mean_all(&(sdf.narrow(0, 0, n_l)? - sdf_target)?.sqr()?)?;
    let supervised = (&dice + (&sdf_mse * sdf_weight)?)?;
    let adversarial = discriminator_cross_entropy(d_logits_unlabeled, &vec![1; n - n_l])?;
    let total = (&supervised + (&adversarial * weight)?)?;
    Ok(SassnetTerms {
        dice,
        sdf_mse,
        supervised,
        adversarial,
        total,
    })
}

/// SASSNet's discriminator loss (`train_gan_sdfloss.py` lines 184-200): the mean cross-entropy of
/// its logits `[N_l + N_u, 2]` against 1 for the `n_labeled` labeled crops (first) and 0 for the
/// unlabeled ones.
pub fn discriminator_loss(d_logits: &Tensor, n_labeled: usize) -> Result<Tensor> {
    let n = d_logits.dim(0)?;
    if n_labeled > n {
        candle_core::bail!("sassnet: {n_labeled} labeled crops among {n} discriminator logits");
    }
    let targets: Vec<u32> = (0..n).map(|i| u32::from(i < n_labeled)).collect();
    discriminator_cross_entropy(d_logits, &targets)
}

/// Mean cross-entropy of logits `[N, 2]` against class indices.
fn discriminator_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if logits.dims() != [targets.len(), 2] {
        candle_core::bail!(
            "sassnet: discriminator logits {:?} for {} targets",
            logits.dims(),
            targets.len()
        );
    }
    let t = Tensor::new(targets, logits.device())?;
    candle_nn::loss::cross_entropy(logits, &t)
}
