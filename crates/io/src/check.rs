//! A dataset folder checked case by case before anything trains on it: every image and label read
//! (the readers refuse truncated files, NaN and infinity, labels off the image grid), label values
//! against `dataset.json`, spacing and orientation consistent across cases. The result lists every problem (never stops at the first) for `duoseg inspect DIR`.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::dataset::{Dataset, Layout};
use crate::volume::Volume;

/// A spacing further than this (relative) from the dataset's median on some axis is a warning.
pub const SPACING_TOLERANCE: f64 = 0.10;

/// How bad a problem is: errors make a dataset unusable for training, warnings deserve a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look; training can go on.
    Warning,
    /// Training on this dataset would fail or learn from wrong data.
    Error,
}

/// One problem, naming the case it concerns (none for the dataset as a whole).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// The case id, when one case is concerned.
    pub case: Option<String>,
    /// What is wrong, with the file and value.
    pub message: String,
}

/// What one readable case looks like.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseSummary {
    /// Case id.
    pub id: String,
    /// Shape (x, y, z).
    pub shape: [usize; 3],
    /// Spacing in mm.
    pub spacing: [f64; 3],
    /// Axis codes of the voxel axes in world (RAS+) space, e.g. "RAS" or "LPS".
    pub orientation: String,
    /// Smallest, largest and mean intensity.
    pub intensity: [f64; 3],
    /// Whether the case has a label.
    pub labelled: bool,
    /// Voxel count per label value (labelled cases).
    pub label_counts: BTreeMap<u8, u64>,
}

/// The whole check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetCheck {
    /// The folder.
    pub root: String,
    /// Its layout.
    pub layout: Layout,
    /// Label names -> values from `dataset.json` (empty when it gives none).
    pub label_names: BTreeMap<String, u8>,
    /// Every case that could be read, in id order.
    pub cases: Vec<CaseSummary>,
    /// Median spacing over the cases (mm); `None` when the files store none (see `spacing_stored`).
    pub median_spacing: Option<[f64; 3]>,
    /// Whether the files store a voxel spacing: the LA `.h5` files do not (they are read as 1 mm,
    /// and training takes the spacing from the config's `data.spacing_mm`).
    pub spacing_stored: bool,
    /// Every problem found, errors first.
    pub problems: Vec<Problem>,
}

impl DatasetCheck {
    /// Number of problems of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == severity)
            .count()
    }

    /// How many cases have each orientation code.
    pub fn orientation_counts(&self) -> BTreeMap<&str, usize> {
        orientation_counts(&self.cases)
    }

    /// Labelled and unlabelled case counts.
    pub fn labelled_unlabelled(&self) -> (usize, usize) {
        let n = self.cases.iter().filter(|c| c.labelled).count();
        (n, self.cases.len() - n)
    }
}

/// The axis codes of an affine (nibabel's `aff2axcodes`): for each voxel axis, the world axis its
/// column points along most, and the direction (R/L, A/P, S/I).
pub fn orientation(affine: &[[f64; 4]; 4]) -> String {
    (0..3)
        .map(|col| {
            let (axis, v) =
                (0..3)
                    .map(|row| (row, affine[row][col]))
                    .fold((0, 0.0f64), |best, (row, v)| {
                        if v.abs() > best.1.abs() {
                            (row, v)
                        } else {
                            best
                        }
                    });
            let [pos, neg] = [['R', 'L'], ['A', 'P'], ['S', 'I']][axis];
            if v >= 0.0 {
                pos
            } else {
                neg
            }
        })
        .collect()
}

fn orientation_counts(cases: &[CaseSummary]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for c in cases {
        *counts.entry(c.orientation.as_str()).or_default() += 1;
    }
    counts
}

fn problem(severity: Severity, case: Option<&str>, message: String) -> Problem {
    Problem {
        severity,
        case: case.map(str::to_string),
        message,
    }
}

/// Reads and checks one case: its summary when readable, and its own problems.
fn check_case(
    ds: &Dataset,
    id: &str,
    allowed: &BTreeSet<u8>,
) -> (Option<CaseSummary>, Vec<Problem>) {
    let mut problems = Vec::new();
    let sample = match ds.load(id) {
        Ok(s) => s,
        Err(e) => {
            problems.push(problem(Severity::Error, Some(id), e.to_string()));
            return (None, problems);
        }
    };
    let image: &Volume = &sample.image;
    if image.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        problems.push(problem(
            Severity::Error,
            Some(id),
            format!("spacing {:?} mm is not positive and finite", image.spacing),
        ));
    }
    // a header spacing of 0 or NaN is read as 1 mm (Header::spacing): say so, it is not the scan's
    if let Some(h) = &image.nifti {
        let bad: Vec<String> = (1..4)
            .filter(|&k| !(h.pixdim[k].is_finite() && h.pixdim[k] != 0.0))
            .map(|k| format!("pixdim[{k}] = {:?}", h.pixdim[k]))
            .collect();
        if !bad.is_empty() {
            problems.push(problem(
                Severity::Error,
                Some(id),
                format!(
                    "{}: the header's voxel spacing is not positive and finite ({}); fix the header \
                     (it would be read as 1 mm)",
                    image
                        .path
                        .as_deref()
                        .map_or_else(|| id.to_string(), |p| p.display().to_string()),
                    bad.join(", ")
                ),
            ));
        }
    }
    // the readers refuse NaN and infinity, so every voxel here is finite
    let (mut lo, mut hi, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for x in &image.data {
        let x = f64::from(*x);
        lo = lo.min(x);
        hi = hi.max(x);
        sum += x;
        n += 1;
    }
    if n > 0 && lo == hi {
        problems.push(problem(
            Severity::Warning,
            Some(id),
            format!("the image is constant ({lo})"),
        ));
    }
    let mut label_counts = BTreeMap::new();
    if let Some(label) = &sample.label {
        for &v in label {
            *label_counts.entry(v).or_insert(0u64) += 1;
        }
        let unknown: Vec<u8> = label_counts
            .keys()
            .copied()
            .filter(|v| !allowed.is_empty() && !allowed.contains(v))
            .collect();
        if !unknown.is_empty() {
            problems.push(problem(
                Severity::Error,
                Some(id),
                format!(
                    "label values {unknown:?} are not among dataset.json's labels {:?}",
                    allowed
                ),
            ));
        }
        if label_counts.keys().all(|&v| v == 0) {
            problems.push(problem(
                Severity::Warning,
                Some(id),
                "the label is empty (background only)".into(),
            ));
        }
    }
    let summary = CaseSummary {
        id: id.to_string(),
        shape: image.shape,
        spacing: image.spacing,
        orientation: orientation(&image.affine),
        intensity: [lo, hi, if n > 0 { sum / n as f64 } else { f64::NAN }],
        labelled: sample.label.is_some(),
        label_counts,
    };
    (Some(summary), problems)
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

/// Checks every case of `ds` (in parallel, one case in memory per thread) and the consistency of
/// spacing and orientation across cases.
pub fn check_dataset(ds: &Dataset) -> DatasetCheck {
    let allowed: BTreeSet<u8> = ds.label_names.values().copied().collect();
    let results: Vec<(Option<CaseSummary>, Vec<Problem>)> = ds
        .ids()
        .par_iter()
        .map(|id| check_case(ds, id, &allowed))
        .collect();
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    for (summary, p) in results {
        cases.extend(summary);
        problems.extend(p);
    }
    let spacing_stored = ds.layout != Layout::H5;
    let median_spacing = (spacing_stored && !cases.is_empty())
        .then(|| std::array::from_fn(|a| median(cases.iter().map(|c| c.spacing[a]).collect())));
    if let Some(m) = median_spacing {
        for c in &cases {
            let off = (0..3).any(|a| (c.spacing[a] - m[a]).abs() > SPACING_TOLERANCE * m[a]);
            if off {
                problems.push(problem(
                    Severity::Warning,
                    Some(&c.id),
                    format!(
                        "spacing {:?} mm differs from the median {m:?} by more than {:.0} %",
                        c.spacing,
                        SPACING_TOLERANCE * 100.0
                    ),
                ));
            }
        }
    }
    let orientations = orientation_counts(&cases);
    if let Some((&usual, _)) = orientations.iter().max_by_key(|(_, n)| **n) {
        for c in cases.iter().filter(|c| c.orientation != usual) {
            problems.push(problem(
                Severity::Warning,
                Some(&c.id),
                format!(
                    "orientation {} differs from the dataset's usual {usual}",
                    c.orientation
                ),
            ));
        }
    }
    if !cases.iter().any(|c| c.labelled) {
        problems.push(problem(Severity::Error, None, "no case has a label".into()));
    }
    problems.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.case.cmp(&b.case)));
    DatasetCheck {
        root: ds.root.display().to_string(),
        layout: ds.layout,
        label_names: ds.label_names.clone(),
        cases,
        median_spacing,
        spacing_stored,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch;
    use crate::{write_labels, write_probabilities};

    #[test]
    fn orientation_codes_follow_the_affine_columns() {
        let mut a = [[0.0; 4]; 4];
        a[0][0] = 1.0;
        a[1][1] = 1.0;
        a[2][2] = 1.0;
        assert_eq!(orientation(&a), "RAS");
        a[0][0] = -0.9;
        a[1][1] = -1.0;
        assert_eq!(orientation(&a), "LPS");
        // a permuted affine: voxel axis 0 along world z
        let mut p = [[0.0; 4]; 4];
        p[2][0] = 2.0;
        p[0][1] = 1.0;
        p[1][2] = -1.0;
        assert_eq!(orientation(&p), "SRP");
    }

    #[test]
    fn h5_folders_report_no_spacing() {
        let root = scratch("check-h5");
        crate::testutil::write_h5_cases(&root, &["A1", "A2"]);
        let check = check_dataset(&Dataset::open(&root).unwrap());
        assert_eq!(check.cases.len(), 2);
        assert!(!check.spacing_stored);
        assert_eq!(
            check.median_spacing, None,
            "the 1 mm read for .h5 files is not a spacing"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_case() {
        let root = scratch("check");
        for d in ["imagesTr", "labelsTr"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("dataset.json"),
            r#"{"file_ending": ".nii.gz", "labels": {"background": 0, "organ": 1}}"#,
        )
        .unwrap();
        let shape = [4, 3, 2];
        let write = |id: &str, spacing: [f64; 3], image: Vec<f32>, label: Option<Vec<u8>>| {
            let vol = Volume::from_data(shape, spacing, image).unwrap();
            write_probabilities(
                root.join(format!("imagesTr/{id}_0000.nii.gz")),
                shape,
                &vol.data,
                &vol,
            )
            .unwrap();
            if let Some(l) = label {
                write_labels(root.join(format!("labelsTr/{id}.nii.gz")), shape, &l, &vol).unwrap();
            }
        };
        let ramp: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let organ: Vec<u8> = (0..24).map(|i| u8::from(i > 11)).collect();
        write("a", [1.0; 3], ramp.clone(), Some(organ.clone()));
        write("b", [1.0; 3], ramp.clone(), Some(organ.clone()));
        // label value 7 is not in dataset.json; spacing off by 50 %; a NaN voxel
        let mut bad = organ.clone();
        bad[3] = 7;
        write("c", [1.5, 1.0, 1.0], ramp.clone(), Some(bad));
        let mut nan = ramp.clone();
        nan[0] = f32::NAN;
        write("d", [1.0; 3], nan, None);
        // an unreadable image
        std::fs::write(root.join("imagesTr/e_0000.nii.gz"), b"not a volume").unwrap();
        // a header spacing of 0 (pixdim[2], bytes 84..88 of the header)
        write("f", [1.0; 3], ramp.clone(), Some(organ.clone()));
        let f = root.join("imagesTr/f_0000.nii.gz");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&f).unwrap()),
            &mut bytes,
        )
        .unwrap();
        bytes[84..88].copy_from_slice(&0f32.to_le_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        std::fs::write(&f, gz.finish().unwrap()).unwrap();

        let ds = Dataset::open(&root).unwrap();
        let check = check_dataset(&ds);
        // d (a NaN voxel) and e (not a volume) cannot be read
        assert_eq!(check.cases.len(), 4, "{:?}", check.problems);
        assert_eq!(check.labelled_unlabelled(), (4, 0));
        assert_eq!(check.median_spacing, Some([1.0; 3]));
        let about = |case: &str, text: &str| {
            check
                .problems
                .iter()
                .any(|p| p.case.as_deref() == Some(case) && p.message.contains(text))
        };
        assert!(about("c", "[7]"), "{:?}", check.problems);
        assert!(
            about("c", "differs from the median"),
            "{:?}",
            check.problems
        );
        assert!(about("d", "NaN"), "{:?}", check.problems);
        assert!(about("e", "e_0000.nii.gz"), "{:?}", check.problems);
        assert!(about("f", "pixdim[2] = 0.0"), "{:?}", check.problems);
        assert!(!check
            .problems
            .iter()
            .any(|p| p.case.as_deref() == Some("a")));
        assert_eq!(check.count(Severity::Error), 4);
        assert_eq!(check.count(Severity::Warning), 1);
        // errors come first
        assert_eq!(check.problems[0].severity, Severity::Error);
    }
}
