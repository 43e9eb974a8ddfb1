//! In-memory training data: cases loaded once (via `duoseg-io` or the phantom generator),
//! normalised and padded, then sampled as random crops each iteration.

use std::path::Path;
use std::sync::Arc;

pub use duoseg_io::prepared::{crop_back, pad_to_multiple};
use duoseg_io::PreparedCase;

use std::collections::BTreeSet;

use duoseg_io::dataset::LabeledSplit;

use crate::config::{ConfigError, DataConfig, LabeledCases, Split};
use crate::error::{Result, TrainError};
use crate::phantom::PhantomCase;

/// Labeled, unlabeled and test cases. The training pools are shared with the batch loader.
#[derive(Debug, Clone)]
pub struct TrainData {
    /// Labeled training cases.
    pub labeled: Arc<[PreparedCase]>,
    /// Unlabeled training cases (their labels, if any, are dropped).
    pub unlabeled: Arc<[PreparedCase]>,
    /// Test cases (with labels).
    pub test: Vec<PreparedCase>,
    /// Validation cases (with labels), carved from the labeled ones for `eval.checkpoint = best_val`
    /// ([`TrainData::carve_validation`]); empty otherwise.
    pub validation: Vec<PreparedCase>,
}

impl TrainData {
    /// Moves the last `n` labeled cases into [`TrainData::validation`] (they are then neither
    /// trained on nor tested). At least one labeled case must remain.
    pub fn carve_validation(self, n: usize) -> Result<TrainData> {
        let labeled = self.labeled.len();
        if n >= labeled {
            return Err(TrainError::Dataset(format!(
                "eval.validation_cases = {n} would leave none of the {labeled} labeled cases to train on"
            )));
        }
        let mut cases = self.labeled.to_vec();
        let validation = cases.split_off(labeled - n);
        Ok(TrainData {
            labeled: cases.into(),
            validation,
            ..self
        })
    }

    /// Checks `patch` against the training volumes (labeled and unlabeled, before padding): a patch
    /// larger than every volume along some axis is an error (every crop would be mostly padding);
    /// one larger than some volumes is a warning naming how many are padded.
    pub fn check_patch(&self, patch: [usize; 3]) -> Result<Option<String>> {
        let cases: Vec<&PreparedCase> = self.labeled.iter().chain(self.unlabeled.iter()).collect();
        if cases.is_empty() {
            return Ok(None);
        }
        for (axis, &p) in patch.iter().enumerate() {
            let largest = cases
                .iter()
                .map(|c| c.original_shape[axis])
                .max()
                .unwrap_or(0);
            if p > largest {
                return Err(TrainError::Config(ConfigError::Invalid(format!(
                    "patch {patch:?} is larger than every training volume along axis {axis} \
                     (largest {largest} voxels): every crop would be mostly padding; use a patch \
                     of at most {} there (a multiple of 16)",
                    (largest / 16).max(1) * 16
                ))));
            }
        }
        let smaller = cases
            .iter()
            .filter(|c| (0..3).any(|a| c.original_shape[a] < patch[a]))
            .count();
        Ok((smaller > 0).then(|| {
            format!(
                "warning: {smaller} of {} training volumes are smaller than the patch {patch:?} \
                 along some axis; they are padded to it",
                cases.len()
            )
        }))
    }
}

/// A file's volume prepared as `cfg` says (the label crop, normalisation, padding).
pub fn prepare(
    name: String,
    vol: duoseg_io::Volume,
    label: Option<Vec<u8>>,
    cfg: &DataConfig,
) -> Result<PreparedCase> {
    Ok(match cfg.crop_to_label {
        Some(crop) => PreparedCase::prepare_cropped(
            name,
            vol,
            label,
            cfg.normalize,
            cfg.pad_to_multiple,
            crop,
        )?,
        None => PreparedCase::prepare(name, vol, label, cfg.normalize, cfg.pad_to_multiple)?,
    })
}

/// A phantom case (already z-scored, 1 mm spacing); without `keep_label` its label is hidden.
fn from_phantom(p: PhantomCase, keep_label: bool) -> PreparedCase {
    let case = PreparedCase::in_memory(p.name, p.shape, [1.0; 3], p.image, Some(p.label));
    if keep_label {
        case
    } else {
        case.hide_label()
    }
}

/// Loads the labeled, unlabeled and test cases that `cfg` describes (`root` overrides `cfg.root`).
pub fn load(cfg: &DataConfig, root: Option<&Path>) -> Result<TrainData> {
    if let Some(s) = &cfg.synthetic {
        if let Some(r) = root {
            return Err(TrainError::Config(crate::config::ConfigError::Invalid(
                format!(
                "--data {}: this config generates synthetic phantoms (data.synthetic) and reads no \
                 folder; remove --data or data.synthetic",
                r.display()
            ),
            )));
        }
        let set = s.generate();
        return Ok(TrainData {
            validation: Vec::new(),
            labeled: set
                .labeled
                .into_iter()
                .map(|c| from_phantom(c, true))
                .collect(),
            unlabeled: set
                .unlabeled
                .into_iter()
                .map(|c| from_phantom(c, false))
                .collect(),
            test: set
                .test
                .into_iter()
                .map(|c| from_phantom(c, true))
                .collect(),
        });
    }
    let Some(root) = root.or(cfg.root.as_deref()) else {
        return Err(TrainError::Dataset(
            "no data folder: give --data DIR or data.root".into(),
        ));
    };
    let ds = duoseg_io::Dataset::open(root)?;
    let (train, test) = match &cfg.split {
        Split::Lists => match &ds.split {
            Some(s) => (s.train.clone(), s.test.clone()),
            None => {
                return Err(TrainError::Dataset(format!(
                    "{}: the dataset has no train/test lists; use a fold or holdout split",
                    root.display()
                )))
            }
        },
        Split::Fold { fold } => {
            let folds = ds.folds()?;
            let Some(f) = folds.get(*fold) else {
                return Err(TrainError::Dataset(format!(
                    "fold {fold} requested, folds.json has {}",
                    folds.len()
                )));
            };
            (f.train.clone(), f.test.clone())
        }
        Split::Holdout { test } => {
            let ids = ds.labelled_ids();
            if *test >= ids.len() {
                return Err(TrainError::Dataset(format!(
                    "holdout of {test} cases leaves no training case among the {} labelled ones",
                    ids.len()
                )));
            }
            let cut = ids.len() - test;
            (ids[..cut].to_vec(), ids[cut..].to_vec())
        }
    };
    let assigned = assign(&ds, &cfg.labeled, &train, &test)?;
    let get = |id: &String, keep_label: bool| -> Result<PreparedCase> {
        let s = ds.load(id)?;
        if keep_label && s.label.is_none() {
            return Err(TrainError::case(id, "has no label"));
        }
        // an unlabeled case's label (when it has one) still places the crop, then is hidden: kept
        // apart for the pseudo-label diagnosis, never trained on
        let case = prepare(s.id, s.image, s.label, cfg)?;
        Ok(if keep_label { case } else { case.hide_label() })
    };
    Ok(TrainData {
        validation: Vec::new(),
        labeled: assigned
            .labeled
            .iter()
            .map(|id| get(id, true))
            .collect::<Result<_>>()?,
        unlabeled: assigned
            .unlabeled
            .iter()
            .map(|id| get(id, false))
            .collect::<Result<_>>()?,
        test: test.iter().map(|id| get(id, true)).collect::<Result<_>>()?,
    })
}

/// Checks the dataset folder `cfg` names before anything trains on it (`duoseg_io::check`): any error
/// (an unreadable case, a label value outside dataset.json's labels or >= `n_classes`, a spacing that is
/// not positive) stops here, naming the case; the warnings (spacing or orientation unlike the others,
/// constant images, empty labels) are returned. Synthetic data is not checked.
pub fn check(cfg: &DataConfig, n_classes: usize, root: Option<&Path>) -> Result<Vec<String>> {
    use duoseg_io::check::{check_dataset, Severity};
    if cfg.synthetic.is_some() {
        return Ok(Vec::new());
    }
    let Some(root) = root.or(cfg.root.as_deref()) else {
        return Err(TrainError::Dataset(
            "no data folder: give --data DIR or data.root".into(),
        ));
    };
    let ds = duoseg_io::Dataset::open(root)?;
    let report = check_dataset(&ds);
    let mut errors: Vec<String> = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| match &p.case {
            Some(c) => format!("case {c}: {}", p.message),
            None => p.message.clone(),
        })
        .collect();
    for case in &report.cases {
        if let Some((&v, _)) = case
            .label_counts
            .iter()
            .find(|(&v, _)| usize::from(v) >= n_classes)
        {
            errors.push(format!(
                "case {}: label value {v} but model.n_classes is {n_classes}",
                case.id
            ));
        }
    }
    if !errors.is_empty() {
        let shown = errors
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        let more = errors.len().saturating_sub(5);
        return Err(TrainError::Dataset(format!(
            "{}: {} problem(s) (duoseg inspect {} lists them all): {shown}{}",
            root.display(),
            errors.len(),
            root.display(),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )));
    }
    Ok(report
        .problems
        .iter()
        .map(|p| match &p.case {
            Some(c) => format!("warning: case {c}: {}", p.message),
            None => format!("warning: {}", p.message),
        })
        .collect())
}

/// The case ids of a run's three roles, as `split.json` of the run folder records them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaseRoles {
    /// Training cases whose labels are used.
    pub labeled: Vec<String>,
    /// Training cases used without labels.
    pub unlabeled: Vec<String>,
    /// Held-out test cases.
    pub test: Vec<String>,
    /// Validation cases (labeled cases set aside to choose the checkpoint), when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation: Vec<String>,
}

impl TrainData {
    /// The ids of each role.
    pub fn roles(&self) -> CaseRoles {
        let names = |cases: &[PreparedCase]| cases.iter().map(|c| c.name.clone()).collect();
        CaseRoles {
            labeled: names(&self.labeled),
            unlabeled: names(&self.unlabeled),
            test: names(&self.test),
            validation: names(&self.validation),
        }
    }
}

/// Divides the training ids into labeled and unlabeled: labeled = the first N of `train` that have a
/// label (or the ids of a list file); unlabeled = the other training cases (labels dropped) followed by
/// the dataset's images without labels that no list names. Test cases must all have labels.
fn assign(
    ds: &duoseg_io::Dataset,
    labeled: &LabeledCases,
    train: &[String],
    test: &[String],
) -> Result<LabeledSplit> {
    if let Some(id) = test.iter().find(|id| !ds.is_labelled(id)) {
        return Err(TrainError::case(id, "is a test case but has no label"));
    }
    let with_label: Vec<String> = train
        .iter()
        .filter(|id| ds.is_labelled(id))
        .cloned()
        .collect();
    let chosen = match labeled {
        LabeledCases::Count(n) => {
            if *n > with_label.len() {
                return Err(TrainError::Dataset(format!(
                    "{n} labeled cases requested, the training list has {} with a label",
                    with_label.len()
                )));
            }
            with_label[..*n].to_vec()
        }
        LabeledCases::List(path) => {
            let path = if path.is_relative() && ds.root.join(path).is_file() {
                ds.root.join(path)
            } else {
                path.clone()
            };
            let ids = duoseg_io::dataset::read_list(&path)?;
            if let Some(id) = ids.iter().find(|id| !ds.is_labelled(id)) {
                return Err(TrainError::case(
                    id,
                    format!(
                        "is listed as labeled in {} but has no label",
                        path.display()
                    ),
                ));
            }
            ids
        }
    };
    let mut roles = duoseg_io::dataset::split_labeled_by_list(train, &chosen)?;
    let listed: BTreeSet<&String> = train.iter().chain(test).collect();
    roles.unlabeled.extend(
        ds.unlabelled_ids()
            .into_iter()
            .filter(|id| !listed.contains(id)),
    );
    Ok(roles)
}
