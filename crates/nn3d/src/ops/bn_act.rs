//! Batch normalisation fused with the ReLU (and residual add) that follows it, with autograd.
//!
//! [`batch_norm_act_train`] and [`batch_norm_act_eval`] compute `bn(x)` followed by an
//! [`Epilogue`]: `relu(bn(x))`, `relu(bn(x) + r)` or `relu(bn(x)) + r`. The values are exactly those
//! of the unfused composition ([`super::batch_norm_train`] / [`super::batch_norm_eval`], then
//! candle's `relu` and `+`): the same f32 operations in the same order. The gradients are those of
//! the composition too, except at points where the ReLU input is exactly 0, where the fused op
//! passes no gradient (PyTorch's convention; candle's `relu` passes it).
//!
//! Why: on the CPU, candle's backward of `relu` takes five passes over the activation (a zero
//! tensor, a comparison, a cast, a product, the accumulation into a fresh zero gradient) and each
//! extra graph node costs another zero-fill and add. One fused node needs, for its backward, one
//! pass that reads `x` and `dy` (plus `r` for [`Epilogue::AddRelu`]) and sums `Σ g`, `Σ g·(x − mean)`
//! with `g = dy·[relu input > 0]`, and one pass that writes `dx`. The ReLU mask is recomputed from
//! `x` (and `r`) with the forward's own formula, so it is exactly the forward's decision.
//!
//! | op | inputs | output |
//! |---|---|---|
//! | [`BnAct`] as `CustomOp2` ([`Epilogue::Relu`]) | `x`, params `[4, C]` = (mean, var, gamma, beta) | `y` |
//! | [`BnAct`] as `CustomOp3` (residual epilogues) | `x`, `r`, params `[4, C]` | `y` |
//!
//! The statistics rows of `params` never receive a gradient (in training mode their dependence on `x`
//! is part of the `dx` formula, as in [`super::batch_norm_train`]).
//!
//! Device support: CPU kernels only. On other devices the entry points compose the unfused ops
//! (which have CUDA kernels), so callers need not care.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::batch_norm::{
    batch_norm_eval, batch_norm_train, channel_map, check_input, chunks, contiguous_f32,
    masked_sums, planes, rows_f32, same_shape, BatchStats, ChannelStats, StatsSource,
};
use crate::memory;

/// What follows the batch normalisation `z = bn(x)` in a fused op.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `relu(z)`.
    Relu,
    /// `relu(z + r)`: a residual added before the activation (ResNet basic block).
    AddRelu(&'a Tensor),
    /// `relu(z) + r`: a skip added after the activation (V-Net decoder).
    ReluAdd(&'a Tensor),
}

impl<'a> Epilogue<'a> {
    fn residual(&self) -> Option<&'a Tensor> {
        match *self {
            Epilogue::Relu => None,
            Epilogue::AddRelu(r) | Epilogue::ReluAdd(r) => Some(r),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Epilogue::Relu => Kind::Relu,
            Epilogue::AddRelu(_) => Kind::AddRelu,
            Epilogue::ReluAdd(_) => Kind::ReluAdd,
        }
    }

    /// The epilogue in plain candle ops, applied to `z = bn(x)`.
    fn apply_unfused(&self, z: &Tensor) -> Result<Tensor> {
        match *self {
            Epilogue::Relu => z.relu(),
            Epilogue::AddRelu(r) => (z + r)?.relu(),
            Epilogue::ReluAdd(r) => z.relu()? + r,
        }
    }
}

/// [`Epilogue`] without the residual tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Relu,
    AddRelu,
    ReluAdd,
}

/// `epilogue(bn(x))` with batch statistics (training mode): the fused form of
/// [`super::batch_norm_train`] followed by the epilogue. Returns the output and the batch statistics
/// (detached), from which the caller updates running statistics. Gradients flow to `x`, `weight`,
/// `bias` and the residual.
pub fn batch_norm_act_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue,
) -> Result<(Tensor, BatchStats)> {
    if !x.device().is_cpu() {
        let (z, stats) = batch_norm_train(x, weight, bias, eps)?;
        return Ok((epilogue.apply_unfused(&z)?, stats));
    }
    let (c, count) = check_input(x, weight, bias, eps)?;
    if count < 2 {
        bail!(
            "batch-norm in training mode needs more than 1 value per channel, input shape {:?}",
            x.dims()
        )
    }
    check_residual(x, &epilogue)?;
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?; // [2, C]
    let params = Tensor::cat(&[&stats, &Tensor::stack(&[weight, bias], 0)?], 0)?;
    let y = apply(&x, &params, eps, StatsSource::Batch, &epilogue)?;
    let stats = BatchStats {
        mean: stats.get(0)?,
        var: stats.get(1)?,
        count,
    };
    debug_assert_eq!(stats.mean.dims(), [c]);
    Ok((y, stats))
}

/// `epilogue(bn(x))` with given statistics (eval mode): the fused form of
/// [`super::batch_norm_eval`] followed by the epilogue. `mean` and `var` are constants (detached).
pub fn batch_norm_act_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    epilogue: Epilogue,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let z = batch_norm_eval(x, mean, var, weight, bias, eps)?;
        return epilogue.apply_unfused(&z);
    }
    let (c, _) = check_input(x, weight, bias, eps)?;
    for (name, t) in [("mean", mean), ("variance", var)] {
        if t.dims() != [c] || t.dtype() != candle_core::DType::F32 {
            bail!(
                "batch-norm {name} must be f32 [{c}], got {:?} {:?}",
                t.dtype(),
                t.dims()
            )
        }
    }
    check_residual(x, &epilogue)?;
    let x = x.contiguous()?;
    let params = Tensor::stack(&[&mean.detach(), &var.detach(), weight, bias], 0)?;
    apply(&x, &params, eps, StatsSource::Fixed, &epilogue)
}

fn check_residual(x: &Tensor, epilogue: &Epilogue) -> Result<()> {
    if let Some(r) = epilogue.residual() {
        if r.dims() != x.dims() || r.dtype() != x.dtype() || !r.device().same_device(x.device()) {
            bail!(
                "batch-norm residual must match the input ({:?} {:?}), got {:?} {:?}",
                x.dtype(),
                x.dims(),
                r.dtype(),
                r.dims()
            )
        }
    }
    Ok(())
}

fn apply(
    x: &Tensor,
    params: &Tensor,
    eps: f64,
    source: StatsSource,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let op = BnAct {
        eps,
        source,
        kind: epilogue.kind(),
    };
    match epilogue.residual() {
        None => x.apply_op2(params, op),
        Some(r) => x.apply_op3(&r.contiguous()?, params, op),
    }
}

/// The fused op: `x` `[N, C, D, H, W]`, optional residual `r` of the same shape, params `[4, C]`
/// (mean, biased variance, gamma, beta). See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct BnAct {
    pub(super) eps: f64,
    pub(super) source: StatsSource,
    pub(super) kind: Kind,
}

/// Per-channel forward constants `(mean, scale, beta)`, computed exactly as
/// `BatchNormForward` does, so `(x − mean)·scale + beta` is the unfused op's value.
fn forward_coeffs(params: &[f32], c: usize, eps: f64) -> Vec<[f32; 3]> {
    (0..c)
        .map(|ci| {
            let (mean, var, gamma, beta) = (
                params[ci],
                params[c + ci],
                params[2 * c + ci],
                params[3 * c + ci],
            );
            let scale = (gamma as f64 / (var as f64 + eps).sqrt()) as f32;
            [mean, scale, beta]
        })
        .collect()
}

impl BnAct {
    pub(super) fn forward_cpu(
        &self,
        x: (&CpuStorage, &Layout),
        r: Option<(&CpuStorage, &Layout)>,
        p: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let xd = contiguous_f32(x.0, x.1, "input")?;
        let (_, c, plane) = planes(x.1)?;
        let params = rows_f32(p.0, p.1, 4, c, "parameters")?;
        let k = forward_coeffs(params, c, self.eps);
        let rd = match r {
            Some((s, l)) => {
                same_shape(x.1, l)?;
                Some(contiguous_f32(s, l, "residual")?)
            }
            None => None,
        };
        let y = match (self.kind, rd) {
            (Kind::Relu, None) => channel_map(
                xd,
                None,
                (plane, c),
                |ci| k[ci],
                |[m, s, b], xv, _| ((xv - m) * s + b).max(0.0),
            ),
            (Kind::AddRelu, Some(rd)) => channel_map(
                xd,
                Some(rd),
                (plane, c),
                |ci| k[ci],
                |[m, s, b], xv, rv| ((xv - m) * s + b + rv).max(0.0),
            ),
            (Kind::ReluAdd, Some(rd)) => channel_map(
                xd,
                Some(rd),
                (plane, c),
                |ci| k[ci],
                |[m, s, b], xv, rv| ((xv - m) * s + b).max(0.0) + rv,
            ),
            (kind, r) => bail!(
                "batch-norm epilogue {kind:?} called with{} a residual",
                if r.is_some() { "" } else { "out" }
            ),
        };
        Ok((CpuStorage::F32(y), x.1.shape().clone()))
    }

    /// `(dx, dr, dparams)` for upstream gradient `dy`.
    pub(super) fn backward(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        params: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let _timer = crate::profile::Timer::start("nn3d-bn-act-backward");
        let dy = dy.contiguous()?;
        let (_, c, _, _, _) = x.dims5()?;
        let p = params.detach().flatten_all()?.to_vec1::<f32>()?;
        if p.len() != 4 * c {
            bail!(
                "batch-norm parameters must be [4, {c}], got {:?}",
                params.dims()
            )
        }
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let r_guard = r.map(|r| r.storage_and_layout());
        let (xd, gd) = match (&*xs, &*gs) {
            (Storage::Cpu(xs), Storage::Cpu(gs)) => (
                contiguous_f32(xs, xl, "input")?,
                contiguous_f32(gs, gl, "output gradient")?,
            ),
            _ => bail!("the fused batch-norm backward runs on the CPU only"),
        };
        same_shape(xl, gl)?;
        let rd = match &r_guard {
            Some((rs, rl)) => match &**rs {
                Storage::Cpu(rs) => Some(contiguous_f32(rs, rl, "residual")?),
                _ => bail!("the fused batch-norm backward runs on the CPU only"),
            },
            None => None,
        };
        let (n, _, plane) = planes(xl)?;
        let fk = forward_coeffs(&p, c, self.eps);
        let mean = &p[..c];

        // pass 1: Σ g and Σ g·(x − mean) per channel, with g = dy·[relu input > 0]; for AddRelu
        // g is also kept, as it is the residual's gradient and pass 2's input
        let items = chunks(n * c, plane);
        let mut g_buf = (self.kind == Kind::AddRelu).then(|| memory::f32_buffer(xd.len()));
        let mut pieces: Vec<Option<&mut [MaybeUninit<f32>]>> = match g_buf.as_mut() {
            Some(buf) => split_pieces(buf, &items).into_iter().map(Some).collect(),
            None => items.iter().map(|_| None).collect(),
        };
        let kind = self.kind;
        let partial: Vec<(f64, f64)> = pieces
            .par_iter_mut()
            .zip(items.par_iter())
            .map(|(out, &(pl, lo, hi))| {
                let ci = pl % c;
                let range = pl * plane + lo..pl * plane + hi;
                let xs = &xd[range.clone()];
                let gs = &gd[range.clone()];
                let [m, s, b] = fk[ci];
                let mu = mean[ci] as f64;
                match (kind, rd, out.as_deref_mut()) {
                    (Kind::AddRelu, Some(rd), Some(out)) => {
                        let rs = &rd[range];
                        for ((o, (&xv, &rv)), &gv) in out.iter_mut().zip(xs.iter().zip(rs)).zip(gs)
                        {
                            o.write(if (xv - m) * s + b + rv > 0.0 { gv } else { 0.0 });
                        }
                        // SAFETY: every element of `out` was written just above
                        let g: &[f32] =
                            unsafe { &*(out as *const [MaybeUninit<f32>] as *const [f32]) };
                        masked_sums(xs, g, mu, None)
                    }
                    _ => masked_sums(xs, gs, mu, Some((m, s, b))),
                }
            })
            .collect();
        drop(pieces);
        let mut sum_g = vec![0f64; c];
        let mut sum_gxc = vec![0f64; c];
        for (&(pl, _, _), (a, b)) in items.iter().zip(partial) {
            sum_g[pl % c] += a;
            sum_gxc[pl % c] += b;
        }
        let g_t = match g_buf {
            // SAFETY: pass 1 wrote every piece, and the pieces cover the buffer
            Some(buf) => Some(Tensor::from_vec(
                unsafe { memory::assume_init(buf) },
                x.shape(),
                x.device(),
            )?),
            None => None,
        };

        // the per-channel coefficients of dx = a·g + b·(x − centre) + c, in the f32 arithmetic of
        // `BatchNormForward::bwd` (which does it in candle ops on [C] tensors)
        let eps32 = self.eps as f32;
        let m = (n * plane) as f64;
        let neg_inv_m = (-1.0 / m) as f32;
        let mut coeffs = Vec::with_capacity(c);
        let mut d_params = vec![0f32; 4 * c];
        for ci in 0..c {
            let (var, gamma) = (p[c + ci], p[2 * c + ci]);
            let (sg, sgx) = (sum_g[ci] as f32, sum_gxc[ci] as f32);
            let inv_std = (var * 1.0 + eps32).sqrt().recip();
            let a = gamma * inv_std;
            coeffs.push(match self.source {
                StatsSource::Batch => {
                    let b = ((a * (inv_std * inv_std)) * sgx) * neg_inv_m + 0.0;
                    let cc = (a * sg) * neg_inv_m + 0.0;
                    [a, b, p[ci], cc]
                }
                StatsSource::Fixed => [a, 0.0, 0.0, 0.0],
            });
            d_params[2 * c + ci] = sgx * inv_std;
            d_params[3 * c + ci] = sg;
        }

        // pass 2: dx
        let dx = match &g_t {
            Some(g_t) => {
                let (gs2, gl2) = g_t.storage_and_layout();
                let g = match &*gs2 {
                    Storage::Cpu(s) => contiguous_f32(s, gl2, "gradient")?,
                    _ => bail!("the fused batch-norm backward runs on the CPU only"),
                };
                channel_map(
                    xd,
                    Some(g),
                    (plane, c),
                    |ci| coeffs[ci],
                    |[a, b, ce, cc], xv, gv| a * gv + b * (xv - ce) + cc,
                )
            }
            None => channel_map(
                xd,
                Some(gd),
                (plane, c),
                |ci| {
                    let ([m, s, b], [a, bb, ce, cc]) = (fk[ci], coeffs[ci]);
                    [m, s, b, a, bb, ce, cc]
                },
                |[m, s, b, a, bb, ce, cc], xv, dv| {
                    let gv = if (xv - m) * s + b > 0.0 { dv } else { 0.0 };
                    a * gv + bb * (xv - ce) + cc
                },
            ),
        };
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dr = match self.kind {
            Kind::Relu => None,
            Kind::AddRelu => g_t,
            Kind::ReluAdd => Some(dy.clone()),
        };
        let d_params = Tensor::from_vec(d_params, (4, c), x.device())?;
        Ok((dx, dr, d_params))
    }
}

/// Consecutive mutable pieces of `buf`, one per chunk item (their lengths add up to `buf.len()`).
fn split_pieces<'b>(
    buf: &'b mut [MaybeUninit<f32>],
    items: &[(usize, usize, usize)],
) -> Vec<&'b mut [MaybeUninit<f32>]> {
    let mut pieces = Vec::with_capacity(items.len());
    let mut rest = buf;
    for &(_, lo, hi) in items {
        let (head, tail) = rest.split_at_mut(hi - lo);
        pieces.push(head);
        rest = tail;
    }
    pieces
}

impl CustomOp2 for BnAct {
    fn name(&self) -> &'static str {
        "nn3d-batch-norm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp2::name(self));
        self.forward_cpu((s1, l1), None, (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, _, dp) = self.backward(x, None, params, dy)?;
        Ok((Some(dx), Some(dp)))
    }
}

impl CustomOp3 for BnAct {
    fn name(&self) -> &'static str {
        "nn3d-batch-norm-act-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp3::name(self));
        self.forward_cpu((s1, l1), Some((s2, l2)), (s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dr, dp) = self.backward(x, Some(r), params, dy)?;
        Ok((Some(dx), dr, Some(dp)))
    }
}
