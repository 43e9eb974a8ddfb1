//! In-memory training data: cases loaded once (via `duoseg-io` or the phantom generator),
//! normalised and padded, then sampled as random crops each iteration.

use std::path::Path;
use std::sync::Arc;

pub use duoseg_io::prepared::{crop_back, pad_to_multiple};
use duoseg_io::{Dataset, PrepareOptions, PreparedCase};

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
    /// What loading decided that the user should hear (the spacing given to h5 files), one line
    /// each; the caller shows them.
    pub notes: Vec<String>,
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
                .map(|c| c.grid_extent()[axis])
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
            .filter(|c| (0..3).any(|a| c.grid_extent()[a] < patch[a]))
            .count();
        Ok((smaller > 0).then(|| {
            format!(
                "warning: {smaller} of {} training volumes are smaller than the patch {patch:?} \
                 along some axis; they are padded to it",
                cases.len()
            )
        }))
    }

    /// The spacing the nets learn at: `target` (`data.spacing`) when set, else the median of the
    /// training cases' (labeled and unlabeled) source spacings per axis (`None` without any).
    pub fn training_spacing(&self, target: Option<[f64; 3]>) -> Option<[f64; 3]> {
        if target.is_some() {
            return target;
        }
        let spacings: Vec<[f64; 3]> = self
            .labeled
            .iter()
            .chain(self.unlabeled.iter())
            .map(|c| c.source_spacing)
            .collect();
        (!spacings.is_empty())
            .then(|| std::array::from_fn(|a| median(spacings.iter().map(|s| s[a]).collect())))
    }

    /// One [`spacing_warning`] per case (training, validation and test) whose source spacing
    /// differs from the [`TrainData::training_spacing`] by more than 10 % on some axis, the first
    /// [`MAX_SPACING_WARNINGS`] of them, then how many more.
    pub fn spacing_warnings(&self, target: Option<[f64; 3]>) -> Vec<String> {
        let Some(training) = self.training_spacing(target) else {
            return Vec::new();
        };
        let mut lines: Vec<String> = self
            .labeled
            .iter()
            .chain(self.unlabeled.iter())
            .chain(&self.validation)
            .chain(&self.test)
            .filter_map(|c| spacing_warning(&c.name, c.source_spacing, training, target.is_some()))
            .collect();
        let more = lines.len().saturating_sub(MAX_SPACING_WARNINGS);
        if more > 0 {
            lines.truncate(MAX_SPACING_WARNINGS);
            lines.push(format!(
                "warning: and {more} more cases whose spacing differs from the training spacing \
                 {} mm by more than 10 %",
                mm(training)
            ));
        }
        lines
    }
}

/// [`TrainData::spacing_warnings`] names at most this many cases, then counts the others.
pub const MAX_SPACING_WARNINGS: usize = 10;

/// A spacing as `x x y x z` in mm, to 4 decimals without trailing zeros.
pub fn mm(s: [f64; 3]) -> String {
    s.map(|v| {
        let t = format!("{v:.4}");
        let t = t.trim_end_matches('0');
        t.strip_suffix('.').unwrap_or(t).to_string()
    })
    .join(" x ")
}

/// The warning for a scan whose `spacing` differs from the `training` spacing by more than
/// `duoseg_io::check::SPACING_TOLERANCE` (10 %) along some axis, naming the case and both spacings;
/// `resampled` says whether it is resampled to the training spacing (`data.spacing` is set) or
/// predicted at its own. `None` when it does not differ.
pub fn spacing_warning(
    case: &str,
    spacing: [f64; 3],
    training: [f64; 3],
    resampled: bool,
) -> Option<String> {
    let tol = duoseg_io::check::SPACING_TOLERANCE;
    spacing_differs(spacing, training).then(|| {
        format!(
            "warning: case {case}: spacing {} mm differs from the training spacing {} mm by more \
             than {:.0} %{}",
            mm(spacing),
            mm(training),
            tol * 100.0,
            if resampled {
                " (resampled to it)"
            } else {
                "; it is not resampled (data.spacing unset), so the nets see it at another scale"
            }
        )
    })
}

/// Whether `spacing` differs from `reference` by more than `duoseg_io::check::SPACING_TOLERANCE`
/// of it along some axis.
pub fn spacing_differs(spacing: [f64; 3], reference: [f64; 3]) -> bool {
    let tol = duoseg_io::check::SPACING_TOLERANCE;
    (0..3).any(|a| (spacing[a] - reference[a]).abs() > tol * reference[a])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// How `cfg` prepares a volume: the label crop, resampling to `data.spacing`, normalisation,
/// padding, in that order.
pub fn prepare_options(cfg: &DataConfig) -> PrepareOptions {
    PrepareOptions {
        normalize: cfg.normalize,
        pad_to_multiple: cfg.pad_to_multiple,
        crop_to_label: cfg.crop_to_label,
        spacing: cfg.spacing,
    }
}

/// A file's volume prepared as `cfg` says ([`prepare_options`]).
pub fn prepare(
    name: String,
    vol: duoseg_io::Volume,
    label: Option<Vec<u8>>,
    cfg: &DataConfig,
) -> Result<PreparedCase> {
    Ok(PreparedCase::prepare_with(
        name,
        vol,
        label,
        &prepare_options(cfg),
    )?)
}

/// A phantom case (already z-scored, 1 mm spacing), resampled when `spacing` is set; without
/// `keep_label` its label is hidden.
fn from_phantom(
    p: PhantomCase,
    keep_label: bool,
    spacing: Option<[f64; 3]>,
) -> Result<PreparedCase> {
    let case = match spacing {
        None => PreparedCase::in_memory(p.name, p.shape, [1.0; 3], p.image, Some(p.label)),
        Some(_) => {
            let vol = duoseg_io::Volume::from_data(p.shape, [1.0; 3], p.image)?;
            let opts = PrepareOptions {
                spacing,
                ..PrepareOptions::default()
            };
            PreparedCase::prepare_with(p.name, vol, Some(p.label), &opts)?
        }
    };
    Ok(if keep_label { case } else { case.hide_label() })
}

/// Opens the dataset folder `root` for `cfg`: files without a spacing of their own (h5) get
/// `data.spacing_mm`. Returns the note that says which spacing they got (`None` when every file
/// has its own).
pub fn open_dataset(cfg: &DataConfig, root: &Path) -> Result<(Dataset, Option<String>)> {
    let ds = Dataset::open(root)?;
    let without = ds.cases_without_spacing();
    if without == 0 {
        return Ok((ds, None));
    }
    Ok(match cfg.spacing_mm {
        Some(s) => (
            ds.with_spacing_for_h5(s)?,
            Some(format!(
                "{}: {without} h5 file(s) carry no spacing; using data.spacing_mm = {} mm",
                root.display(),
                mm(s)
            )),
        ),
        None => (
            ds,
            Some(format!(
                "warning: {}: {without} h5 file(s) carry no spacing; assuming 1 mm, so their \
                 HD95 / ASD in mm are in voxels (set data.spacing_mm; LA: 0.625)",
                root.display()
            )),
        ),
    })
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
        let phantoms = |cases: Vec<PhantomCase>, keep_label: bool| -> Result<Vec<PreparedCase>> {
            cases
                .into_iter()
                .map(|c| from_phantom(c, keep_label, cfg.spacing))
                .collect()
        };
        return Ok(TrainData {
            validation: Vec::new(),
            labeled: phantoms(set.labeled, true)?.into(),
            unlabeled: phantoms(set.unlabeled, false)?.into(),
            test: phantoms(set.test, true)?,
            notes: Vec::new(),
        });
    }
    let Some(root) = root.or(cfg.root.as_deref()) else {
        return Err(TrainError::Dataset(
            "no data folder: give --data DIR or data.root".into(),
        ));
    };
    let (ds, note) = open_dataset(cfg, root)?;
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
    // a test case that is also trained on would leak into every reported number
    let train_set: BTreeSet<&String> = train.iter().collect();
    if let Some(id) = test.iter().find(|id| train_set.contains(id)) {
        return Err(TrainError::case(
            id,
            "is both a training and a test case of the split; a case may be in one only",
        ));
    }
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
    let data = TrainData {
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
        notes: Vec::new(),
    };
    Ok(match note {
        Some(n) => TrainData {
            notes: vec![n],
            ..data
        },
        None => spacing_mm_unused(cfg, root, data),
    })
}

/// `data.spacing_mm` is for files without a spacing; for a dataset whose every file has its own,
/// a note says when their median differs from it by more than 10 % (the files' is used).
fn spacing_mm_unused(cfg: &DataConfig, root: &Path, mut data: TrainData) -> TrainData {
    let Some(given) = cfg.spacing_mm else {
        return data;
    };
    let all: Vec<&PreparedCase> = data
        .labeled
        .iter()
        .chain(data.unlabeled.iter())
        .chain(&data.test)
        .collect();
    if all.is_empty() {
        return data;
    }
    let own: [f64; 3] =
        std::array::from_fn(|a| median(all.iter().map(|c| c.source_spacing[a]).collect()));
    if spacing_differs(own, given) {
        data.notes.push(format!(
            "warning: {}: data.spacing_mm = {} mm is not used: the files carry their own spacing \
             (median {} mm)",
            root.display(),
            mm(given),
            mm(own)
        ));
    }
    data
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
    // the note on h5 spacing comes with `load`
    let (ds, _) = open_dataset(cfg, root)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, spacing: [f64; 3]) -> PreparedCase {
        PreparedCase::in_memory(name.into(), [2; 3], spacing, vec![0.0; 8], Some(vec![0; 8]))
    }

    #[test]
    fn spacing_warnings_name_the_case_and_both_spacings_past_ten_percent() {
        assert_eq!(mm([0.625, 1.0, 2.5]), "0.625 x 1 x 2.5");
        assert_eq!(mm([1.0 / 3.0, 10.0, 0.00001]), "0.3333 x 10 x 0");
        let t = [1.0, 1.0, 2.0];
        // up to 10 % is tolerated, beyond it on any one axis is not
        assert_eq!(spacing_warning("a", [1.09, 0.91, 2.19], t, false), None);
        assert!(spacing_warning("a", [1.0, 1.0, 2.21], t, false).is_some());
        let w = spacing_warning("b", [1.0, 1.0, 2.5], t, true).unwrap();
        assert_eq!(
            w,
            "warning: case b: spacing 1 x 1 x 2.5 mm differs from the training spacing \
             1 x 1 x 2 mm by more than 10 % (resampled to it)"
        );
        let w = spacing_warning("c", [0.8, 1.0, 2.0], t, false).unwrap();
        assert!(w.contains("case c") && w.contains("not resampled"), "{w}");

        // the training spacing: data.spacing, else the median of the training cases
        let mut data = TrainData {
            labeled: vec![case("l1", [1.0; 3]), case("l2", [1.0, 1.0, 3.0])].into(),
            unlabeled: vec![case("u1", [1.0, 1.0, 1.2])].into(),
            test: vec![case("t1", [1.5, 1.0, 1.0])],
            validation: Vec::new(),
            notes: Vec::new(),
        };
        assert_eq!(data.training_spacing(None), Some([1.0, 1.0, 1.2]));
        assert_eq!(data.training_spacing(Some(t)), Some(t));
        let names = |lines: Vec<String>| -> Vec<String> {
            lines
                .iter()
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
                .collect()
        };
        assert_eq!(
            names(data.spacing_warnings(None)),
            ["case l1", "case l2", "case t1"]
        );
        assert_eq!(
            names(data.spacing_warnings(Some([1.0; 3]))),
            ["case l2", "case u1", "case t1"]
        );
        // many cases: the first ten named, then a count
        data.test = (0..14).map(|i| case(&format!("t{i}"), [3.0; 3])).collect();
        let lines = data.spacing_warnings(Some([1.0; 3]));
        assert_eq!(lines.len(), MAX_SPACING_WARNINGS + 1);
        assert!(
            lines[MAX_SPACING_WARNINGS].contains("and 6 more"),
            "{lines:?}"
        );
        let empty = TrainData {
            labeled: Vec::new().into(),
            unlabeled: Vec::new().into(),
            test: data.test.clone(),
            validation: Vec::new(),
            notes: Vec::new(),
        };
        assert!(empty.spacing_warnings(None).is_empty());
    }
}
