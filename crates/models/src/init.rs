//! Seeded, device-independent initialisation (candle's CPU generator cannot be seeded): the one
//! initialiser every duoseg net goes through.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use duoseg_nn3d::is_batch_norm_buffer;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Re-initialises every trainable variable of `varmap` from `seed`, as SPEC section 1 (*ref*) asks:
/// conv / conv-transpose weights (rank 5) kaiming-normal with PyTorch's fan-in `dim(1) * k^3`, std
/// `sqrt(2 / fan_in)`; biases 0; BatchNorm weights 1. BatchNorm buffers are left as they are. Variables
/// are visited in name order from one ChaCha8 generator seeded with `seed`, so the result depends only
/// on the seed and the names.
pub fn init_seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().filter(|k| !is_batch_norm_buffer(k)).collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let value = if dims.len() == 5 {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in.max(1) as f64).sqrt();
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| (std * standard_normal(&mut rng)) as f32)
                .collect();
            Tensor::from_vec(v, dims.as_slice(), var.device())?
        } else if name.ends_with("weight") {
            var.ones_like()?
        } else {
            var.zeros_like()?
        };
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// One standard normal sample (Box-Muller, the cosine half) from a ChaCha8 stream.
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Arch, NetConfig};
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn seeded(seed: u64) -> VarMap {
        let varmap = VarMap::new();
        let cfg = NetConfig {
            base_width: 4,
            ..NetConfig::default()
        };
        build(
            Arch::Resnet34,
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_seeded(&varmap, seed).unwrap();
        varmap
    }

    fn get(varmap: &VarMap, name: &str) -> Vec<f32> {
        varmap.data().lock().unwrap()[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_and_kaiming_std() {
        let (a, b, c) = (seeded(3), seeded(3), seeded(4));
        let w = "layers.2.0.c1.weight"; // [32, 16, 3, 3, 3], fan_in 432
        assert_eq!(get(&a, w), get(&b, w));
        assert_ne!(get(&a, w), get(&c, w));
        let v = get(&a, w);
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var / (2.0 / 432.0) - 1.0).abs() < 0.1, "variance {var}");
        // conv-transpose [in 64, out 32, 2, 2, 2]: fan_in = 32 * 8 as PyTorch computes it
        let v = get(&a, "u5.0.weight");
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var / (2.0 / 256.0) - 1.0).abs() < 0.1, "variance {var}");
        assert!(get(&a, "u5.0.bias").iter().all(|&x| x == 0.0));
        assert!(get(&a, "stem.1.weight").iter().all(|&x| x == 1.0));
        assert!(get(&a, "stem.1.running_var").iter().all(|&x| x == 1.0));
    }
}
