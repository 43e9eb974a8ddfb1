//! Both nets overfit one tiny synthetic volume (a sphere in noise) on the CPU within a few dozen steps.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use duoseg_losses::{cross_entropy, dice_loss};
use duoseg_models::*;

fn sphere(n: usize, seed: u64) -> (Tensor, Tensor) {
    let c = (n as f32 - 1.0) / 2.0;
    let mut img = Vec::new();
    let mut lab = Vec::new();
    let mut s = seed;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                let r = ((i as f32 - c).powi(2) + (j as f32 - c).powi(2) + (k as f32 - c).powi(2))
                    .sqrt();
                let inside = r < n as f32 / 4.0;
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5;
                img.push(if inside { 1.0 } else { 0.0 } + noise);
                lab.push(inside as u32);
            }
        }
    }
    (
        Tensor::from_vec(img, (1, 1, n, n, n), &Device::Cpu).unwrap(),
        Tensor::from_vec(lab, (1, n, n, n), &Device::Cpu).unwrap(),
    )
}

fn dice(pred: &Tensor, y: &Tensor) -> f32 {
    let p = pred.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let y = y.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let inter = p
        .iter()
        .zip(&y)
        .filter(|(a, b)| **a == 1 && **b == 1)
        .count();
    let total = p.iter().filter(|&&a| a == 1).count() + y.iter().filter(|&&b| b == 1).count();
    2.0 * inter as f32 / total.max(1) as f32
}

const SEED: u64 = 0;

#[test]
fn both_nets_overfit_one_volume() {
    // two noisy copies: training-mode BatchNorm needs more than one value per channel at the 1^3 bottleneck
    let (x1, y1) = sphere(16, 1);
    let (x2, y2) = sphere(16, 2);
    let x = Tensor::cat(&[x1, x2], 0).unwrap();
    let y = Tensor::cat(&[y1, y2], 0).unwrap();
    for arch in [Arch::Vnet, Arch::Resnet34] {
        let varmap = VarMap::new();
        let cfg = NetConfig {
            base_width: 4,
            dropout: false,
            ..NetConfig::default()
        };
        let net = build(
            arch,
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_seeded(&varmap, SEED).unwrap();
        let mut opt = candle_nn::SGD::new(duoseg_nn3d::trainable_vars(&varmap), 0.1).unwrap();
        let mut best = 0.0f32;
        for step in 0..60 {
            let (logits, _) = net.forward_t(&x, true).unwrap();
            let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
            let loss = (cross_entropy(&logits, &y, None).unwrap()
                + dice_loss(&probs, &y, None).unwrap())
            .unwrap();
            opt.backward_step(&loss).unwrap();
            if step % 5 == 4 {
                // batch statistics: after a few dozen steps the running statistics (momentum 0.1) still lag
                let (logits, _) = net.forward_t(&x, true).unwrap();
                best = best.max(dice(&logits.argmax(1).unwrap(), &y));
                if best > 0.9 {
                    break;
                }
            }
        }
        assert!(best > 0.9, "{arch:?}: Dice {best} after 60 SGD steps");
    }
}
