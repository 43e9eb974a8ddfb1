//! MCF's parts inside duoseg's objective: the review term on labeled disagreements
//! (`loss.review_weight`) and sharpened soft targets on every unlabeled voxel (`loss.unsup_target`),
//! each checked against plain loops over the voxels.

use candle_core::{DType, Device, Tensor, Var};
use duoseg_losses::*;

use crate::{rand_f64, rand_labels, scalar};

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Softmax over the class axis of `[1, K, V]`-flattened logits, per voxel, in plain f64.
fn softmax_by_hand(logits: &[f64], k: usize) -> Vec<f64> {
    let v = logits.len() / k;
    let mut p = vec![0.0; logits.len()];
    for i in 0..v {
        let m = (0..k).map(|c| logits[c * v + i]).fold(f64::MIN, f64::max);
        let z: f64 = (0..k).map(|c| (logits[c * v + i] - m).exp()).sum();
        for c in 0..k {
            p[c * v + i] = (logits[c * v + i] - m).exp() / z;
        }
    }
    p
}

#[test]
fn review_term_matches_loops_over_the_disagreeing_voxels() {
    let k = 3;
    let pa = candle_nn::ops::softmax(&rand_f64(&[2, k, 3, 4, 5], 3.0, 1).unwrap(), 1).unwrap();
    let pb = candle_nn::ops::softmax(&rand_f64(&[2, k, 3, 4, 5], 3.0, 2).unwrap(), 1).unwrap();
    let y = rand_labels(&[2, 3, 4, 5], k as u32, 3).unwrap();
    let r = review_terms(&pa, &pb, &y).unwrap();
    let (a, b, labels) = (host(&pa), host(&pb), host(&y));
    let v = 60;
    let argmax = |p: &[f64], n: usize, i: usize| {
        (0..k)
            .max_by(|&c, &d| p[(n * k + c) * v + i].total_cmp(&p[(n * k + d) * v + i]))
            .unwrap()
    };
    let (mut count, mut sum_a, mut sum_b) = (0.0, 0.0, 0.0);
    for n in 0..2 {
        for i in 0..v {
            if argmax(&a, n, i) == argmax(&b, n, i) {
                continue;
            }
            count += 1.0;
            for c in 1..k {
                let yc = f64::from(labels[n * v + i] as usize == c);
                sum_a += (a[(n * k + c) * v + i] - yc).powi(2);
                sum_b += (b[(n * k + c) * v + i] - yc).powi(2);
            }
        }
    }
    assert!(
        count > 10.0,
        "the nets must disagree somewhere for the test to show anything"
    );
    assert_eq!(r.n_disagree, count);
    assert!((scalar(&r.review_a) - sum_a / count).abs() < 1e-12);
    assert!((scalar(&r.review_b) - sum_b / count).abs() < 1e-12);
    // nets that agree everywhere: no voxel, a zero term (not NaN)
    let same = review_terms(&pa, &pa, &y).unwrap();
    assert_eq!((same.n_disagree, scalar(&same.review_a)), (0.0, 0.0));
    // mismatched shapes are an error, not a panic
    let short = pb.narrow(2, 0, 2).unwrap();
    assert!(review_terms(&pa, &short, &y).is_err());
}

/// One iteration of 2 labeled + 1 unlabeled items of 3x4x4, 3 classes, ensemble teacher.
struct Case {
    la: Var,
    lb: Var,
    f: Var,
    y: Tensor,
}

impl Case {
    fn new() -> Case {
        let var = |s: u64| Var::from_tensor(&rand_f64(&[3, 3, 3, 4, 4], 2.5, s).unwrap()).unwrap();
        Case {
            la: var(11),
            lb: var(12),
            f: Var::from_tensor(&rand_f64(&[3, 4, 3, 4, 4], 1.0, 13).unwrap()).unwrap(),
            y: rand_labels(&[2, 3, 4, 4], 3, 14).unwrap(),
        }
    }

    fn assemble(&self, cfg: LossConfig, pasted: Option<PastedLabels>) -> LossTerms {
        let input = IterationInput {
            a: NetOutputs {
                logits: self.la.as_tensor(),
                features: self.f.as_tensor(),
            },
            b: NetOutputs {
                logits: self.lb.as_tensor(),
                features: self.f.as_tensor(),
            },
            labels: &self.y,
            iteration: 30,
            total_iterations: 100,
            seed: 5,
            teacher_logits: None,
            pasted,
        };
        Objective::new(cfg, 3).unwrap().assemble(&input).unwrap()
    }

    fn probs(&self, v: &Var, from: usize, len: usize) -> Tensor {
        candle_nn::ops::softmax(&v.as_tensor().narrow(0, from, len).unwrap(), 1).unwrap()
    }
}

fn ensemble() -> LossConfig {
    LossConfig {
        teacher: TeacherRule::Ensemble,
        ..LossConfig::default()
    }
}

#[test]
fn review_weight_adds_the_weighted_review_of_the_labeled_half() {
    let case = Case::new();
    let plain = case.assemble(ensemble(), None);
    assert_eq!((scalar(&plain.review), plain.n_review), (0.0, 0));
    let w = 0.5;
    let cfg = LossConfig {
        review_weight: w,
        ..ensemble()
    };
    let with = case.assemble(cfg, None);
    let want = review_terms(
        &case.probs(&case.la, 0, 2),
        &case.probs(&case.lb, 0, 2),
        &case.y,
    )
    .unwrap();
    let review = scalar(&want.review_a) + scalar(&want.review_b);
    assert!(review > 0.0);
    assert!((scalar(&with.review) - review).abs() < 1e-12);
    assert_eq!(with.n_review as f64, want.n_disagree);
    assert!((scalar(&with.total) - scalar(&plain.total) - w * review).abs() < 1e-10);
    assert!((with.scalars().unwrap()["review"] - review).abs() < 1e-6);
    // the review trains both nets
    let grads = with.review.backward().unwrap();
    for v in [&case.la, &case.lb] {
        let g = grads.get(v.as_tensor()).expect("a net without gradient");
        assert!(scalar(&g.sqr().unwrap().sum_all().unwrap()) > 0.0);
    }
}

#[test]
fn sharpened_target_is_the_squared_error_to_the_sharpened_teacher_on_every_voxel() {
    let case = Case::new();
    let temperature = 0.25;
    let cfg = LossConfig {
        unsup_target: UnsupTarget::Sharpened { temperature },
        ..ensemble()
    };
    let terms = case.assemble(cfg.clone(), None);
    let k = 3;
    let (a, b) = (
        softmax_by_hand(&host(&case.la.as_tensor().narrow(0, 2, 1).unwrap()), k),
        softmax_by_hand(&host(&case.lb.as_tensor().narrow(0, 2, 1).unwrap()), k),
    );
    let v = a.len() / k;
    let sharpened = |p: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
        let mut q = vec![0.0; k * v];
        for i in 0..v {
            let z: f64 = (0..k).map(|c| p(c, i).powf(1.0 / temperature)).sum();
            for c in 0..k {
                q[c * v + i] = p(c, i).powf(1.0 / temperature) / z;
            }
        }
        q
    };
    let q = sharpened(&|c, i| 0.5 * (a[c * v + i] + b[c * v + i]));
    let mse = |p: &[f64], q: &[f64]| -> f64 {
        p.iter().zip(q).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / p.len() as f64
    };
    let want = mse(&a, &q) + mse(&b, &q);
    assert!(want > 0.0);
    assert!(
        (scalar(&terms.unsup) - want).abs() < 1e-12,
        "{} vs {want}",
        scalar(&terms.unsup)
    );
    // every voxel counts: a different reliable set changes nothing
    let fewer_reliable = case.assemble(
        LossConfig {
            alpha0: 1.0,
            ..cfg.clone()
        },
        None,
    );
    assert!(fewer_reliable.n_reliable < terms.n_reliable);
    assert_eq!(scalar(&fewer_reliable.unsup), scalar(&terms.unsup));
    // pasted everywhere: the target is the pasted truth itself
    let truth = rand_labels(&[1, 3, 4, 4], 3, 15).unwrap();
    let mask = Tensor::ones((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let pasted = case.assemble(
        cfg,
        Some(PastedLabels {
            labels: &truth,
            mask: &mask,
        }),
    );
    let labels = host(&truth);
    let onehot: Vec<f64> = (0..k * v)
        .map(|j| f64::from(labels[j % v] as usize == j / v))
        .collect();
    let want = mse(&a, &onehot) + mse(&b, &onehot);
    assert!((scalar(&pasted.unsup) - want).abs() < 1e-12);
}

#[test]
fn the_new_options_are_checked_and_parse_from_json() {
    let bad = |cfg: LossConfig, field: &str| {
        let err = cfg.validate(3).unwrap_err();
        assert!(err.contains(field), "{err}");
    };
    bad(
        LossConfig {
            unsup_target: UnsupTarget::Sharpened { temperature: 0.0 },
            ..LossConfig::default()
        },
        "temperature",
    );
    bad(
        LossConfig {
            review_weight: -1.0,
            ..LossConfig::default()
        },
        "review_weight",
    );
    let reference = LossConfig {
        unsup_target: UnsupTarget::Sharpened { temperature: 0.1 },
        ..LossConfig::reference_code()
    };
    assert!(reference.validate(2).is_err());
    let cfg: LossConfig =
        serde_json::from_str(r#"{"unsup_target": {"kind": "sharpened"}, "review_weight": 0.5}"#)
            .unwrap();
    assert_eq!(
        cfg.unsup_target,
        UnsupTarget::Sharpened { temperature: 0.1 }
    );
    assert_eq!(cfg.review_weight, 0.5);
    assert_eq!(LossConfig::default().unsup_target, UnsupTarget::Hard);
    assert!(serde_json::from_str::<LossConfig>(r#"{"unsup_target": {"kind": "soft"}}"#).is_err());
}
