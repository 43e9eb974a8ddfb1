//! `BatchNorm3d`: fused batch normalisation over `[N, C, D, H, W]` with PyTorch semantics and names.
//!
//! Variables requested from the `VarBuilder` (the keys of a PyTorch `nn.BatchNorm3d` state dict):
//!
//! | name | shape | dtype | init | trainable |
//! |---|---|---|---|---|
//! | `weight` | `[C]` | builder's (f32) | 1 | yes |
//! | `bias` | `[C]` | builder's (f32) | 0 | yes |
//! | `running_mean` | `[C]` | builder's (f32) | 0 | no, updated in training forward |
//! | `running_var` | `[C]` | builder's (f32) | 1 | no, updated in training forward |
//! | `num_batches_tracked` | `[]` (scalar) | **i64** | 0 | no, +1 per training forward |
//!
//! `num_batches_tracked` is held as an i64 scalar, exactly as PyTorch stores it, so a state dict
//! exported with `safetensors.torch.save_file` loads both through `VarBuilder::from_mmaped_safetensors`
//! and through `VarMap::load` (which requires matching dtypes), and `VarMap::save` writes it back in
//! PyTorch's form.
//!
//! Running statistics live in candle `Var`s and are updated in place with `Var::set`, so when the
//! builder is backed by a `VarMap` the map sees (and saves) the updated values. They never receive
//! gradients (they are detached), but an optimiser built from `VarMap::all_vars()` would still see
//! them; build it from [`trainable_vars`] instead, or skip names for which [`is_batch_norm_buffer`] is
//! true (names ending in `running_mean`, `running_var` or `num_batches_tracked`).

use candle_core::{bail, DType, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder, VarMap};

use crate::ops::{self, Epilogue};
use crate::Conv3d;

/// Name suffixes of the non-trainable batch-norm buffers (PyTorch's `register_buffer` names).
pub const BATCH_NORM_BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether the variable called `name` (a full `VarMap` path such as `block_one.conv.1.running_var`)
/// is a batch-norm buffer, i.e. must not be given to an optimiser.
pub fn is_batch_norm_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BATCH_NORM_BUFFERS.contains(&last)
}

/// The trainable variables of `varmap`: every variable except batch-norm buffers, sorted by name
/// (a fixed order, so optimiser state lines up between runs).
pub fn trainable_vars(varmap: &VarMap) -> Vec<Var> {
    // a poisoned lock only means another thread panicked while holding it; the map is still whole
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut named: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(name, _)| !is_batch_norm_buffer(name))
        .collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

/// Settings of a [`BatchNorm3d`] (PyTorch defaults: eps 1e-5, momentum 0.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm3dConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Running-statistic update weight: `running = (1 − momentum)·running + momentum·batch`.
    pub momentum: f64,
}

impl Default for BatchNorm3dConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// Batch normalisation of `[N, C, D, H, W]` f32 tensors (PyTorch `nn.BatchNorm3d(C)` with affine
/// parameters and tracked running statistics).
///
/// `forward_t(x, true)` normalises with the batch mean and biased variance and updates
/// `running_mean`, `running_var` (with the unbiased batch variance) and `num_batches_tracked`;
/// `forward_t(x, false)` normalises with the running statistics and changes nothing.
#[derive(Clone, Debug)]
pub struct BatchNorm3d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    config: BatchNorm3dConfig,
}

/// A [`BatchNorm3d`] over `c` channels with its variables from `vb` (see the module docs for names).
pub fn batch_norm3d(c: usize, config: BatchNorm3dConfig, vb: VarBuilder) -> Result<BatchNorm3d> {
    if config.eps.is_nan() || config.eps < 0.0 {
        bail!("batch-norm eps must be >= 0, got {}", config.eps)
    }
    if !(0.0..=1.0).contains(&config.momentum) {
        bail!(
            "batch-norm momentum must be in [0, 1], got {}",
            config.momentum
        )
    }
    let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
    let running_mean = vb.get_with_hints(c, "running_mean", Init::Const(0.0))?;
    let running_var = vb.get_with_hints(c, "running_var", Init::Const(1.0))?;
    let num_batches_tracked =
        vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.0), DType::I64)?;
    for (name, t) in [
        ("weight", &weight),
        ("bias", &bias),
        ("running_mean", &running_mean),
        ("running_var", &running_var),
    ] {
        if t.dtype() != DType::F32 {
            bail!(
                "batch-norm {name} under {:?} must be f32, got {:?}",
                vb.prefix(),
                t.dtype()
            )
        }
    }
    Ok(BatchNorm3d {
        weight,
        bias,
        running_mean: Var::from_tensor(&running_mean)?,
        running_var: Var::from_tensor(&running_var)?,
        num_batches_tracked: Var::from_tensor(&num_batches_tracked)?,
        config,
    })
}

impl BatchNorm3d {
    /// Gamma, `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Beta, `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Running mean, `[C]` (the current value of the variable).
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// Running (unbiased) variance, `[C]`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Training forwards seen so far, as PyTorch counts them (scalar i64 tensor).
    pub fn num_batches_tracked(&self) -> &Tensor {
        self.num_batches_tracked.as_tensor()
    }

    pub fn config(&self) -> BatchNorm3dConfig {
        self.config
    }

    /// `epilogue(bn(x))` in one fused op (see [`ops::batch_norm_act_train`]): the same values as
    /// `forward_t` followed by the epilogue's ReLU and add, with fewer passes over the activation.
    /// In training mode the running statistics are updated as by `forward_t`.
    pub fn forward_act_t(&self, x: &Tensor, epilogue: Epilogue, train: bool) -> Result<Tensor> {
        if train {
            let (y, stats) =
                ops::batch_norm_act_train(x, &self.weight, &self.bias, self.config.eps, epilogue)?;
            self.update_running(&stats)?;
            Ok(y)
        } else {
            ops::batch_norm_act_eval(
                x,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                &self.weight,
                &self.bias,
                self.config.eps,
                epilogue,
            )
        }
    }

    /// `relu(self(conv(x)))` as one fused op (see [`ops::conv3d_bn_relu`]): the same values and
    /// gradients as `conv.forward(x)` then `forward_act_t(.., Epilogue::Relu, train)`, with one
    /// gradient accumulation less. In training mode the running statistics are updated.
    pub fn forward_conv_relu_t(&self, conv: &Conv3d, x: &Tensor, train: bool) -> Result<Tensor> {
        let running =
            (!train).then(|| (self.running_mean.as_tensor(), self.running_var.as_tensor()));
        let (y, stats) = ops::conv3d_bn_relu(
            x,
            conv.weight(),
            conv.bias(),
            conv.params(),
            &self.weight,
            &self.bias,
            running,
            self.config.eps,
        )?;
        if let Some(stats) = stats {
            self.update_running(&stats)?;
        }
        Ok(y)
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (y, stats) = ops::batch_norm_train(x, &self.weight, &self.bias, self.config.eps)?;
        self.update_running(&stats)?;
        Ok(y)
    }

    /// Folds one batch's statistics into the running ones (PyTorch semantics).
    fn update_running(&self, stats: &ops::BatchStats) -> Result<()> {
        let m = self.config.momentum;
        let mean = (self
            .running_mean
            .as_detached_tensor()
            .affine(1.0 - m, 0.0)?
            + stats.mean.affine(m, 0.0)?)?;
        let var = (self.running_var.as_detached_tensor().affine(1.0 - m, 0.0)?
            + stats.unbiased_var()?.affine(m, 0.0)?)?;
        let count = self.num_batches_tracked.as_detached_tensor();
        let count = (&count + count.ones_like()?)?;
        self.running_mean.set(&mean)?;
        self.running_var.set(&var)?;
        self.num_batches_tracked.set(&count)?;
        Ok(())
    }
}

impl ModuleT for BatchNorm3d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train(x)
        } else {
            ops::batch_norm_eval(
                x,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                &self.weight,
                &self.bias,
                self.config.eps,
            )
        }
    }
}
