//! Multi-class label volumes: per-class metrics in voxels and millimetres.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::binary::SurfacePair;
use crate::components::keep_largest_component;
use crate::definition::{EmptyCase, MetricDefinition};
use crate::{check_len, check_spacing, Error};

/// The metrics of one class of one case: the `duoseg evaluate --json` per-class object.
/// Undefined values are `None` (`null` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// medpy `dc`.
    pub dice: f64,
    /// medpy `jc`.
    pub jaccard: f64,
    /// medpy `hd95` in voxels (the papers' unit).
    pub hd95_vox: Option<f64>,
    /// medpy `asd` (prediction to label) in voxels.
    pub asd_vox: Option<f64>,
    /// medpy `hd95` in millimetres.
    pub hd95_mm: Option<f64>,
    /// medpy `asd` in millimetres.
    pub asd_mm: Option<f64>,
    /// medpy `assd` in millimetres.
    pub assd_mm: Option<f64>,
    /// medpy `hd` (maximum) in millimetres.
    pub hd_mm: Option<f64>,
    /// Normalised surface Dice at the definition's tolerance in millimetres.
    pub nsd: Option<f64>,
    /// Which side was empty, if any (omitted from JSON when neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<EmptyCase>,
}

impl ClassMetrics {
    /// The metric values by name, in JSON key order.
    pub fn values(&self) -> [(&'static str, Option<f64>); 9] {
        [
            ("dice", Some(self.dice)),
            ("jaccard", Some(self.jaccard)),
            ("hd95_vox", self.hd95_vox),
            ("asd_vox", self.asd_vox),
            ("hd95_mm", self.hd95_mm),
            ("asd_mm", self.asd_mm),
            ("assd_mm", self.assd_mm),
            ("hd_mm", self.hd_mm),
            ("nsd", self.nsd),
        ]
    }

    /// The mean over classes of each metric, skipping undefined values (`None` if all are).
    /// `None` for an empty list.
    pub fn mean_of(classes: &[ClassMetrics]) -> Option<ClassMetrics> {
        if classes.is_empty() {
            return None;
        }
        let mean = |get: fn(&ClassMetrics) -> Option<f64>| {
            let defined: Vec<f64> = classes.iter().filter_map(get).collect();
            (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
        };
        Some(ClassMetrics {
            dice: mean(|c| Some(c.dice)).unwrap_or(f64::NAN),
            jaccard: mean(|c| Some(c.jaccard)).unwrap_or(f64::NAN),
            hd95_vox: mean(|c| c.hd95_vox),
            asd_vox: mean(|c| c.asd_vox),
            hd95_mm: mean(|c| c.hd95_mm),
            asd_mm: mean(|c| c.asd_mm),
            assd_mm: mean(|c| c.assd_mm),
            hd_mm: mean(|c| c.hd_mm),
            nsd: mean(|c| c.nsd),
            empty: None,
        })
    }
}

/// Metrics of a binary prediction against a binary label, in voxels and in millimetres with
/// `spacing_mm`. Applies the definition's largest-component post-processing to the prediction.
pub fn evaluate_class(
    pred: &[bool],
    gt: &[bool],
    shape: [usize; 3],
    spacing_mm: [f64; 3],
    definition: &MetricDefinition,
) -> Result<ClassMetrics, Error> {
    check_spacing(spacing_mm)?;
    definition.validate()?;
    let processed;
    let pred = if definition.keep_largest_component {
        let mut mask = pred.to_vec();
        keep_largest_component(&mut mask, shape)?;
        processed = mask;
        &processed
    } else {
        pred
    };
    let pair = SurfacePair::new(pred, gt, shape)?;
    let vox = pair.metrics([1.0; 3], definition)?;
    let mm = if spacing_mm == [1.0; 3] {
        vox
    } else {
        pair.metrics(spacing_mm, definition)?
    };
    Ok(ClassMetrics {
        dice: vox.dice,
        jaccard: vox.jaccard,
        hd95_vox: vox.hd95,
        asd_vox: vox.asd,
        hd95_mm: mm.hd95,
        asd_mm: mm.asd,
        assd_mm: mm.assd,
        hd_mm: mm.hd,
        nsd: mm.nsd,
        empty: vox.empty,
    })
}

/// Per-class metrics of label volumes (C order, `shape`), keyed by the class value as a string
/// ("1"); with two or more classes also "mean", the mean over the foreground classes.
pub fn evaluate_labels(
    pred: &[u8],
    gt: &[u8],
    shape: [usize; 3],
    spacing_mm: [f64; 3],
    classes: &[u8],
    definition: &MetricDefinition,
) -> Result<BTreeMap<String, ClassMetrics>, Error> {
    check_len(pred.len(), shape)?;
    check_len(gt.len(), shape)?;
    if classes.contains(&0) {
        return Err(Error::BackgroundClass);
    }
    let mut out = BTreeMap::new();
    let mut per_class = Vec::with_capacity(classes.len());
    for &class in classes {
        let pred_mask: Vec<bool> = pred.iter().map(|&l| l == class).collect();
        let gt_mask: Vec<bool> = gt.iter().map(|&l| l == class).collect();
        let metrics = evaluate_class(&pred_mask, &gt_mask, shape, spacing_mm, definition)?;
        per_class.push(metrics);
        out.insert(class.to_string(), metrics);
    }
    if classes.len() > 1 {
        if let Some(mean) = ClassMetrics::mean_of(&per_class) {
            out.insert("mean".to_string(), mean);
        }
    }
    Ok(out)
}

/// The distinct non-zero values of `labels`, ascending.
pub fn foreground_classes(labels: &[u8]) -> Vec<u8> {
    let mut seen = [false; 256];
    for &l in labels {
        seen[l as usize] = true;
    }
    (1..=255u8).filter(|&c| seen[c as usize]).collect()
}
