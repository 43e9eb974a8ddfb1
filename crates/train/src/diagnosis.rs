//! How good the pseudo-labels are: the benchmark data sets (hippocampus, LA) have labels for their
//! "unlabeled" cases too, so during training the pseudo-labels of the unlabeled crops can be scored
//! against those hidden labels, to see why a semi-supervised run gains or loses (issue 25). The
//! hidden labels never reach the loss; `diagnose_every = 0` switches the scoring off.

use std::collections::BTreeMap;

/// One class's pseudo-label quality on one batch's unlabeled crops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassQuality {
    /// Among reliable voxels labeled this class, the share truly of this class (`None`: no
    /// reliable voxel got this class).
    pub precision: Option<f64>,
    /// Among reliable voxels truly of this class, the share labeled this class (`None`: no
    /// reliable voxel is of this class).
    pub recall: Option<f64>,
    /// Among all voxels truly of this class, the share that is reliable and labeled this class:
    /// how much of the class the loss learns from (`None`: the class is absent).
    pub coverage: Option<f64>,
    /// The share of the reliable voxels labeled this class (`None`: no reliable voxel).
    pub pseudo_share: Option<f64>,
    /// The share of all voxels truly of this class.
    pub true_share: f64,
}

/// Pseudo-label quality on one batch's unlabeled crops.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoLabelQuality {
    /// Per class, background first.
    pub classes: Vec<ClassQuality>,
    /// The share of voxels that are reliable.
    pub reliable_fraction: f64,
    /// The share of reliable voxels whose pseudo-label is right (`None`: no reliable voxel).
    pub accuracy_reliable: Option<f64>,
    /// The share of unreliable voxels whose pseudo-label is right (`None`: none unreliable): the
    /// entropy filter works when it is well below `accuracy_reliable`.
    pub accuracy_unreliable: Option<f64>,
}

/// Scores the pseudo-labels `pseudo` against the hidden labels `truth` (one value per voxel, the
/// same order), `reliable` marking the voxels the loss trusts. Fails on mismatched lengths, an
/// empty batch, or a value outside `0..n_classes`.
pub fn pseudo_label_quality(
    pseudo: &[u32],
    reliable: &[bool],
    truth: &[u8],
    n_classes: usize,
) -> Result<PseudoLabelQuality, String> {
    let n = pseudo.len();
    if reliable.len() != n || truth.len() != n {
        return Err(format!(
            "pseudo-labels ({n}), reliable mask ({}) and hidden labels ({}) differ in length",
            reliable.len(),
            truth.len()
        ));
    }
    if n == 0 || n_classes == 0 {
        return Err("no voxel or no class to score".into());
    }
    // counts[reliable][pseudo][truth]
    let k = n_classes;
    let mut counts = vec![0u64; 2 * k * k];
    for ((&p, &r), &t) in pseudo.iter().zip(reliable).zip(truth) {
        let (p, t) = (p as usize, usize::from(t));
        if p >= k || t >= k {
            return Err(format!(
                "label {} outside the {k} classes",
                if p >= k { p } else { t }
            ));
        }
        counts[(usize::from(r) * k + p) * k + t] += 1;
    }
    let at = |r: usize, p: usize, t: usize| counts[(r * k + p) * k + t] as f64;
    let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
    let n_reliable: f64 = (0..k)
        .flat_map(|p| (0..k).map(move |t| (p, t)))
        .map(|(p, t)| at(1, p, t))
        .sum();
    let right = |r: usize| (0..k).map(|c| at(r, c, c)).sum::<f64>();
    let classes = (0..k)
        .map(|c| {
            let labeled_c: f64 = (0..k).map(|t| at(1, c, t)).sum();
            let reliable_true_c: f64 = (0..k).map(|p| at(1, p, c)).sum();
            let all_true_c: f64 = (0..2)
                .flat_map(|r| (0..k).map(move |p| (r, p)))
                .map(|(r, p)| at(r, p, c))
                .sum();
            ClassQuality {
                precision: ratio(at(1, c, c), labeled_c),
                recall: ratio(at(1, c, c), reliable_true_c),
                coverage: ratio(at(1, c, c), all_true_c),
                pseudo_share: ratio(labeled_c, n_reliable),
                true_share: all_true_c / n as f64,
            }
        })
        .collect();
    Ok(PseudoLabelQuality {
        classes,
        reliable_fraction: n_reliable / n as f64,
        accuracy_reliable: ratio(right(1), n_reliable),
        accuracy_unreliable: ratio(right(0), n as f64 - n_reliable),
    })
}

impl PseudoLabelQuality {
    /// The log keys: `pl_reliable_fraction`, `pl_accuracy_reliable`, `pl_accuracy_unreliable` and per
    /// class `c`: `pl_precision_c`, `pl_recall_c`, `pl_coverage_c`, `pl_share_c`, `true_share_c`.
    /// Undefined values (a class absent from the batch) are left out, never NaN.
    pub fn terms(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([("pl_reliable_fraction".to_string(), self.reliable_fraction)]);
        let mut put = |key: String, v: Option<f64>| {
            if let Some(v) = v {
                m.insert(key, v);
            }
        };
        put("pl_accuracy_reliable".into(), self.accuracy_reliable);
        put("pl_accuracy_unreliable".into(), self.accuracy_unreliable);
        for (c, q) in self.classes.iter().enumerate() {
            put(format!("pl_precision_{c}"), q.precision);
            put(format!("pl_recall_{c}"), q.recall);
            put(format!("pl_coverage_{c}"), q.coverage);
            put(format!("pl_share_{c}"), q.pseudo_share);
            put(format!("true_share_{c}"), Some(q.true_share));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten voxels counted by hand.
    #[test]
    fn counts_by_hand() {
        //            0  1  2  3  4  5  6  7  8  9
        let pseudo = [0, 0, 1, 1, 1, 2, 0, 1, 2, 2];
        let truth = [0, 1, 1, 1, 0, 2, 0, 2, 1, 2];
        let rel = [
            true, true, true, true, true, true, false, false, false, false,
        ];
        let q = pseudo_label_quality(&pseudo, &rel, &truth, 3).unwrap();
        assert_eq!(q.reliable_fraction, 0.6);
        // reliable: right at 0, 2, 3, 5 of 6; unreliable: right at 6, 9 of 4
        assert_eq!(q.accuracy_reliable, Some(4.0 / 6.0));
        assert_eq!(q.accuracy_unreliable, Some(0.5));
        let c1 = q.classes[1];
        // reliable labeled 1: voxels 2, 3, 4 (2 right); reliable truly 1: 1, 2, 3; all truly 1: 1, 2, 3, 8
        assert_eq!(c1.precision, Some(2.0 / 3.0));
        assert_eq!(c1.recall, Some(2.0 / 3.0));
        assert_eq!(c1.coverage, Some(0.5));
        assert_eq!(c1.pseudo_share, Some(0.5));
        assert_eq!(c1.true_share, 0.4);
        // reliable labeled 2: voxel 5 (right); truly 2: 5, 7, 9
        let c2 = q.classes[2];
        assert_eq!(
            (c2.precision, c2.recall, c2.coverage),
            (Some(1.0), Some(1.0), Some(1.0 / 3.0))
        );
        let t = q.terms();
        assert_eq!(t["pl_precision_1"], 2.0 / 3.0);
        assert_eq!(t["true_share_0"], 0.3);
        assert!(t.values().all(|v| v.is_finite()));
    }

    /// A class absent from the batch has no precision or recall: left out of the log, not NaN.
    #[test]
    fn absent_classes_are_left_out() {
        let q = pseudo_label_quality(&[0, 0, 1], &[true, false, false], &[0, 0, 1], 3).unwrap();
        assert_eq!(q.classes[2].precision, None);
        assert_eq!(q.classes[1].precision, None, "no reliable voxel labeled 1");
        assert_eq!(q.classes[1].coverage, Some(0.0));
        let t = q.terms();
        assert!(!t.contains_key("pl_precision_2") && !t.contains_key("pl_recall_1"));
        assert_eq!(t["true_share_2"], 0.0);
        let none_reliable = pseudo_label_quality(&[1, 1], &[false, false], &[1, 0], 2).unwrap();
        assert_eq!(none_reliable.accuracy_reliable, None);
        assert_eq!(none_reliable.classes[0].pseudo_share, None);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(pseudo_label_quality(&[0, 1], &[true], &[0, 1], 2).is_err());
        assert!(pseudo_label_quality(&[], &[], &[], 2).is_err());
        assert!(pseudo_label_quality(&[0, 2], &[true, true], &[0, 1], 2).is_err());
        assert!(pseudo_label_quality(&[0, 1], &[true, true], &[0, 5], 2).is_err());
    }
}
