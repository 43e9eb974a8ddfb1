//! The prototype contrastive loss (paper section 2.3): pull unreliable voxels towards their class prototype,
//! push prototypes apart.

use candle_core::{bail, DType, Result, Tensor};

use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::prototypes::normalized_class_sums;
use crate::reduce;
use crate::supervised::one_hot;

/// Options of the prototype contrastive loss (SPEC section 2, step 6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastiveConfig {
    /// Temperature of `softmax_k(-||f - c_k||^2 / tau)`.
    pub tau: f64,
    /// Margin m of the push term `max(0, m - ||c_k - c_k'||)^2`.
    pub margin: f64,
    /// At most this many unreliable voxels are sampled (uniformly, without replacement).
    pub max_samples: usize,
    /// Whether the pull term also back-propagates into the prototypes (default: no; they are constants
    /// there, and receive gradient through the push term only).
    pub pull_through_prototypes: bool,
    /// What the pull term's sum is divided by.
    pub pull_normalize: PullNormalization,
}

/// What the pull term's sum over unreliable voxels is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullNormalization {
    /// The number of sampled unreliable voxels: a mean over them (SPEC section 2 step 6; the paper gives
    /// no formula for the pull term, so no normalisation either). Late in
    /// training `alpha_t` leaves few unreliable voxels, and each of them gets a gradient of order `lambda_c`,
    /// hundreds of times the per-voxel gradient of the cross-entropy, on a pseudo-label that is a coin flip:
    /// on the demo at 300 iterations this shrank the organs to 72.25 Dice vs 85.13 supervised-only
    /// (`bench/sweep-demo300.md`).
    Sampled,
    /// The number of unlabeled voxels: the sample mean scaled by `candidates / unlabeled voxels`, an unbiased
    /// estimate of `sum over unreliable v of -log p(y_hat(v) | v) / |unlabeled voxels|`, so the per-voxel
    /// gradient never exceeds `lambda_c / |unlabeled voxels|`. Default (`bench/sweep-demo300.md`).
    #[default]
    Voxels,
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        ContrastiveConfig {
            tau: 0.1,
            margin: 1.0,
            max_samples: 4096,
            pull_through_prototypes: false,
            pull_normalize: PullNormalization::Voxels,
        }
    }
}

/// The two parts of the contrastive loss of one net.
#[derive(Debug, Clone)]
pub struct ContrastiveTerms {
    /// `mean_v -log p(y_hat(v) | v)` over the sampled unreliable voxels (0 when none).
    pub pull: Tensor,
    /// `mean_{k != k'} max(0, m - ||c_k - c_k'||)^2` over present classes (0 with fewer than two).
    pub push: Tensor,
    /// Number of unreliable voxels used by the pull term.
    pub n_sampled: usize,
    /// Number of classes with a prototype this iteration.
    pub n_prototypes: usize,
}

impl ContrastiveTerms {
    /// `L_c = L_pull + L_push`.
    pub fn total(&self) -> Result<Tensor> {
        &self.pull + &self.push
    }
}

/// L2-normalises along axis 1: `x / max(||x||, 1e-12)` (PyTorch `F.normalize`; finite at zero vectors).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.maximum(1e-24)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// The feature vectors `[S, C]` of the voxels `chosen` (indices into the voxels of `[N, ...]` in row-major
/// order) of features `[N, C, ...]`, read in place: no permuted copy of the whole tensor.
fn gather_voxels(feat: &Tensor, chosen: &[u32]) -> Result<Tensor> {
    let (n, c) = (feat.dim(0)?, feat.dim(1)?);
    let v = feat.elem_count() / (n * c).max(1);
    let mut index = Vec::with_capacity(chosen.len() * c);
    for &i in chosen {
        let (item, voxel) = (i as usize / v, i as usize % v);
        index.extend((0..c).map(|ch| ((item * c + ch) * v + voxel) as u32));
    }
    let index = Tensor::new(index.as_slice(), feat.device())?;
    feat.flatten_all()?
        .index_select(&index, 0)?
        .reshape((chosen.len(), c))
}

/// Prototype contrastive loss of one net.
///
/// `feat_u` `[Nu, C, ...]`: the net's features on the unlabeled half; `reliable` f32 0/1 `[Nu, ...]`;
/// `pseudo` u32 `[Nu, ...]`; `feat_l` `[Nl, C, ...]` and `labels_l` `[Nl, ...]`: the labeled half.
/// Features are L2-normalised per voxel. Prototype `c_k` = mean of the normalised features of reliable
/// unlabeled voxels with `y_hat = k` and labeled voxels with ground truth k; a class without such voxels has
/// no prototype and is skipped. At most `cfg.max_samples` unreliable voxels whose pseudo-label has a
/// prototype are drawn with a generator seeded by `seed`.
#[allow(clippy::too_many_arguments)]
pub fn prototype_contrastive(
    feat_u: &Tensor,
    reliable: &Tensor,
    pseudo: &Tensor,
    feat_l: &Tensor,
    labels_l: &Tensor,
    n_classes: usize,
    cfg: &ContrastiveConfig,
    seed: u64,
) -> Result<ContrastiveTerms> {
    if feat_u.rank() < 2 || feat_l.rank() != feat_u.rank() || feat_u.dim(1)? != feat_l.dim(1)? {
        bail!(
            "contrastive: features {:?} and {:?} do not match",
            feat_u.dims(),
            feat_l.dims()
        );
    }
    let mut per_voxel = feat_u.dims().to_vec();
    per_voxel.remove(1);
    if reliable.dims() != per_voxel.as_slice() || pseudo.dims() != per_voxel.as_slice() {
        bail!(
            "contrastive: features {:?} vs reliable mask {:?} / pseudo-labels {:?}",
            feat_u.dims(),
            reliable.dims(),
            pseudo.dims()
        );
    }
    if !cfg.tau.is_finite() || cfg.tau <= 0.0 {
        bail!("contrastive: tau must be > 0, got {}", cfg.tau);
    }
    let device = feat_u.device();
    let dtype = feat_u.dtype();
    let zero = Tensor::zeros((), dtype, device)?;
    let reliable = reliable.detach().to_dtype(dtype)?;
    let w_u = one_hot(pseudo, n_classes)?
        .to_dtype(dtype)?
        .broadcast_mul(&reliable.unsqueeze(1)?)?; // [Nu, K, ...]
    let w_l = one_hot(labels_l, n_classes)?.to_dtype(dtype)?; // [Nl, K, ...]
    let sums = (normalized_class_sums(feat_u, &w_u)? + normalized_class_sums(feat_l, &w_l)?)?; // [K, C]
    let class_counts = |w: &Tensor| -> Result<Tensor> {
        let per_class = (0..n_classes)
            .map(|k| reduce::sum_all(&w.narrow(1, k, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&per_class, 0)
    };
    let counts = (class_counts(&w_u)? + class_counts(&w_l)?)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let present: Vec<u32> = (0..n_classes as u32)
        .filter(|&k| counts[k as usize] > 0.0)
        .collect();
    let n_prototypes = present.len();
    if n_prototypes < 2 {
        return Ok(ContrastiveTerms {
            pull: zero.clone(),
            push: zero,
            n_sampled: 0,
            n_prototypes,
        });
    }
    let present_idx = Tensor::new(present.as_slice(), device)?;
    let present_counts: Vec<f32> = present.iter().map(|&k| counts[k as usize]).collect();
    let protos = sums.index_select(&present_idx, 0)?.broadcast_div(
        &Tensor::new(present_counts.as_slice(), device)?
            .to_dtype(dtype)?
            .unsqueeze(1)?,
    )?; // [P, C]

    // Sample unreliable voxels whose pseudo-label has a prototype. The candidate mask is built on the
    // device and copied as one byte per voxel; only the sampled indices travel back.
    let mut has_prototype = vec![0u8; n_classes];
    let mut slot = vec![0u32; n_classes];
    for (i, &k) in present.iter().enumerate() {
        has_prototype[k as usize] = 1;
        slot[k as usize] = i as u32;
    }
    let yhat = pseudo.flatten_all()?.to_dtype(DType::U32)?;
    let n_voxels = yhat.elem_count();
    let candidate = Tensor::new(has_prototype.as_slice(), device)?
        .index_select(&yhat, 0)?
        .mul(&reliable.flatten_all()?.eq(0.0)?)?
        .to_vec1::<u8>()?;
    let candidates: Vec<u32> = (0..n_voxels as u32)
        .filter(|&i| candidate[i as usize] != 0)
        .collect();
    let n_candidates = candidates.len();
    let n_sampled = n_candidates.min(cfg.max_samples);
    let pull = if n_sampled == 0 {
        zero
    } else {
        let chosen: Vec<u32> = if n_sampled == candidates.len() {
            candidates
        } else {
            let mut rng = StdRng::seed_from_u64(seed);
            rand::seq::index::sample(&mut rng, candidates.len(), n_sampled)
                .into_iter()
                .map(|j| candidates[j])
                .collect()
        };
        // prototype row of each sampled voxel's pseudo-label
        let chosen_index = Tensor::new(chosen.as_slice(), device)?;
        let targets = Tensor::new(slot.as_slice(), device)?
            .index_select(&yhat.index_select(&chosen_index, 0)?, 0)?;
        let fs = l2_normalize(&gather_voxels(feat_u, &chosen)?)?; // [S, C]
        let c = if cfg.pull_through_prototypes {
            protos.clone()
        } else {
            protos.detach()
        };
        let d2 = fs
            .unsqueeze(1)?
            .broadcast_sub(&c.unsqueeze(0)?)?
            .sqr()?
            .sum(2)?; // [S, P]
        let log_p = candle_nn::ops::log_softmax(&(d2 * (-1.0 / cfg.tau))?, 1)?;
        let mean = log_p.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
        match cfg.pull_normalize {
            PullNormalization::Sampled => mean,
            PullNormalization::Voxels => {
                mean.affine(n_candidates as f64 / n_voxels.max(1) as f64, 0.0)?
            }
        }
    };

    // Push: every unordered pair of present prototypes.
    let mut pair_terms = Vec::new();
    for i in 0..n_prototypes {
        for j in (i + 1)..n_prototypes {
            let d2 = (protos.get(i)? - protos.get(j)?)?.sqr()?.sum_all()?;
            let dist = d2.maximum(1e-24)?.sqrt()?;
            pair_terms.push(dist.neg()?.affine(1.0, cfg.margin)?.relu()?.sqr()?);
        }
    }
    let push = Tensor::stack(&pair_terms, 0)?.mean_all()?;
    Ok(ContrastiveTerms {
        pull,
        push,
        n_sampled,
        n_prototypes,
    })
}
