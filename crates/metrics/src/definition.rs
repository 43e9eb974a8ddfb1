//! Which metric definitions a report used (STYLE: state the definition, make the choice an enum).

use serde::{Deserialize, Serialize};

use crate::Error;

/// How the percentile Hausdorff distance pools the two directed surface-distance sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HausdorffDefinition {
    /// medpy `hd95`: one percentile over `sds(pred, gt)` and `sds(gt, pred)` pooled (the papers').
    #[default]
    MedpyPooled,
    /// MONAI `compute_hausdorff_distance`: the larger of the two per-direction percentiles.
    MaxOfDirected,
}

/// What a metric is when the prediction or the label is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyRule {
    /// medpy 0.5: Dice/Jaccard 1 if both are empty, else 0; surface distances undefined (`None`);
    /// surface Dice 0 if exactly one is empty, undefined if both are.
    #[default]
    Medpy,
    /// The reference training code: every metric 0 as soon as either mask is empty. This flatters
    /// HD95/ASD; for comparison with published numbers only.
    ReferenceZeros,
}

/// Which side of a comparison was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyCase {
    /// The prediction has no voxel of the class; the label has some.
    Prediction,
    /// The label has no voxel of the class; the prediction has some.
    Label,
    /// Neither has a voxel of the class.
    Both,
}

impl EmptyCase {
    /// A short human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            EmptyCase::Prediction => "empty prediction",
            EmptyCase::Label => "empty label",
            EmptyCase::Both => "empty prediction and label",
        }
    }
}

/// The definitions behind a set of numbers; serialised into every report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    /// How HD95 pools the two directions.
    pub hausdorff: HausdorffDefinition,
    /// The percentile of the Hausdorff distance (95 for HD95), numpy's linear interpolation.
    pub percentile: f64,
    /// What happens with an empty prediction or label.
    pub empty: EmptyRule,
    /// Tolerance of the normalised surface Dice, in millimetres (in voxels for voxel-unit metrics).
    pub nsd_tolerance_mm: f64,
    /// Whether the prediction was reduced to its largest 26-connected component per class first.
    pub keep_largest_component: bool,
}

impl Default for MetricDefinition {
    /// medpy 0.5 (the papers' definitions), HD95, surface Dice at 1 mm, no post-processing.
    fn default() -> Self {
        Self {
            hausdorff: HausdorffDefinition::MedpyPooled,
            percentile: 95.0,
            empty: EmptyRule::Medpy,
            nsd_tolerance_mm: 1.0,
            keep_largest_component: false,
        }
    }
}

impl MetricDefinition {
    /// Checks the numeric fields.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=100.0).contains(&self.percentile) {
            return Err(Error::Percentile(self.percentile));
        }
        if !(self.nsd_tolerance_mm.is_finite() && self.nsd_tolerance_mm >= 0.0) {
            return Err(Error::Tolerance(self.nsd_tolerance_mm));
        }
        Ok(())
    }
}
