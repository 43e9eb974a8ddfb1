//! Edge cases: empty sets, absent classes, saturated softmax: finite values, never NaN.

use candle_core::{DType, Device, Tensor};
use duoseg_losses::*;

use crate::{rand_f64, rand_labels, scalar};

fn finite(name: &str, t: &Tensor) -> f64 {
    let v = scalar(t);
    assert!(v.is_finite(), "{name} = {v}");
    v
}

/// Backpropagates `total` and checks every gradient is finite.
fn finite_grads(terms: &LossTerms, vars: &[&candle_core::Var]) {
    let grads = terms.total.backward().unwrap();
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = scalar(&g.abs().unwrap().sum_all().unwrap());
            assert!(s.is_finite(), "non-finite gradient");
        }
    }
}

#[test]
fn empty_mask_gives_zero() {
    let x = rand_f64(&[2, 3, 2, 2, 2], 1.0, 1).unwrap();
    let y = rand_labels(&[2, 2, 2, 2], 3, 2).unwrap();
    let empty = Tensor::zeros((2, 2, 2, 2), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        finite("ce", &cross_entropy(&x, &y, Some(&empty)).unwrap()),
        0.0
    );
    let p = candle_nn::ops::softmax(&x, 1).unwrap();
    assert_eq!(
        finite("dice", &dice_loss(&p, &y, Some(&empty)).unwrap()),
        0.0
    );
    let m = Tensor::zeros((2, 1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(finite("reg", &consistency_l1(&p, &p, &m).unwrap()), 0.0);
}

#[test]
fn labels_out_of_range_is_an_error() {
    let x = rand_f64(&[1, 2, 2, 2, 2], 1.0, 1).unwrap();
    let y = Tensor::from_vec(vec![0u32, 1, 2, 0, 0, 0, 0, 0], (1, 2, 2, 2), &Device::Cpu).unwrap();
    let err = cross_entropy(&x, &y, None).unwrap_err().to_string();
    assert!(err.contains("label value 2 out of range"), "{err}");
    let bad = Tensor::zeros((1, 2, 2, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(dice_loss(&x, &bad, None).is_err());
}

/// Logits `[N, 2, ...]` of +-1e4 with opposite signs in the two channels: an exactly one-hot softmax.
fn saturate(x: &Tensor) -> Tensor {
    let s = x
        .narrow(1, 0, 1)
        .unwrap()
        .ge(0.0)
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap();
    let s = ((s * 2.0).unwrap() - 1.0).unwrap();
    Tensor::cat(&[(&s * 1e4).unwrap(), (&s * -1e4).unwrap()], 1).unwrap()
}

#[test]
fn saturated_softmax_keeps_every_voxel() {
    // logits +-1e4: softmax is exactly one-hot, so the entropy is the same (-log(1 + 1e-10)) everywhere
    let x = saturate(&rand_f64(&[2, 2, 4, 4, 4], 1.0, 3).unwrap());
    let p = candle_nn::ops::softmax(&x, 1).unwrap();
    let h = entropy(&p).unwrap();
    let (lo, hi) = (scalar(&h.min_all().unwrap()), scalar(&h.max_all().unwrap()));
    assert!(lo == hi && hi.abs() < 1e-9, "entropy in [{lo}, {hi}]");
    let rel = select_reliable(&h, 0.2).unwrap();
    assert_eq!(
        scalar(&rel.sum_all().unwrap()),
        128.0,
        "a tie must not drop voxels"
    );
}

#[test]
fn reliable_selection_counts_and_ties() {
    let h = Tensor::new(
        &[0.5f32, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0],
        &Device::Cpu,
    )
    .unwrap();
    let rel = select_reliable(&h, 0.2).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(rel, vec![1., 1., 0., 1., 1., 1., 1., 1., 1., 0.]);
    assert_eq!(
        select_reliable(&h, 0.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        10.0
    );
    assert_eq!(
        select_reliable(&h, 0.05)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        10.0
    );
    assert_eq!(
        select_reliable(&h, 1.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // ties at the boundary stay reliable: 3 voxels share the largest value, alpha asks to drop 2
    let t = Tensor::new(&[0.1f32, 0.2, 0.9, 0.9, 0.9], &Device::Cpu).unwrap();
    assert_eq!(
        select_reliable(&t, 0.4).unwrap().to_vec1::<f32>().unwrap(),
        vec![1., 1., 1., 1., 1.]
    );
    let nan = Tensor::new(&[0.1f32, f32::NAN], &Device::Cpu).unwrap();
    assert!(select_reliable(&nan, 0.5).is_err());
}

/// The device-side threshold search equals the k-th smallest value of a sorted copy, for every k, on
/// values with ties, both zeros, negatives, subnormals and wide magnitudes.
#[test]
fn bisection_threshold_equals_sorted_selection() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(11);
    let special = [
        0.0f32,
        -0.0,
        -1e-10,
        1e-40,
        f32::MIN_POSITIVE,
        3.0e38,
        -3.0e38,
        0.25,
        0.25,
        0.25,
    ];
    let mut cases: Vec<Vec<f32>> = vec![special.to_vec(), vec![7.0], vec![2.0, 2.0, 2.0]];
    for len in [5usize, 64, 1000] {
        cases.push((0..len).map(|_| rng.random::<f32>() * 1.1).collect());
        // heavy ties: few distinct values
        cases.push(
            (0..len)
                .map(|_| (rng.random_range(0..4u8)) as f32 * 0.5)
                .collect(),
        );
    }
    for values in &cases {
        let t = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let mut sorted = values.clone();
        sorted.sort_by(f32::total_cmp);
        for k in 1..=values.len() {
            let got = reliable_threshold_by_bisection(&t, k).unwrap();
            let want = sorted[k - 1];
            // -0.0 and 0.0 compare equal and select the same voxels
            assert!(got == want, "k {k} of {values:?}: got {got}, want {want}");
        }
    }
    let t = Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap();
    assert!(reliable_threshold_by_bisection(&t, 0).is_err());
    assert!(reliable_threshold_by_bisection(&t, 3).is_err());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let t = Tensor::new(&[0.1f32, bad, 0.3], &Device::Cpu).unwrap();
        assert!(reliable_threshold_by_bisection(&t, 2).is_err(), "{bad}");
    }
}

#[test]
fn contrastive_with_absent_class_and_no_unreliable_voxel() {
    let fu = rand_f64(&[1, 4, 2, 2, 2], 1.0, 4).unwrap();
    let fl = rand_f64(&[1, 4, 2, 2, 2], 1.0, 5).unwrap();
    let zeros = Tensor::zeros((1, 2, 2, 2), DType::U32, &Device::Cpu).unwrap();
    let ones = Tensor::ones((1, 2, 2, 2), DType::F64, &Device::Cpu).unwrap();
    let cfg = ContrastiveConfig::default();
    // only class 0 anywhere: a single prototype, both terms 0
    let t = prototype_contrastive(
        &fu,
        &ones.zeros_like().unwrap(),
        &zeros,
        &fl,
        &zeros,
        3,
        &cfg,
        0,
    )
    .unwrap();
    assert_eq!((t.n_prototypes, t.n_sampled), (1, 0));
    assert_eq!(finite("pull", &t.pull) + finite("push", &t.push), 0.0);
    // every voxel reliable: no pull sample, push still defined
    let y = rand_labels(&[1, 2, 2, 2], 2, 6).unwrap();
    let t = prototype_contrastive(&fu, &ones, &y, &fl, &y, 3, &cfg, 0).unwrap();
    assert_eq!((t.n_prototypes, t.n_sampled), (2, 0));
    assert_eq!(finite("pull", &t.pull), 0.0);
    finite("push", &t.push);
    // identical prototypes (all-zero features): distance 0, push = m^2, gradient finite
    let z = candle_core::Var::zeros((1, 4, 2, 2, 2), DType::F64, &Device::Cpu).unwrap();
    let t = prototype_contrastive(z.as_tensor(), &ones, &y, z.as_tensor(), &y, 2, &cfg, 0).unwrap();
    assert!((finite("push", &t.push) - 1.0).abs() < 1e-9);
    let g = t.total().unwrap().backward().unwrap();
    let g = g.get(z.as_tensor()).unwrap();
    assert!(scalar(&g.abs().unwrap().sum_all().unwrap()).is_finite());
}

#[test]
fn sampler_caps_and_is_seeded() {
    let fu = rand_f64(&[1, 4, 8, 8, 8], 1.0, 7).unwrap();
    let fl = rand_f64(&[1, 4, 8, 8, 8], 1.0, 8).unwrap();
    let y = rand_labels(&[1, 8, 8, 8], 2, 9).unwrap();
    let unreliable = Tensor::zeros((1, 8, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let cfg = ContrastiveConfig {
        max_samples: 100,
        ..Default::default()
    };
    let run = |seed| prototype_contrastive(&fu, &unreliable, &y, &fl, &y, 2, &cfg, seed).unwrap();
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a.n_sampled, 100);
    assert_eq!(scalar(&a.pull), scalar(&b.pull));
    assert_ne!(scalar(&a.pull), scalar(&c.pull));
}

#[test]
fn pull_normalized_by_voxels_scales_the_mean_by_the_unreliable_share() {
    let fu = rand_f64(&[1, 4, 8, 8, 8], 1.0, 7).unwrap();
    let fl = rand_f64(&[1, 4, 8, 8, 8], 1.0, 8).unwrap();
    let y = rand_labels(&[1, 8, 8, 8], 2, 9).unwrap();
    // 96 of 512 voxels unreliable (the first 96 in C order)
    let rel: Vec<f64> = (0..512).map(|i| if i < 96 { 0.0 } else { 1.0 }).collect();
    let reliable = Tensor::from_vec(rel, (1, 8, 8, 8), &Device::Cpu).unwrap();
    for max_samples in [4096, 40] {
        let run = |pull_normalize| {
            let cfg = ContrastiveConfig {
                max_samples,
                pull_normalize,
                ..Default::default()
            };
            prototype_contrastive(&fu, &reliable, &y, &fl, &y, 2, &cfg, 3).unwrap()
        };
        let mean = run(PullNormalization::Sampled);
        let per_voxel = run(PullNormalization::Voxels);
        assert_eq!(mean.n_sampled, 96.min(max_samples));
        let want = scalar(&mean.pull) * 96.0 / 512.0;
        assert!((scalar(&per_voxel.pull) - want).abs() < 1e-12 * want.abs().max(1.0));
        assert_eq!(scalar(&mean.push), scalar(&per_voxel.push));
    }
}

/// One iteration on 1 labeled + 1 unlabeled item of 4^3 with the given logits for both nets.
fn assemble_with(cfg: LossConfig, logits_a: &Tensor, logits_b: &Tensor, y: &Tensor) -> LossTerms {
    let fa = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 30).unwrap()).unwrap();
    let fb = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 31).unwrap()).unwrap();
    let la = candle_core::Var::from_tensor(logits_a).unwrap();
    let lb = candle_core::Var::from_tensor(logits_b).unwrap();
    let mut obj = Objective::new(cfg, 2).unwrap();
    let input = IterationInput {
        a: NetOutputs {
            logits: la.as_tensor(),
            features: fa.as_tensor(),
        },
        b: NetOutputs {
            logits: lb.as_tensor(),
            features: fb.as_tensor(),
        },
        labels: y,
        iteration: 0,
        total_iterations: 100,
        seed: 0,
        teacher_logits: None,
        pasted: None,
    };
    let terms = obj.assemble(&input).unwrap();
    for (k, v) in terms.scalars().unwrap() {
        assert!(v.is_finite() || k == "threshold", "{k} = {v}");
    }
    finite_grads(&terms, &[&la, &lb, &fa, &fb]);
    terms
}

#[test]
fn assemble_edge_cases_are_finite() {
    let y = rand_labels(&[1, 4, 4, 4], 2, 40).unwrap();
    let logits = rand_f64(&[2, 2, 4, 4, 4], 2.0, 41).unwrap();
    let saturated = saturate(&logits);
    // saturated, identical nets: entropy 0 everywhere (all reliable), empty M_diff
    let t = assemble_with(LossConfig::default(), &saturated, &saturated, &y);
    assert_eq!((t.n_reliable, t.n_unreliable, t.n_disagree), (64, 0, 0));
    assert_eq!(scalar(&t.reg), 0.0);
    // no reliable voxel at all (alpha = 1)
    let t = assemble_with(
        LossConfig {
            alpha0: 1.0,
            ..LossConfig::default()
        },
        &logits,
        &logits,
        &y,
    );
    assert_eq!(t.n_reliable, 0);
    assert_eq!(scalar(&t.unsup), 0.0);
    // no unreliable voxel (alpha = 0)
    let t = assemble_with(
        LossConfig {
            alpha0: 0.0,
            ..LossConfig::default()
        },
        &logits,
        &logits,
        &y,
    );
    assert_eq!(t.n_unreliable, 0);
    // foreground absent from labels and predictions
    let bg = Tensor::zeros((1, 4, 4, 4), DType::U32, &Device::Cpu).unwrap();
    let all_bg = Tensor::cat(
        &[
            Tensor::full(5f64, (2, 1, 4, 4, 4), &Device::Cpu).unwrap(),
            Tensor::full(-5f64, (2, 1, 4, 4, 4), &Device::Cpu).unwrap(),
        ],
        1,
    )
    .unwrap();
    let t = assemble_with(LossConfig::default(), &all_bg, &all_bg, &bg);
    assert_eq!(t.contrast_a.n_prototypes, 1);
    // reference preset on the same edge cases
    assemble_with(LossConfig::reference_code(), &saturated, &saturated, &y);
    assemble_with(LossConfig::reference_code(), &all_bg, &all_bg, &bg);
    // supervised only: unlabeled terms are zero
    let t = assemble_with(LossConfig::supervised_only(), &logits, &logits, &y);
    let s = scalar(&t.sup_a.total().unwrap()) + scalar(&t.sup_b.total().unwrap());
    assert!((scalar(&t.total) - s).abs() < 1e-12);
}

#[test]
fn assemble_rejects_bad_shapes() {
    let la = rand_f64(&[2, 2, 4, 4, 4], 1.0, 1).unwrap();
    let f = rand_f64(&[2, 4, 4, 4, 4], 1.0, 2).unwrap();
    let mut obj = Objective::new(LossConfig::default(), 2).unwrap();
    let bad_labels = rand_labels(&[2, 4, 4, 4], 2, 3).unwrap(); // no unlabeled item left
    let input = IterationInput {
        a: NetOutputs {
            logits: &la,
            features: &f,
        },
        b: NetOutputs {
            logits: &la,
            features: &f,
        },
        labels: &bad_labels,
        iteration: 0,
        total_iterations: 10,
        seed: 0,
        teacher_logits: None,
        pasted: None,
    };
    assert!(obj
        .assemble(&input)
        .unwrap_err()
        .to_string()
        .contains("labels"));
    assert!(Objective::new(LossConfig::default(), 1).is_err());
    assert!(Objective::new(LossConfig::reference_code(), 3).is_err());
}

#[test]
fn unsup_dice_switch_leaves_the_masked_cross_entropy() {
    let y = rand_labels(&[1, 4, 4, 4], 2, 50).unwrap();
    let la = rand_f64(&[2, 2, 4, 4, 4], 2.0, 51).unwrap();
    let lb = rand_f64(&[2, 2, 4, 4, 4], 2.0, 52).unwrap();
    let with = assemble_with(LossConfig::default(), &la, &lb, &y);
    let without = assemble_with(
        LossConfig {
            unsup_dice: false,
            ..LossConfig::default()
        },
        &la,
        &lb,
        &y,
    );
    // recompute L_u by hand on the unlabeled item: the teacher's argmax, reliable by entropy, the
    // other net's masked CE (+ masked Dice)
    let teacher = with.teacher;
    let (lt, ls) = match teacher {
        Teacher::Net(Net::A) => (&la, &lb),
        Teacher::Net(Net::B) => (&lb, &la),
        Teacher::Ensemble => unreachable!("the default rule picks one net"),
    };
    let pt = candle_nn::ops::softmax(&lt.narrow(0, 1, 1).unwrap(), 1).unwrap();
    let yhat = pseudo_labels(&pt).unwrap();
    let reliable = select_reliable(&entropy(&pt).unwrap(), with.alpha).unwrap();
    let ls_u = ls.narrow(0, 1, 1).unwrap();
    let ce = scalar(&cross_entropy(&ls_u, &yhat, Some(&reliable)).unwrap());
    let ps_u = candle_nn::ops::softmax(&ls_u, 1).unwrap();
    let dice = scalar(&dice_loss(&ps_u, &yhat, Some(&reliable)).unwrap());
    assert_eq!(without.teacher, teacher);
    assert!((scalar(&without.unsup) - ce).abs() < 1e-12);
    assert!((scalar(&with.unsup) - (ce + dice)).abs() < 1e-12);
    assert!(dice > 0.0);
}

#[test]
fn alpha_floor_keeps_the_most_uncertain_voxels_out_late_in_training() {
    let y = rand_labels(&[1, 4, 4, 4], 2, 60).unwrap();
    let logits = rand_f64(&[2, 2, 4, 4, 4], 2.0, 61).unwrap();
    let input = |la: &candle_core::Var, f: &candle_core::Var, t: usize| -> LossTerms {
        let cfg = LossConfig {
            alpha_floor: 0.25,
            ..LossConfig::default()
        };
        let mut obj = Objective::new(cfg, 2).unwrap();
        let out = NetOutputs {
            logits: la.as_tensor(),
            features: f.as_tensor(),
        };
        obj.assemble(&IterationInput {
            a: out,
            b: out,
            labels: &y,
            iteration: t,
            total_iterations: 100,
            seed: 0,
            teacher_logits: None,
            pasted: None,
        })
        .unwrap()
    };
    let la = candle_core::Var::from_tensor(&logits).unwrap();
    let f = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 62).unwrap()).unwrap();
    // alpha_t = 0.2 (1 - t / 100): the floor 0.25 wins from the start; 64 unlabeled voxels, 16 unreliable
    for t in [0, 50, 99] {
        let terms = input(&la, &f, t);
        assert_eq!(terms.alpha, 0.25);
        assert_eq!((terms.n_reliable, terms.n_unreliable), (48, 16));
    }
    for bad in [f64::NAN, -0.1, 1.5] {
        let cfg = LossConfig {
            alpha_floor: bad,
            ..LossConfig::default()
        };
        assert!(
            Objective::new(cfg, 2).is_err(),
            "alpha_floor {bad} accepted"
        );
    }
}

/// One iteration's input: 1 labeled + 1 unlabeled item, the nets' logits, shared features, t of 100.
fn two_nets<'a>(
    logits: [&'a candle_core::Var; 2],
    features: &'a candle_core::Var,
    y: &'a Tensor,
    iteration: usize,
    seed: u64,
    teacher_logits: Option<[&'a Tensor; 2]>,
) -> IterationInput<'a> {
    let net = |l: &'a candle_core::Var| NetOutputs {
        logits: l.as_tensor(),
        features: features.as_tensor(),
    };
    IterationInput {
        a: net(logits[0]),
        b: net(logits[1]),
        labels: y,
        iteration,
        total_iterations: 100,
        seed,
        teacher_logits,
        pasted: None,
    }
}

#[test]
fn smoothed_teacher_logits_give_the_pseudo_labels() {
    let y = rand_labels(&[1, 4, 4, 4], 2, 70).unwrap();
    let la = candle_core::Var::from_tensor(&rand_f64(&[2, 2, 4, 4, 4], 2.0, 71).unwrap()).unwrap();
    let lb = candle_core::Var::from_tensor(&rand_f64(&[2, 2, 4, 4, 4], 2.0, 72).unwrap()).unwrap();
    let f = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 73).unwrap()).unwrap();
    let run = |teacher: Option<[&Tensor; 2]>| -> candle_core::Result<LossTerms> {
        let mut obj = Objective::new(LossConfig::default(), 2)?;
        obj.assemble(&two_nets([&la, &lb], &f, &y, 10, 3, teacher))
    };
    let (ua, ub) = (
        la.as_tensor().narrow(0, 1, 1).unwrap(),
        lb.as_tensor().narrow(0, 1, 1).unwrap(),
    );
    let live = run(None).unwrap();
    let same = run(Some([&ua, &ub])).unwrap();
    assert_eq!(scalar(&live.total), scalar(&same.total));
    // negated logits: for two classes the entropy is unchanged and every pseudo-label flips
    let (na, nb) = (ua.neg().unwrap(), ub.neg().unwrap());
    let flipped = run(Some([&na, &nb])).unwrap();
    assert_eq!(flipped.n_reliable, live.n_reliable);
    let (teacher_u, student_u) = match flipped.teacher {
        Teacher::Net(Net::A) => (&na, &ub),
        Teacher::Net(Net::B) => (&nb, &ua),
        Teacher::Ensemble => unreachable!("the default rule picks one net"),
    };
    let pt = candle_nn::ops::softmax(teacher_u, 1).unwrap();
    let yhat = pseudo_labels(&pt).unwrap();
    let reliable = select_reliable(&entropy(&pt).unwrap(), flipped.alpha).unwrap();
    let ps = candle_nn::ops::softmax(student_u, 1).unwrap();
    let expected = scalar(&cross_entropy(student_u, &yhat, Some(&reliable)).unwrap())
        + scalar(&dice_loss(&ps, &yhat, Some(&reliable)).unwrap());
    assert!((scalar(&flipped.unsup) - expected).abs() < 1e-12);
    assert!((scalar(&flipped.unsup) - scalar(&live.unsup)).abs() > 1e-3);
    // the teacher's logits must cover the unlabeled half
    let wrong = la.as_tensor().clone();
    assert!(run(Some([&wrong, &wrong])).is_err());
}

#[test]
fn ensemble_teacher_labels_from_the_mean_and_teaches_both_nets() {
    let y = rand_labels(&[1, 4, 4, 4], 3, 80).unwrap();
    let la = candle_core::Var::from_tensor(&rand_f64(&[2, 3, 4, 4, 4], 2.0, 81).unwrap()).unwrap();
    let lb = candle_core::Var::from_tensor(&rand_f64(&[2, 3, 4, 4, 4], 2.0, 82).unwrap()).unwrap();
    let f = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 83).unwrap()).unwrap();
    let cfg = LossConfig {
        teacher: TeacherRule::Ensemble,
        ..LossConfig::default()
    };
    let mut obj = Objective::new(cfg, 3).unwrap();
    let terms = obj
        .assemble(&two_nets([&la, &lb], &f, &y, 40, 9, None))
        .unwrap();
    assert_eq!(terms.teacher, Teacher::Ensemble);
    assert_eq!(terms.scalars().unwrap()["teacher_is_a"], 0.5);
    // by hand: pseudo-labels and reliable voxels of the mean softmax, CE + Dice of both nets against them
    let (ua, ub) = (
        la.as_tensor().narrow(0, 1, 1).unwrap(),
        lb.as_tensor().narrow(0, 1, 1).unwrap(),
    );
    let (pa, pb) = (
        candle_nn::ops::softmax(&ua, 1).unwrap(),
        candle_nn::ops::softmax(&ub, 1).unwrap(),
    );
    let mean = ((&pa + &pb).unwrap() * 0.5).unwrap();
    let yhat = pseudo_labels(&mean).unwrap();
    let reliable = select_reliable(&entropy(&mean).unwrap(), terms.alpha).unwrap();
    // 64 voxels, alpha_t = 0.2 * (1 - 40 / 100) = 0.12: floor(7.68) = 7 unreliable
    assert_eq!((terms.n_reliable, terms.n_unreliable), (57, 7));
    let student = |logits: &Tensor, probs: &Tensor| {
        scalar(&cross_entropy(logits, &yhat, Some(&reliable)).unwrap())
            + scalar(&dice_loss(probs, &yhat, Some(&reliable)).unwrap())
    };
    let expected = student(&ua, &pa) + student(&ub, &pb);
    assert!((scalar(&terms.unsup) - expected).abs() < 1e-12);
    // the pseudo-labels differ from either net's own somewhere, or the test shows nothing
    for own in [&pa, &pb] {
        let differ = pseudo_labels(own).unwrap().ne(&yhat).unwrap();
        assert!(scalar(&differ.to_dtype(DType::F64).unwrap().sum_all().unwrap()) > 0.0);
    }
    // both nets get a gradient from L_u alone, through their own logits only
    let grads = terms.unsup.backward().unwrap();
    for v in [&la, &lb] {
        let g = grads
            .get(v.as_tensor())
            .expect("a student without gradient");
        let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
        assert!(norm > 0.0);
    }
}

#[test]
fn pasted_truth_replaces_the_pseudo_labels_under_its_mask_and_is_reliable() {
    let y = rand_labels(&[1, 4, 4, 4], 3, 90).unwrap();
    let la = candle_core::Var::from_tensor(&rand_f64(&[2, 3, 4, 4, 4], 2.0, 91).unwrap()).unwrap();
    let lb = candle_core::Var::from_tensor(&rand_f64(&[2, 3, 4, 4, 4], 2.0, 92).unwrap()).unwrap();
    let f = candle_core::Var::from_tensor(&rand_f64(&[2, 4, 4, 4, 4], 1.0, 93).unwrap()).unwrap();
    let pasted_labels = rand_labels(&[1, 4, 4, 4], 3, 94).unwrap();
    // a 2x2x2 cube pasted at (1, 0, 2)
    let mask: Vec<f32> = (0..64)
        .map(|i| {
            let (d, h, w) = (i / 16, (i / 4) % 4, i % 4);
            f32::from((1..3).contains(&d) && h < 2 && w >= 2)
        })
        .collect();
    let mask = Tensor::from_vec(mask, (1, 4, 4, 4), &candle_core::Device::Cpu).unwrap();
    let run = |pasted: Option<PastedLabels>| -> LossTerms {
        let mut obj = Objective::new(LossConfig::default(), 3).unwrap();
        let mut input = two_nets([&la, &lb], &f, &y, 30, 5, None);
        input.pasted = pasted;
        obj.assemble(&input).unwrap()
    };
    let plain = run(None);
    let pasted = run(Some(PastedLabels {
        labels: &pasted_labels,
        mask: &mask,
    }));
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let flat_f = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (m, truth) = (
        flat_f(&mask),
        flat(&pasted_labels.to_dtype(DType::U32).unwrap()),
    );
    let (y0, y1) = (flat(&plain.pseudo_labels), flat(&pasted.pseudo_labels));
    let (r0, r1) = (flat_f(&plain.reliable), flat_f(&pasted.reliable));
    for i in 0..64 {
        if m[i] > 0.5 {
            assert_eq!((y1[i], r1[i]), (truth[i], 1.0), "voxel {i} under the paste");
        } else {
            assert_eq!(
                (y1[i], r1[i]),
                (y0[i], r0[i]),
                "voxel {i} outside the paste"
            );
        }
    }
    assert_eq!(
        pasted.n_reliable,
        r1.iter().filter(|&&r| r > 0.5).count(),
        "the reliable count includes the pasted voxels"
    );
    // a mask of the wrong shape is refused
    let wrong = Tensor::zeros((1, 4, 4, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
    let mut obj = Objective::new(LossConfig::default(), 3).unwrap();
    let mut input = two_nets([&la, &lb], &f, &y, 30, 5, None);
    input.pasted = Some(PastedLabels {
        labels: &pasted_labels,
        mask: &wrong,
    });
    assert!(obj.assemble(&input).is_err());
}

#[test]
fn per_class_reliability_drops_the_most_uncertain_share_of_each_class() {
    let dev = Device::Cpu;
    // 3 classes of 40, 10 and 7 voxels with distinct entropies (and one tie inside class 1)
    let n = 57;
    let yhat: Vec<u32> = (0..n)
        .map(|i| {
            if i < 40 {
                0
            } else if i < 50 {
                1
            } else {
                2
            }
        })
        .collect();
    let mut h: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 50.0).collect();
    h[45] = h[44];
    let alpha = 0.25;
    let mask = select_reliable_per_class(
        &Tensor::from_vec(h.clone(), n, &dev).unwrap(),
        &Tensor::from_vec(yhat.clone(), n, &dev).unwrap(),
        3,
        alpha,
    )
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    // by hand: per class, sort the entropies; the reliable threshold is the n_reliable-th smallest
    for c in 0..3u32 {
        let idx: Vec<usize> = (0..n).filter(|&i| yhat[i] == c).collect();
        let mut vals: Vec<f32> = idx.iter().map(|&i| h[i]).collect();
        vals.sort_by(f32::total_cmp);
        let n_unreliable = (alpha * idx.len() as f64).floor() as usize;
        let threshold = vals[idx.len() - n_unreliable - 1];
        for &i in &idx {
            assert_eq!(mask[i], f32::from(h[i] <= threshold), "class {c} voxel {i}");
        }
        let dropped = idx.iter().filter(|&&i| mask[i] == 0.0).count();
        assert!(
            dropped <= n_unreliable,
            "class {c}: {dropped} > {n_unreliable}"
        );
    }
    // one class everywhere: the same mask as the global rule
    let one = Tensor::zeros(n, DType::U32, &dev).unwrap();
    let ht = Tensor::from_vec(h, n, &dev).unwrap();
    assert_eq!(
        select_reliable_per_class(&ht, &one, 3, alpha)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        select_reliable(&ht, alpha)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // shapes must agree
    assert!(select_reliable_per_class(&ht, &one.narrow(0, 0, 5).unwrap(), 3, alpha).is_err());
}
