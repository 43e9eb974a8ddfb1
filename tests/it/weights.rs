//! `duoseg import` / `duoseg export` against a PyTorch V-Net saved with the UA-MT code's names
//! (`tests/reference/weights_ua_mt.py`): the imported model reproduces PyTorch's eval-mode logits,
//! and exporting it again gives back the same state_dict.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use duoseg_models::SegNet;
use duoseg_train::Nets;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/weights/{name}"))
}

fn duoseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ua_mt_weights_import_predict_as_pytorch_and_export_back() {
    let dir = crate::Scratch::new("weights", "ua-mt");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.json");
    let model = dir.join("imported.safetensors");
    let state = fixture("vnet_ua_mt.safetensors");
    let import = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "import",
            "--config",
            s(&config),
            "--set",
            "model.base_width=2",
            "--a",
            s(&state),
            "--names",
            "ua-mt",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        duoseg(&args)
    };
    // the demo's method trains both nets: without B's state_dict that is an error saying so
    let out = import(&[], &model);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give its state_dict too"), "{err}");

    let out = import(&["--set", "method=mean_teacher"], &model);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cfg, nets) = Nets::load(&model, &Device::Cpu).unwrap();
    assert_eq!(cfg.model.base_width, 2);
    let io =
        candle_core::safetensors::load(fixture("vnet_ua_mt_io.safetensors"), &Device::Cpu).unwrap();
    let (logits, _) = nets.a.forward_t(&io["x"], false).unwrap();
    let err = (&logits - &io["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err < 1e-4, "logits differ from PyTorch's by {err}");

    // export with the same names: the same tensors, values and dtypes (int64 counters included)
    let back = dir.join("back.safetensors");
    let out = duoseg(&[
        "export",
        "--checkpoint",
        s(&model),
        "--net",
        "a",
        "--names",
        "ua-mt",
        "--out",
        s(&back),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = candle_core::safetensors::load(&state, &Device::Cpu).unwrap();
    let got = candle_core::safetensors::load(&back, &Device::Cpu).unwrap();
    let mut keys: Vec<_> = got.keys().collect();
    keys.sort();
    let mut want_keys: Vec<_> = want.keys().collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g.dtype(), w.dtype(), "{k}");
        let diff = (g.to_dtype(DType::F64).unwrap() - w.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(diff, 0.0, "{k}");
    }
    // B does not exist for this method, and a width that does not fit is refused
    let out = duoseg(&[
        "export",
        "--checkpoint",
        s(&model),
        "--net",
        "b",
        "--out",
        s(&dir.join("b.safetensors")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no subnet B"));
    let out = duoseg(&[
        "import",
        "--config",
        s(&config),
        "--set",
        "method=mean_teacher",
        "--a",
        s(&state),
        "--names",
        "ua-mt",
        "--out",
        s(&dir.join("wrong.safetensors")),
    ]);
    assert!(
        !out.status.success(),
        "width 8 (the demo's) must not load width-2 weights"
    );
    assert!(!dir.join("wrong.safetensors").exists());
}
