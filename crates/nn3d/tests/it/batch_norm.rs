//! Batch norm: the fused op against naive f64 loops and finite differences on random shapes, the
//! `BatchNorm3d` layer's running statistics, and PyTorch fixtures written by
//! `tests/reference/nn3d_norm.py` (`torch.nn.functional.batch_norm`, `nn.BatchNorm3d`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use duoseg_nn3d::ops::{batch_norm_eval, batch_norm_train};
use duoseg_nn3d::{batch_norm3d, is_batch_norm_buffer, trainable_vars, BatchNorm3dConfig};

const EPS: f64 = 1e-5;

/// splitmix64: deterministic test data without a rand dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
    pub(crate) fn normals(&mut self, n: usize, loc: f64, scale: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (loc + scale * self.normal()) as f32)
            .collect()
    }
}

/// Naive f64 batch norm of `x` `[n, c, s]` (flattened spatial): returns y, and for upstream
/// gradient `dy`, (dx, dgamma, dbeta). `stats = None` uses batch statistics (training mode).
#[allow(clippy::type_complexity)]
fn naive(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (n, c, s): (usize, usize, usize),
    stats: Option<(&[f32], &[f32])>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let at = |i: usize, ci: usize, k: usize| (i * c + ci) * s + k;
    let m = (n * s) as f64;
    let mut y = vec![0.0; x.len()];
    let mut dx = vec![0.0; x.len()];
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for ci in 0..c {
        let values = || (0..n).flat_map(move |i| (0..s).map(move |k| at(i, ci, k)));
        let (mean, var) = match stats {
            Some((mean, var)) => (mean[ci] as f64, var[ci] as f64),
            None => {
                let mean = values().map(|j| x[j] as f64).sum::<f64>() / m;
                let var = values().map(|j| (x[j] as f64 - mean).powi(2)).sum::<f64>() / m;
                (mean, var)
            }
        };
        let inv_std = 1.0 / (var + EPS).sqrt();
        let g = gamma[ci] as f64;
        for j in values() {
            let xhat = (x[j] as f64 - mean) * inv_std;
            y[j] = xhat * g + beta[ci] as f64;
            dgamma[ci] += dy[j] as f64 * xhat;
            dbeta[ci] += dy[j] as f64;
        }
        for j in values() {
            let xhat = (x[j] as f64 - mean) * inv_std;
            dx[j] = match stats {
                Some(_) => g * inv_std * dy[j] as f64,
                None => g * inv_std / m * (m * dy[j] as f64 - dbeta[ci] - xhat * dgamma[ci]),
            };
        }
    }
    (y, dx, dgamma, dbeta)
}

/// max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-12f64, |a, v| a.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f64, |a, (&g, &w)| a.max((g as f64 - w).abs()))
        / scale
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub(crate) fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Runs the op (train or with given stats) with `loss = Σ y·dy` and returns y, dx, dgamma, dbeta.
#[allow(clippy::type_complexity)]
fn run_op(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    dy: &Tensor,
    stats: Option<(&Tensor, &Tensor)>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
    let y = match stats {
        None => batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), EPS)?.0,
        Some((mean, var)) => batch_norm_eval(
            x.as_tensor(),
            mean,
            var,
            gamma.as_tensor(),
            beta.as_tensor(),
            EPS,
        )?,
    };
    let grads = (&y * dy)?.sum_all()?.backward()?;
    let grad = |v: &Var| -> Result<Vec<f32>> {
        match grads.get(v.as_tensor()) {
            Some(g) => flat(g),
            None => candle_core::bail!("no gradient"),
        }
    };
    Ok((flat(&y)?, grad(x)?, grad(gamma)?, grad(beta)?))
}

#[test]
fn fused_op_matches_naive_loops_on_random_shapes() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng(7);
    let mut shapes: Vec<[usize; 5]> = (0..24)
        .map(|_| {
            [
                1 + rng.below(3),
                1 + rng.below(5),
                1 + rng.below(7),
                1 + rng.below(7),
                1 + rng.below(7),
            ]
        })
        .filter(|s| s[0] * s[2] * s[3] * s[4] >= 2)
        .collect();
    // planes longer than one CPU work chunk (2^15 values), odd sizes
    shapes.push([1, 2, 40, 33, 27]);
    shapes.push([2, 3, 17, 1, 1]);
    for shape in shapes {
        let [n, c, d, h, w] = shape;
        let s = d * h * w;
        let len = n * c * s;
        let loc = 4.0 * rng.normal();
        let scale = 0.1 + 3.0 * rng.uniform();
        let x = rng.normals(len, loc, scale);
        let dy = rng.normals(len, 0.0, 1.0);
        let gamma = rng.normals(c, 1.0, 0.5);
        let beta = rng.normals(c, 0.0, 1.0);
        let mean = rng.normals(c, loc, scale);
        let var: Vec<f32> = (0..c).map(|_| (0.2 + rng.uniform()) as f32).collect();
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), shape.to_vec(), &dev)?)?;
        let gv = Var::from_tensor(&Tensor::new(gamma.as_slice(), &dev)?)?;
        let bv = Var::from_tensor(&Tensor::new(beta.as_slice(), &dev)?)?;
        let dyt = Tensor::from_vec(dy.clone(), shape.to_vec(), &dev)?;
        let (mt, vt) = (
            Tensor::new(mean.as_slice(), &dev)?,
            Tensor::new(var.as_slice(), &dev)?,
        );
        for fixed in [false, true] {
            let stats = fixed.then_some((&mt, &vt));
            let got = run_op(&xv, &gv, &bv, &dyt, stats)?;
            let want = naive(
                &x,
                &dy,
                &gamma,
                &beta,
                (n, c, s),
                fixed.then_some((mean.as_slice(), var.as_slice())),
            );
            for (name, g, w) in [
                ("y", &got.0, &want.0),
                ("dx", &got.1, &want.1),
                ("dgamma", &got.2, &want.2),
                ("dbeta", &got.3, &want.3),
            ] {
                let e = rel_err(g, w);
                assert!(
                    e <= 1e-4,
                    "{name} of {shape:?} (fixed stats {fixed}): rel err {e:e}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn train_gradients_match_finite_differences() -> Result<()> {
    // The naive gradient formula against central differences of the naive f64 forward, then the
    // fused op against finite differences of its own f32 forward on a few coordinates.
    let dev = Device::Cpu;
    let mut rng = Rng(11);
    let shape = [2usize, 3, 3, 2, 4];
    let (n, c, s) = (2, 3, 24);
    let len = n * c * s;
    let x = rng.normals(len, 0.5, 1.5);
    let dy = rng.normals(len, 0.0, 1.0);
    let gamma = rng.normals(c, 1.0, 0.3);
    let beta = rng.normals(c, 0.0, 1.0);
    let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
        let (y, ..) = naive(x, &dy, gamma, beta, (n, c, s), None);
        y.iter().zip(&dy).map(|(a, &b)| a * b as f64).sum()
    };
    let (_, dx, dgamma, dbeta) = naive(&x, &dy, &gamma, &beta, (n, c, s), None);
    // f64 differences of the f32-rounded inputs: steps of 1e-2 keep the rounding error small
    let h = 1e-2f32;
    for &j in &[0usize, 17, 70, len - 1] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[j] += h;
        xm[j] -= h;
        let fd = (loss(&xp, &gamma, &beta) - loss(&xm, &gamma, &beta)) / (xp[j] - xm[j]) as f64;
        assert!(
            (fd - dx[j]).abs() <= 1e-3 * (1.0 + dx[j].abs()),
            "dx[{j}] {} vs fd {fd}",
            dx[j]
        );
    }
    for ci in 0..c {
        let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
        gp[ci] += h;
        gm[ci] -= h;
        let fd = (loss(&x, &gp, &beta) - loss(&x, &gm, &beta)) / (gp[ci] - gm[ci]) as f64;
        assert!(
            (fd - dgamma[ci]).abs() <= 1e-3 * (1.0 + fd.abs()),
            "dgamma[{ci}]"
        );
        let (mut bp, mut bm) = (beta.clone(), beta.clone());
        bp[ci] += h;
        bm[ci] -= h;
        let fd = (loss(&x, &gamma, &bp) - loss(&x, &gamma, &bm)) / (bp[ci] - bm[ci]) as f64;
        assert!(
            (fd - dbeta[ci]).abs() <= 1e-3 * (1.0 + fd.abs()),
            "dbeta[{ci}]"
        );
    }

    let op_loss = |x: &[f32]| -> Result<f64> {
        let xt = Tensor::from_vec(x.to_vec(), shape.to_vec(), &dev)?;
        let (y, _) = batch_norm_train(
            &xt,
            &Tensor::new(gamma.as_slice(), &dev)?,
            &Tensor::new(beta.as_slice(), &dev)?,
            EPS,
        )?;
        let dyt = Tensor::from_vec(dy.clone(), shape.to_vec(), &dev)?;
        (y.to_dtype(DType::F64)? * dyt.to_dtype(DType::F64)?)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), shape.to_vec(), &dev)?)?;
    let gv = Var::from_tensor(&Tensor::new(gamma.as_slice(), &dev)?)?;
    let bv = Var::from_tensor(&Tensor::new(beta.as_slice(), &dev)?)?;
    let dyt = Tensor::from_vec(dy.clone(), shape.to_vec(), &dev)?;
    let (_, op_dx, ..) = run_op(&xv, &gv, &bv, &dyt, None)?;
    for &j in &[3usize, 40, 101] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[j] += 0.05;
        xm[j] -= 0.05;
        let fd = (op_loss(&xp)? - op_loss(&xm)?) / (xp[j] - xm[j]) as f64;
        let g = op_dx[j] as f64;
        assert!(
            (fd - g).abs() <= 2e-2 * (1.0 + g.abs()),
            "op dx[{j}] {g} vs fd {fd}"
        );
    }
    Ok(())
}

#[test]
fn statistics_stay_accurate_on_a_large_offset_channel() -> Result<()> {
    // 2M values per channel around 1000 with std 0.5: naive f32 sums would lose the variance
    let dev = Device::Cpu;
    let mut rng = Rng(3);
    let shape = [2usize, 1, 128, 128, 64];
    let x = rng.normals(shape.iter().product(), 1000.0, 0.5);
    let m = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / m;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
    let xt = Tensor::from_vec(x, shape.to_vec(), &dev)?;
    let one = Tensor::ones(1, DType::F32, &dev)?;
    let (y, stats) = batch_norm_train(&xt, &one, &one.zeros_like()?, 0.0)?;
    let got_mean = stats.mean.to_vec1::<f32>()?[0] as f64;
    let got_var = stats.var.to_vec1::<f32>()?[0] as f64;
    assert!(
        (got_mean - mean).abs() <= 1e-7 * mean,
        "mean {got_mean} vs {mean}"
    );
    assert!(
        (got_var - var).abs() <= 1e-6 * var,
        "var {got_var} vs {var}"
    );
    assert_eq!(stats.count, 2 * 128 * 128 * 64);
    // the output is standardised
    let ym = y.mean_all()?.to_scalar::<f32>()?;
    let yv = y.sqr()?.mean_all()?.to_scalar::<f32>()?;
    assert!(
        ym.abs() < 1e-3 && (yv - 1.0).abs() < 1e-3,
        "y mean {ym}, mean square {yv}"
    );
    Ok(())
}

#[test]
fn layer_updates_running_stats_with_pytorch_semantics() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = BatchNorm3dConfig {
        eps: 1e-3,
        momentum: 0.25,
    };
    let bn = batch_norm3d(2, cfg, vb.pp("bn"))?;
    // fresh variables: PyTorch's initial values
    assert_eq!(bn.weight().to_vec1::<f32>()?, [1.0, 1.0]);
    assert_eq!(bn.bias().to_vec1::<f32>()?, [0.0, 0.0]);
    assert_eq!(bn.running_mean().to_vec1::<f32>()?, [0.0, 0.0]);
    assert_eq!(bn.running_var().to_vec1::<f32>()?, [1.0, 1.0]);
    assert_eq!(bn.num_batches_tracked().dtype(), DType::I64);
    assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, 0);

    // channel 0 holds 0..8, channel 1 holds 10 · (0..8): mean 3.5 / 35, unbiased var 6 / 600
    let ch0: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let ch1: Vec<f32> = ch0.iter().map(|v| 10.0 * v).collect();
    let x = Tensor::from_vec([ch0, ch1].concat(), (1, 2, 2, 2, 2), &dev)?;
    let mut want_mean = [0.0f64, 0.0];
    let mut want_var = [1.0f64, 1.0];
    for step in 1..=3 {
        let y = bn.forward_t(&x, true)?;
        for (k, (bm, bv)) in [(3.5, 6.0), (35.0, 600.0)].into_iter().enumerate() {
            want_mean[k] = 0.75 * want_mean[k] + 0.25 * bm;
            want_var[k] = 0.75 * want_var[k] + 0.25 * bv;
        }
        let (rm, rv) = (
            bn.running_mean().to_vec1::<f32>()?,
            bn.running_var().to_vec1::<f32>()?,
        );
        for k in 0..2 {
            assert!((rm[k] as f64 - want_mean[k]).abs() < 1e-4 * (1.0 + want_mean[k]));
            assert!((rv[k] as f64 - want_var[k]).abs() < 1e-4 * want_var[k]);
        }
        assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, step);
        // the VarMap holds the same, updated variables
        let data = varmap.data().lock().expect("lock");
        assert_eq!(data["bn.running_mean"].to_vec1::<f32>()?, rm);
        assert_eq!(data["bn.num_batches_tracked"].to_scalar::<i64>()?, step);
        drop(data);
        // training output uses the batch statistics, biased variance
        let y0 = y.flatten_all()?.to_vec1::<f32>()?[0] as f64;
        assert!((y0 - (-3.5 / (5.25f64 + 1e-3).sqrt())).abs() < 1e-5, "{y0}");
    }
    // eval uses the running statistics and leaves them alone
    let y = bn.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
    let want = (7.0 - want_mean[0]) / (want_var[0] + 1e-3).sqrt();
    assert!((y[7] as f64 - want).abs() < 1e-4, "{} vs {want}", y[7]);
    assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, 3);

    // buffers are told apart by name; an optimiser gets weight and bias only
    let names: Vec<String> = {
        let data = varmap.data().lock().expect("lock");
        let mut names: Vec<String> = data.keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(
        names,
        [
            "bn.bias",
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight"
        ]
    );
    let trainable = trainable_vars(&varmap);
    assert_eq!(trainable.len(), 2);
    assert_eq!(trainable[0].to_vec1::<f32>()?, [0.0, 0.0]); // bias sorts first
    assert!(is_batch_norm_buffer("block_one.conv.1.running_var"));
    assert!(is_batch_norm_buffer("num_batches_tracked"));
    assert!(!is_batch_norm_buffer("block_one.conv.1.weight"));
    assert!(!is_batch_norm_buffer("my_running_mean_scale"));
    Ok(())
}

#[test]
fn layer_rejects_bad_config_and_input() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let bad = BatchNorm3dConfig {
        eps: 1e-5,
        momentum: 1.5,
    };
    assert!(batch_norm3d(3, bad, vb.pp("a")).is_err());
    let bn = batch_norm3d(3, BatchNorm3dConfig::default(), vb.pp("b"))?;
    let wrong_c = Tensor::zeros((2, 4, 2, 2, 2), DType::F32, &dev)?;
    let err = bn.forward_t(&wrong_c, true).unwrap_err().to_string();
    assert!(err.contains("[3]"), "{err}");
    assert!(bn.forward_t(&wrong_c, false).is_err());
    // a failed training forward leaves the running statistics untouched
    assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, 0);
    Ok(())
}

fn fixture(name: &str) -> Result<HashMap<String, Tensor>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/nn3d")
        .join(name);
    candle_core::safetensors::load(path, &Device::Cpu)
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{name}");
    let e = rel_err(&flat(got)?, &to_f64(&flat(want)?));
    assert!(e <= 1e-4, "{name}: rel err {e:e}");
    Ok(())
}

#[test]
fn matches_pytorch_functional_batch_norm() -> Result<()> {
    // tests/reference/nn3d_norm.py: F.batch_norm(x, rm, rv, w, b, training, momentum=0.1, eps=1e-5)
    let f = fixture("batch_norm_functional.safetensors")?;
    let dev = Device::Cpu;
    for i in 0..4 {
        let t = |k: &str| f[&format!("case{i}.{k}")].clone();
        let c = t("weight").dim(0)?;
        for (mode, train) in [("train", true), ("eval", false)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let bn = batch_norm3d(c, BatchNorm3dConfig::default(), vb)?;
            varmap
                .data()
                .lock()
                .expect("lock")
                .iter()
                .try_for_each(|(k, v)| match k.as_str() {
                    "weight" | "bias" => v.set(&t(k)),
                    "running_mean" | "running_var" => v.set(&t(&format!("{k}_in"))),
                    _ => Ok(()),
                })?;
            let x = Var::from_tensor(&t("x"))?;
            let y = bn.forward_t(x.as_tensor(), train)?;
            let grads = (&y * t("dy"))?.sum_all()?.backward()?;
            let what = |k: &str| format!("case{i} {mode} {k}");
            assert_close(&what("y"), &y, &t(&format!("y_{mode}")))?;
            let dx = grads.get(x.as_tensor()).expect("dx");
            assert_close(&what("dx"), dx, &t(&format!("dx_{mode}")))?;
            let dw = grads.get(bn.weight()).expect("dweight");
            assert_close(&what("dweight"), dw, &t(&format!("dweight_{mode}")))?;
            let db = grads.get(bn.bias()).expect("dbias");
            assert_close(&what("dbias"), db, &t(&format!("dbias_{mode}")))?;
            assert_close(
                &what("running_mean"),
                bn.running_mean(),
                &t(&format!("running_mean_{mode}")),
            )?;
            assert_close(
                &what("running_var"),
                bn.running_var(),
                &t(&format!("running_var_{mode}")),
            )?;
            // no gradient reaches the running statistics
            assert!(grads.get(bn.running_mean()).is_none());
        }
    }
    Ok(())
}

#[test]
fn loads_and_continues_a_pytorch_batch_norm_state_dict() -> Result<()> {
    // tests/reference/nn3d_norm.py: nn.BatchNorm3d(4) after two training forwards ("state.*")
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/nn3d/batch_norm_module.safetensors");
    let f = fixture("batch_norm_module.safetensors")?;
    let dev = Device::Cpu;
    assert_eq!(f["state.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(f["state.num_batches_tracked"].dims(), [0usize; 0]);

    // straight from the file (inference-style loading)
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev)? };
    let bn = batch_norm3d(4, BatchNorm3dConfig::default(), vb.pp("state"))?;
    assert_close("eval", &bn.forward_t(&f["x3"], false)?, &f["y3_eval"])?;
    assert_close("train", &bn.forward_t(&f["x3"], true)?, &f["y3_train"])?;
    assert_close("running_mean", bn.running_mean(), &f["after.running_mean"])?;
    assert_close("running_var", bn.running_var(), &f["after.running_var"])?;
    assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, 3);

    // into a VarMap (training-style loading), then saved back in PyTorch's form
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let bn = batch_norm3d(4, BatchNorm3dConfig::default(), vb.pp("state"))?;
    varmap.load(&path)?;
    assert_eq!(bn.num_batches_tracked().to_scalar::<i64>()?, 2);
    assert_close(
        "train via varmap",
        &bn.forward_t(&f["x3"], true)?,
        &f["y3_train"],
    )?;
    let saved = std::env::temp_dir().join(format!("duoseg-bn-{}.safetensors", std::process::id()));
    varmap.save(&saved)?;
    let back = candle_core::safetensors::load(&saved, &dev)?;
    std::fs::remove_file(&saved).ok();
    assert_eq!(back["state.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(back["state.num_batches_tracked"].to_scalar::<i64>()?, 3);
    for k in ["weight", "bias", "running_mean", "running_var"] {
        assert_close(k, &back[&format!("state.{k}")], &f[&format!("after.{k}")])?;
    }
    Ok(())
}
