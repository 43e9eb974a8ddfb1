//! The fused class sums of normalised features against their tensor formulation: values and gradients,
//! across chunk boundaries, with zero feature vectors and fractional weights.

use candle_core::{DType, Tensor, Var};
use duoseg_losses::*;

use crate::{rand_f64, scalar, values};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    scalar(
        &(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap(),
    )
}

/// Features `[n, c, ...spatial]` with voxel 3 of item 0 all zero, and weights `[n, k, ...]` that are
/// 0, 1 or fractional.
fn case(n: usize, c: usize, k: usize, spatial: &[usize], seed: u64) -> (Tensor, Tensor) {
    let mut fs = vec![n, c];
    fs.extend_from_slice(spatial);
    let v: usize = spatial.iter().product();
    let mut f = rand_f64(&fs, 2.0, seed)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for ch in 0..c {
        f[ch * v + 3] = 0.0;
    }
    let f = Tensor::from_vec(f, fs.as_slice(), &candle_core::Device::Cpu).unwrap();
    let mut ws = vec![n, k];
    ws.extend_from_slice(spatial);
    let w: Vec<f64> = values(n * k * v, seed + 1)
        .into_iter()
        .map(|x| {
            if x < -0.3 {
                0.0
            } else if x < 0.4 {
                1.0
            } else {
                x
            }
        })
        .collect();
    let w = Tensor::from_vec(w, ws.as_slice(), &candle_core::Device::Cpu).unwrap();
    (f, w)
}

#[test]
fn fused_class_sums_match_the_tensor_formulation() {
    // 84 voxels (one chunk); 4105 voxels (three chunks, the last partial)
    for (n, c, k, spatial) in [(2, 5, 3, vec![3, 4, 7]), (2, 3, 2, vec![4105])] {
        let (f, w) = case(n, c, k, &spatial, 7);
        let want = normalized_class_sums_reference(&f, &w).unwrap();
        let got = normalized_class_sums(&f, &w).unwrap();
        assert_eq!(got.dims(), &[k, c]);
        assert!(max_abs_diff(&got, &want) < 1e-10, "f64 {spatial:?}");
        // f32 inputs, accumulated in f64: within f32 rounding of the reference
        let (f32_, w32) = (
            f.to_dtype(DType::F32).unwrap(),
            w.to_dtype(DType::F32).unwrap(),
        );
        let got = normalized_class_sums(&f32_, &w32).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let scale = scalar(&want.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
        assert!(max_abs_diff(&got, &want) < 1e-5 * scale, "f32 {spatial:?}");
    }
    // mismatched shapes are an error
    let (f, w) = case(2, 5, 3, &[3, 4, 7], 7);
    assert!(normalized_class_sums(&f, &w.narrow(2, 0, 2).unwrap()).is_err());
    assert!(normalized_class_sums(&f, &w.narrow(0, 0, 1).unwrap()).is_err());
}

#[test]
fn fused_class_sums_gradient_matches_autograd_of_the_tensor_formulation() {
    for (n, c, k, spatial) in [(2, 5, 3, vec![3, 4, 7]), (1, 4, 2, vec![4105])] {
        let (f, w) = case(n, c, k, &spatial, 11);
        let upstream = rand_f64(&[k, c], 1.0, 12).unwrap();
        let grad = |sums: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| {
            let var = Var::from_tensor(&f).unwrap();
            let loss = (sums(var.as_tensor(), &w).unwrap() * &upstream)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            grads.get(var.as_tensor()).unwrap().clone()
        };
        let want = grad(normalized_class_sums_reference);
        let got = grad(normalized_class_sums);
        assert_eq!(got.dims(), f.dims());
        let scale = scalar(&want.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
        assert!(scale > 0.0);
        assert!(
            max_abs_diff(&got, &want) < 1e-10 * scale.max(1.0),
            "{spatial:?}: {} (scale {scale})",
            max_abs_diff(&got, &want)
        );
    }
}
