//! The real datasets open with their layouts, sizes and splits (one trial per dataset, so that each
//! is reported ignored on its own when its folder is absent).

use std::path::Path;

use duoseg_io::dataset::{read_list, split_labeled_by_count};
use duoseg_io::{load_cases, Dataset, Layout};
use libtest_mimic::Trial;

use crate::util::with_data;

pub fn trials() -> Vec<Trial> {
    vec![
        with_data(
            "datasets::la2018_opens_with_its_split",
            &["la2018"],
            la2018_opens_with_its_split,
        ),
        with_data(
            "datasets::la2018_h5_sample_opens_with_its_split",
            &["la2018-h5-sample"],
            la2018_h5_sample_opens_with_its_split,
        ),
        with_data(
            "datasets::la2018_h5_cases_take_the_nifti_spacing_when_told",
            &["la2018-h5-sample", "la2018"],
            la2018_h5_cases_take_the_nifti_spacing_when_told,
        ),
        with_data(
            "datasets::hippocampus_opens_and_every_pair_decodes",
            &["hippocampus"],
            hippocampus_opens_and_every_pair_decodes,
        ),
    ]
}

/// LA 2018 (MSD layout): 100 cases, the 80 / 20 split of `train.list` / `test.list` as fold 0 of
/// `folds.json`, 16 labeled cases leave 64 unlabeled, a test case loads with its label.
fn la2018_opens_with_its_split(data: &Path) {
    let root = data.join("la2018");
    let ds = Dataset::open(&root).unwrap();
    assert_eq!((ds.layout, ds.cases.len()), (Layout::Msd, 100));
    let split = ds.split.clone().unwrap();
    assert_eq!((split.train.len(), split.test.len()), (80, 20));
    assert_eq!(split.train, read_list(root.join("train.list")).unwrap());
    let folds = ds.folds().unwrap();
    assert_eq!(folds.len(), 5);
    assert_eq!(folds[0], split);
    let lab = split_labeled_by_count(&split.train, 16).unwrap();
    assert_eq!(lab.unlabeled.len(), 64);
    let s = ds.load(&split.test[0]).unwrap();
    assert_eq!(s.label.unwrap().len(), s.image.len());
}

/// The UA-MT h5 sample: two cases and a split.
fn la2018_h5_sample_opens_with_its_split(data: &Path) {
    let root = data.join("la2018-h5-sample");
    let ds = Dataset::open(&root).unwrap();
    assert_eq!((ds.layout, ds.cases.len()), (Layout::H5, 2));
    assert!(ds.split.is_some());
}

/// The h5 files carry no spacing (1 mm); the same cases as NIfTI say 0.625 mm isotropic (the
/// challenge's, as `configs/la.json`'s `data.spacing_mm`): told so, the h5 volumes have the NIfTI
/// cases' shape and spacing.
fn la2018_h5_cases_take_the_nifti_spacing_when_told(data: &Path) {
    let h5 = Dataset::open(data.join("la2018-h5-sample")).unwrap();
    let nifti = Dataset::open(data.join("la2018")).unwrap();
    assert_eq!(h5.cases_without_spacing(), 2);
    assert_eq!(nifti.cases_without_spacing(), 0);
    let told = h5.clone().with_spacing_for_h5([0.625; 3]).unwrap();
    for id in h5.ids() {
        let plain = h5.load(&id).unwrap();
        assert_eq!(plain.image.spacing, [1.0; 3]);
        let s = told.load(&id).unwrap();
        let n = nifti.load(&id).unwrap();
        assert_eq!(s.image.shape, n.image.shape, "{id}");
        assert_eq!(s.image.spacing, [0.625; 3], "{id}");
        for a in 0..3 {
            assert!(
                (n.image.spacing[a] - 0.625).abs() < 1e-6,
                "{id}: {:?}",
                n.image.spacing
            );
        }
        assert_eq!(s.label, n.label, "{id}");
    }
}

/// MSD hippocampus: 208 cases, label names read.
fn hippocampus_opens_and_every_pair_decodes(data: &Path) {
    let root = data.join("hippocampus");
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.cases.len(), 208);
    assert_eq!(ds.label_names["posterior"], 2);
    // Every pair decodes, shares one geometry and has labels in {0, 1, 2}.
    let samples = load_cases(&ds, &ds.ids()).unwrap();
    assert!(samples
        .iter()
        .all(|s| s.label.as_ref().unwrap().iter().all(|&l| l <= 2)));
}
