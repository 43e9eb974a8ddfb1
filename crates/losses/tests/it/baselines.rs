//! The comparison methods' loss terms against PyTorch fixtures written by
//! `tests/reference/methods.py` from the public LA code (docs/methods.md): Mean Teacher, UA-MT, MCF,
//! DTC, MC-Net and SASSNet.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use duoseg_losses::*;

use crate::scalar;

fn load(method: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/../../tests/fixtures/methods/{method}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture's value (float64 or float32) as f64s.
fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
        "{name}: got {got}, pytorch {want}"
    );
}

fn close_all(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}");
    let (g, w) = (host(got), host(want));
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    let err = g
        .iter()
        .zip(&w)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-5 * scale,
        "{name}: max abs error {err:e} vs max |value| {scale:e}"
    );
}

fn labels(f: &HashMap<String, Tensor>) -> Tensor {
    f["in.labels"].to_dtype(DType::U32).unwrap()
}

fn iterations(f: &HashMap<String, Tensor>) -> Vec<usize> {
    host(&f["in.iterations"])
        .iter()
        .map(|&t| t as usize)
        .collect()
}

const T_EVAL: usize = 3000;
const UA_MT_RAMP: ConsistencyRamp = ConsistencyRamp {
    weight: 0.1,
    rampup_epochs: 40.0,
    iterations_per_epoch: 150,
};

#[test]
fn mean_teacher_matches_the_public_code() {
    let f = load("mean_teacher");
    let y = labels(&f);
    let student = Var::from_tensor(&f["in.logits_student"]).unwrap();
    let s = student.as_tensor();
    let teacher = &f["in.logits_teacher"];
    let ts = iterations(&f);
    let ramp: Vec<f64> = ts.iter().map(|&t| UA_MT_RAMP.at(t)).collect();
    let alpha: Vec<f64> = ts.iter().map(|&t| ema_decay(t, 0.99)).collect();
    for (i, (g, w)) in ramp.iter().zip(host(&f["out.ramp_weight"])).enumerate() {
        close(&format!("ramp[{i}]"), *g, w);
    }
    for (i, (g, w)) in alpha.iter().zip(host(&f["out.ema_alpha"])).enumerate() {
        close(&format!("ema_alpha[{i}]"), *g, w);
    }
    // the EMA update at global steps 0, 3, 1000
    let (e, l) = (
        host(&f["in.ema_teacher_params"]),
        host(&f["in.ema_student_params"]),
    );
    let updated = host(&f["out.ema_updated"]);
    for (row, t) in [0usize, 3, 1000].into_iter().enumerate() {
        let a = ema_decay(t, 0.99);
        for j in 0..e.len() {
            close(
                "ema_updated",
                a * e[j] + (1.0 - a) * l[j],
                updated[row * e.len() + j],
            );
        }
    }
    let lab = s.narrow(0, 0, 2).unwrap();
    let ce = cross_entropy(&lab, &y, None).unwrap();
    let probs = candle_nn::ops::softmax(&lab, 1).unwrap();
    let dice = dice_loss(&probs, &y, None).unwrap();
    close("sup_ce", scalar(&ce), scalar(&f["out.sup_ce"]));
    close("sup_dice_fg", scalar(&dice), scalar(&f["out.sup_dice_fg"]));
    let cons = mean_teacher_consistency(&s.narrow(0, 2, 2).unwrap(), teacher).unwrap();
    close("consistency", scalar(&cons), scalar(&f["out.consistency"]));
    let w = UA_MT_RAMP.at(T_EVAL);
    close("weight_at_t", w, scalar(&f["out.weight_at_t"]));
    let total = (((ce + dice).unwrap() * 0.5).unwrap() + (cons * w).unwrap()).unwrap();
    close("total", scalar(&total), scalar(&f["out.total"]));
    let grads = total.backward().unwrap();
    close_all("grad", grads.get(s).unwrap(), &f["grad.logits_student"]);
}

#[test]
fn ua_mt_matches_the_public_code() {
    let f = load("ua_mt");
    let y = labels(&f);
    let student = Var::from_tensor(&f["in.logits_student"]).unwrap();
    let s = student.as_tensor();
    let mc = &f["in.logits_teacher_mc"];
    let passes: Vec<Tensor> = (0..mc.dim(0).unwrap())
        .map(|t| mc.get(t).unwrap())
        .collect();
    let u = predictive_entropy(&passes).unwrap();
    close_all("uncertainty", &u, &f["out.uncertainty"]);
    let ts = iterations(&f);
    for (i, (t, w)) in ts.iter().zip(host(&f["out.threshold"])).enumerate() {
        close(
            &format!("threshold[{i}]"),
            uncertainty_threshold(*t, 6000, 2),
            w,
        );
    }
    let thr = uncertainty_threshold(T_EVAL, 6000, 2);
    close("threshold_at_t", thr, scalar(&f["out.threshold_at_t"]));
    let (cons, mask) = uncertainty_masked_consistency(
        &s.narrow(0, 2, 2).unwrap(),
        &f["in.logits_teacher"],
        &u,
        thr,
    )
    .unwrap();
    assert_eq!(host(&mask), host(&f["out.mask"]), "mask");
    close(
        "mask_count",
        host(&mask).iter().sum(),
        scalar(&f["out.mask_count"]),
    );
    close("consistency", scalar(&cons), scalar(&f["out.consistency"]));
    let lab = s.narrow(0, 0, 2).unwrap();
    let sup = supervised_loss(&lab, &y, None).unwrap();
    let sup = (sup.total().unwrap() * 0.5).unwrap();
    close("supervised", scalar(&sup), scalar(&f["out.supervised"]));
    let total = (sup + (cons * UA_MT_RAMP.at(T_EVAL)).unwrap()).unwrap();
    close("total", scalar(&total), scalar(&f["out.total"]));
    let grads = total.backward().unwrap();
    close_all("grad", grads.get(s).unwrap(), &f["grad.logits_student"]);
}

#[test]
fn mcf_matches_the_public_code() {
    let f = load("mcf");
    let y = labels(&f);
    for case in ["case0", "case1"] {
        let v = Var::from_tensor(&f[&format!("in.{case}.logits_vnet")]).unwrap();
        let r = Var::from_tensor(&f[&format!("in.{case}.logits_resnet")]).unwrap();
        let out = |k: &str| scalar(&f[&format!("out.{case}.{k}")]);
        let w = UA_MT_RAMP.at(T_EVAL);
        close("weight_at_t", w, out("weight_at_t"));
        let m = mcf_loss(v.as_tensor(), r.as_tensor(), &y, w, 0.1, 0.5).unwrap();
        close(&format!("{case} v_dice"), m.dice_v, out("v_dice"));
        close(&format!("{case} r_dice"), m.dice_r, out("r_dice"));
        assert_eq!(m.vnet_teaches, out("good_student") == 0.0, "{case}");
        let n_diff: f64 = host(&f[&format!("out.{case}.diff_mask")]).iter().sum();
        close(&format!("{case} diff count"), m.n_disagree, n_diff);
        close(&format!("{case} v_mse"), scalar(&m.review_v), out("v_mse"));
        close(&format!("{case} r_mse"), scalar(&m.review_r), out("r_mse"));
        let v_sup = scalar(&m.supervised_v) + 0.5 * scalar(&m.review_v);
        close(&format!("{case} v_supervised"), v_sup, out("v_supervised"));
        close(
            &format!("{case} consistency"),
            scalar(&m.consistency),
            out("consistency"),
        );
        close(
            &format!("{case} total"),
            scalar(&m.total),
            out("v_loss") + out("r_loss"),
        );
        let grads = m.total.backward().unwrap();
        for (name, var) in [("vnet", &v), ("resnet", &r)] {
            close_all(
                &format!("{case} grad {name}"),
                grads.get(var.as_tensor()).unwrap(),
                &f[&format!("grad.{case}.logits_{name}")],
            );
        }
    }
}

#[test]
fn sharpening_and_the_ramp_edge_cases() {
    assert_eq!(sigmoid_rampup(5.0, 0.0), 1.0);
    assert_eq!(sigmoid_rampup(50.0, 40.0), 1.0);
    assert!((sigmoid_rampup(0.0, 40.0) - (-5f64).exp()).abs() < 1e-15);
    assert_eq!(ema_decay(0, 0.99), 0.0);
    // one item, two classes, two voxels: (0.6, 0.4) sharpens to 0.6^10 / (0.6^10 + 0.4^10); a tie stays
    let p = Tensor::new(&[[[0.6f32, 0.5], [0.4, 0.5]]], &Device::Cpu).unwrap();
    let q = host(&sharpen(&p, 0.1).unwrap());
    let want = 0.6f64.powi(10) / (0.6f64.powi(10) + 0.4f64.powi(10));
    for (g, w) in q.iter().zip([want, 0.5, 1.0 - want, 0.5]) {
        assert!((g - w).abs() < 1e-6, "{q:?}");
    }
}

#[test]
fn dtc_matches_the_public_code() {
    let f = load("dtc");
    let y = labels(&f);
    // the code's one sigmoid channel z is the two-class softmax of (0, z)
    let z = Var::from_tensor(&f["in.seg_logits"]).unwrap();
    let logits = Tensor::cat(&[&z.as_tensor().zeros_like().unwrap(), z.as_tensor()], 1).unwrap();
    let sdf = Var::from_tensor(&f["in.sdf_pred"]).unwrap();
    let target = f["out.sdf_target"].unsqueeze(1).unwrap();
    let ramp = ConsistencyRamp {
        weight: 1.0,
        ..UA_MT_RAMP
    };
    for (i, (t, w)) in iterations(&f)
        .iter()
        .zip(host(&f["out.ramp_weight"]))
        .enumerate()
    {
        close(&format!("ramp[{i}]"), ramp.at(*t), w);
    }
    let w = ramp.at(T_EVAL);
    close("weight_at_t", w, scalar(&f["out.weight_at_t"]));
    let d = dtc_loss(&logits, sdf.as_tensor(), &target, &y, 1500.0, 0.3, w).unwrap();
    close("sup_dice", scalar(&d.dice), scalar(&f["out.sup_dice"]));
    close("loss_sdf", scalar(&d.sdf_mse), scalar(&f["out.loss_sdf"]));
    close(
        "consistency",
        scalar(&d.consistency),
        scalar(&f["out.consistency"]),
    );
    close("total", scalar(&d.total), scalar(&f["out.total"]));
    let grads = d.total.backward().unwrap();
    close_all(
        "grad seg",
        grads.get(z.as_tensor()).unwrap(),
        &f["grad.seg_logits"],
    );
    close_all(
        "grad sdf",
        grads.get(sdf.as_tensor()).unwrap(),
        &f["grad.sdf_pred"],
    );
}

#[test]
fn mc_net_matches_the_public_code() {
    let f = load("mc_net");
    let y = labels(&f);
    // MC-Net increments iter_num before it reads the weight: the ramp at t + 1
    let ramp = ConsistencyRamp {
        weight: 1.0,
        ..UA_MT_RAMP
    };
    for (i, (t, w)) in iterations(&f)
        .iter()
        .zip(host(&f["out.ramp_weight"]))
        .enumerate()
    {
        close(&format!("ramp[{i}]"), ramp.at(t + 1), w);
    }
    let probs = candle_nn::ops::softmax(&f["in.logits_dec1"], 1).unwrap();
    close_all(
        "sharpened",
        &mc_net_sharpen(&probs, 0.1).unwrap(),
        &f["out.sharpened_dec1"],
    );
    // v1: the paper's two decoders; v2 (MC-Net+): three
    for (version, n) in [("v1", 2), ("v2", 3)] {
        let vars: Vec<Var> = (1..=n)
            .map(|k| Var::from_tensor(&f[&format!("in.logits_dec{k}")]).unwrap())
            .collect();
        let logits: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let w = ramp.at(T_EVAL + 1);
        let key = |k: &str| format!("out.{version}.{k}");
        close(&key("weight_at_t"), w, scalar(&f[&key("weight_at_t")]));
        let terms = mc_net_loss(&logits, &y, w, 0.1, 0.5).unwrap();
        close(
            &key("sup_dice"),
            scalar(&terms.supervised_dice),
            scalar(&f[&key("sup_dice")]),
        );
        close(
            &key("consistency"),
            scalar(&terms.consistency),
            scalar(&f[&key("consistency")]),
        );
        close(
            &key("total"),
            scalar(&terms.total),
            scalar(&f[&key("total")]),
        );
        let grads = terms.total.backward().unwrap();
        for (k, v) in vars.iter().enumerate() {
            close_all(
                &format!("{version} grad dec{}", k + 1),
                grads.get(v.as_tensor()).unwrap(),
                &f[&format!("grad.{version}.logits_dec{}", k + 1)],
            );
        }
    }
    // a mismatch between decoders is an error, not a panic
    let other = f["in.logits_dec1"].narrow(0, 0, 3).unwrap();
    assert!(mc_net_loss(&[&f["in.logits_dec1"], &other], &y, 1.0, 0.1, 0.5).is_err());
}

#[test]
fn sassnet_matches_the_public_code() {
    let f = load("sassnet");
    let y = labels(&f);
    let ramp = ConsistencyRamp {
        weight: 0.01,
        ..UA_MT_RAMP
    };
    for (i, (t, w)) in iterations(&f)
        .iter()
        .zip(host(&f["out.ramp_weight"]))
        .enumerate()
    {
        close(&format!("ramp[{i}]"), ramp.at(*t), w);
    }
    let w = ramp.at(T_EVAL);
    close("weight_at_t", w, scalar(&f["out.weight_at_t"]));
    // the code's one sigmoid channel z is the two-class softmax of (0, z)
    let z = Var::from_tensor(&f["in.seg_logits"]).unwrap();
    let logits = Tensor::cat(&[&z.as_tensor().zeros_like().unwrap(), z.as_tensor()], 1).unwrap();
    let sdf = Var::from_tensor(&f["in.sdf_pred"]).unwrap();
    let d_u = Var::from_tensor(&f["in.d_logits_unlabeled"]).unwrap();
    let target = f["out.sdf_target"].unsqueeze(1).unwrap();
    let s = sassnet_loss(
        &logits,
        sdf.as_tensor(),
        &target,
        &y,
        d_u.as_tensor(),
        0.3,
        w,
    )
    .unwrap();
    close("sup_dice", scalar(&s.dice), scalar(&f["out.sup_dice"]));
    close("loss_sdf", scalar(&s.sdf_mse), scalar(&f["out.loss_sdf"]));
    close(
        "supervised",
        scalar(&s.supervised),
        scalar(&f["out.supervised"]),
    );
    close(
        "loss_adv",
        scalar(&s.adversarial),
        scalar(&f["out.loss_adv"]),
    );
    close("total", scalar(&s.total), scalar(&f["out.total"]));
    let grads = s.total.backward().unwrap();
    for (name, v) in [
        ("seg_logits", &z),
        ("sdf_pred", &sdf),
        ("d_logits_unlabeled", &d_u),
    ] {
        close_all(
            &format!("grad {name}"),
            grads.get(v.as_tensor()).unwrap(),
            &f[&format!("grad.{name}")],
        );
    }
    let d_all = Var::from_tensor(&f["in.d_logits_all"]).unwrap();
    let loss_d = discriminator_loss(d_all.as_tensor(), 2).unwrap();
    close("loss_d", scalar(&loss_d), scalar(&f["out.loss_d"]));
    let grads = loss_d.backward().unwrap();
    close_all(
        "grad d_logits_all",
        grads.get(d_all.as_tensor()).unwrap(),
        &f["grad.d_logits_all"],
    );
    // shapes that do not fit are errors
    assert!(sassnet_loss(
        &logits,
        sdf.as_tensor(),
        &target,
        &y,
        d_all.as_tensor(),
        0.3,
        w
    )
    .is_err());
    assert!(discriminator_loss(d_all.as_tensor(), 5).is_err());
}
