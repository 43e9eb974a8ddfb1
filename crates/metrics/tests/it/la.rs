//! duoseg-metrics on a real LA label (skipped when `../shared/data` is absent): the label against
//! a copy shifted by (2, -2, 0) voxels and against its erosion, in voxels and in mm (0.625 mm, from
//! the header), equal to medpy 0.5.2. The medpy numbers come from:
//!
//! ```python
//! import nibabel as nib, numpy as np, scipy.ndimage as ndi
//! from medpy.metric import binary
//! gt = np.asarray(nib.load("la2018/labelsTr/UPT6DX9IQY9JAZ7HJKA7.nii.gz").dataobj) == 1
//! shift = np.zeros_like(gt); shift[2:, :-2, :] = gt[:-2, 2:, :]
//! erosion = ndi.binary_erosion(gt, structure=ndi.generate_binary_structure(3, 1))
//! for p in (shift, erosion):
//!     for sp in (None, (0.625,) * 3):
//!         print(binary.dc(p, gt), binary.jc(p, gt), binary.hd95(p, gt, sp), binary.asd(p, gt, sp))
//! ```

use std::path::Path;

use duoseg_metrics::{evaluate_binary, MetricDefinition};

const CASE: &str = "UPT6DX9IQY9JAZ7HJKA7";

/// The label file the test reads, below the shared data folder.
pub const NEEDS: &str = "la2018/labelsTr";

/// medpy's (dc, jc, hd95, asd) for (shift, erosion) x (voxels, 0.625 mm).
const MEDPY: [[[f64; 4]; 2]; 2] = [
    [
        [
            0.9308829656328421,
            0.8707025851326552,
            2.23606797749979,
            1.0257187179498148,
        ],
        [
            0.9308829656328421,
            0.8707025851326552,
            1.3975424859373686,
            0.6410741987186342,
        ],
    ],
    [
        [0.9426092836341563, 0.8914484201959132, 1.0, 1.0],
        [0.9426092836341563, 0.8914484201959132, 0.625, 0.625],
    ],
];

pub fn la_label_matches_medpy(root: &Path) {
    let path = root.join(format!("la2018/labelsTr/{CASE}.nii.gz"));
    let volume = duoseg_io::read_volume(&path).unwrap();
    assert_eq!(volume.spacing, [0.625; 3]);
    let [n0, n1, n2] = volume.shape;
    let gt: Vec<bool> = volume
        .to_labels()
        .unwrap()
        .iter()
        .map(|&l| l == 1)
        .collect();
    let at = |i: usize, j: usize, k: usize| gt[(i * n1 + j) * n2 + k];
    let mut shift = vec![false; gt.len()];
    let mut erosion = vec![false; gt.len()];
    for i in 0..n0 {
        for j in 0..n1 {
            for k in 0..n2 {
                let v = (i * n1 + j) * n2 + k;
                shift[v] = i >= 2 && j + 2 < n1 && at(i - 2, j + 2, k);
                erosion[v] = at(i, j, k)
                    && i > 0
                    && j > 0
                    && k > 0
                    && i + 1 < n0
                    && j + 1 < n1
                    && k + 1 < n2
                    && at(i - 1, j, k)
                    && at(i + 1, j, k)
                    && at(i, j - 1, k)
                    && at(i, j + 1, k)
                    && at(i, j, k - 1)
                    && at(i, j, k + 1);
            }
        }
    }
    for (pred, want) in [(&shift, MEDPY[0]), (&erosion, MEDPY[1])] {
        for (spacing, want) in [([1.0; 3], want[0]), (volume.spacing, want[1])] {
            let m = evaluate_binary(
                pred,
                &gt,
                volume.shape,
                spacing,
                &MetricDefinition::default(),
            )
            .unwrap();
            let got = [m.dice, m.jaccard, m.hd95.unwrap(), m.asd.unwrap()];
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs(),
                    "{spacing:?}: {got:?} vs medpy {want:?}"
                );
            }
        }
    }
}
