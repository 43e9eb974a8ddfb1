//! Candle autograd vs central differences, in f64 on tiny tensors, for every loss.

use candle_core::{Result, Tensor, Var};
use duoseg_losses::*;

use crate::{rand_f64, rand_labels, scalar};

/// Compares the autograd gradient of `f` at `x` with central differences (step 1e-6).
fn check(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) {
    check_against(name, x, &f, &f)
}

/// Compares the autograd gradient of `f` with central differences of `value` (a function equal to `f`
/// up to terms that are constants for autograd).
fn check_against(
    name: &str,
    x: &Tensor,
    f: &impl Fn(&Tensor) -> Result<Tensor>,
    value: &impl Fn(&Tensor) -> Result<Tensor>,
) {
    let var = Var::from_tensor(x).unwrap();
    let loss = f(var.as_tensor()).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("no gradient")
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    let mut max_err: f64 = 0.0;
    let mut max_g: f64 = 0.0;
    for i in 0..base.len() {
        let eval = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
            scalar(&value(&t).unwrap())
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        max_err = max_err.max((fd - g[i]).abs());
        max_g = max_g.max(fd.abs());
    }
    assert!(max_g > 1e-8, "{name}: gradient is identically zero");
    assert!(
        max_err <= 1e-6 * max_g.max(1.0),
        "{name}: max |autograd - fd| = {max_err:e} (max |g| {max_g:e})"
    );
}

const SHAPE: [usize; 5] = [2, 3, 3, 2, 2];

#[test]
fn cross_entropy_gradient() {
    let x = rand_f64(&SHAPE, 2.0, 1).unwrap();
    let y = rand_labels(&[2, 3, 2, 2], 3, 2).unwrap();
    let mask = rand_labels(&[2, 3, 2, 2], 2, 3)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    check("ce", &x, |x| cross_entropy(x, &y, None));
    check("ce masked", &x, |x| cross_entropy(x, &y, Some(&mask)));
}

#[test]
fn dice_gradient() {
    let x = rand_f64(&SHAPE, 2.0, 4).unwrap();
    let y = rand_labels(&[2, 3, 2, 2], 3, 5).unwrap();
    let mask = rand_labels(&[2, 3, 2, 2], 2, 6)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let p = |x: &Tensor| candle_nn::ops::softmax(x, 1);
    check("dice", &x, |x| dice_loss(&p(x)?, &y, None));
    check("dice masked", &x, |x| dice_loss(&p(x)?, &y, Some(&mask)));
    check("supervised", &x, |x| supervised_loss(x, &y, None)?.total());
}

#[test]
fn entropy_gradient() {
    let x = rand_f64(&SHAPE, 2.0, 7).unwrap();
    check("entropy", &x, |x| {
        entropy(&candle_nn::ops::softmax(x, 1)?)?.sum_all()
    });
}

#[test]
fn consistency_gradient() {
    let xa = rand_f64(&SHAPE, 3.0, 8).unwrap();
    let xb = rand_f64(&SHAPE, 3.0, 9).unwrap();
    let p = |x: &Tensor| candle_nn::ops::softmax(x, 1);
    let mdiff = disagreement_mask(&p(&xa).unwrap(), &p(&xb).unwrap(), 0.4).unwrap();
    assert!(
        scalar(&mdiff.sum_all().unwrap()) > 0.0,
        "test needs disagreeing voxels"
    );
    check("reg wrt a", &xa, |x| {
        consistency_l1(&p(x)?, &p(&xb)?, &mdiff)
    });
    check("reg wrt b", &xb, |x| {
        consistency_l1(&p(&xa)?, &p(x)?, &mdiff)
    });
}

#[test]
fn contrastive_gradient() {
    let fu = rand_f64(&[2, 4, 3, 2, 2], 1.0, 10).unwrap();
    let fl = rand_f64(&[1, 4, 3, 2, 2], 1.0, 11).unwrap();
    let yhat = rand_labels(&[2, 3, 2, 2], 3, 12).unwrap();
    let yl = rand_labels(&[1, 3, 2, 2], 3, 13).unwrap();
    let reliable = rand_labels(&[2, 3, 2, 2], 2, 14)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    for through in [false, true] {
        // a large margin keeps the push term active
        let cfg = ContrastiveConfig {
            margin: 3.0,
            pull_through_prototypes: through,
            ..Default::default()
        };
        let terms = |fu: &Tensor, fl: &Tensor| {
            prototype_contrastive(fu, &reliable, &yhat, fl, &yl, 3, &cfg, 0)
        };
        assert!(terms(&fu, &fl).unwrap().n_sampled > 0);
        check("push wrt unlabeled", &fu, |x| Ok(terms(x, &fl)?.push));
        if through {
            check("pull wrt unlabeled", &fu, |x| Ok(terms(x, &fl)?.pull));
            check("contrastive wrt labeled", &fl, |x| terms(&fu, x)?.total());
        } else {
            // prototypes are constants in the pull term: no gradient reaches the labeled features
            let v = Var::from_tensor(&fl).unwrap();
            let g = terms(&fu, v.as_tensor()).unwrap().pull.backward().unwrap();
            let g = g.get(v.as_tensor());
            assert!(g.is_none_or(|g| scalar(&g.abs().unwrap().sum_all().unwrap()) == 0.0));
        }
    }
}

#[test]
fn normalized_class_sums_gradient() {
    // 2 items, 3 channels, 2 classes, 2x3x2 voxels; weights 0, 1 and fractional
    let f = rand_f64(&[2, 3, 2, 3, 2], 2.0, 40).unwrap();
    let w = rand_f64(&[2, 2, 2, 3, 2], 1.0, 41).unwrap().relu().unwrap();
    let upstream = rand_f64(&[2, 3], 1.0, 42).unwrap();
    check("normalized class sums", &f, |x| {
        (normalized_class_sums(x, &w)? * &upstream)?.sum_all()
    });
}

#[test]
fn assembled_total_gradient() {
    // batch: 1 labeled + 2 unlabeled, 2 classes, 4 feature channels
    let la = rand_f64(&[3, 2, 3, 2, 2], 3.0, 20).unwrap();
    let lb = rand_f64(&[3, 2, 3, 2, 2], 3.0, 21).unwrap();
    let fa = rand_f64(&[3, 4, 3, 2, 2], 1.0, 22).unwrap();
    let fb = rand_f64(&[3, 4, 3, 2, 2], 1.0, 23).unwrap();
    let y = rand_labels(&[1, 3, 2, 2], 2, 24).unwrap();
    // the last flag adds MCF's parts: the review term and sharpened soft targets, the latter from fixed
    // (EMA) teacher logits, since a live teacher's soft target is a constant for autograd only
    let (ta, tb) = (la.narrow(0, 1, 2).unwrap(), lb.narrow(0, 1, 2).unwrap());
    for (preset, student, teacher, mcf_parts) in [
        (
            Preset::Paper,
            StudentRule::Other,
            TeacherRule::LowerSupervised,
            false,
        ),
        (
            Preset::Paper,
            StudentRule::Both,
            TeacherRule::LowerSupervised,
            false,
        ),
        (
            Preset::Paper,
            StudentRule::Other,
            TeacherRule::Ensemble,
            false,
        ),
        (
            Preset::Paper,
            StudentRule::Other,
            TeacherRule::Ensemble,
            true,
        ),
        (
            Preset::ReferenceCode,
            StudentRule::Other,
            TeacherRule::LowerSupervised,
            false,
        ),
    ] {
        let cfg = LossConfig {
            preset,
            student,
            teacher,
            threshold: ThresholdRule::Fixed { value: 0.5 },
            contrastive: ContrastiveConfig {
                margin: 3.0,
                pull_through_prototypes: true,
                ..Default::default()
            },
            review_weight: if mcf_parts { 0.5 } else { 0.0 },
            unsup_target: if mcf_parts {
                UnsupTarget::Sharpened { temperature: 0.5 }
            } else {
                UnsupTarget::Hard
            },
            ..LossConfig::default()
        };
        let objective = Objective::new(cfg, 2).unwrap();
        let run = |la: &Tensor, fa: &Tensor| {
            let input = IterationInput {
                a: NetOutputs {
                    logits: la,
                    features: fa,
                },
                b: NetOutputs {
                    logits: &lb,
                    features: &fb,
                },
                labels: &y,
                iteration: 300,
                total_iterations: 600,
                seed: 5,
                teacher_logits: mcf_parts.then_some([&ta, &tb]),
                pasted: None,
            };
            objective.clone().assemble(&input)
        };
        let terms = run(&la, &fa).unwrap();
        assert!(
            terms.n_disagree > 0 && terms.n_unreliable > 0,
            "{preset:?}: test needs every term active"
        );
        assert_eq!(
            mcf_parts,
            terms.n_review > 0,
            "the review term is on exactly when set"
        );
        if preset == Preset::ReferenceCode {
            // L_u and L_c are detached there: only L_s + 0.5 L_reg trains
            let trained = |x: &Tensor| {
                let t = run(x, &fa)?;
                (t.sup_a.total()? + t.sup_b.total()?)? + (t.reg * 0.5)?
            };
            check_against(
                "reference total wrt logits a",
                &la,
                &|x| Ok(run(x, &fa)?.total),
                &trained,
            );
        } else {
            check("total wrt logits a", &la, |x| Ok(run(x, &fa)?.total));
            check("total wrt features a", &fa, |x| Ok(run(&la, x)?.total));
        }
    }
}
