//! `duoseg plot RUN`: the figures drawn again from a run's log.jsonl.

use std::process::Command;

#[test]
fn plot_draws_the_loss_and_diagnosis_figures_from_the_log() {
    let dir = std::env::temp_dir().join(format!("duoseg-it-plot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = String::from(r#"{"event":"start","time":"2026-12-03T10:00:00.000Z","iter":0}"#);
    for i in 1..=40 {
        let v = 1.0 / f64::from(i);
        log.push_str(&format!(
            "\n{{\"event\":\"iteration\",\"time\":\"2026-12-03T10:00:01.000Z\",\"iter\":{i},\"lr\":0.01,\
             \"s_per_step\":0.5,\"samples_per_s\":6,\"total\":{v},\"ce_a\":{v},\"ce_b\":{v}"
        ));
        if i % 10 == 0 {
            log.push_str(r#","pl_reliable_fraction":0.8,"pl_precision_1":0.7,"true_share_1":0.1"#);
        }
        log.push('}');
    }
    log.push('\n');
    std::fs::write(dir.join("log.jsonl"), log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .arg("plot")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["losses.png", "diagnosis.png"] {
        let bytes = std::fs::read(dir.join("figures").join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f}");
    }
    // a folder without a log: one line, exit code 1
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .arg("plot")
        .arg(&empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no log.jsonl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
