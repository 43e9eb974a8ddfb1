//! Agreement with the PyTorch fixtures written by `tests/reference/models_losses.py` (one assembled
//! iteration on random logits / features, 2 labeled + 2 unlabeled items of 8^3; both presets).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use duoseg_losses::*;

use crate::scalar;

fn load(preset: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/../../tests/fixtures/losses/{preset}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
        "{name}: got {got}, pytorch {want}"
    );
}

fn close_tensor(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "{name}: max abs error {err:e} vs max |value| {scale:e}"
    );
}

fn check_preset(preset: &str, cfg: LossConfig) {
    let f = load(preset);
    let vars: Vec<Var> = ["logits_a", "features_a", "logits_b", "features_b"]
        .iter()
        .map(|k| Var::from_tensor(&f[*k]).unwrap())
        .collect();
    let labels = f["labels"].to_dtype(DType::U32).unwrap();
    let mut objective = Objective::new(cfg, 2).unwrap();
    let input = IterationInput {
        a: NetOutputs {
            logits: vars[0].as_tensor(),
            features: vars[1].as_tensor(),
        },
        b: NetOutputs {
            logits: vars[2].as_tensor(),
            features: vars[3].as_tensor(),
        },
        labels: &labels,
        iteration: 1000,
        total_iterations: 6000,
        seed: 0,
        teacher_logits: None,
        pasted: None,
    };
    let terms = objective.assemble(&input).unwrap();
    let got = terms.scalars().unwrap();
    for (name, want) in &f {
        if let Some(term) = name.strip_prefix("term.") {
            close(&format!("{preset} {term}"), got[term], scalar(want));
        }
    }
    let grads = terms.total.backward().unwrap();
    for (i, k) in ["logits_a", "features_a", "logits_b", "features_b"]
        .iter()
        .enumerate()
    {
        let want = &f[&format!("grad.{k}")];
        match grads.get(vars[i].as_tensor()) {
            Some(g) => close_tensor(&format!("{preset} grad {k}"), g, want),
            None => assert_eq!(
                scalar(&want.abs().unwrap().sum_all().unwrap()),
                0.0,
                "{preset} grad {k}"
            ),
        }
    }
}

#[test]
fn paper_preset_matches_pytorch() {
    // the fixture script computes SPEC section 2's formulas: L_reg divided by |M_diff|, the pull term a
    // mean over the sampled unreliable voxels
    let mut cfg = LossConfig {
        reg_normalize: RegNormalization::Disagreement,
        ..LossConfig::default()
    };
    cfg.contrastive.pull_normalize = PullNormalization::Sampled;
    check_preset("paper", cfg);
}

#[test]
fn reference_code_preset_matches_pytorch() {
    check_preset("reference_code", LossConfig::reference_code());
}
