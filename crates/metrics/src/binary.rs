//! Binary-mask metrics: Dice, Jaccard and the surface-distance family.

use rayon::prelude::*;

use crate::definition::{EmptyCase, EmptyRule, HausdorffDefinition, MetricDefinition};
use crate::edt::distances_at;
use crate::surface::{surface_unchecked, Bounds};
use crate::{check_len, check_spacing, Error};

/// Dice coefficient `2|A & B| / (|A| + |B|)` (medpy `dc`; 1 when both masks are empty).
pub fn dice(pred: &[bool], gt: &[bool]) -> Result<f64, Error> {
    let (p, g, i) = counts(pred, gt)?;
    Ok(dice_from_counts(p, g, i))
}

/// Jaccard index `|A & B| / |A | B|` (medpy `jc`; 1 when both masks are empty).
pub fn jaccard(pred: &[bool], gt: &[bool]) -> Result<f64, Error> {
    let (p, g, i) = counts(pred, gt)?;
    Ok(jaccard_from_counts(p, g, i))
}

fn counts(pred: &[bool], gt: &[bool]) -> Result<(usize, usize, usize), Error> {
    if pred.len() != gt.len() {
        return Err(Error::SizeMismatch {
            pred: pred.len(),
            label: gt.len(),
        });
    }
    Ok(pred
        .par_chunks(1 << 16)
        .zip(gt.par_chunks(1 << 16))
        .map(|(p, g)| {
            p.iter().zip(g).fold((0, 0, 0), |(a, b, c), (&p, &g)| {
                (a + p as usize, b + g as usize, c + (p & g) as usize)
            })
        })
        .reduce(|| (0, 0, 0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2)))
}

fn dice_from_counts(pred: usize, gt: usize, intersection: usize) -> f64 {
    if pred + gt == 0 {
        1.0
    } else {
        2.0 * intersection as f64 / (pred + gt) as f64
    }
}

fn jaccard_from_counts(pred: usize, gt: usize, intersection: usize) -> f64 {
    let union = pred + gt - intersection;
    if union == 0 {
        1.0
    } else {
        intersection as f64 / union as f64
    }
}

/// The directed surface distances of medpy's `__surface_distances`, each in C order of its surface.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfaceDistances {
    /// `sds(pred, gt)`: for each surface voxel of the prediction, the distance to the label surface.
    pub pred_to_gt: Vec<f64>,
    /// `sds(gt, pred)`: for each surface voxel of the label, the distance to the prediction surface.
    pub gt_to_pred: Vec<f64>,
}

impl SurfaceDistances {
    /// Percentile Hausdorff distance (`percentile` 95 gives HD95), pooled as `definition` says.
    pub fn hausdorff(&self, percentile_q: f64, definition: HausdorffDefinition) -> f64 {
        match definition {
            HausdorffDefinition::MedpyPooled => {
                let mut pooled = [self.pred_to_gt.as_slice(), self.gt_to_pred.as_slice()].concat();
                percentile(&mut pooled, percentile_q)
            }
            HausdorffDefinition::MaxOfDirected => {
                let a = percentile(&mut self.pred_to_gt.clone(), percentile_q);
                let b = percentile(&mut self.gt_to_pred.clone(), percentile_q);
                a.max(b)
            }
        }
    }

    /// medpy `asd`: mean distance from the prediction surface to the label surface (one direction).
    pub fn asd(&self) -> f64 {
        numpy_mean(&self.pred_to_gt)
    }

    /// medpy 0.5 `assd`: the mean of both directed distance sets pooled (medpy 0.4 averaged the
    /// two directed ASDs instead, which weighs the surfaces differently).
    pub fn assd(&self) -> f64 {
        numpy_mean(&[self.pred_to_gt.as_slice(), self.gt_to_pred.as_slice()].concat())
    }

    /// medpy `hd`: the largest distance in either direction.
    pub fn hd(&self) -> f64 {
        self.pred_to_gt
            .iter()
            .chain(&self.gt_to_pred)
            .fold(0.0, |m: f64, &d| m.max(d))
    }

    /// Normalised surface Dice: the fraction of both surfaces lying within `tolerance` of the other.
    pub fn surface_dice(&self, tolerance: f64) -> f64 {
        let within = self
            .pred_to_gt
            .iter()
            .chain(&self.gt_to_pred)
            .filter(|&&d| d <= tolerance)
            .count();
        within as f64 / (self.pred_to_gt.len() + self.gt_to_pred.len()) as f64
    }
}

/// numpy's `percentile(values, q)` with the default linear interpolation (reorders `values`).
/// Returns NaN for an empty slice. Caller ensures `0 <= q <= 100` and no NaN in `values`.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let index = (n - 1) as f64 * (q / 100.0);
    if index >= (n - 1) as f64 {
        return values.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    }
    let below = index.floor();
    let lo = below as usize;
    let (_, &mut a, rest) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let b = rest.iter().fold(f64::INFINITY, |m, &v| m.min(v));
    let t = index - below;
    let diff = b - a;
    // numpy `_lerp`: interpolate from the nearer end.
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// numpy's `mean` of a contiguous f64 array: pairwise summation exactly as numpy does it
/// (`pairwise_sum`, blocks of 128 with 8 accumulators), then division by the count.
fn numpy_mean(values: &[f64]) -> f64 {
    pairwise_sum(values) / values.len() as f64
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        // numpy starts from -0.0 so that a sum of negative zeros stays -0.0.
        a.iter().fold(-0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - (n % 8) {
            for (acc, &x) in r.iter_mut().zip(&a[i..i + 8]) {
                *acc += x;
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

/// Voxel counts of two masks and, when both are non-empty, their surfaces cropped to the bounding
/// box of both masks: computed once, then distances in any spacing.
///
/// Cropping is exact: the transform of `not surface(B)` at a voxel is the minimum over the surface
/// voxels of B, which all lie in the box, and the separable transform over a box computes the
/// minimum over every site of that box; the surfaces themselves do not change because voxels
/// outside the box are background either way (the array border counts as background too).
#[derive(Debug, Clone)]
pub struct SurfacePair {
    pred_count: usize,
    gt_count: usize,
    intersection: usize,
    surfaces: Option<CroppedSurfaces>,
}

#[derive(Debug, Clone)]
struct CroppedSurfaces {
    shape: [usize; 3],
    pred: Vec<bool>,
    gt: Vec<bool>,
}

impl SurfacePair {
    /// Counts and surfaces of `pred` and `gt`, both C order of `shape`.
    pub fn new(pred: &[bool], gt: &[bool], shape: [usize; 3]) -> Result<Self, Error> {
        check_len(pred.len(), shape)?;
        check_len(gt.len(), shape)?;
        let (pred_box, gt_box) = rayon::join(
            || Bounds::of_mask(pred, shape),
            || Bounds::of_mask(gt, shape),
        );
        let (Some(pred_box), Some(gt_box)) = (pred_box, gt_box) else {
            let (pred_count, gt_count, intersection) = counts(pred, gt)?;
            return Ok(Self {
                pred_count,
                gt_count,
                intersection,
                surfaces: None,
            });
        };
        let bounds = pred_box.union(gt_box);
        let box_shape = bounds.shape();
        let (pred, gt) = rayon::join(|| bounds.crop(pred, shape), || bounds.crop(gt, shape));
        let (pred_count, gt_count, intersection) = counts(&pred, &gt)?;
        let (pred_surface, gt_surface) = rayon::join(
            || surface_unchecked(&pred, box_shape),
            || surface_unchecked(&gt, box_shape),
        );
        Ok(Self {
            pred_count,
            gt_count,
            intersection,
            surfaces: Some(CroppedSurfaces {
                shape: box_shape,
                pred: pred_surface,
                gt: gt_surface,
            }),
        })
    }

    /// medpy `dc`.
    pub fn dice(&self) -> f64 {
        dice_from_counts(self.pred_count, self.gt_count, self.intersection)
    }

    /// medpy `jc`.
    pub fn jaccard(&self) -> f64 {
        jaccard_from_counts(self.pred_count, self.gt_count, self.intersection)
    }

    /// Which side is empty, if any.
    pub fn empty_case(&self) -> Option<EmptyCase> {
        match (self.pred_count == 0, self.gt_count == 0) {
            (false, false) => None,
            (true, false) => Some(EmptyCase::Prediction),
            (false, true) => Some(EmptyCase::Label),
            (true, true) => Some(EmptyCase::Both),
        }
    }

    /// Both directed surface distances with voxel `spacing`; `None` when either mask is empty.
    pub fn distances(&self, spacing: [f64; 3]) -> Result<Option<SurfaceDistances>, Error> {
        check_spacing(spacing)?;
        let Some(s) = &self.surfaces else {
            return Ok(None);
        };
        let (pred_to_gt, gt_to_pred) = rayon::join(
            || distances_at(&s.gt, &s.pred, s.shape, spacing),
            || distances_at(&s.pred, &s.gt, s.shape, spacing),
        );
        Ok(Some(SurfaceDistances {
            pred_to_gt,
            gt_to_pred,
        }))
    }

    /// All binary metrics with voxel `spacing` (distances and the surface-Dice tolerance in the
    /// units of `spacing`).
    pub fn metrics(
        &self,
        spacing: [f64; 3],
        definition: &MetricDefinition,
    ) -> Result<BinaryMetrics, Error> {
        definition.validate()?;
        let empty = self.empty_case();
        if empty.is_some() && definition.empty == EmptyRule::ReferenceZeros {
            return Ok(BinaryMetrics {
                dice: 0.0,
                jaccard: 0.0,
                hd95: Some(0.0),
                asd: Some(0.0),
                assd: Some(0.0),
                hd: Some(0.0),
                nsd: Some(0.0),
                empty,
            });
        }
        let distances = self.distances(spacing)?;
        let nsd = match (&distances, empty) {
            (Some(d), _) => Some(d.surface_dice(definition.nsd_tolerance_mm)),
            (None, Some(EmptyCase::Both)) => None,
            (None, _) => Some(0.0),
        };
        Ok(BinaryMetrics {
            dice: self.dice(),
            jaccard: self.jaccard(),
            hd95: distances
                .as_ref()
                .map(|d| d.hausdorff(definition.percentile, definition.hausdorff)),
            asd: distances.as_ref().map(SurfaceDistances::asd),
            assd: distances.as_ref().map(SurfaceDistances::assd),
            hd: distances.as_ref().map(SurfaceDistances::hd),
            nsd,
            empty,
        })
    }
}

/// The metrics of one binary comparison, distances in the units of the spacing used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinaryMetrics {
    /// medpy `dc`.
    pub dice: f64,
    /// medpy `jc`.
    pub jaccard: f64,
    /// medpy `hd95` (the definition's percentile and pooling); `None` when undefined.
    pub hd95: Option<f64>,
    /// medpy `asd` (prediction to label); `None` when undefined.
    pub asd: Option<f64>,
    /// medpy `assd`; `None` when undefined.
    pub assd: Option<f64>,
    /// medpy `hd`; `None` when undefined.
    pub hd: Option<f64>,
    /// Normalised surface Dice at the definition's tolerance; `None` when both masks are empty.
    pub nsd: Option<f64>,
    /// Which side was empty, if any.
    pub empty: Option<EmptyCase>,
}

/// All binary metrics of `pred` against `gt` (C order, `shape`) with voxel `spacing`.
pub fn evaluate_binary(
    pred: &[bool],
    gt: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
    definition: &MetricDefinition,
) -> Result<BinaryMetrics, Error> {
    SurfacePair::new(pred, gt, shape)?.metrics(spacing, definition)
}

/// medpy's `__surface_distances` both ways; `None` when either mask is empty (medpy raises).
pub fn surface_distances(
    pred: &[bool],
    gt: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<Option<SurfaceDistances>, Error> {
    SurfacePair::new(pred, gt, shape)?.distances(spacing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile(x, q) for these inputs (numpy 2.4.6).
        let mut x = vec![3.0, 1.0, 2.0, 10.0, 4.0];
        assert_eq!(percentile(&mut x, 95.0), 8.799999999999999);
        assert_eq!(percentile(&mut x, 50.0), 3.0);
        assert_eq!(percentile(&mut x, 0.0), 1.0);
        assert_eq!(percentile(&mut x, 100.0), 10.0);
        assert_eq!(percentile(&mut [7.5], 95.0), 7.5);
        let mut y: Vec<f64> = (0..21).map(|i| ((i * 7) % 21) as f64 * 0.1).collect();
        assert_eq!(percentile(&mut y, 95.0), 1.4000000000000001);
        assert!(percentile(&mut [], 95.0).is_nan());
    }

    #[test]
    fn pairwise_sum_matches_numpy() {
        // x = numpy.sqrt(numpy.arange(n)): numpy.add.reduce(x) for n = 333 and 137 is
        // 4041.7900984772004 and 1062.9725821532584, where a left-to-right loop gives
        // 4041.7900984771986 and 1062.972582153258.
        for (n, want) in [(333, 4041.7900984772004), (137, 1062.9725821532584)] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64).sqrt()).collect();
            assert_eq!(pairwise_sum(&x), want);
        }
    }

    #[test]
    fn counts_reject_different_lengths() {
        assert_eq!(
            dice(&[true; 3], &[true; 4]),
            Err(Error::SizeMismatch { pred: 3, label: 4 })
        );
    }
}
