//! Closed-form values: schedules, threshold rules, teacher rule, Dice/CE on hand-made inputs, config.

use candle_core::{Device, Tensor};
use duoseg_losses::*;

use crate::scalar;

#[test]
fn lambda_schedules() {
    let ramp = LambdaSchedule {
        weight: 0.1,
        shape: ScheduleShape::RampUp,
    };
    assert!((ramp.at(0, 6000) - 0.1 * (-5f64).exp()).abs() < 1e-15);
    assert!((ramp.at(3000, 6000) - 0.1 * (-1.25f64).exp()).abs() < 1e-15);
    assert_eq!(ramp.at(6000, 6000), 0.1);
    let paper = LambdaSchedule {
        weight: 0.1,
        shape: ScheduleShape::PaperPrinted,
    };
    assert!((paper.at(0, 6000) - 0.1 * 4f64.exp()).abs() < 1e-12);
    assert_eq!(paper.at(6000, 6000), 0.1);
    assert_eq!(
        LambdaSchedule {
            weight: 1.0,
            shape: ScheduleShape::Constant
        }
        .at(17, 6000),
        1.0
    );
    assert!((alpha_schedule(0.2, 1500, 6000) - 0.15).abs() < 1e-15);
    assert_eq!(alpha_schedule(0.2, 7000, 6000), 0.0);
}

#[test]
fn threshold_rules() {
    let mut t = DynamicThreshold::new(ThresholdRule::default(), 2);
    assert_eq!(t.ema(), 0.5);
    assert_eq!(t.update(1.0, 0, 100), 0.5005);
    assert!((t.ema() - 0.5005).abs() < 1e-15);
    t.set_ema(0.99);
    assert_eq!(t.update(1.0, 1, 100), 0.95, "clamped to max");
    let mut low = DynamicThreshold::new(ThresholdRule::default(), 4);
    assert_eq!(low.update(0.3, 0, 100), 0.5, "clamped to min");
    assert_eq!(low.update(f64::NAN, 0, 100), 0.5);
    assert!(low.ema().is_finite());
    let mut fixed = DynamicThreshold::new(ThresholdRule::Fixed { value: 0.6 }, 2);
    assert_eq!(fixed.update(0.99, 5, 10), 0.6);
    let mut lin = DynamicThreshold::new(
        ThresholdRule::Linear {
            start: 0.5,
            end: 0.9,
        },
        2,
    );
    assert!((lin.update(0.0, 50, 100) - 0.7).abs() < 1e-15);
}

#[test]
fn teacher_rule() {
    assert_eq!(
        choose_teacher(TeacherRule::LowerSupervised, (0.5, 0.3), (0.2, 0.5)),
        Teacher::Net(Net::B)
    );
    assert_eq!(
        choose_teacher(TeacherRule::LowerDice, (0.5, 0.3), (0.2, 0.5)),
        Teacher::Net(Net::A)
    );
    assert_eq!(
        choose_teacher(TeacherRule::LowerSupervised, (0.4, 0.4), (0.4, 0.4)),
        Teacher::Net(Net::A)
    );
    assert_eq!(
        choose_teacher(TeacherRule::Ensemble, (0.1, 0.1), (0.9, 0.9)),
        Teacher::Ensemble
    );
    let shares = [
        Teacher::Net(Net::A),
        Teacher::Net(Net::B),
        Teacher::Ensemble,
    ]
    .map(Teacher::share_of_a);
    assert_eq!(shares, [1.0, 0.0, 0.5]);
}

#[test]
fn dice_and_ce_by_hand() {
    // 4 voxels, 2 classes: p_fg = [0.9, 0.2, 0.6, 0.1], y = [1, 0, 1, 0]
    let pfg = [0.9f32, 0.2, 0.6, 0.1];
    let mut v = Vec::new();
    v.extend(pfg.iter().map(|p| 1.0 - p));
    v.extend(pfg);
    let p = Tensor::from_vec(v, (1, 2, 4), &Device::Cpu).unwrap();
    let y = Tensor::new(&[[1u32, 0, 1, 0]], &Device::Cpu).unwrap();
    let inter = 0.9 + 0.6;
    let denom = 0.81 + 0.04 + 0.36 + 0.01 + 2.0;
    let want = 1.0 - (2.0 * inter + 1e-5) / (denom + 1e-5);
    assert!((scalar(&dice_loss(&p, &y, None).unwrap()) - want).abs() < 1e-6);
    // CE on log-probabilities as logits: -mean log p_y
    let ce = cross_entropy(&p.log().unwrap(), &y, None).unwrap();
    let want = -(0.9f64.ln() + 0.8f64.ln() + 0.6f64.ln() + 0.9f64.ln()) / 4.0;
    assert!((scalar(&ce) - want).abs() < 1e-6);
    let mask = Tensor::new(&[[1f32, 0., 0., 1.]], &Device::Cpu).unwrap();
    let ce = cross_entropy(&p.log().unwrap(), &y, Some(&mask)).unwrap();
    assert!((scalar(&ce) + (0.9f64.ln() + 0.9f64.ln()) / 2.0).abs() < 1e-6);
    // entropy of a uniform 2-class prediction = ln 2
    let u = Tensor::full(0.5f32, (1, 2, 1), &Device::Cpu).unwrap();
    assert!((scalar(&entropy(&u).unwrap().sum_all().unwrap()) - 2f64.ln()).abs() < 1e-6);
}

#[test]
fn disagreement_mask_by_hand() {
    // voxel 0: both confident, disagree -> 1; voxel 1: agree -> 0; voxel 2: B unsure -> 0
    let pa = Tensor::new(&[[[0.9f32, 0.1, 0.9], [0.1, 0.9, 0.1]]], &Device::Cpu).unwrap();
    let pb = Tensor::new(&[[[0.2f32, 0.1, 0.45], [0.8, 0.9, 0.55]]], &Device::Cpu).unwrap();
    let m = disagreement_mask(&pa, &pb, 0.6).unwrap();
    assert_eq!(
        m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![1., 0., 0.]
    );
    let reg = consistency_l1(&pa, &pb, &m).unwrap();
    assert!((scalar(&reg) - 1.4).abs() < 1e-6);
    // per-voxel normalisation: the same sum over the 3 voxels
    let per_voxel = consistency_l1_normalized(&pa, &pb, &m, RegNormalization::Voxels).unwrap();
    assert!((scalar(&per_voxel) - 1.4 / 3.0).abs() < 1e-6);
    let none = Tensor::zeros((1, 1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    for n in [RegNormalization::Voxels, RegNormalization::Disagreement] {
        assert_eq!(
            scalar(&consistency_l1_normalized(&pa, &pb, &none, n).unwrap()),
            0.0
        );
    }
}

#[test]
fn config_round_trip_and_strictness() {
    for cfg in [
        LossConfig::default(),
        LossConfig::reference_code(),
        LossConfig::supervised_only(),
    ] {
        let s = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<LossConfig>(&s).unwrap(), cfg);
    }
    let partial: LossConfig =
        serde_json::from_str(r#"{"use_reg": false, "threshold": {"kind": "fixed", "value": 0.6}}"#)
            .unwrap();
    assert!(!partial.use_reg && partial.use_contrastive);
    assert_eq!(partial.threshold, ThresholdRule::Fixed { value: 0.6 });
    let err = serde_json::from_str::<LossConfig>(r#"{"use_regg": false}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field"), "{err}");
    let d = LossConfig::default();
    assert_eq!(
        (
            d.alpha0,
            d.contrastive.tau,
            d.contrastive.margin,
            d.contrastive.max_samples
        ),
        (0.2, 0.1, 1.0, 4096)
    );
    assert_eq!(
        d.lambda_c,
        LambdaSchedule {
            weight: 0.1,
            shape: ScheduleShape::RampUp
        }
    );
}
