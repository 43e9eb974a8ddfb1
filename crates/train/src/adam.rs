//! Adam, PyTorch semantics (`torch.optim.Adam`, no weight decay, no AMSGrad): SASSNet trains its
//! discriminator with it (lr 1e-4, betas (0.9, 0.99)).
//!
//! At step `t` (1-based) for each parameter `p` with gradient `g`: `m = b1 m + (1 - b1) g`,
//! `v = b2 v + (1 - b2) g^2`, `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, bail, Result, Tensor, Var};

/// Adam over a named set of candle `Var`s.
pub struct Adam {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
}

impl Adam {
    /// Creates the optimiser with zero moments; `params` are sorted by name.
    pub fn new(mut params: Vec<(String, Var)>, lr: f64, betas: (f64, f64)) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_>>()?;
        Ok(Adam {
            params,
            m,
            v,
            step: 0,
            lr,
            betas,
            eps: 1e-8,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update from the gradients of a backward pass; parameters without a gradient keep
    /// their value and moments.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let t = self.step as i32;
        let step_size = self.lr / (1.0 - b1.powi(t));
        let bias2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for (((_, var), m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + self.eps)?;
            let p = var.as_tensor().detach();
            var.set(&(p - (m.div(&denom)? * step_size)?)?)?;
        }
        Ok(())
    }

    /// The moments keyed `m.<name>` / `v.<name>`, and the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for (((name, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            out.insert(format!("m.{name}"), m.clone());
            out.insert(format!("v.{name}"), v.clone());
        }
        (out, self.step)
    }

    /// Restores what [`Adam::state`] returned; every parameter's moments must be present with its
    /// shape.
    pub fn load_state(&mut self, moments: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        for (((name, var), m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
            for (kind, slot) in [("m", m), ("v", v)] {
                let key = format!("{kind}.{name}");
                let Some(t) = moments.get(&key) else {
                    bail!("adam state: no {key}")
                };
                if t.dims() != var.dims() {
                    bail!(
                        "adam state: {key} has shape {:?}, parameter {:?}",
                        t.dims(),
                        var.dims()
                    )
                }
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps on `f(p) = sum(c p^2)` against the update written out in f64.
    #[test]
    fn matches_the_update_written_out() -> Result<()> {
        let c = [0.5f64, -2.0, 3.0];
        let p0 = [1.0f64, 0.25, -0.7];
        let var = Var::new(&p0.map(|x| x as f32), &Device::Cpu)?;
        let coef = Tensor::new(&c.map(|x| x as f32), &Device::Cpu)?;
        let (lr, b1, b2, eps) = (0.1, 0.9, 0.99, 1e-8);
        let mut adam = Adam::new(vec![("w".into(), var.clone())], lr, (b1, b2))?;
        let (mut p, mut m, mut v) = (p0, [0.0; 3], [0.0; 3]);
        for t in 1..=3 {
            let loss = (var.as_tensor().sqr()? * &coef)?.sum_all()?;
            adam.step(&loss.backward()?)?;
            for i in 0..3 {
                let g = 2.0 * c[i] * p[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        let got = var.as_tensor().to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(p) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        // the state round-trips
        let (moments, steps) = adam.state();
        assert_eq!(steps, 3);
        let mut other = Adam::new(vec![("w".into(), var.clone())], lr, (b1, b2))?;
        other.load_state(&moments, steps)?;
        assert_eq!(other.steps(), 3);
        assert!(other.load_state(&BTreeMap::new(), 1).is_err());
        Ok(())
    }
}
