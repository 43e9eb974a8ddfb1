//! Volume readers on real files: NIfTI against nibabel, HDF5 against its NIfTI copy, the direct
//! label decoder against the f32 path.

use std::path::Path;

use duoseg_io::{h5_dataset_names, read_h5_pair, read_labels, read_volume, DataType};
use libtest_mimic::Trial;

use crate::util::with_data;

/// The UA-MT h5 copy of two LA cases, under the shared data folder.
const LA_H5_SAMPLE: &str = "la2018-h5-sample/2018LA_Seg_Training Set";

pub fn trials() -> Vec<Trial> {
    vec![
        with_data(
            "volumes::la2018_matches_nibabel",
            &["la2018"],
            la2018_matches_nibabel,
        ),
        with_data(
            "volumes::la2018_h5_matches_nifti",
            &[LA_H5_SAMPLE, "la2018"],
            la2018_h5_matches_nifti,
        ),
        with_data(
            "volumes::la2018_direct_labels_match_the_f32_path",
            &["la2018"],
            la2018_direct_labels_match_the_f32_path,
        ),
    ]
}

/// Values computed by nibabel (`tests/reference/io_nifti.py`) on real LA files.
fn la2018_matches_nibabel(data: &Path) {
    let root = data.join("la2018");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/io/la2018_nibabel.json");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases.as_array().unwrap() {
        let rel = case["file"].as_str().unwrap();
        let v = read_volume(root.join(rel)).unwrap();
        let shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).unwrap();
        assert_eq!(v.shape.to_vec(), shape, "{rel}");
        assert_eq!(v.dtype.name(), case["dtype"].as_str().unwrap());
        let spacing: Vec<f64> = serde_json::from_value(case["spacing"].clone()).unwrap();
        for a in 0..3 {
            assert!((v.spacing[a] - spacing[a]).abs() < 1e-6);
        }
        let affine: Vec<Vec<f64>> = serde_json::from_value(case["affine"].clone()).unwrap();
        for r in 0..4 {
            for c in 0..4 {
                assert!((v.affine[r][c] - affine[r][c]).abs() < 1e-5, "{rel} affine");
            }
        }
        let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
        let want_sum = case["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-6 * want_sum.abs().max(1.0) + 1e-2,
            "{rel}: sum {sum} vs {want_sum}"
        );
        for probe in case["probes"].as_array().unwrap() {
            let idx: Vec<usize> = serde_json::from_value(probe["index"].clone()).unwrap();
            let want = probe["value"].as_f64().unwrap();
            let got = v.data[(idx[0] * v.shape[1] + idx[1]) * v.shape[2] + idx[2]];
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "{rel} {idx:?}: {got} vs {want}"
            );
        }
        if rel.starts_with("labelsTr") {
            let labels = v.to_labels().unwrap();
            // The direct label path gives the same bytes (nibabel's probes checked above).
            assert_eq!(read_labels(root.join(rel), None).unwrap(), labels, "{rel}");
            let ones = labels.iter().filter(|&&l| l == 1).count();
            assert_eq!(ones as f64, want_sum, "{rel}");
        }
    }
}

/// The two LA h5 cases agree with their NIfTI copies voxel for voxel (h5py order = nibabel order).
fn la2018_h5_matches_nifti(data: &Path) {
    let h5root = data.join(LA_H5_SAMPLE);
    let nii = data.join("la2018");
    let mut cases: Vec<_> = std::fs::read_dir(&h5root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let id = case.file_name().unwrap().to_string_lossy().into_owned();
        let h5 = case.join("mri_norm2.h5");
        assert_eq!(h5_dataset_names(&h5).unwrap(), vec!["image", "label"]);
        let (img, lab) = read_h5_pair(&h5).unwrap();
        assert_eq!(img.dtype, DataType::F32);
        assert_eq!(lab.dtype, DataType::U8);
        let img_nii = read_volume(nii.join(format!("imagesTr/{id}.nii.gz"))).unwrap();
        let lab_nii = read_volume(nii.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        assert_eq!(img.shape, img_nii.shape);
        let max_diff = img
            .data
            .iter()
            .zip(&img_nii.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "{id}: max |h5 - nii| = {max_diff}");
        assert_eq!(
            lab.to_labels().unwrap(),
            lab_nii.to_labels().unwrap(),
            "{id}"
        );
        assert_eq!(read_volume(&h5).unwrap().data, img.data);
        assert_eq!(
            read_labels(&h5, Some(&img)).unwrap(),
            lab.to_labels().unwrap()
        );
    }
}

/// The direct label path agrees with decode-to-f32-then-`to_labels` on real LA labels (every
/// fourth case), geometry checked against the image as `Dataset::load` does.
fn la2018_direct_labels_match_the_f32_path(data: &Path) {
    let root = data.join("la2018");
    let mut labels: Vec<_> = std::fs::read_dir(root.join("labelsTr"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    labels.sort();
    assert!(labels.len() >= 4);
    for path in labels.iter().step_by(4) {
        let name = path.file_name().unwrap();
        let image = read_volume(root.join("imagesTr").join(name)).unwrap();
        let old = read_volume(path).unwrap();
        image.check_same_geometry(&old).unwrap();
        let direct = read_labels(path, Some(&image)).unwrap();
        assert_eq!(direct, old.to_labels().unwrap(), "{}", path.display());
        assert!(direct.contains(&1), "{}", path.display());
    }
}
