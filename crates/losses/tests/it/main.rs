//! Integration tests of duoseg-losses: finite-difference gradient checks, edge cases, schedules, config,
//! and agreement with PyTorch fixtures.

mod baselines;
mod edge;
mod fixtures;
mod gradcheck;
mod mcf_parts;
mod parts;
mod prototypes;

use candle_core::{DType, Device, Result, Tensor};

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG; tests must not depend on thread RNGs).
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// An f64 tensor of the given shape with values `scale * values(seed)`.
pub fn rand_f64(shape: &[usize], scale: f64, seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f64> = values(n, seed).into_iter().map(|x| x * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Integer labels in 0..k of the given shape.
pub fn rand_labels(shape: &[usize], k: u32, seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<u32> = values(n, seed)
        .into_iter()
        .map(|x| (((x + 1.0) / 2.0) * k as f64) as u32 % k)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Host value of a scalar tensor.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}
