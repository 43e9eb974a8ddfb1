//! Fused batch norm + ReLU (+ residual): against the unfused composition (batch-norm op, candle
//! `relu` and `+`) for values and every gradient, against finite differences, and the layer's
//! running statistics.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use duoseg_nn3d::ops::{
    batch_norm_act_eval, batch_norm_act_train, batch_norm_eval, batch_norm_train, Epilogue,
};
use duoseg_nn3d::{batch_norm3d, BatchNorm3dConfig};

use super::batch_norm::{flat, Rng};

const EPS: f64 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Relu,
    AddRelu,
    ReluAdd,
}

const KINDS: [Kind; 3] = [Kind::Relu, Kind::AddRelu, Kind::ReluAdd];

fn epilogue(kind: Kind, r: &Tensor) -> Epilogue<'_> {
    match kind {
        Kind::Relu => Epilogue::Relu,
        Kind::AddRelu => Epilogue::AddRelu(r),
        Kind::ReluAdd => Epilogue::ReluAdd(r),
    }
}

struct Case {
    x: Var,
    r: Var,
    gamma: Var,
    beta: Var,
    mean: Tensor,
    var: Tensor,
    dy: Tensor,
}

impl Case {
    fn new(rng: &mut Rng, shape: [usize; 5], dev: &Device) -> Result<Self> {
        let len: usize = shape.iter().product();
        let c = shape[1];
        let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s.to_vec(), dev);
        Ok(Case {
            x: Var::from_tensor(&t(rng.normals(len, 0.3, 1.7), &shape)?)?,
            r: Var::from_tensor(&t(rng.normals(len, -0.2, 1.0), &shape)?)?,
            // some negative gammas, so the ReLU cuts both tails
            gamma: Var::from_tensor(&t(rng.normals(c, 0.5, 1.0), &[c])?)?,
            beta: Var::from_tensor(&t(rng.normals(c, 0.0, 0.5), &[c])?)?,
            mean: t(rng.normals(c, 0.2, 0.3), &[c])?,
            var: t(rng.normals(c, 2.0, 0.5), &[c])?.abs()?,
            dy: t(rng.normals(len, 0.0, 1.0), &shape)?,
        })
    }

    /// Output and gradients (x, r, gamma, beta) of `Σ y·dy`, fused or unfused, train or eval.
    fn run(&self, kind: Kind, fused: bool, train: bool) -> Result<Vec<Vec<f32>>> {
        let (x, r, g, b) = (
            self.x.as_tensor(),
            self.r.as_tensor(),
            self.gamma.as_tensor(),
            self.beta.as_tensor(),
        );
        let y = if fused {
            let e = epilogue(kind, r);
            if train {
                batch_norm_act_train(x, g, b, EPS, e)?.0
            } else {
                batch_norm_act_eval(x, &self.mean, &self.var, g, b, EPS, e)?
            }
        } else {
            let z = if train {
                batch_norm_train(x, g, b, EPS)?.0
            } else {
                batch_norm_eval(x, &self.mean, &self.var, g, b, EPS)?
            };
            match kind {
                Kind::Relu => z.relu()?,
                Kind::AddRelu => (z + r)?.relu()?,
                Kind::ReluAdd => (z.relu()? + r)?,
            }
        };
        let grads = (&y * &self.dy)?.sum_all()?.backward()?;
        let mut out = vec![flat(&y)?];
        for v in [&self.x, &self.r, &self.gamma, &self.beta] {
            out.push(match grads.get(v.as_tensor()) {
                Some(g) => flat(g)?,
                None => vec![0.0; v.elem_count()],
            });
        }
        Ok(out)
    }
}

#[test]
fn fused_matches_the_unfused_composition() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng(21);
    // the second shape has planes longer than one kernel chunk (32768), so chunk edges are covered
    for shape in [[2usize, 3, 3, 5, 7], [2, 2, 20, 40, 45], [1, 5, 4, 4, 1]] {
        let case = Case::new(&mut rng, shape, &dev)?;
        for kind in KINDS {
            for train in [true, false] {
                let fused = case.run(kind, true, train)?;
                let plain = case.run(kind, false, train)?;
                let names = ["y", "dx", "dr", "dgamma", "dbeta"];
                // forward values are the same f32 operations: bitwise equal
                assert_eq!(fused[0], plain[0], "{kind:?} train {train} {shape:?}: y");
                for i in 1..5 {
                    let scale = plain[i].iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    let err = fused[i]
                        .iter()
                        .zip(&plain[i])
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        err <= 1e-6 * scale,
                        "{kind:?} train {train} {shape:?}: {} differs by {err} (scale {scale})",
                        names[i]
                    );
                }
                // no residual, no residual gradient; a residual always gets one
                let r_grad_nonzero = fused[2].iter().any(|&v| v != 0.0);
                assert_eq!(r_grad_nonzero, kind != Kind::Relu, "{kind:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn fused_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng(5);
    let shape = [2usize, 2, 3, 2, 3];
    let case = Case::new(&mut rng, shape, &dev)?;
    let loss = |kind: Kind, x: &Tensor, r: &Tensor, train: bool| -> Result<f64> {
        let (g, b) = (case.gamma.as_tensor(), case.beta.as_tensor());
        let e = epilogue(kind, r);
        let y = if train {
            batch_norm_act_train(x, g, b, EPS, e)?.0
        } else {
            batch_norm_act_eval(x, &case.mean, &case.var, g, b, EPS, e)?
        };
        (y.to_dtype(DType::F64)? * case.dy.to_dtype(DType::F64)?)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let x0 = flat(case.x.as_tensor())?;
    let r0 = flat(case.r.as_tensor())?;
    let h = 1e-2f32;
    for kind in KINDS {
        for train in [true, false] {
            let got = case.run(kind, true, train)?;
            let mut checked = 0;
            for j in 0..x0.len() {
                for (which, base) in [(1usize, &x0), (2, &r0)] {
                    let (mut p, mut m) = (base.clone(), base.clone());
                    p[j] += h;
                    m[j] -= h;
                    let (xp, xm, rp, rm) = if which == 1 {
                        (p, m, r0.clone(), r0.clone())
                    } else {
                        (x0.clone(), x0.clone(), p, m)
                    };
                    let t = |v: Vec<f32>| Tensor::from_vec(v, shape.to_vec(), &dev);
                    let (lp, lm) = (
                        loss(kind, &t(xp)?, &t(rp)?, train)?,
                        loss(kind, &t(xm)?, &t(rm)?, train)?,
                    );
                    let fd = (lp - lm) / (2.0 * h as f64);
                    let g = got[which][j] as f64;
                    // a kink of the ReLU inside [−h, h] makes the difference quotient meaningless
                    let curvature = (lp + lm
                        - 2.0 * loss(kind, &t(x0.clone())?, &t(r0.clone())?, train)?)
                    .abs();
                    if curvature > 1e-3 {
                        continue;
                    }
                    checked += 1;
                    assert!(
                        (fd - g).abs() <= 5e-3 * (1.0 + g.abs()),
                        "{kind:?} train {train}: d{} [{j}] {g} vs fd {fd}",
                        if which == 1 { "x" } else { "r" }
                    );
                }
            }
            assert!(
                checked > 40,
                "{kind:?} train {train}: only {checked} smooth points"
            );
        }
    }
    Ok(())
}

#[test]
fn no_gradient_where_the_relu_input_is_exactly_zero() -> Result<()> {
    // gamma = beta = 0: bn(x) = 0 everywhere; PyTorch's ReLU passes no gradient at 0
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 24.0, &dev)?.reshape((1, 2, 3, 4, 1))?)?;
    let g = Var::from_tensor(&Tensor::zeros(2, DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(2, DType::F32, &dev)?)?;
    let (y, _) = batch_norm_act_train(
        x.as_tensor(),
        g.as_tensor(),
        b.as_tensor(),
        EPS,
        Epilogue::Relu,
    )?;
    assert!(flat(&y)?.iter().all(|&v| v == 0.0));
    let grads = y.sum_all()?.backward()?;
    let dbeta = grads.get(b.as_tensor()).map(flat).transpose()?;
    assert_eq!(dbeta, Some(vec![0.0, 0.0]));
    Ok(())
}

#[test]
fn layer_fused_forward_updates_running_stats_like_the_plain_one() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng(9);
    let shape = [2usize, 4, 3, 3, 2];
    let len: usize = shape.iter().product();
    let x = Tensor::from_vec(rng.normals(len, 1.0, 2.0), shape.to_vec(), &dev)?;
    let r = Tensor::from_vec(rng.normals(len, 0.0, 1.0), shape.to_vec(), &dev)?;
    let (map_a, map_b) = (VarMap::new(), VarMap::new());
    let bn_a = batch_norm3d(
        4,
        BatchNorm3dConfig::default(),
        VarBuilder::from_varmap(&map_a, DType::F32, &dev),
    )?;
    let bn_b = batch_norm3d(
        4,
        BatchNorm3dConfig::default(),
        VarBuilder::from_varmap(&map_b, DType::F32, &dev),
    )?;
    for train in [true, true, false] {
        let fused = bn_a.forward_act_t(&x, Epilogue::AddRelu(&r), train)?;
        let plain = (bn_b.forward_t(&x, train)? + &r)?.relu()?;
        assert_eq!(flat(&fused)?, flat(&plain)?, "train {train}");
    }
    for (a, b) in [
        (bn_a.running_mean(), bn_b.running_mean()),
        (bn_a.running_var(), bn_b.running_var()),
    ] {
        assert_eq!(flat(a)?, flat(b)?);
    }
    assert_eq!(
        bn_a.num_batches_tracked().to_scalar::<i64>()?,
        bn_b.num_batches_tracked().to_scalar::<i64>()?
    );
    assert_eq!(bn_a.num_batches_tracked().to_scalar::<i64>()?, 2);
    Ok(())
}

#[test]
fn bad_residuals_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 2, 2, 2), DType::F32, &dev)?;
    let w = Tensor::ones(3, DType::F32, &dev)?;
    let b = Tensor::zeros(3, DType::F32, &dev)?;
    let wrong = Tensor::zeros((2, 3, 2, 2, 1), DType::F32, &dev)?;
    let err = batch_norm_act_train(&x, &w, &b, EPS, Epilogue::AddRelu(&wrong))
        .unwrap_err()
        .to_string();
    assert!(err.contains("residual"), "{err}");
    let wrong_dtype = Tensor::zeros((2, 3, 2, 2, 2), DType::F64, &dev)?;
    assert!(batch_norm_act_eval(&x, &b, &w, &w, &b, EPS, Epilogue::ReluAdd(&wrong_dtype)).is_err());
    assert!(batch_norm_act_train(&x.flatten_all()?, &w, &b, EPS, Epilogue::Relu).is_err());
    Ok(())
}
