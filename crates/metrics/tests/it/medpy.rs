//! duoseg-metrics against medpy 0.5.2: the golden values of SPEC.md section 4, and the cases of
//! `tests/fixtures/metrics/medpy_cases.json`, made by `tests/reference/metrics.py` (run it with
//! `pip install medpy==0.5.2 numpy scipy && python tests/reference/metrics.py`). All compared to
//! 1e-9 relative.

use std::path::PathBuf;

use duoseg_metrics::{
    evaluate_binary, evaluate_labels, EmptyCase, EmptyRule, HausdorffDefinition, MetricDefinition,
};
use serde_json::Value;

const REL: f64 = 1e-9;

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= REL * want.abs().max(1e-12),
        "{what}: got {got}, medpy {want}"
    );
}

fn cube(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<bool> {
    let mut m = vec![false; shape.iter().product()];
    for i in lo[0]..hi[0] {
        for j in lo[1]..hi[1] {
            for k in lo[2]..hi[2] {
                m[(i * shape[1] + j) * shape[2] + k] = true;
            }
        }
    }
    m
}

/// Voxel in the ball iff its squared distance to the centre is at most r^2.
fn ball(shape: [usize; 3], centre: [i64; 3], r: i64) -> Vec<bool> {
    let mut m = vec![false; shape.iter().product()];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let d = [
                    i as i64 - centre[0],
                    j as i64 - centre[1],
                    k as i64 - centre[2],
                ];
                m[(i * shape[1] + j) * shape[2] + k] =
                    d.iter().map(|x| x * x).sum::<i64>() <= r * r;
            }
        }
    }
    m
}

fn check_golden(pred: &[bool], gt: &[bool], shape: [usize; 3], spacing: [f64; 3], want: [f64; 4]) {
    let m = evaluate_binary(pred, gt, shape, spacing, &MetricDefinition::default()).unwrap();
    // SPEC.md gives 10 decimals.
    let got = [m.dice, m.jaccard, m.hd95.unwrap(), m.asd.unwrap()];
    for (name, (g, w)) in ["dc", "jc", "hd95", "asd"].iter().zip(got.iter().zip(want)) {
        assert!((g - w).abs() < 1e-10, "{name}: got {g}, SPEC {w}");
    }
}

pub fn spec_golden_shifted_cube() {
    let shape = [24; 3];
    let pred = cube(shape, [5; 3], [15; 3]);
    let gt = cube(shape, [6, 5, 5], [16, 15, 15]);
    check_golden(
        &pred,
        &gt,
        shape,
        [1.0; 3],
        [0.9, 0.8181818182, 1.0, 0.3360655738],
    );
    // With spacing 0.625 mm, HD95 is 0.625 (and ASD scales the same way, every distance is axial).
    check_golden(
        &pred,
        &gt,
        shape,
        [0.625; 3],
        [0.9, 0.8181818182, 0.625, 0.3360655738 * 0.625],
    );
}

pub fn spec_golden_spheres() {
    let shape = [24; 3];
    let pred = ball(shape, [12, 12, 12], 6);
    let gt = ball(shape, [13, 12, 11], 7);
    check_golden(
        &pred,
        &gt,
        shape,
        [1.0; 3],
        [0.7713310580, 0.6277777778, 2.2360679775, 0.9413736884],
    );
}

pub fn spec_golden_touching_the_edge() {
    let shape = [16; 3];
    let pred = cube(shape, [0; 3], [10; 3]);
    let gt = cube(shape, [0; 3], [12, 10, 10]);
    check_golden(
        &pred,
        &gt,
        shape,
        [1.0; 3],
        [0.9090909091, 0.8333333333, 2.0, 0.2049180328],
    );
}

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/metrics/medpy_cases.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shape_of(v: &Value) -> [usize; 3] {
    let s: Vec<usize> = serde_json::from_value(v.clone()).unwrap();
    [s[0], s[1], s[2]]
}

fn spacing_of(v: &Value) -> [f64; 3] {
    let s: Vec<f64> = serde_json::from_value(v.clone()).unwrap();
    [s[0], s[1], s[2]]
}

fn decode_rle(runs: &Value, n: usize) -> Vec<bool> {
    let runs: Vec<usize> = serde_json::from_value(runs.clone()).unwrap();
    let mut out = Vec::with_capacity(n);
    for (r, len) in runs.iter().enumerate() {
        out.extend(std::iter::repeat_n(r % 2 == 1, *len));
    }
    assert_eq!(out.len(), n);
    out
}

/// Compares one medpy value (null = undefined) with ours.
fn check(got: Option<f64>, want: &Value, what: &str) {
    match want.as_f64() {
        Some(w) => close(got.unwrap_or(f64::NAN), w, what),
        None => assert_eq!(got, None, "{what}: medpy undefined"),
    }
}

pub fn binary_cases_match_medpy() {
    let doc = fixture();
    let tolerance = doc["nsd_tolerance"].as_f64().unwrap();
    let cases = doc["binary"].as_array().unwrap();
    assert!(cases.len() >= 16);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let shape = shape_of(&case["shape"]);
        let n = shape.iter().product();
        let pred = decode_rle(&case["pred"], n);
        let gt = decode_rle(&case["gt"], n);
        for (unit, spacing) in [("vox", [1.0; 3]), ("mm", spacing_of(&case["spacing"]))] {
            let want = &case[unit];
            for hausdorff in [
                HausdorffDefinition::MedpyPooled,
                HausdorffDefinition::MaxOfDirected,
            ] {
                let def = MetricDefinition {
                    hausdorff,
                    nsd_tolerance_mm: tolerance,
                    ..MetricDefinition::default()
                };
                let m = evaluate_binary(&pred, &gt, shape, spacing, &def).unwrap();
                let what = |metric: &str| format!("{name} {unit} {metric}");
                if want["dc_nan"].as_bool() == Some(true) {
                    // medpy 0.5.2 returns NaN here (see the script); we report its intended 1.
                    assert_eq!(m.dice, 1.0, "{}", what("dc"));
                } else {
                    close(m.dice, want["dc"].as_f64().unwrap(), &what("dc"));
                }
                close(m.jaccard, want["jc"].as_f64().unwrap(), &what("jc"));
                let hd_key = match hausdorff {
                    HausdorffDefinition::MedpyPooled => "hd95",
                    HausdorffDefinition::MaxOfDirected => "hd95_max_directed",
                };
                check(m.hd95, &want[hd_key], &what(hd_key));
                check(m.asd, &want["asd"], &what("asd"));
                check(m.assd, &want["assd"], &what("assd"));
                check(m.hd, &want["hd"], &what("hd"));
                check(m.nsd, &want["nsd"], &what("nsd"));
            }
        }
    }
}

pub fn empty_rules() {
    let shape = [10; 3];
    let empty = vec![false; 1000];
    let cube = cube(shape, [2; 3], [5; 3]);
    let medpy = MetricDefinition::default();
    let m = evaluate_binary(&empty, &cube, shape, [1.0; 3], &medpy).unwrap();
    assert_eq!((m.dice, m.jaccard, m.hd95, m.asd), (0.0, 0.0, None, None));
    assert_eq!(m.empty, Some(EmptyCase::Prediction));
    let m = evaluate_binary(&cube, &empty, shape, [1.0; 3], &medpy).unwrap();
    assert_eq!(m.empty, Some(EmptyCase::Label));
    let m = evaluate_binary(&empty, &empty, shape, [1.0; 3], &medpy).unwrap();
    assert_eq!((m.dice, m.jaccard, m.hd95, m.nsd), (1.0, 1.0, None, None));
    assert_eq!(m.empty, Some(EmptyCase::Both));
    let reference = MetricDefinition {
        empty: EmptyRule::ReferenceZeros,
        ..medpy
    };
    for (p, g) in [(&empty, &cube), (&cube, &empty), (&empty, &empty)] {
        let m = evaluate_binary(p, g, shape, [1.0; 3], &reference).unwrap();
        assert_eq!(
            (m.dice, m.jaccard, m.hd95, m.asd),
            (0.0, 0.0, Some(0.0), Some(0.0))
        );
        assert!(m.empty.is_some());
    }
    // Non-empty masks are unaffected by the rule.
    let a = evaluate_binary(&cube, &cube, shape, [1.0; 3], &reference).unwrap();
    assert_eq!((a.dice, a.hd95, a.empty), (1.0, Some(0.0), None));
}

pub fn multiclass_case_matches_medpy() {
    let doc = fixture();
    let tolerance = doc["nsd_tolerance"].as_f64().unwrap();
    for case in doc["multiclass"].as_array().unwrap() {
        let shape = shape_of(&case["shape"]);
        let spacing = spacing_of(&case["spacing"]);
        let n = shape.iter().product();
        let classes: Vec<u8> = serde_json::from_value(case["classes"].clone()).unwrap();
        let mut pred = vec![0u8; n];
        let mut gt = vec![0u8; n];
        for &c in &classes {
            let key = c.to_string();
            for (out, src) in [
                (&mut pred, &case["pred"][&key]),
                (&mut gt, &case["gt"][&key]),
            ] {
                for (l, m) in out.iter_mut().zip(decode_rle(src, n)) {
                    if m {
                        *l = c;
                    }
                }
            }
        }
        let def = MetricDefinition {
            nsd_tolerance_mm: tolerance,
            ..MetricDefinition::default()
        };
        let got = evaluate_labels(&pred, &gt, shape, spacing, &classes, &def).unwrap();
        assert_eq!(got.len(), classes.len() + 1, "per class plus the mean");
        for &c in &classes {
            let key = c.to_string();
            let (m, want) = (&got[&key], &case["per_class"][&key]);
            let what = |metric: &str| format!("class {key} {metric}");
            close(m.dice, want["vox"]["dc"].as_f64().unwrap(), &what("dc"));
            close(m.jaccard, want["vox"]["jc"].as_f64().unwrap(), &what("jc"));
            check(m.hd95_vox, &want["vox"]["hd95"], &what("hd95_vox"));
            check(m.asd_vox, &want["vox"]["asd"], &what("asd_vox"));
            check(m.hd95_mm, &want["mm"]["hd95"], &what("hd95_mm"));
            check(m.asd_mm, &want["mm"]["asd"], &what("asd_mm"));
            check(m.assd_mm, &want["mm"]["assd"], &what("assd_mm"));
            check(m.hd_mm, &want["mm"]["hd"], &what("hd_mm"));
            check(m.nsd, &want["mm"]["nsd"], &what("nsd"));
        }
        // The mean skips the undefined class 3 for distances but not for Dice.
        let mean = &got["mean"];
        let dice: f64 = classes
            .iter()
            .map(|c| got[&c.to_string()].dice)
            .sum::<f64>()
            / 3.0;
        close(mean.dice, dice, "mean dice");
        let hd95 = (got["1"].hd95_vox.unwrap() + got["2"].hd95_vox.unwrap()) / 2.0;
        close(mean.hd95_vox.unwrap(), hd95, "mean hd95");
    }
}
