//! Background batch loader: N labeled + M unlabeled random crops per batch (default 2 + 2), made by
//! worker threads into bounded queues, from [`PreparedCase`]s decoded and prepared once, shared with
//! the caller (never copied).
//!
//! Determinism: batch `t` depends only on `(seed, t)`: its RNG is ChaCha8 seeded with `seed` on
//! stream `t`, and the cases it uses are positions `t * N .. (t + 1) * N` of an endless sequence of
//! per-epoch permutations (each case once per epoch, as UA-MT's `TwoStreamBatchSampler`). Thread
//! timing never changes a batch, and resuming at iteration `t` only needs `start_iteration = t`.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::augment::{Patch, RandCrop, RandRot90Flip, Rng};
use crate::dataset::{Dataset, Sample};
use crate::error::{Error, Result};
use crate::prepared::PreparedCase;

/// Loader settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Crop size, file axis order (LA: 112x112x80).
    pub patch: [usize; 3],
    /// Labeled crops per batch (first in the batch).
    pub labeled_per_batch: usize,
    /// Unlabeled crops per batch (after the labeled ones).
    pub unlabeled_per_batch: usize,
    /// Random rot90 + flip in the axial plane before cropping (UA-MT / MC-Net; MCF does not).
    pub rot_flip: bool,
    /// Batches carry the unlabeled crops' hidden labels ([`Batch::hidden_label`], cropped and
    /// turned with their images), for diagnosis; every unlabeled case must then have one. The
    /// random draws are the same either way.
    #[serde(default)]
    pub hidden_labels: bool,
    pub seed: u64,
    /// Worker threads.
    pub workers: usize,
    /// Batches made ahead of the consumer (at least one per worker).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            patch: [112, 112, 80],
            labeled_per_batch: 2,
            unlabeled_per_batch: 2,
            rot_flip: false,
            hidden_labels: false,
            seed: 1337,
            workers: 2,
            prefetch: 4,
        }
    }
}

/// One batch: `image` is `[B, 1, D, H, W]` (B = labeled + unlabeled, labeled first), `label` is
/// `[n_labeled, D, H, W]` for the labeled crops only. `(D, H, W)` = `patch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub iteration: u64,
    pub patch: [usize; 3],
    pub n_labeled: usize,
    pub n_unlabeled: usize,
    pub image: Vec<f32>,
    pub label: Vec<u8>,
    /// `[n_unlabeled, D, H, W]`: the unlabeled crops' hidden labels when
    /// [`LoaderConfig::hidden_labels`], else empty. For diagnosis only.
    pub hidden_label: Vec<u8>,
    /// Case id of each crop, in batch order.
    pub ids: Vec<String>,
}

/// Decodes the cases `ids` of `ds` in parallel (each once), in the order given.
pub fn load_cases(ds: &Dataset, ids: &[String]) -> Result<Vec<Sample>> {
    ids.par_iter().map(|id| ds.load(id)).collect()
}

/// The case index at `position` of the endless per-epoch-permuted sequence over `n` cases.
fn case_at(seed: u64, stream: u64, n: usize, position: u64) -> usize {
    let epoch = position / n as u64;
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(stream + 1));
    rng.set_stream(epoch);
    perm.shuffle(&mut rng);
    perm[(position % n as u64) as usize]
}

/// Builds batch `t` (pure function of its inputs).
pub fn make_batch(
    labeled: &[PreparedCase],
    unlabeled: &[PreparedCase],
    cfg: &LoaderConfig,
    t: u64,
) -> Result<Batch> {
    let mut rng = Rng::seed_from_u64(cfg.seed);
    rng.set_stream(t);
    let crop = RandCrop { size: cfg.patch };
    let voxels: usize = cfg.patch.iter().product();
    let b = cfg.labeled_per_batch + cfg.unlabeled_per_batch;
    let mut batch = Batch {
        iteration: t,
        patch: cfg.patch,
        n_labeled: cfg.labeled_per_batch,
        n_unlabeled: cfg.unlabeled_per_batch,
        image: Vec::with_capacity(b * voxels),
        label: Vec::with_capacity(cfg.labeled_per_batch * voxels),
        hidden_label: Vec::new(),
        ids: Vec::with_capacity(b),
    };
    let pools = [
        (labeled, cfg.labeled_per_batch, 0u64),
        (unlabeled, cfg.unlabeled_per_batch, 1u64),
    ];
    for (pool, per_batch, stream) in pools {
        for s in 0..per_batch {
            let position = t * per_batch as u64 + s as u64;
            let case = &pool[case_at(cfg.seed, stream, pool.len(), position)];
            let label = match (stream, cfg.hidden_labels) {
                (0, _) => Some(case.label.clone().ok_or_else(|| {
                    Error::Invalid(format!("loader: labeled case {:?} has no label", case.name))
                })?),
                (_, true) => Some(case.hidden_label.clone().ok_or_else(|| {
                    Error::Invalid(format!(
                        "loader: hidden labels asked for, but unlabeled case {:?} has none",
                        case.name
                    ))
                })?),
                (_, false) => None,
            };
            let mut patch = Patch::new(case.shape, case.image.clone(), label)?;
            if cfg.rot_flip {
                patch = RandRot90Flip.apply(&mut rng, patch)?;
            }
            let patch = crop.apply(&mut rng, patch)?;
            batch.image.extend_from_slice(&patch.image);
            if let Some(l) = patch.label {
                match stream {
                    0 => batch.label.extend_from_slice(&l),
                    _ => batch.hidden_label.extend_from_slice(&l),
                }
            }
            batch.ids.push(case.name.clone());
        }
    }
    Ok(batch)
}

/// Iterator over batches `start_iteration, start_iteration + 1, ...` made by background threads.
/// Endless: take as many as you train for. Dropping it stops the workers.
pub struct Loader {
    start: u64,
    next: u64,
    queues: Vec<Receiver<Result<Batch>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Starts the workers over prepared cases (unlabeled cases' labels, if any, are never read).
    pub fn new(
        labeled: Arc<[PreparedCase]>,
        unlabeled: Arc<[PreparedCase]>,
        cfg: LoaderConfig,
        start_iteration: u64,
    ) -> Result<Self> {
        if cfg.workers == 0 {
            return Err(Error::Invalid("loader: workers must be >= 1".into()));
        }
        if cfg.labeled_per_batch > 0 && labeled.is_empty() {
            return Err(Error::Invalid("loader: no labeled cases".into()));
        }
        if cfg.unlabeled_per_batch > 0 && unlabeled.is_empty() {
            return Err(Error::Invalid("loader: no unlabeled cases".into()));
        }
        if cfg.patch.contains(&0) || cfg.labeled_per_batch + cfg.unlabeled_per_batch == 0 {
            return Err(Error::Invalid(format!(
                "loader: empty batch (patch {:?})",
                cfg.patch
            )));
        }
        let n = cfg.workers;
        let depth = cfg.prefetch.div_ceil(n).max(1);
        let mut queues = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for w in 0..n {
            let (tx, rx) = sync_channel(depth);
            let (labeled, unlabeled, cfg) =
                (Arc::clone(&labeled), Arc::clone(&unlabeled), cfg.clone());
            let handle = std::thread::Builder::new()
                .name(format!("duoseg-loader-{w}"))
                .spawn(move || {
                    let mut t = start_iteration + w as u64;
                    loop {
                        let batch = make_batch(&labeled, &unlabeled, &cfg, t);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            return;
                        }
                        t += n as u64;
                    }
                })
                .map_err(|e| {
                    Error::Invalid(format!("loader: cannot start a worker thread: {e}"))
                })?;
            queues.push(rx);
            workers.push(handle);
        }
        Ok(Self {
            start: start_iteration,
            next: start_iteration,
            queues,
            workers,
        })
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.queues.is_empty() {
            return None;
        }
        // Worker w makes iterations start + w, start + w + n, ...
        let q = ((self.next - self.start) % self.queues.len() as u64) as usize;
        let item = self.queues[q].recv().ok()?;
        self.next += 1;
        Some(item)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queues makes each worker's next send fail, so it returns.
        self.queues.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn samples(n: usize, labeled: bool) -> Arc<[PreparedCase]> {
        (0..n)
            .map(|c| {
                let shape = [10 + c, 9, 6];
                let len = shape.iter().product::<usize>();
                PreparedCase::in_memory(
                    format!("case{c}"),
                    shape,
                    [1.0; 3],
                    (0..len).map(|v| (v + 1000 * c) as f32).collect(),
                    labeled.then(|| (0..len).map(|v| (v % 2) as u8).collect()),
                )
            })
            .collect()
    }

    fn cfg(workers: usize) -> LoaderConfig {
        LoaderConfig {
            patch: [8, 8, 8],
            labeled_per_batch: 2,
            unlabeled_per_batch: 2,
            rot_flip: true,
            hidden_labels: false,
            seed: 5,
            workers,
            prefetch: 3,
        }
    }

    #[test]
    fn batches_are_deterministic_whatever_the_thread_count_and_resume_point() {
        let (lab, unl) = (samples(3, true), samples(4, false));
        let one: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(1), 0)
            .unwrap()
            .take(8)
            .map(|b| b.unwrap())
            .collect();
        let three: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(3), 0)
            .unwrap()
            .take(8)
            .map(|b| b.unwrap())
            .collect();
        assert!(one == three, "thread count changed the batches");
        let resumed: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(2), 5)
            .unwrap()
            .take(3)
            .map(|b| b.unwrap())
            .collect();
        assert!(one[5..] == resumed[..], "resuming at 5 changed the batches");
        let b = &one[0];
        assert_eq!((b.image.len(), b.label.len()), (4 * 512, 2 * 512));
        assert_eq!(b.iteration, 0);
        assert_eq!(
            one.iter().map(|b| b.iteration).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        // Labeled cases come first and each labeled case appears once per epoch (3 cases, 2 per batch).
        let epoch: Vec<&String> = one[..3].iter().flat_map(|b| &b.ids[..2]).collect();
        let mut first = epoch[..3].to_vec();
        first.sort();
        assert_eq!(first, vec!["case0", "case1", "case2"]);
        assert!(one
            .iter()
            .all(|b| b.ids[2..].iter().all(|id| id.starts_with("case"))));
        // Another seed gives other batches.
        let mut c = cfg(1);
        c.seed = 6;
        let other = Loader::new(lab, unl, c, 0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(other != one[0]);
    }

    /// Hidden labels ride with the unlabeled crops (same crop, same rotation and flip) and change
    /// nothing else; a case without one is an error only when they are asked for.
    #[test]
    fn hidden_labels_follow_their_crops() {
        let lab = samples(3, true);
        let label_of = |v: f32| (v as u64 % 3) as u8;
        let unl: Arc<[PreparedCase]> = samples(4, false)
            .iter()
            .map(|c| PreparedCase {
                hidden_label: Some(c.image.iter().map(|&v| label_of(v)).collect()),
                ..c.clone()
            })
            .collect();
        let mut with = cfg(1);
        with.hidden_labels = true;
        for t in 0..6 {
            let plain = make_batch(&lab, &unl, &cfg(1), t).unwrap();
            let b = make_batch(&lab, &unl, &with, t).unwrap();
            assert!(plain.hidden_label.is_empty());
            assert_eq!(
                (&b.image, &b.label, &b.ids),
                (&plain.image, &plain.label, &plain.ids)
            );
            assert_eq!(b.hidden_label.len(), 2 * 512);
            let unlabeled_images = &b.image[2 * 512..];
            assert!(unlabeled_images
                .iter()
                .zip(&b.hidden_label)
                .all(|(&v, &l)| label_of(v) == l));
            assert!(b.hidden_label.contains(&2));
        }
        assert!(make_batch(&lab, &samples(2, false), &with, 0).is_err());
    }

    #[test]
    fn loader_errors_are_typed() {
        let (lab, unl) = (samples(2, true), samples(2, false));
        assert!(Loader::new(Arc::from(vec![]), unl.clone(), cfg(1), 0).is_err());
        let mut c = cfg(1);
        c.workers = 0;
        assert!(Loader::new(lab.clone(), unl.clone(), c, 0).is_err());
        // A "labeled" pool without labels fails when a batch is made, as an Err item.
        let mut l = Loader::new(unl.clone(), unl, cfg(2), 0).unwrap();
        assert!(l.next().unwrap().is_err());
    }
}
