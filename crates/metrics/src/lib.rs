//! Segmentation metrics exactly as `medpy.metric.binary` 0.5 computes them: Dice, Jaccard, HD95, ASD
//! (plus ASSD, HD and normalised surface Dice), in voxel units or millimetres.
//!
//! Masks are plain C-order slices (`&[bool]`, or `&[u8]` labels) with a logical shape `[usize; 3]`
//! whose last axis is the fastest, and a voxel spacing `[f64; 3]` in the same axis order.
//!
//! Definitions (medpy 0.5.2, `SPEC.md` section 4):
//! - `dice = 2|A & B| / (|A| + |B|)`, `jaccard = |A & B| / |A | B|`; both empty gives 1 (medpy 0.5).
//! - surface(X) = X xor erosion(X) by the 6-connected cross, voxels outside the array count as
//!   background ([`surface`]).
//! - `sds(A, B)`: the exact Euclidean distance transform of `not surface(B)` (with spacing, [`edt`])
//!   read at the surface voxels of A, in C order.
//! - HD95 = 95th percentile (numpy's linear interpolation) of `sds(pred, gt)` and `sds(gt, pred)`
//!   pooled ([`HausdorffDefinition::MedpyPooled`]); ASD = mean of `sds(pred, gt)` (one direction);
//!   ASSD = mean of both directed sets pooled (medpy 0.5); HD = the largest distance in either
//!   direction; normalised surface Dice = the fraction of both surfaces within a tolerance of the
//!   other surface.
//! - Empty prediction or label: HD95/ASD/ASSD/HD are undefined (`None`), never 0, unless
//!   [`EmptyRule::ReferenceZeros`] reproduces the reference code's `(0, 0, 0, 0)`.
//!
//! [`MetricDefinition`] records which of these choices produced a report.
//!
//! Speed: all distance work is restricted to the bounding box of both masks (exact, see
//! [`SurfacePair`]). Directed distances come from a vectorised sweep along axis 1 followed by an
//! exact pruned search per surface voxel (surfaces are usually a few voxels apart), falling back
//! to the full separable transform (Felzenszwalb-Huttenlocher, parallel over lines with rayon) for
//! far-away voxels; both evaluate the same sums, so the numbers are the same.
//!
//! Architecture invariant: this crate never imports candle or the io crate; it works on plain
//! masks and label slices, and never prints.

mod binary;
mod components;
mod definition;
mod edt;
mod error;
mod labels;
mod report;
mod sdf;
mod surface;

pub use binary::{
    dice, evaluate_binary, jaccard, percentile, surface_distances, BinaryMetrics, SurfaceDistances,
    SurfacePair,
};
pub use components::keep_largest_component;
pub use definition::{EmptyCase, EmptyRule, HausdorffDefinition, MetricDefinition};
pub use edt::edt;
pub use error::Error;
pub use labels::{evaluate_class, evaluate_labels, foreground_classes, ClassMetrics};
pub use report::{
    per_case_table, summarize, summary_markdown, table_rows, EvaluationReport, Stat,
    UndefinedEntry, TABLE_HEADER,
};
pub use sdf::normalized_signed_distance;
pub use surface::surface;

/// Number of voxels of `shape`, checked against a slice length.
pub(crate) fn check_len(len: usize, shape: [usize; 3]) -> Result<(), Error> {
    let expected = shape[0]
        .checked_mul(shape[1])
        .and_then(|n| n.checked_mul(shape[2]));
    match expected {
        Some(expected) if expected == len => Ok(()),
        _ => Err(Error::Length { len, shape }),
    }
}

/// Checks that a spacing is finite and positive in every axis.
pub(crate) fn check_spacing(spacing: [f64; 3]) -> Result<(), Error> {
    if spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        Ok(())
    } else {
        Err(Error::Spacing { spacing })
    }
}

#[cfg(test)]
mod testutil;
