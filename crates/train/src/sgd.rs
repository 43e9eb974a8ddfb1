//! SGD with momentum and weight decay, PyTorch semantics, plus the step learning-rate schedule.
//!
//! For each parameter `p` with gradient `g` (PyTorch `torch.optim.SGD`, dampening 0, no Nesterov):
//! `d = g + wd * p; buf = mu * buf + d; p -= lr * buf`. On the first step PyTorch sets `buf = d`,
//! which equals the update above with a zero-initialised buffer. A parameter with no gradient this
//! step (not in the graph) is left untouched, buffer included, as PyTorch does with `grad is None`.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, bail, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Optimiser and learning-rate schedule settings (SPEC section 2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum factor `mu`.
    pub momentum: f64,
    /// L2 weight decay `wd`, added to the gradient.
    pub weight_decay: f64,
    /// Multiply the learning rate by `lr_decay` every `lr_step` iterations.
    pub lr_step: usize,
    /// Decay factor of the step schedule.
    pub lr_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            lr_step: 2500,
            lr_decay: 0.1,
        }
    }
}

impl OptimConfig {
    /// The learning rate used at (0-based) iteration `t`: `lr * lr_decay ^ (t / lr_step)`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let steps = t.checked_div(self.lr_step).unwrap_or(0);
        self.lr * self.lr_decay.powi(steps as i32)
    }
}

/// True for tensors that are state, not trainable parameters (BatchNorm running statistics).
pub use duoseg_nn3d::is_batch_norm_buffer as is_buffer_name;

/// SGD over a named set of candle `Var`s with per-parameter momentum buffers.
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: Vec<Tensor>,
    momentum: f64,
    weight_decay: f64,
    lr: f64,
}

impl Sgd {
    /// Creates the optimiser; `params` are sorted by name so the state layout is deterministic.
    /// Names that [`is_buffer_name`] recognises are rejected: they must not be optimised.
    pub fn new(mut params: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for w in params.windows(2) {
            if w[0].0 == w[1].0 {
                bail!("sgd: parameter {} given twice", w[0].0)
            }
        }
        if let Some((name, _)) = params.iter().find(|(n, _)| is_buffer_name(n)) {
            bail!("sgd: {name} is a batch-norm buffer, not a trainable parameter")
        }
        let buffers = params
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            buffers,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            lr: cfg.lr,
        })
    }

    /// Sets the learning rate used by the next [`Sgd::step`].
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The optimised parameters, sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Applies one update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, var), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            if crate::inplace::applies(&[p, g, buf]) {
                // one pass each, in place, bit-identical to the tensor ops below
                crate::inplace::momentum_update(buf, self.momentum, g, p, self.weight_decay)?;
                crate::inplace::sgd_step(p, buf, self.lr)?;
                continue;
            }
            let d = if self.weight_decay != 0.0 {
                (g + (p * self.weight_decay)?)?
            } else {
                g.clone()
            };
            // detach: gradients and `p` carry autograd history; a buffer that kept it would chain every
            // iteration's graph (activations included) and grow memory without bound
            let new_buf = ((&*buf * self.momentum)? + d)?.detach();
            var.set(&(p - (&new_buf * self.lr)?)?)?;
            *buf = new_buf;
        }
        Ok(())
    }

    /// A copy of the momentum buffers keyed by parameter name (the buffers themselves change in
    /// place at every [`Sgd::step`]).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        self.params
            .iter()
            .zip(&self.buffers)
            .map(|((n, _), b)| Ok((n.clone(), b.copy()?)))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; every parameter must be present with its shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for ((name, var), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(t) = state.get(name) else {
                bail!("sgd state: no momentum buffer for {name}")
            };
            if t.dims() != var.dims() {
                bail!(
                    "sgd state: {name} has shape {:?}, parameter {:?}",
                    t.dims(),
                    var.dims()
                )
            }
            // a copy: the buffer is updated in place, and `state` stays the caller's
            *buf = t.to_device(var.device())?.to_dtype(var.dtype())?.copy()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    // Hand computation (PyTorch SGD, lr 0.1, mu 0.9, wd 0.01) for p0 = [1, -2], loss = sum(p^2):
    // step 1: g = 2p = [2, -4]; d = g + 0.01 p = [2.01, -4.02]; buf = d; p = p - 0.1 buf = [0.799, -1.598]
    // step 2: g = [1.598, -3.196]; d = g + 0.01 p = [1.60599, -3.21198];
    //         buf = 0.9 [2.01, -4.02] + d = [3.41499, -6.82998]; p = [0.799 - 0.341499, -1.598 + 0.682998]
    //           = [0.457501, -0.915002]
    // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01) gives the same values.
    #[test]
    fn matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[1f32, -2.0], &dev)?;
        let unused = Var::new(&[5f32], &dev)?;
        let cfg = OptimConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = Sgd::new(
            vec![("p".into(), p.clone()), ("q".into(), unused.clone())],
            &cfg,
        )?;
        for _ in 0..2 {
            let loss = p.as_tensor().sqr()?.sum_all()?;
            opt.step(&loss.backward()?)?;
        }
        let got = p.as_tensor().to_vec1::<f32>()?;
        for (g, e) in got.iter().zip([0.457501f32, -0.915002]) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        // untouched: no gradient, no weight decay
        assert_eq!(unused.as_tensor().to_vec1::<f32>()?, vec![5.0]);
        let buf = opt.state()?["p"].to_vec1::<f32>()?;
        assert!(
            (buf[0] - 3.41499).abs() < 1e-5 && (buf[1] + 6.82998).abs() < 1e-5,
            "{buf:?}"
        );
        Ok(())
    }

    #[test]
    fn state_round_trip_continues_identically() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = OptimConfig::default();
        let run = |steps: usize,
                   restore: Option<(Vec<f32>, HashMap<String, Tensor>)>|
         -> Result<(Vec<f32>, HashMap<String, Tensor>)> {
            let init = restore
                .as_ref()
                .map(|r| r.0.clone())
                .unwrap_or(vec![0.5, 1.5, -0.25]);
            let p = Var::new(init.as_slice(), &dev)?;
            let mut opt = Sgd::new(vec![("w".into(), p.clone())], &cfg)?;
            if let Some((_, s)) = &restore {
                opt.load_state(s)?;
            }
            for _ in 0..steps {
                let loss = (p.as_tensor().powf(3.0)?.sum_all()? + p.as_tensor().sum_all()?)?;
                opt.step(&loss.backward()?)?;
            }
            Ok((p.as_tensor().to_vec1()?, opt.state()?))
        };
        let (full, _) = run(4, None)?;
        let half = run(2, None)?;
        let (resumed, _) = run(2, Some(half))?;
        assert_eq!(full, resumed);
        Ok(())
    }

    #[test]
    fn rejects_buffers_and_missing_state() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[1f32], &dev)?;
        let cfg = OptimConfig::default();
        assert!(Sgd::new(vec![("bn.running_mean".into(), v.clone())], &cfg).is_err());
        let mut opt = Sgd::new(vec![("w".into(), v)], &cfg)?;
        assert!(opt.load_state(&HashMap::new()).is_err());
        Ok(())
    }

    #[test]
    fn step_schedule() {
        let c = OptimConfig::default();
        assert_eq!(c.lr_at(0), 0.01);
        assert_eq!(c.lr_at(2499), 0.01);
        assert!((c.lr_at(2500) - 0.001).abs() < 1e-15);
        assert!((c.lr_at(5999) - 0.0001).abs() < 1e-15);
    }
}
