//! `duoseg evaluate` on tiny generated label maps: pairing by name (with `_0000`), the JSON
//! contract (sorted keys, null for undefined, summary, undefined list), and clear errors.

use std::path::Path;
use std::process::Command;

use duoseg_io::{write_labels, write_probabilities, Volume};
use duoseg_metrics::{evaluate_labels, MetricDefinition};
use serde_json::Value;

const SHAPE: [usize; 3] = [12, 10, 8];
const SPACING: [f64; 3] = [0.5, 0.75, 2.0];

fn scratch(name: &str) -> crate::Scratch {
    let dir = crate::Scratch::new("evaluate", name);
    std::fs::create_dir_all(dir.join("pred")).unwrap();
    std::fs::create_dir_all(dir.join("label")).unwrap();
    dir
}

fn duoseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(args)
        .output()
        .unwrap()
}

/// A box of `value` in a zero volume.
fn boxed(lo: [usize; 3], hi: [usize; 3], value: u8) -> Vec<u8> {
    let mut v = vec![0u8; SHAPE.iter().product()];
    for i in lo[0]..hi[0] {
        for j in lo[1]..hi[1] {
            for k in lo[2]..hi[2] {
                v[(i * SHAPE[1] + j) * SHAPE[2] + k] = value;
            }
        }
    }
    v
}

fn write(path: &Path, labels: &[u8]) {
    let like = Volume::from_data(SHAPE, SPACING, vec![0.0; labels.len()]).unwrap();
    write_labels(path, SHAPE, labels, &like).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn evaluate_pairs_by_name_and_writes_the_json_contract() {
    let dir = scratch("ok");
    let gt_a = boxed([2, 2, 1], [8, 7, 6], 1);
    let pred_a = boxed([3, 2, 1], [9, 7, 5], 1);
    let gt_b = boxed([1, 1, 1], [5, 5, 5], 1);
    let pred_b = vec![0u8; gt_b.len()];
    write(&dir.join("pred/case_a_0000.nii.gz"), &pred_a);
    write(&dir.join("label/case_a.nii.gz"), &gt_a);
    write(&dir.join("pred/case_b.nii"), &pred_b);
    write(&dir.join("label/case_b_0000.nii.gz"), &gt_b);
    // A label without prediction is skipped.
    write(&dir.join("label/case_c.nii.gz"), &gt_b);
    let json = dir.join("out/metrics.json");

    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&dir.join("pred")),
        "--label",
        s(&dir.join("label")),
        "--json",
        s(&json),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 of 3 labels"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("case_a"), "{stdout}");
    assert!(
        stdout.contains("case_b class 1: empty prediction"),
        "{stdout}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // `--json -`: the same report on standard output, the table on standard error
    let piped = duoseg(&[
        "evaluate",
        "--pred",
        s(&dir.join("pred")),
        "--label",
        s(&dir.join("label")),
        "--json",
        "-",
    ]);
    assert!(piped.status.success());
    let on_stdout: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(on_stdout, report);
    assert!(String::from_utf8_lossy(&piped.stderr).contains("case_a"));
    assert!(!dir.join("-").exists());
    let cases = report["cases"].as_object().unwrap();
    assert_eq!(cases.keys().collect::<Vec<_>>(), ["case_a", "case_b"]);
    let want = evaluate_labels(
        &pred_a,
        &gt_a,
        SHAPE,
        SPACING,
        &[1],
        &MetricDefinition::default(),
    )
    .unwrap();
    let a = &report["cases"]["case_a"]["1"];
    for (name, value) in want["1"].values() {
        assert_eq!(a[name].as_f64(), value, "{name}");
    }
    assert!(a["hd95_vox"].as_f64().unwrap() > 0.0);
    let b = &report["cases"]["case_b"]["1"];
    assert_eq!(b["dice"], 0.0);
    assert!(b["hd95_vox"].is_null() && b["asd_mm"].is_null());
    assert_eq!(b["empty"], "prediction");

    let dice = &report["summary"]["1"]["dice"];
    assert_eq!(dice["n"], 2);
    assert!((dice["mean"].as_f64().unwrap() - want["1"].dice / 2.0).abs() < 1e-15);
    let hd95 = &report["summary"]["1"]["hd95_vox"];
    assert_eq!(hd95["n"], 1);
    assert_eq!(hd95["std"], 0.0);
    assert_eq!(
        report["undefined"],
        serde_json::json!([{"case": "case_b", "class": "1", "empty": "prediction"}])
    );
    assert_eq!(report["definition"]["hausdorff"], "medpy_pooled");
    assert_eq!(report["definition"]["keep_largest_component"], false);
}

#[test]
fn evaluate_options_change_what_they_say() {
    let dir = scratch("options");
    let gt = boxed([2, 2, 2], [7, 7, 6], 1);
    let mut pred = gt.clone();
    pred[(11 * SHAPE[1] + 9) * SHAPE[2] + 7] = 1; // a stray voxel in the far corner
    let (p, l) = (dir.join("pred/x.nii.gz"), dir.join("label/x.nii.gz"));
    write(&p, &pred);
    write(&l, &gt);
    let run = |extra: &[&str]| -> Value {
        let json = dir.join("m.json");
        let mut args = vec![
            "evaluate",
            "--pred",
            s(&p),
            "--label",
            s(&l),
            "--json",
            s(&json),
        ];
        args.extend_from_slice(extra);
        let out = duoseg(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        v["cases"]["x"]["1"].clone()
    };
    let plain = run(&[]);
    assert!(plain["dice"].as_f64().unwrap() < 1.0);
    assert!(plain["hd_mm"].as_f64().unwrap() > 0.0);
    let lcc = run(&["--lcc"]);
    assert_eq!(lcc["dice"], 1.0);
    assert_eq!(lcc["hd_mm"], 0.0);
    // Spacing 1 mm: the mm values equal the voxel values.
    let unit = run(&["--spacing", "1"]);
    assert_eq!(unit["hd95_mm"], unit["hd95_vox"]);
    assert_eq!(unit["asd_mm"], plain["asd_vox"]);
}

#[test]
fn evaluate_reports_clear_errors() {
    let dir = scratch("errors");
    let gt = boxed([2, 2, 2], [7, 7, 6], 1);
    write(&dir.join("pred/lonely.nii.gz"), &gt);
    write(&dir.join("label/other.nii.gz"), &gt);
    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&dir.join("pred")),
        "--label",
        s(&dir.join("label")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no label for case lonely"), "{err}");

    // Shape mismatch.
    let small = dir.join("small.nii.gz");
    let like = Volume::from_data([4, 4, 4], SPACING, vec![0.0; 64]).unwrap();
    write_labels(&small, [4, 4, 4], &[0u8; 64], &like).unwrap();
    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&small),
        "--label",
        s(&dir.join("label/other.nii.gz")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[4, 4, 4]") && err.contains("[12, 10, 8]"),
        "{err}"
    );

    // Not a label volume.
    let probs = dir.join("probs.nii.gz");
    let like = Volume::from_data(SHAPE, SPACING, vec![0.0; gt.len()]).unwrap();
    write_probabilities(&probs, SHAPE, &vec![0.25f32; gt.len()], &like).unwrap();
    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&probs),
        "--label",
        s(&dir.join("label/other.nii.gz")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("probs.nii.gz") && err.contains("0.25"),
        "{err}"
    );
}

#[test]
fn min_dice_is_a_check_with_exit_code_1() {
    let dir = scratch("min-dice");
    let gt = boxed([2, 2, 1], [8, 7, 6], 1);
    let pred = boxed([3, 2, 1], [9, 7, 5], 1);
    write(&dir.join("pred/case.nii.gz"), &pred);
    write(&dir.join("label/case.nii.gz"), &gt);
    let dice = evaluate_labels(
        &pred,
        &gt,
        SHAPE,
        SPACING,
        &[1],
        &MetricDefinition::default(),
    )
    .unwrap()["1"]
        .dice;
    assert!(dice > 0.5 && dice < 0.9, "{dice}");
    let run = |min: &str| {
        duoseg(&[
            "evaluate",
            "--pred",
            s(&dir.join("pred")),
            "--label",
            s(&dir.join("label")),
            "--min-dice",
            min,
        ])
    };
    assert_eq!(run("0.5").status.code(), Some(0));
    let failed = run("0.9");
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("check failed: mean Dice"), "{stderr}");
    // out of [0, 1] is a usage error, not a check
    assert_eq!(run("1.5").status.code(), Some(2));
}

#[test]
fn json_output_never_replaces_a_non_regular_file() {
    let dir = scratch("json-dir");
    let gt = boxed([2, 2, 1], [8, 7, 6], 1);
    write(&dir.join("pred/case.nii.gz"), &gt);
    write(&dir.join("label/case.nii.gz"), &gt);
    let target = dir.join("a-folder.json");
    std::fs::create_dir_all(&target).unwrap();
    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&dir.join("pred")),
        "--label",
        s(&dir.join("label")),
        "--json",
        s(&target),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(target.is_dir());
}

/// `--format nnunet` writes nnU-Net v2's summary.json shape, its counts and Dice / IoU computed
/// from the voxels here, and the case with an empty prediction as Dice 0.
#[test]
fn evaluate_writes_the_nnunet_summary_shape() {
    let dir = scratch("nnunet");
    let gt_a = boxed([2, 2, 1], [8, 7, 6], 1);
    let pred_a = boxed([3, 2, 1], [9, 7, 5], 1);
    let gt_b = boxed([1, 1, 1], [5, 5, 5], 1);
    let pred_b = vec![0u8; gt_b.len()];
    write(&dir.join("pred/case_a.nii.gz"), &pred_a);
    write(&dir.join("label/case_a.nii.gz"), &gt_a);
    write(&dir.join("pred/case_b.nii.gz"), &pred_b);
    write(&dir.join("label/case_b.nii.gz"), &gt_b);
    let json = dir.join("summary.json");
    let out = duoseg(&[
        "evaluate",
        "--pred",
        s(&dir.join("pred")),
        "--label",
        s(&dir.join("label")),
        "--json",
        s(&json),
        "--format",
        "nnunet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = v["metric_per_case"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    let count = |p: &[u8], g: &[u8], want: (bool, bool)| {
        p.iter()
            .zip(g)
            .filter(|(a, b)| (**a == 1, **b == 1) == want)
            .count() as f64
    };
    let (tp, fp, fn_) = (
        count(&pred_a, &gt_a, (true, true)),
        count(&pred_a, &gt_a, (true, false)),
        count(&pred_a, &gt_a, (false, true)),
    );
    let a = &cases[0]["metrics"]["1"];
    assert!(cases[0]["prediction_file"]
        .as_str()
        .unwrap()
        .ends_with("case_a.nii.gz"));
    assert_eq!(a["TP"].as_f64(), Some(tp));
    assert_eq!(a["FP"].as_f64(), Some(fp));
    assert_eq!(a["FN"].as_f64(), Some(fn_));
    assert_eq!(a["n_pred"].as_f64(), Some(tp + fp));
    assert_eq!(a["n_ref"].as_f64(), Some(tp + fn_));
    let dice_a = 2.0 * tp / (2.0 * tp + fp + fn_);
    assert!((a["Dice"].as_f64().unwrap() - dice_a).abs() < 1e-12);
    assert!((a["IoU"].as_f64().unwrap() - tp / (tp + fp + fn_)).abs() < 1e-12);
    let b = &cases[1]["metrics"]["1"];
    assert_eq!(b["Dice"].as_f64(), Some(0.0));
    assert_eq!(b["n_pred"].as_f64(), Some(0.0));
    let mean = v["mean"]["1"]["Dice"].as_f64().unwrap();
    assert!((mean - dice_a / 2.0).abs() < 1e-12);
    assert_eq!(v["foreground_mean"]["Dice"].as_f64(), Some(mean));
    std::fs::remove_dir_all(&dir).unwrap();
}
