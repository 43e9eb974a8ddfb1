//! `duoseg inspect` on tiny generated volumes: text and JSON output, HDF5-free error path, exit codes.

use std::process::Command;

use duoseg_io::{write_labels, write_probabilities, Volume};

fn scratch(name: &str) -> crate::Scratch {
    crate::Scratch::new("inspect", name)
}

fn duoseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_reports_shape_stats_and_label_counts() {
    let dir = scratch("ok");
    let shape = [4, 3, 2];
    let geometry = Volume::from_data(shape, [0.5, 0.5, 2.0], vec![0.0; 24]).unwrap();
    let labels: Vec<u8> = (0..24)
        .map(|i| u8::from(i % 4 == 0) + u8::from(i % 8 == 0))
        .collect();
    let lab = dir.join("lab.nii.gz");
    write_labels(&lab, shape, &labels, &geometry).unwrap();
    let img = dir.join("img.nii");
    let probs: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    write_probabilities(&img, shape, &probs, &geometry).unwrap();

    let out = duoseg(&[
        "inspect",
        "--json",
        lab.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    assert_eq!(l["shape"], serde_json::json!([4, 3, 2]));
    assert_eq!(l["spacing"], serde_json::json!([0.5, 0.5, 2.0]));
    assert_eq!(l["dtype"], "uint8");
    assert_eq!(l["min"], 0.0);
    assert_eq!(l["max"], 2.0);
    assert_eq!(l["labels"], serde_json::json!({"0": 18, "1": 3, "2": 3}));
    let mean = (3.0 + 6.0) / 24.0;
    assert!((l["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    let i = &lines[1];
    assert_eq!(i["dtype"], "float32");
    assert_eq!(i["max"], 11.5);
    assert!(i["labels"].is_null());
    // numpy: np.arange(24) * 0.5 -> std = 3.4610932762158644
    assert!((i["std"].as_f64().unwrap() - 3.461_093_276_215_864).abs() < 1e-9);

    let out = duoseg(&["inspect", lab.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("4 x 3 x 2") && text.contains("labels   0: 18, 1: 3, 2: 3"),
        "{text}"
    );
}

#[test]
fn inspect_fails_with_one_line_and_exit_code_1() {
    let dir = scratch("bad");
    let bad = dir.join("bad.nii.gz");
    std::fs::write(&bad, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    for path in [bad, dir.join("missing.nii")] {
        let out = duoseg(&["inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }
}
