//! The training loop end to end on tiny synthetic data (CPU): a few iterations with every output of the
//! run folder, exact resume, the NaN stop, checkpoint reload, and the CLI's error handling.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use duoseg_train::checkpoint;
use duoseg_train::config::TrainConfig;
use duoseg_train::data::{self, TrainData};
use duoseg_train::run::{read_log, RunDir};
use duoseg_train::{Finish, Nets, RunOutcome, Silent, TrainOptions};

pub(crate) fn tiny_config(iterations: usize, dropout: bool) -> TrainConfig {
    let json = serde_json::json!({
        "name": "tiny",
        "data": {
            "synthetic": { "shape": [20, 18, 16], "labeled": 2, "unlabeled": 2, "test": 1, "seed": 5, "noise": 0.2 },
            "split": "lists",
            "labeled": 2
        },
        "model": { "n_classes": 2, "base_width": 2, "dropout": dropout },
        "patch": [16, 16, 16],
        "iterations": iterations,
        "optim": { "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001, "lr_step": 2, "lr_decay": 0.1 },
        "seed": 11,
        "eval": { "stride": [8, 8, 8], "sw_batch": 2, "figure_cases": 1 },
        "checkpoint": { "every": 2, "keep_last": 1 }
    });
    let cfg: TrainConfig = serde_json::from_value(json).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Asserts that two run folders hold the same final model (every tensor bit for bit, the same
/// metadata) and the same logged loss terms; returns the tensor names.
pub(crate) fn assert_same_final_model(a: &Path, b: &Path) -> Vec<String> {
    let dev = candle_core::Device::Cpu;
    let (ta, ma) = checkpoint::load(&a.join("final.safetensors"), &dev).unwrap();
    let (tb, mb) = checkpoint::load(&b.join("final.safetensors"), &dev).unwrap();
    assert_eq!(ma, mb);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let values = |t: &candle_core::Tensor| -> Vec<f32> {
        t.flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for (k, t) in &ta {
        assert_eq!(values(t), values(&tb[k]), "{k} differs");
    }
    let terms = |dir: &Path| -> Vec<_> {
        read_log(&dir.join("log.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| (r.iter, r.terms))
            .collect()
    };
    assert_eq!(terms(a), terms(b));
    ta.keys().cloned().collect()
}

pub(crate) fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duoseg-it-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts<'a>(dir: &Path, resume: bool, stop: bool, observer: &'a mut Silent) -> TrainOptions<'a> {
    TrainOptions {
        run: RunDir::create(dir).unwrap(),
        device: candle_core::Device::Cpu,
        resume,
        overwrite: false,
        stop: Arc::new(AtomicBool::new(stop)),
        observer,
    }
}

/// Runs a `duoseg` command and fails the test with its stderr unless it succeeds.
fn duoseg_ok(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn train_writes_the_whole_run_folder() {
    let cfg = tiny_config(3, true);
    let dir = tmp("full");
    let outcome =
        duoseg_train::run_training(&cfg, None, opts(&dir, false, false, &mut Silent)).unwrap();
    let RunOutcome::Evaluated(report) = outcome else {
        panic!("not evaluated: {outcome:?}");
    };
    assert_eq!(report.cases.len(), 1);
    for f in [
        "config.json",
        "log.jsonl",
        "final.safetensors",
        "summary.json",
        "summary.md",
        "figures/losses.png",
        "figures/phantom_004.png",
        "predictions/phantom_004.nii.gz",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let log = read_log(&dir.join("log.jsonl")).unwrap();
    assert_eq!(
        log.iter().map(|r| r.iter).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for key in [
        "total",
        "ce_a",
        "dice_b",
        "unsup",
        "reg",
        "pull_a",
        "push_b",
        "alpha",
        "threshold",
        "lambda_u",
        "lambda_c",
        "teacher_is_a",
        "reliable_fraction",
        "n_disagree",
    ] {
        assert!(
            log[0].terms.contains_key(key),
            "log lacks {key}: {:?}",
            log[0].terms.keys()
        );
    }
    assert!(
        (log[2].lr - 0.001).abs() < 1e-12,
        "step decay at iteration 3"
    );
    // the events around the iterations: start, checkpoints, the evaluation at the end
    let events: Vec<(String, u64)> = std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] != "iteration")
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["iter"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events.first(),
        Some(&("start".to_string(), 0)),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&("evaluation".to_string(), 3)),
        "{events:?}"
    );
    assert!(
        events.contains(&("checkpoint".to_string(), 3)),
        "{events:?}"
    );
    // keep_last = 1: only the newest iteration checkpoint remains
    let left: Vec<usize> = checkpoint::list(&dir.join("checkpoints"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(left, vec![3]);
    // the final weights reload with their config
    let (back, nets) =
        Nets::load(&dir.join("final.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(back, cfg);
    let saved: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved, cfg);
    // `duoseg infer` on the test image reproduces the evaluation's prediction file; the input's
    // nnU-Net channel suffix `_0000` is not part of the prediction's name
    let test = data::load(&cfg.data, None).unwrap().test.remove(0);
    let img = duoseg_io::Volume::from_data(test.shape, test.spacing, test.image.clone()).unwrap();
    let input = dir.join("input").join("phantom_004_0000.nii.gz");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    duoseg_io::write_probabilities(&input, test.shape, &test.image, &img).unwrap();
    duoseg_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
            .arg("infer")
            .arg("--checkpoint")
            .arg(dir.join("final.safetensors"))
            .arg("--input")
            .arg(input.parent().unwrap())
            .arg("--out")
            .arg(dir.join("infer"))
            .arg("--probs"),
    );
    let a = duoseg_io::read_volume(dir.join("infer/phantom_004.nii.gz")).unwrap();
    let b = duoseg_io::read_volume(dir.join("predictions/phantom_004.nii.gz")).unwrap();
    assert_eq!(a.shape, test.shape);
    assert_eq!(a.data, b.data);
    // `--probs`: one 4-D file per case in its own folder, whose channels sum to 1
    let probs = dir.join("infer/probabilities/phantom_004.nii.gz");
    let bytes = duoseg_io::fs::gunzip(&std::fs::read(&probs).unwrap(), &probs).unwrap();
    let header = duoseg_io::NiftiHeader::parse(&bytes, &probs).unwrap();
    assert_eq!(header.dim[0], 4);
    assert_eq!(header.dim[4] as usize, cfg.model.n_classes);
    let values: Vec<f32> = bytes[header.vox_offset as usize..]
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n: usize = test.shape.iter().product();
    assert_eq!(values.len(), n * cfg.model.n_classes);
    for v in 0..n {
        let sum: f32 = (0..cfg.model.n_classes).map(|k| values[k * n + v]).sum();
        assert!((sum - 1.0).abs() < 1e-4, "voxel {v}: channels sum to {sum}");
    }
    // `duoseg evaluate --run` scores the final model again: the same report as summary.json, and with
    // `--nets a` the same as evaluating net A alone in process
    let evaluate_run = |nets: &[&str], json: &Path| {
        duoseg_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
                .arg("evaluate")
                .arg("--run")
                .arg(&dir)
                .args(nets)
                .arg("--json")
                .arg(json),
        );
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    // summary.json also says which model was scored
    let model = summary.as_object_mut().unwrap().remove("model").unwrap();
    assert_eq!(
        model,
        serde_json::json!({"checkpoint": "last", "iteration": 3})
    );
    assert_eq!(evaluate_run(&[], &dir.join("again.json")), summary);
    let net_a = evaluate_run(&["--nets", "a"], &dir.join("summary-a.json"));
    let mut cfg_a = cfg.clone();
    cfg_a.eval.nets = duoseg_train::config::EvalNets::A;
    let test_cases = data::load(&cfg.data, None).unwrap().test;
    let (report_a, _) = duoseg_train::evaluate(
        &cfg_a,
        &nets,
        &test_cases,
        &candle_core::Device::Cpu,
        &mut Silent,
        &AtomicBool::new(false),
    )
    .unwrap()
    .unwrap();
    // both sides through JSON text: serde_json's float parsing is not always exact to the last bit
    let text_a = serde_json::to_string(&report_a).unwrap();
    assert_eq!(
        net_a,
        serde_json::from_str::<serde_json::Value>(&text_a).unwrap()
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["evaluate", "--run"])
        .arg(dir.join("no-such-run"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no-such-run"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    // dropout on: its masks are seeded per iteration, so they are part of what must reproduce
    resume_matches(&tiny_config(4, true), "plain");
}

#[test]
fn resume_reproduces_the_run_with_ema_teachers() {
    // the smoothed teachers are part of the checkpoint
    let mut cfg = tiny_config(4, true);
    cfg.ema_teacher = Some(0.9);
    resume_matches(&cfg, "ema");
}

#[test]
fn copy_paste_and_per_class_reliability_train_reproducibly_and_change_the_run() {
    // the pasted cuboids come from the iteration's own stream: resuming reproduces them
    let mut cfg = tiny_config(4, true);
    cfg.copy_paste = Some(0.5);
    cfg.loss = serde_json::from_value(serde_json::json!({ "reliability": "per_class" })).unwrap();
    cfg.diagnose_every = 1;
    resume_matches(&cfg, "paste");
    // and they change what is learned
    let data: TrainData = data::load(&cfg.data, None).unwrap();
    let (a, b) = (tmp("paste-on"), tmp("paste-off"));
    duoseg_train::train(&cfg, &data, opts(&a, false, false, &mut Silent)).unwrap();
    let mut plain = cfg.clone();
    plain.copy_paste = None;
    duoseg_train::train(&plain, &data, opts(&b, false, false, &mut Silent)).unwrap();
    let (la, lb) = (
        read_log(&a.join("log.jsonl")).unwrap(),
        read_log(&b.join("log.jsonl")).unwrap(),
    );
    assert_ne!(la[0].terms["unsup"], lb[0].terms["unsup"]);
    // pasted voxels are reliable, so more are reliable than without pasting
    let (ra, rb) = (
        la[0].terms["reliable_fraction"],
        lb[0].terms["reliable_fraction"],
    );
    assert!(ra >= rb, "reliable {ra} with pasting, {rb} without");
    assert!(la
        .iter()
        .all(|r| r.terms.contains_key("pl_reliable_fraction")));
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
    // a comparison method does not read it; shares outside (0, 1] are refused
    let mut mt = tiny_config(4, true);
    mt.method = duoseg_train::config::Method::MeanTeacher;
    mt.copy_paste = Some(0.5);
    assert!(mt
        .validate()
        .unwrap_err()
        .to_string()
        .contains("copy_paste"));
    for bad in [0.0, 1.5, f64::NAN] {
        let mut c = tiny_config(4, true);
        c.copy_paste = Some(bad);
        assert!(c.validate().is_err(), "copy_paste {bad} accepted");
    }
}

#[test]
fn a_strong_view_for_the_students_trains_reproducibly_and_needs_ema_teachers() {
    let mut cfg = tiny_config(4, true);
    cfg.ema_teacher = Some(0.9);
    cfg.strong_view = Some(duoseg_train::config::StrongView::default());
    cfg.validate().unwrap();
    resume_matches(&cfg, "strong");
    let mut no_ema = cfg.clone();
    no_ema.ema_teacher = None;
    assert!(no_ema
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ema_teacher"));
    let mut bad = cfg.clone();
    bad.strong_view = Some(duoseg_train::config::StrongView {
        contrast: 1.0,
        ..Default::default()
    });
    assert!(bad.validate().is_err());
}

/// The pseudo-label diagnosis scores the unlabeled crops against their hidden labels on its
/// iterations only, and changes nothing the run learns: the same weights, the same loss terms.
#[test]
fn pseudo_label_diagnosis_is_logged_and_changes_nothing() {
    let mut off = tiny_config(4, true);
    off.diagnose_every = 0;
    let mut on = off.clone();
    on.diagnose_every = 2;
    let data: TrainData = data::load(&off.data, None).unwrap();
    assert!(data
        .unlabeled
        .iter()
        .all(|c| c.hidden_label.is_some() && c.label.is_none()));
    let (a, b) = (tmp("diag-off"), tmp("diag-on"));
    duoseg_train::train(&off, &data, opts(&a, false, false, &mut Silent)).unwrap();
    duoseg_train::train(&on, &data, opts(&b, false, false, &mut Silent)).unwrap();
    let dev = candle_core::Device::Cpu;
    let (ta, _) = checkpoint::load(&a.join("final.safetensors"), &dev).unwrap();
    let (tb, _) = checkpoint::load(&b.join("final.safetensors"), &dev).unwrap();
    for (k, t) in &ta {
        let f64s = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
        let diff = (f64s(t) - f64s(&tb[k]))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0, "{k} differs");
    }
    let (la, lb) = (
        read_log(&a.join("log.jsonl")).unwrap(),
        read_log(&b.join("log.jsonl")).unwrap(),
    );
    for (ra, rb) in la.iter().zip(&lb) {
        let diag: Vec<&String> = rb
            .terms
            .keys()
            .filter(|k| !ra.terms.contains_key(*k))
            .collect();
        assert!(!ra.terms.keys().any(|k| k.starts_with("pl_")));
        if rb.iter % 2 == 0 {
            for key in [
                "pl_precision_0",
                "pl_recall_1",
                "pl_coverage_1",
                "pl_accuracy_reliable",
                "pl_disagree_fraction",
                "true_share_1",
            ] {
                assert!(
                    rb.terms.contains_key(key),
                    "iteration {}: no {key} in {diag:?}",
                    rb.iter
                );
            }
            // precision is left out while no reliable voxel is labeled 1 (an untrained net)
            for (key, v) in rb.terms.iter().filter(|(k, _)| k.starts_with("pl_")) {
                assert!((0.0..=1.0).contains(v), "{key} = {v}");
            }
            assert!(
                (rb.terms["pl_reliable_fraction"] - rb.terms["reliable_fraction"]).abs() < 1e-12
            );
        } else {
            assert!(diag.is_empty(), "iteration {}: {diag:?}", rb.iter);
        }
        let same: std::collections::BTreeMap<_, _> = rb
            .terms
            .iter()
            .filter(|(k, _)| ra.terms.contains_key(*k))
            .collect();
        assert_eq!(same, ra.terms.iter().collect(), "iteration {}", rb.iter);
    }
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Trains `cfg` straight through and with an interruption after iteration 1 plus `--resume`; the final
/// weights and every logged term must be identical.
fn resume_matches(cfg: &TrainConfig, tag: &str) {
    let cfg = cfg.clone();
    let data: TrainData = data::load(&cfg.data, None).unwrap();
    let a = tmp(&format!("resume-{tag}-a"));
    assert_eq!(
        duoseg_train::train(&cfg, &data, opts(&a, false, false, &mut Silent)).unwrap(),
        Finish::Completed
    );
    let b = tmp(&format!("resume-{tag}-b"));
    // a stop request is honoured after the first iteration, with a checkpoint
    assert_eq!(
        duoseg_train::train(&cfg, &data, opts(&b, false, true, &mut Silent)).unwrap(),
        Finish::Interrupted(1)
    );
    assert!(!b.join("final.safetensors").exists());
    assert_eq!(
        duoseg_train::train(&cfg, &data, opts(&b, true, false, &mut Silent)).unwrap(),
        Finish::Completed
    );
    let ta = assert_same_final_model(&a, &b);
    let has_ema =
        ta.iter().any(|k| k.starts_with("ema_a.")) && ta.iter().any(|k| k.starts_with("ema_b."));
    assert_eq!(
        has_ema,
        cfg.ema_teacher.is_some(),
        "EMA copies in the checkpoint"
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn non_finite_loss_or_state_stops_naming_iteration_and_what_and_keeps_only_finite_checkpoints() {
    // diverging learning rates: 1e30 overflows at once, 1e3 (the issue's case) after a few updates,
    // where the batch-norm running statistics went infinite while the loss stayed finite
    for (lr, tag) in [(1e30, "nan-1e30"), (1e3, "nan-1e3")] {
        let mut cfg = tiny_config(12, false);
        cfg.optim.lr = lr;
        cfg.checkpoint.every = 1;
        cfg.checkpoint.keep_last = 0;
        let data = data::load(&cfg.data, None).unwrap();
        let dir = tmp(tag);
        let err = match duoseg_train::train(&cfg, &data, opts(&dir, false, false, &mut Silent)) {
            Err(e) => e.to_string(),
            Ok(finish) => {
                // a run that ends leaves a finite model (Nets::load refuses any other)
                assert_eq!(finish, Finish::Completed, "{tag}");
                assert!(lr < 1e30, "lr {lr} cannot train");
                Nets::load(&dir.join("final.safetensors"), &candle_core::Device::Cpu).unwrap();
                std::fs::remove_dir_all(&dir).unwrap();
                continue;
            }
        };
        // "non-finite loss at iteration N: term = v; ..." or "non-finite state at iteration N: tensor ..."
        let rest = err
            .strip_prefix("non-finite loss at iteration ")
            .or_else(|| err.strip_prefix("non-finite state at iteration "))
            .unwrap_or_else(|| panic!("{err}"));
        let it: usize = rest.split(':').next().unwrap().parse().unwrap();
        let what = rest.split(": ").nth(1).unwrap().split(' ').next().unwrap();
        assert!(!what.is_empty(), "{err}");
        let ckpts = checkpoint::list(&dir.join("checkpoints"));
        assert_eq!(ckpts.len(), it - 1, "{err}");
        match ckpts.last() {
            Some((n, path)) => {
                assert!(
                    err.contains(&format!("the last good checkpoint is iteration {n}")),
                    "{err}"
                );
                // "last good" is true: every tensor of it is finite, and it loads
                let (tensors, _) = checkpoint::load(path, &candle_core::Device::Cpu).unwrap();
                assert_eq!(
                    duoseg_train::nets::first_non_finite(&tensors).unwrap(),
                    None
                );
                Nets::load(path, &candle_core::Device::Cpu).unwrap();
            }
            None => assert!(err.contains("no checkpoint was written"), "{err}"),
        }
        assert!(!dir.join("final.safetensors").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_non_finite_checkpoint_is_refused() {
    let cfg = tiny_config(2, false);
    let nets = Nets::build(
        &cfg.model,
        cfg.method.networks(),
        &candle_core::Device::Cpu,
        1,
    )
    .unwrap();
    let mut tensors = nets
        .tensors([checkpoint::NET_A, checkpoint::NET_B])
        .unwrap();
    let key = "net_b.stem.1.running_var".to_string();
    let t = &tensors[&key];
    let inf = (t.ones_like().unwrap() * f64::INFINITY).unwrap();
    tensors.insert(key, inf);
    let dir = tmp("inf-ckpt");
    let path = dir.join("bad.safetensors");
    let meta = checkpoint::CheckpointMeta {
        iteration: 2,
        seed: cfg.seed,
        config: serde_json::to_value(&cfg).unwrap(),
        state: serde_json::json!({}),
        spacing: None,
    };
    checkpoint::save(&path, &tensors, &meta).unwrap();
    let err = Nets::load(&path, &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("net_b.stem.1.running_var") && err.contains("NaN or infinity"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["infer", "--checkpoint"])
        .arg(&path)
        .arg("--input")
        .arg(&dir)
        .arg("--out")
        .arg(dir.join("pred"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_train_reports_errors_in_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["train", "--config", "/nonexistent/config.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/config.json"), "{err}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["train", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

/// An nnU-Net v2 folder of phantoms: 3 labelled cases (imagesTr + labelsTr), one image in imagesTr
/// without a label and one in imagesUnlabeled/.
fn nnunet_folder(dir: &Path) {
    let set = duoseg_train::phantom::PhantomConfig {
        shape: [20, 18, 16],
        labeled: 5,
        unlabeled: 0,
        test: 0,
        seed: 9,
        noise: 0.2,
    }
    .generate();
    for d in ["imagesTr", "labelsTr", "imagesUnlabeled"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"file_ending": ".nii.gz", "labels": {"background": 0, "organ": 1}}"#,
    )
    .unwrap();
    for (i, c) in set.labeled.iter().enumerate() {
        let vol = duoseg_io::Volume::from_data(c.shape, [1.0; 3], c.image.clone()).unwrap();
        let (image, label) = match i {
            0..=2 => (format!("imagesTr/c{i}_0000.nii.gz"), true),
            3 => ("imagesTr/u3_0000.nii.gz".to_string(), false),
            _ => ("imagesUnlabeled/u4.nii.gz".to_string(), false),
        };
        duoseg_io::write_probabilities(dir.join(image), c.shape, &c.image, &vol).unwrap();
        if label {
            let p = dir.join(format!("labelsTr/c{i}.nii.gz"));
            duoseg_io::write_labels(p, c.shape, &c.label, &vol).unwrap();
        }
    }
}

/// [`nnunet_folder`] at `root` and a two-iteration config reading it: one labeled case, one test
/// case, the rest unlabeled.
fn nnunet_config(root: &Path) -> TrainConfig {
    nnunet_folder(root);
    let mut cfg = tiny_config(2, false);
    cfg.data.synthetic = None;
    cfg.data.root = Some(root.to_path_buf());
    cfg.data.split = duoseg_train::config::Split::Holdout { test: 1 };
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(1);
    cfg
}

/// An nnU-Net folder of phantoms written with `spacing` and an affine with a flip and an origin:
/// three labelled cases (the last, `c2`, with `test_spacing`), one image without a label.
fn nnunet_folder_at(dir: &Path, spacing: [f64; 3], test_spacing: [f64; 3]) {
    let set = duoseg_train::phantom::PhantomConfig {
        shape: [20, 18, 16],
        labeled: 4,
        unlabeled: 0,
        test: 0,
        seed: 9,
        noise: 0.2,
    }
    .generate();
    for d in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"file_ending": ".nii.gz", "labels": {"background": 0, "organ": 1}}"#,
    )
    .unwrap();
    for (i, c) in set.labeled.iter().enumerate() {
        let s = if i == 2 { test_spacing } else { spacing };
        let mut vol = duoseg_io::Volume::from_data(c.shape, s, c.image.clone()).unwrap();
        vol.affine = [
            [-s[0], 0.0, 0.0, 12.5],
            [0.0, s[1], 0.0, -7.0],
            [0.0, 0.0, s[2], 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let image = if i < 3 {
            format!("imagesTr/c{i}_0000.nii.gz")
        } else {
            format!("imagesTr/u{i}_0000.nii.gz")
        };
        duoseg_io::write_probabilities(dir.join(image), c.shape, &c.image, &vol).unwrap();
        if i < 3 {
            let p = dir.join(format!("labelsTr/c{i}.nii.gz"));
            duoseg_io::write_labels(p, c.shape, &c.label, &vol).unwrap();
        }
    }
}

/// `data.spacing`: every case is resampled to it (here 1.6 mm and 2 mm in-plane up to 1 mm), the
/// run trains and evaluates; predictions come back in each source file's shape and geometry (the
/// file's affine, flip and origin included), the metrics are those of that prediction against the
/// label as read, with the file's spacing; a scan more than 10 % off the training spacing is
/// named; `duoseg infer` does the same for a new scan, and the checkpoint records the spacing.
#[test]
fn data_spacing_resamples_and_predictions_come_back_in_the_source_geometry() {
    let root = tmp("spacing-data");
    nnunet_folder_at(&root, [1.6, 1.6, 1.0], [2.0, 2.0, 1.0]);
    let mut cfg = tiny_config(2, false);
    cfg.data.synthetic = None;
    cfg.data.root = Some(root.clone());
    cfg.data.split = duoseg_train::config::Split::Holdout { test: 1 };
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(1);
    cfg.data.spacing = Some([1.0, 1.0, 1.0]);
    cfg.validate().unwrap();

    let data = data::load(&cfg.data, None).unwrap();
    let test = &data.test[0];
    assert_eq!(test.name, "c2");
    assert_eq!(test.original_shape, [20, 18, 16]);
    assert_eq!(test.source_spacing, [2.0, 2.0, 1.0]);
    assert_eq!(test.shape, [40, 36, 16], "resampled to 1 mm");
    assert_eq!(test.spacing, [1.0; 3]);
    for case in data.labeled.iter().chain(data.unlabeled.iter()) {
        assert_eq!(case.shape, [32, 29, 16], "{}", case.name);
        assert!(case.label.as_ref().is_none_or(|l| l.len() == 32 * 29 * 16));
    }
    // data.spacing_mm is for files without a spacing: these have theirs, and it differs
    let mut told = cfg.clone();
    told.data.spacing_mm = Some([0.625; 3]);
    let notes = data::load(&told.data, None).unwrap().notes;
    assert!(
        notes.len() == 1
            && notes[0].contains("data.spacing_mm = 0.625 x 0.625 x 0.625 mm is not used"),
        "{notes:?}"
    );
    assert!(data.notes.is_empty(), "{:?}", data.notes);
    // the median of the training cases' spacings (the header holds f32)
    let median = data.training_spacing(None).unwrap();
    assert!(
        (0..3).all(|a| (median[a] - [1.6, 1.6, 1.0][a]).abs() < 1e-6),
        "{median:?}"
    );

    let dir = tmp("spacing-run");
    let mut messages = Messages::default();
    let outcome = duoseg_train::run_training(&cfg, None, opts_with(&dir, &mut messages)).unwrap();
    let RunOutcome::Evaluated(report) = outcome else {
        panic!("not evaluated: {outcome:?}");
    };
    let warned: Vec<&String> = messages
        .0
        .iter()
        .filter(|m| m.contains("differs from the training spacing"))
        .collect();
    assert!(
        warned.iter().any(|m| m.contains("case c2")
            && m.contains("2 x 2 x 1 mm")
            && m.contains("1 x 1 x 1 mm")
            && m.contains("resampled")),
        "{:?}",
        messages.0
    );
    assert_eq!(
        warned.len(),
        4,
        "every case is 1.6 or 2 mm in-plane: {warned:?}"
    );

    let source = duoseg_io::read_volume(root.join("imagesTr/c2_0000.nii.gz")).unwrap();
    let pred = duoseg_io::read_volume(dir.join("predictions/c2.nii.gz")).unwrap();
    assert_eq!(pred.shape, source.shape);
    assert_eq!(pred.spacing, source.spacing);
    assert_eq!(pred.affine, source.affine);
    let pred_labels = pred.to_labels().unwrap();
    let label = duoseg_io::read_labels(root.join("labelsTr/c2.nii.gz"), Some(&source)).unwrap();
    let want = duoseg_metrics::evaluate_labels(
        &pred_labels,
        &label,
        source.shape,
        source.spacing,
        &[1],
        &duoseg_metrics::MetricDefinition::default(),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&report.cases["c2"]).unwrap(),
        serde_json::to_value(&want).unwrap()
    );
    let meta = checkpoint::load_meta(&dir.join("final.safetensors")).unwrap();
    assert_eq!(meta.spacing, Some([1.0; 3]));

    // duoseg infer on the test scan: the source's shape and geometry, and the warning
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["infer", "--checkpoint"])
        .arg(dir.join("final.safetensors"))
        .arg("--input")
        .arg(root.join("imagesTr/c2_0000.nii.gz"))
        .arg("--out")
        .arg(dir.join("infer"))
        .arg("--probs")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("case c2") && stderr.contains("differs from the training spacing"),
        "{stderr}"
    );
    let inferred = duoseg_io::read_volume(dir.join("infer/c2.nii.gz")).unwrap();
    assert_eq!(
        (inferred.shape, inferred.spacing, inferred.affine),
        (source.shape, source.spacing, source.affine)
    );
    assert_eq!(inferred.to_labels().unwrap(), pred_labels);
    assert!(dir.join("infer/probabilities/c2.nii.gz").exists());
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// [`opts`] with an observer that keeps the messages.
fn opts_with<'a>(dir: &Path, observer: &'a mut Messages) -> TrainOptions<'a> {
    TrainOptions {
        run: RunDir::create(dir).unwrap(),
        device: candle_core::Device::Cpu,
        resume: false,
        overwrite: false,
        stop: Arc::new(AtomicBool::new(false)),
        observer,
    }
}

/// The LA h5 files carry no spacing: without `data.spacing_mm` the loader says it assumes 1 mm;
/// with it the cases (and so their mm metrics) take it, and the loader says so.
#[test]
fn h5_cases_take_data_spacing_mm_and_say_so() {
    let shared = std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let root = shared.join("la2018-h5-sample");
    if !root.exists() {
        eprintln!(
            "skipped: h5_cases_take_data_spacing_mm_and_say_so: needs {}, not found \
             (set DUOSEG_SHARED_DATA)",
            root.display()
        );
        return;
    }
    let mut cfg = tiny_config(1, false);
    cfg.data.synthetic = None;
    cfg.data.root = Some(root.clone());
    cfg.data.split = duoseg_train::config::Split::Lists;
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(1);
    cfg.validate().unwrap();
    let plain = data::load(&cfg.data, None).unwrap();
    assert!(
        plain.notes.iter().any(|n| n.contains("assuming 1 mm")),
        "{:?}",
        plain.notes
    );
    assert_eq!(plain.test[0].source_spacing, [1.0; 3]);
    cfg.data.spacing_mm = Some([0.625; 3]);
    cfg.validate().unwrap();
    let told = data::load(&cfg.data, None).unwrap();
    assert!(
        told.notes
            .iter()
            .any(|n| n.contains("data.spacing_mm = 0.625 x 0.625 x 0.625 mm")),
        "{:?}",
        told.notes
    );
    for case in told.labeled.iter().chain(&told.test) {
        assert_eq!(case.source_spacing, [0.625; 3], "{}", case.name);
        assert_eq!(case.spacing, [0.625; 3], "{}", case.name);
    }
    assert_eq!(told.training_spacing(None), Some([0.625; 3]));
    assert!(data::check(&cfg.data, 2, None).is_ok());
}

/// `data.crop_to_label`: cases with a label (the unlabeled training cases too, before their label
/// is hidden) are cut to the label's box plus the margin; cases without a label stay whole; the
/// run trains, evaluates, and writes its predictions in the whole volume's geometry.
#[test]
fn a_label_crop_trains_on_the_box_and_predicts_in_the_whole_volume() {
    let root = tmp("crop-data");
    let mut cfg = nnunet_config(&root);
    cfg.data.crop_to_label = Some(duoseg_io::LabelCrop {
        margin: [Some(1), Some(1), None],
        min_size: [16, 16, 16],
    });
    cfg.validate().unwrap();
    let data = data::load(&cfg.data, None).unwrap();
    let full = [20, 18, 16];
    for case in data.labeled.iter().chain(data.test.iter()) {
        let region = case.crop.expect("a labelled case is cropped");
        assert_eq!(case.original_shape, full);
        assert!(
            region.size[0] < full[0] || region.size[1] < full[1],
            "{region:?}"
        );
        assert_eq!(region.size[2], full[2], "the null margin keeps the axis");
    }
    for case in data.unlabeled.iter() {
        assert!(case.label.is_none());
        let hidden_label = case.name.starts_with('c');
        assert_eq!(case.crop.is_some(), hidden_label, "{}", case.name);
    }
    let dir = tmp("crop-run");
    let outcome =
        duoseg_train::run_training(&cfg, None, opts(&dir, false, false, &mut Silent)).unwrap();
    assert!(matches!(outcome, RunOutcome::Evaluated(_)), "{outcome:?}");
    let test_case = &data.test[0].name;
    let pred = duoseg_io::read_volume(dir.join(format!("predictions/{test_case}.nii.gz"))).unwrap();
    assert_eq!(pred.shape, full);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn images_without_labels_train_as_unlabeled_and_the_run_records_the_roles() {
    let root = tmp("nnunet-data");
    let mut cfg = nnunet_config(&root);
    cfg.validate().unwrap();
    let data = data::load(&cfg.data, None).unwrap();
    let roles = data.roles();
    assert_eq!(roles.labeled, ["c0"]);
    assert_eq!(roles.unlabeled, ["c1", "u3", "u4"]);
    assert_eq!(roles.test, ["c2"]);
    assert!(data.unlabeled.iter().all(|c| c.label.is_none()));

    let dir = tmp("nnunet-run");
    let finish = duoseg_train::train(&cfg, &data, opts(&dir, false, false, &mut Silent)).unwrap();
    assert_eq!(finish, Finish::Completed);
    let recorded: data::CaseRoles =
        serde_json::from_str(&std::fs::read_to_string(dir.join("split.json")).unwrap()).unwrap();
    assert_eq!(recorded, roles);

    // a list file names the labeled cases; one without a label is refused, naming it
    std::fs::write(root.join("labeled.list"), "c1\nc0\n").unwrap();
    cfg.data.labeled = duoseg_train::config::LabeledCases::List("labeled.list".into());
    let roles = data::load(&cfg.data, None).unwrap().roles();
    assert_eq!(roles.labeled, ["c1", "c0"]);
    assert_eq!(roles.unlabeled, ["u3", "u4"]);
    std::fs::write(root.join("labeled.list"), "c0\nu3\n").unwrap();
    let err = data::load(&cfg.data, None).unwrap_err().to_string();
    assert!(err.contains("u3") && err.contains("no label"), "{err}");

    // more labeled cases than have labels, and a semi-supervised run without unlabeled data
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(3);
    let err = data::load(&cfg.data, None).unwrap_err().to_string();
    assert!(err.contains("3 labeled cases requested"), "{err}");
    std::fs::remove_file(root.join("imagesTr/u3_0000.nii.gz")).unwrap();
    std::fs::remove_file(root.join("imagesUnlabeled/u4.nii.gz")).unwrap();
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(2);
    let data = data::load(&cfg.data, None).unwrap();
    assert!(data.unlabeled.is_empty());
    let err = duoseg_train::train(&cfg, &data, opts(&dir, false, false, &mut Silent))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no unlabeled case"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_case_in_both_split_lists_or_twice_in_one_is_refused() {
    let root = tmp("split-overlap");
    let mut cfg = nnunet_config(&root);
    cfg.data.split = duoseg_train::config::Split::Lists;
    std::fs::write(root.join("train.list"), "c0\nc1\nc2\n").unwrap();
    std::fs::write(root.join("test.list"), "c2\n").unwrap();
    let e = data::load(&cfg.data, None).unwrap_err().to_string();
    assert!(
        e.contains("c2") && e.contains("both a training and a test case"),
        "{e}"
    );
    std::fs::write(root.join("train.list"), "c0\nc1\nc0\n").unwrap();
    let e = data::load(&cfg.data, None).unwrap_err().to_string();
    assert!(
        e.contains("train.list") && e.contains("case c0 is listed twice"),
        "{e}"
    );
    std::fs::write(root.join("train.list"), "c0\nc1\n").unwrap();
    assert_eq!(data::load(&cfg.data, None).unwrap().roles().test, ["c2"]);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn bad_label_values_stop_the_run_before_training_and_inspect_lists_them() {
    let root = tmp("bad-labels");
    let cfg = nnunet_config(&root);
    // c1's label gets a value 2: outside dataset.json's labels and >= n_classes 2
    let p = root.join("labelsTr/c1.nii.gz");
    let image = duoseg_io::read_volume(root.join("imagesTr/c1_0000.nii.gz")).unwrap();
    let mut label = duoseg_io::read_labels(&p, Some(&image)).unwrap();
    label[0] = 2;
    duoseg_io::write_labels(&p, image.shape, &label, &image).unwrap();

    let dir = tmp("bad-labels-run");
    let err = duoseg_train::run_training(&cfg, None, opts(&dir, false, false, &mut Silent))
        .unwrap_err()
        .to_string();
    assert!(err.contains("case c1") && err.contains("[2]"), "{err}");
    assert!(err.contains("n_classes is 2"), "{err}");
    assert!(!dir.join("log.jsonl").exists(), "training started");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .arg("inspect")
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error: c1: label values [2]"), "{text}");
    assert!(text.contains("(3 labelled, 2 unlabelled)"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["inspect", "--json"])
        .arg(&root)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cases"].as_array().unwrap().len(), 5);
    assert_eq!(v["problems"][0]["case"], "c1");
    std::fs::remove_dir_all(&root).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `duoseg train` on the tiny config with many iterations, sends `signal` once the log has a
/// line, and returns the exit status and the run folder.
#[cfg(unix)]
fn train_until_signal(tag: &str, signal: i32) -> (std::process::ExitStatus, PathBuf) {
    let dir = tmp(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config-in.json");
    let mut cfg = tiny_config(100_000, false);
    cfg.checkpoint.every = 0;
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let run = dir.join("run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["train", "--no-progress", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = run.join("log.jsonl");
    let t0 = std::time::Instant::now();
    let iterations = |t: String| t.matches(r#""event":"iteration""#).count();
    while std::fs::read_to_string(&log).map_or(true, |t| iterations(t) < 2) {
        assert!(t0.elapsed().as_secs() < 120, "no iteration logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    (child.wait().unwrap(), run)
}

#[cfg(unix)]
#[test]
fn sigterm_and_sigint_stop_with_a_checkpoint_and_their_exit_codes() {
    for (signal, code, tag) in [
        (libc::SIGTERM, 143, "sigterm"),
        (libc::SIGINT, 130, "sigint"),
    ] {
        let (status, run) = train_until_signal(tag, signal);
        assert_eq!(status.code(), Some(code), "{tag}");
        let ckpts = checkpoint::list(&run.join("checkpoints"));
        let (n, _) = ckpts.last().expect("a checkpoint after the signal");
        let logged = read_log(&run.join("log.jsonl")).unwrap().len();
        assert_eq!(
            *n, logged,
            "{tag}: the checkpoint holds every logged iteration"
        );
        assert!(!run.join("final.safetensors").exists());
        std::fs::remove_dir_all(run.parent().unwrap()).unwrap();
    }
}

/// Collects the messages a run reports.
#[derive(Default)]
struct Messages(Vec<String>);
impl duoseg_train::Observer for Messages {
    fn message(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

#[test]
fn run_folders_are_guarded() {
    let mut cfg = tiny_config(2, false);
    cfg.checkpoint.every = 1;
    cfg.checkpoint.keep_last = 0;
    let data = data::load(&cfg.data, None).unwrap();
    let dir = tmp("guard");
    let run = |cfg: &TrainConfig, resume: bool, overwrite: bool, obs: &mut Messages| {
        duoseg_train::train(
            cfg,
            &data,
            TrainOptions {
                run: RunDir::create(&dir).unwrap(),
                device: candle_core::Device::Cpu,
                resume,
                overwrite,
                stop: Arc::new(AtomicBool::new(false)),
                observer: obs,
            },
        )
    };
    run(&cfg, false, false, &mut Messages::default()).unwrap();

    // a new run into a used folder is refused, and replaces it only when asked
    let err = run(&cfg, false, false, &mut Messages::default()).unwrap_err();
    assert!(
        matches!(err, duoseg_train::TrainError::RunFolder(_)),
        "{err}"
    );
    assert!(err.to_string().contains("--resume"), "{err}");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    run(&cfg, false, true, &mut Messages::default()).unwrap();
    assert!(
        dir.join("notes.txt").exists(),
        "--overwrite touches only a run's outputs"
    );

    // resuming under another config names what differs; a longer run is a valid resume
    let mut other = cfg.clone();
    other.optim.lr = 0.5;
    let err = run(&other, true, false, &mut Messages::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("optim.lr: 0.01 -> 0.5"), "{err}");

    // a truncated newest checkpoint and a stale temporary file: resume falls back, cleans up
    let newest = checkpoint::iter_path(&dir.join("checkpoints"), 2);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join(".log.jsonl.tmp4242-0"), "partial").unwrap();
    let mut longer = cfg.clone();
    longer.iterations = 3;
    let mut msgs = Messages::default();
    assert_eq!(
        run(&longer, true, false, &mut msgs).unwrap(),
        Finish::Completed
    );
    assert!(
        msgs.0
            .iter()
            .any(|m| m.starts_with("warning: skipping checkpoint")),
        "{:?}",
        msgs.0
    );
    assert!(
        msgs.0
            .iter()
            .any(|m| m.contains("resumed from") && m.contains("iter-1")),
        "{:?}",
        msgs.0
    );
    assert!(
        msgs.0
            .iter()
            .any(|m| m.contains("removed 1 temporary file")),
        "{:?}",
        msgs.0
    );
    assert!(!dir.join(".log.jsonl.tmp4242-0").exists());
    assert_eq!(read_log(&dir.join("log.jsonl")).unwrap().len(), 3);

    // another process writing into the folder: the CLI refuses (the lock is this test's)
    let config = dir.join("cfg-in.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let held = duoseg_io::fs::lock_folder(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(["train", "--no-progress", "--resume", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    drop(held);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another duoseg process"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A patch larger than every training volume, and a batch whose estimated memory exceeds the
/// machine's, are config errors (exit 2) given before any training step, with the numbers.
#[test]
fn a_patch_larger_than_the_volumes_or_a_batch_larger_than_memory_is_refused() {
    let dir = tmp("too-large");
    for (set, expect) in [
        (
            "patch=[256,32,32]",
            "larger than every training volume along axis 0",
        ),
        ("batch.unlabeled=200000", "GiB of memory are available"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
            .args(["train", "--no-progress", "--set", set, "--config"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../configs/demo.json"
            ))
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(expect), "{set}: {err}");
        let checkpoints = dir.join("checkpoints");
        assert!(!checkpoints.exists() || std::fs::read_dir(&checkpoints).unwrap().count() == 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the stop flag (as Ctrl-C does) when the run says it starts evaluating.
struct StopAtEvaluation(Arc<AtomicBool>);
impl duoseg_train::Observer for StopAtEvaluation {
    fn message(&mut self, msg: &str) {
        if msg.starts_with("evaluating") {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Ctrl-C during the evaluation after training stops it (nothing of the evaluation is written) and
/// keeps the trained model; `--resume` then evaluates without training again.
#[test]
fn a_stop_during_evaluation_ends_it_and_resume_evaluates() {
    let mut cfg = tiny_config(2, false);
    cfg.data.synthetic.as_mut().unwrap().test = 3;
    let dir = tmp("eval-stop");
    let stop = Arc::new(AtomicBool::new(false));
    let mut observer = StopAtEvaluation(Arc::clone(&stop));
    let first = TrainOptions {
        run: RunDir::create(&dir).unwrap(),
        device: candle_core::Device::Cpu,
        resume: false,
        overwrite: false,
        stop: Arc::clone(&stop),
        observer: &mut observer,
    };
    let outcome = duoseg_train::run_training(&cfg, None, first).unwrap();
    assert!(
        matches!(outcome, RunOutcome::EvaluationStopped),
        "{outcome:?}"
    );
    assert!(dir.join("final.safetensors").exists());
    assert!(!dir.join("summary.json").exists());
    assert!(!dir.join("predictions").exists());
    let log = read_log(&dir.join("log.jsonl")).unwrap();
    let outcome =
        duoseg_train::run_training(&cfg, None, opts(&dir, true, false, &mut Silent)).unwrap();
    let RunOutcome::Evaluated(report) = outcome else {
        panic!("not evaluated: {outcome:?}");
    };
    assert_eq!(report.cases.len(), 3);
    assert_eq!(
        read_log(&dir.join("log.jsonl")).unwrap(),
        log,
        "no iteration trained again"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The comparison methods train the networks their papers use, fit the tiny phantoms, checkpoint
/// their teachers and resume bit for bit, and evaluate from the final model.
#[test]
fn comparison_methods_train_resume_and_fit_the_phantoms() {
    use duoseg_train::Method;
    for (method, has_b, has_ema) in [
        (Method::MeanTeacher, false, true),
        (Method::UaMt, false, true),
        (Method::Mcf, true, false),
        (Method::Dtc, false, false),
        (Method::McNet, false, false),
        (Method::Sassnet, false, false),
    ] {
        let mut cfg = tiny_config(4, true);
        cfg.method = method;
        cfg.validate().unwrap();
        // resume after iteration 1 gives the uninterrupted run's model and log
        let data: TrainData = data::load(&cfg.data, None).unwrap();
        let a = tmp(&format!("cmp-{}-a", method.name()));
        let b = tmp(&format!("cmp-{}-b", method.name()));
        let run = |dir: &Path, resume: bool, stop: bool| {
            duoseg_train::train(&cfg, &data, opts(dir, resume, stop, &mut Silent)).unwrap()
        };
        assert_eq!(run(&a, false, false), Finish::Completed);
        assert_eq!(run(&b, false, true), Finish::Interrupted(1));
        assert_eq!(run(&b, true, false), Finish::Completed);
        let names = assert_same_final_model(&a, &b);
        let any = |p: &str| names.iter().any(|n| n.starts_with(p));
        assert!(any("net_a."), "{}", method.name());
        assert_eq!(any("net_b."), has_b, "{}", method.name());
        assert_eq!(any("ema_a."), has_ema, "{}", method.name());
        assert_eq!(
            any("net_a.out_sdf."),
            matches!(method, Method::Dtc | Method::Sassnet),
            "{}",
            method.name()
        );
        assert_eq!(any("disc."), method == Method::Sassnet, "{}", method.name());
        assert_eq!(
            any("net_a.dec2."),
            method == Method::McNet,
            "{}",
            method.name()
        );
        let (loaded_cfg, nets) =
            Nets::load(&a.join("final.safetensors"), &candle_core::Device::Cpu).unwrap();
        assert_eq!(loaded_cfg.method, method);
        assert_eq!(nets.b.is_some(), has_b);
        let log = read_log(&a.join("log.jsonl")).unwrap();
        // the unlabeled crops' term: a consistency, or SASSNet's adversarial loss
        let unlabeled_term = match method {
            Method::Sassnet => "adversarial",
            _ => "consistency",
        };
        assert!(
            log.iter().all(|r| r.terms.contains_key(unlabeled_term)),
            "{}",
            method.name()
        );
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();

        // a longer run fits the labeled phantoms: the supervised loss falls by more than half
        let mut long = tiny_config(60, false);
        long.method = method;
        long.model.base_width = 4;
        long.optim.lr_step = 1000;
        long.optim.lr = 0.05;
        let dir = tmp(&format!("cmp-{}-fit", method.name()));
        duoseg_train::train(&long, &data, opts(&dir, false, false, &mut Silent)).unwrap();
        let log = read_log(&dir.join("log.jsonl")).unwrap();
        let dice = |r: &duoseg_train::run::LogRecord| r.terms["dice_a"];
        let first = log.iter().take(5).map(dice).sum::<f64>() / 5.0;
        let last = log.iter().rev().take(5).map(dice).sum::<f64>() / 5.0;
        assert!(
            last < 0.5 * first,
            "{}: Dice loss {first} -> {last}",
            method.name()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Options a method does not read are refused, naming the option and what the method reads.
#[test]
fn options_a_method_does_not_read_are_refused() {
    use duoseg_train::Method;
    let cfg = |method: Method, set: &str| {
        let mut c = tiny_config(2, false);
        c.method = method;
        c.with_override(set).and_then(|c| c.validate().map(|_| c))
    };
    assert!(cfg(Method::UaMt, "baseline.mc_passes=4").is_ok());
    let err = cfg(Method::MeanTeacher, "baseline.mc_passes=4")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("baseline.mc_passes is not an option of method mean_teacher"),
        "{err}"
    );
    let err = cfg(Method::Duoseg, "baseline.temperature=0.5")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("belongs to mean_teacher, ua_mt, mcf, dtc, mc_net and sassnet"),
        "{err}"
    );
    let err = cfg(Method::Mcf, "ema_teacher=0.99")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ema_teacher is an option of the duoseg method"),
        "{err}"
    );
    let err = cfg(Method::MeanTeacher, "eval.nets=\"b\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("V-Net (subnet A) only"), "{err}");
    let err = cfg(Method::UaMt, "baseline.mc_passes=3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("even number"), "{err}");
    assert!(cfg(Method::McNet, "baseline.temperature=0.2").is_ok());
    let err = cfg(Method::McNet, "baseline.temperature=0.005")
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 0.01 for mc_net"), "{err}");
    let err = cfg(Method::McNet, "baseline.sdf_weight=0.5")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("it reads baseline.consistency, baseline.rampup_epochs, baseline.epoch_iterations, baseline.temperature"),
        "{err}"
    );
}

/// `duoseg folds`: every labelled case is tested in exactly one fold, unlabelled images train in
/// every fold, the same seed writes the same file, and the dataset reads it back as its folds.
#[test]
fn folds_partition_the_labelled_cases_and_read_back() {
    let dir = tmp("folds");
    nnunet_folder(&dir);
    let folds = |seed: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_duoseg"))
            .args(["folds", "--k", "3", "--seed", seed])
            .args(extra)
            .arg(&dir)
            .output()
            .unwrap()
    };
    assert!(folds("4", &[]).status.success());
    let first = std::fs::read(dir.join("folds.json")).unwrap();
    let refused = folds("4", &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--overwrite"));
    assert!(folds("4", &["--overwrite"]).status.success());
    assert_eq!(
        std::fs::read(dir.join("folds.json")).unwrap(),
        first,
        "same seed, same folds"
    );
    let ds = duoseg_io::Dataset::open(&dir).unwrap();
    let read = ds.folds().unwrap();
    assert_eq!(read.len(), 3);
    let mut tested: Vec<String> = read.iter().flat_map(|f| f.test.clone()).collect();
    tested.sort();
    assert_eq!(tested, ds.labelled_ids());
    for f in &read {
        for u in ds.unlabelled_ids() {
            assert!(f.train.contains(&u) && !f.test.contains(&u));
        }
        assert!(f.test.iter().all(|t| !f.train.contains(t)));
    }
    assert!(folds("5", &["--overwrite"]).status.success());
    assert_ne!(std::fs::read(dir.join("folds.json")).unwrap(), first);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `eval.checkpoint = best_val`: validation cases carved from the labeled ones (never trained on,
/// never tested), scored every `validate_every` iterations; the best model is what the test cases
/// score, summary.json says which it was, and an interrupted run resumes to the same choice.
#[test]
fn best_val_scores_validation_cases_and_evaluates_the_best_model() {
    let mut cfg = tiny_config(4, false);
    cfg.data.synthetic.as_mut().unwrap().labeled = 3;
    cfg.data.labeled = duoseg_train::config::LabeledCases::Count(3);
    cfg.eval.checkpoint = duoseg_train::config::CheckpointChoice::BestVal;
    cfg.eval.validation_cases = 1;
    cfg.eval.validate_every = 2;
    cfg.validate().unwrap();
    let a = tmp("bestval-a");
    let outcome =
        duoseg_train::run_training(&cfg, None, opts(&a, false, false, &mut Silent)).unwrap();
    assert!(matches!(outcome, RunOutcome::Evaluated(_)), "{outcome:?}");
    let roles: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("split.json")).unwrap()).unwrap();
    let validation = roles["validation"].as_array().unwrap().clone();
    assert_eq!(validation.len(), 1);
    assert_eq!(roles["labeled"].as_array().unwrap().len(), 2);
    assert!(!roles["labeled"]
        .as_array()
        .unwrap()
        .contains(&validation[0]));
    assert!(!roles["test"].as_array().unwrap().contains(&validation[0]));
    let log = read_log(&a.join("log.jsonl")).unwrap();
    let scored: Vec<usize> = log
        .iter()
        .filter(|r| r.terms.contains_key("val_dice"))
        .map(|r| r.iter)
        .collect();
    assert_eq!(scored, [2, 4]);
    let best = log
        .iter()
        .filter_map(|r| r.terms.get("val_dice").map(|d| (r.iter, *d)))
        .fold((0, f64::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b });
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["model"]["checkpoint"], "best_val");
    assert_eq!(summary["model"]["iteration"], best.0);
    assert_eq!(summary["model"]["val_dice"], best.1);
    assert_eq!(
        summary["model"]["validation_cases"],
        serde_json::Value::Array(validation)
    );
    assert!(a.join("best.safetensors").exists());

    // interrupted after one iteration and resumed: the same log, best model and summary
    let b = tmp("bestval-b");
    let stopped =
        duoseg_train::run_training(&cfg, None, opts(&b, false, true, &mut Silent)).unwrap();
    assert!(
        matches!(stopped, RunOutcome::TrainingStopped(1)),
        "{stopped:?}"
    );
    duoseg_train::run_training(&cfg, None, opts(&b, true, false, &mut Silent)).unwrap();
    assert_same_final_model(&a, &b);
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&a, "best.json"), read(&b, "best.json"));
    assert_eq!(read(&a, "summary.json"), read(&b, "summary.json"));
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

/// The signed distance targets of DTC / SASSNet equal the public code's `compute_sdf` (scipy EDT,
/// skimage inner boundaries), on the fixture's labels and on an ellipsoid, a slab touching the
/// border and an empty mask.
#[test]
fn signed_distance_maps_match_the_public_compute_sdf() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/methods/dtc.safetensors"
    );
    let f = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    for (labels, want) in [
        ("in.labels", "out.sdf_target"),
        ("in.sdf_case_labels", "out.sdf_cases"),
    ] {
        let l: Vec<i64> = f[labels].flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = f[want].flatten_all().unwrap().to_vec1().unwrap();
        for (item, (l, w)) in l.chunks(512).zip(w.chunks(512)).enumerate() {
            let mask: Vec<bool> = l.iter().map(|&v| v == 1).collect();
            let got = duoseg_metrics::normalized_signed_distance(&mask, [8, 8, 8]).unwrap();
            for (i, (g, w)) in got.iter().zip(w).enumerate() {
                assert!(
                    (g - f64::from(*w)).abs() < 1e-6,
                    "{labels}[{item}] voxel {i}: {g} vs {w}"
                );
            }
        }
    }
}

/// A checkpoint whose stored config cannot predict (a stride of 0 would never end) is refused when
/// loaded, naming the file and the field.
#[test]
fn a_checkpoint_with_a_damaged_config_is_refused() {
    let cfg = tiny_config(1, false);
    let dir = tmp("bad-meta");
    duoseg_train::train(
        &cfg,
        &data::load(&cfg.data, None).unwrap(),
        opts(&dir, false, false, &mut Silent),
    )
    .unwrap();
    let good = dir.join("final.safetensors");
    let dev = candle_core::Device::Cpu;
    let (tensors, mut meta) = checkpoint::load(&good, &dev).unwrap();
    meta.config["eval"]["stride"] = serde_json::json!([0, 8, 8]);
    let bad = dir.join("bad.safetensors");
    checkpoint::save(&bad, &tensors, &meta).unwrap();
    let Err(err) = Nets::load(&bad, &dev) else {
        panic!("a stride of 0 was accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("eval.stride"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
