//! Fused batch normalisation over `[N, C, D, H, W]` f32 tensors, with autograd.
//!
//! The functional entry points are [`batch_norm_train`] (batch statistics) and
//! [`batch_norm_eval`] (given statistics, e.g. the running ones). Both run as candle custom ops so
//! that a training forward + backward reads the activation only a few times instead of once per
//! elementary candle op:
//!
//! | op | inputs | output | work |
//! |---|---|---|---|
//! | [`ChannelStats`] (`CustomOp1`, no backward) | `x` | `[2, C]`: mean, biased variance | one pass over `x` |
//! | [`BatchNormForward`] (`CustomOp3`) | `x`, stats `[2, C]`, affine `[2, C]` = (gamma, beta) | `y` | one pass |
//! | [`ChannelGradSums`] (`CustomOp3`, no backward) | `x`, `dy`, stats `[2, C]` | `[2, C]`: `Σ dy`, `Σ dy·(x − mean)` | one pass |
//! | [`BatchNormGradInput`] (`CustomOp3`, no backward) | `x`, `dy`, coeffs `[4, C]` = (a, b, centre, c) | `dx = a·dy + b·(x − centre) + c` | one pass |
//!
//! `BatchNormForward::bwd` calls `ChannelGradSums`, turns the sums into `dgamma`, `dbeta` and the
//! per-channel coefficients of `dx` with a few candle ops on `[C]` tensors (the only place where the
//! gradient formula lives, so every device shares it), then calls `BatchNormGradInput`.
//! Statistics never receive a gradient: in training mode the dependence of mean and variance on `x` is
//! part of the fused `dx` formula; in eval mode they are constants.
//!
//! Device support: the CPU kernels are here (rayon over channel chunks, f64 accumulators on a shifted
//! origin so 2M-voxel channels stay accurate). A CUDA implementation adds `cuda_fwd` to each of the
//! four op structs (fields are `pub(crate)`), delegating to `crate::cuda`; the tensor layouts above
//! are the whole interface. Inputs reach the ops contiguous (the wrappers call `contiguous()`), and the
//! kernels reject other layouts.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::memory;

/// Elements per rayon task in the CPU kernels (128 KiB of f32).
pub(super) const CHUNK: usize = 1 << 15;
/// Independent f64 accumulators per reduction, so the inner loops vectorise.
pub(super) const LANES: usize = 8;

/// Per-channel statistics of one batch, as returned by [`batch_norm_train`].
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Mean per channel, `[C]`.
    pub mean: Tensor,
    /// Biased (population) variance per channel, `[C]`; the one used to normalise.
    pub var: Tensor,
    /// Number of values per channel, `N·D·H·W`; the unbiased variance is `var · count / (count − 1)`.
    pub count: usize,
}

impl BatchStats {
    /// Unbiased (sample) variance per channel, `[C]`, as PyTorch folds into `running_var`.
    pub fn unbiased_var(&self) -> Result<Tensor> {
        let m = self.count as f64;
        self.var.affine(m / (m - 1.0), 0.0)
    }
}

/// Which statistics a [`BatchNormForward`] normalises with; decides its backward formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsSource {
    /// Statistics of the input batch itself (training mode): `dx` includes their dependence on `x`.
    Batch,
    /// Fixed statistics, e.g. running ones (eval mode): they are constants for the gradient.
    Fixed,
}

/// Batch normalisation with batch statistics (PyTorch's `F.batch_norm(..., training=True)`).
///
/// `x` is `[N, C, D, H, W]` f32, `weight` (gamma) and `bias` (beta) are `[C]`. Returns the normalised
/// `y = (x − mean) / sqrt(var + eps) · weight + bias` and the batch statistics (detached), from which
/// the caller updates running statistics. Gradients flow to `x`, `weight` and `bias`.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let (c, count) = check_input(x, weight, bias, eps)?;
    if count < 2 {
        bail!(
            "batch-norm in training mode needs more than 1 value per channel, input shape {:?}",
            x.dims()
        )
    }
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?; // [2, C]
    let affine = Tensor::stack(&[weight, bias], 0)?; // [2, C]
    let y = x.apply_op3(
        &stats,
        &affine,
        BatchNormForward {
            eps,
            source: StatsSource::Batch,
        },
    )?;
    debug_assert_eq!(stats.dims(), [2, c]);
    let stats = BatchStats {
        mean: stats.get(0)?,
        var: stats.get(1)?,
        count,
    };
    Ok((y, stats))
}

/// Batch normalisation with given statistics (PyTorch's `F.batch_norm(..., training=False)`).
///
/// `mean` and `var` (`[C]`, e.g. running statistics) are treated as constants: they are detached and
/// receive no gradient. Gradients flow to `x`, `weight` and `bias`.
pub fn batch_norm_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (c, _) = check_input(x, weight, bias, eps)?;
    for (name, t) in [("mean", mean), ("variance", var)] {
        if t.dims() != [c] || t.dtype() != DType::F32 {
            bail!(
                "batch-norm {name} must be f32 [{c}], got {:?} {:?}",
                t.dtype(),
                t.dims()
            )
        }
    }
    let x = x.contiguous()?;
    let stats = Tensor::stack(&[mean.detach(), var.detach()], 0)?;
    let affine = Tensor::stack(&[weight, bias], 0)?;
    x.apply_op3(
        &stats,
        &affine,
        BatchNormForward {
            eps,
            source: StatsSource::Fixed,
        },
    )
}

/// Checks `x` `[N, C, D, H, W]` f32 against `[C]` weight and bias; returns `(C, N·D·H·W)`.
pub(super) fn check_input(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(usize, usize)> {
    let (n, c, d, h, w) = match x.dims5() {
        Ok(dims) => dims,
        Err(_) => bail!(
            "batch-norm expects a [N, C, D, H, W] input, got shape {:?}",
            x.dims()
        ),
    };
    if x.dtype() != DType::F32 {
        bail!("batch-norm supports f32 only, got {:?}", x.dtype())
    }
    if x.elem_count() == 0 {
        bail!("batch-norm got an empty input of shape {:?}", x.dims())
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [c] || t.dtype() != DType::F32 {
            bail!(
                "batch-norm {name} must be f32 [{c}] for input {:?}, got {:?} {:?}",
                x.dims(),
                t.dtype(),
                t.dims()
            )
        }
    }
    if eps.is_nan() || eps < 0.0 {
        bail!("batch-norm eps must be >= 0, got {eps}")
    }
    Ok((c, n * d * h * w))
}

/// Mean and biased variance per channel of `x` `[N, C, D, H, W]`: output `[2, C]` (row 0 mean, row 1
/// variance). CPU: per channel, f64 sums of `x − x₀` and `(x − x₀)²` with `x₀` the channel's first value,
/// rayon over chunks of each `(n, c)` plane.
#[derive(Debug, Clone, Copy)]
pub struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "nn3d-batch-stats"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, c, _) = planes(l)?;
        let out = crate::cuda::batch_norm::channel_stats(s, l)?;
        Ok((out, Shape::from((2, c))))
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp1::name(self));
        let x = contiguous_f32(s, l, "input")?;
        let (n, c, plane) = planes(l)?;
        let origin: Vec<f64> = (0..c).map(|ci| x[ci * plane] as f64).collect();
        let partial: Vec<(f64, f64)> = chunks(n * c, plane)
            .into_par_iter()
            .map(|(p, lo, hi)| shifted_sums(&x[p * plane + lo..p * plane + hi], origin[p % c]))
            .collect();
        let mut s1 = vec![0f64; c];
        let mut s2 = vec![0f64; c];
        for ((p, _, _), (a, b)) in chunks(n * c, plane).into_iter().zip(partial) {
            s1[p % c] += a;
            s2[p % c] += b;
        }
        let m = (n * plane) as f64;
        let mut out = vec![0f32; 2 * c];
        for ci in 0..c {
            let shifted_mean = s1[ci] / m;
            out[ci] = (origin[ci] + shifted_mean) as f32;
            out[c + ci] = (s2[ci] / m - shifted_mean * shifted_mean).max(0.0) as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `y = (x − mean) · gamma / sqrt(var + eps) + beta` per channel, from `x` `[N, C, D, H, W]`, stats
/// `[2, C]` (mean, biased variance) and affine `[2, C]` (gamma, beta). `source` selects the backward
/// formula (see [`StatsSource`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchNormForward {
    pub(crate) eps: f64,
    pub(crate) source: StatsSource,
}

impl CustomOp3 for BatchNormForward {
    fn name(&self) -> &'static str {
        "nn3d-batch-norm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::batch_norm::forward(s1, l1, s2, l2, s3, l3, self.eps)?;
        Ok((y, l1.shape().clone()))
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
        let x = contiguous_f32(s1, l1, "input")?;
        let (_, c, plane) = planes(l1)?;
        let stats = rows_f32(s2, l2, 2, c, "statistics")?;
        let affine = rows_f32(s3, l3, 2, c, "affine parameters")?;
        let (mean, var) = stats.split_at(c);
        let (gamma, beta) = affine.split_at(c);
        let scale: Vec<f32> = (0..c)
            .map(|ci| (gamma[ci] as f64 / (var[ci] as f64 + self.eps).sqrt()) as f32)
            .collect();
        let y = channel_map(
            x,
            None,
            (plane, c),
            |ci| [mean[ci], scale[ci], beta[ci], 0.0],
            |[m, s, b, _], xv, _| (xv - m) * s + b,
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        stats: &Tensor,
        affine: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let stats = stats.detach();
        let sums = x.apply_op3_no_bwd(&dy, &stats, &ChannelGradSums)?; // [2, C]
        let (sum_dy, sum_dy_xc) = (sums.get(0)?, sums.get(1)?);
        let (mean, var) = (stats.get(0)?, stats.get(1)?);
        let gamma = affine.detach().get(0)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let a = (&gamma * &inv_std)?;
        let coeffs = match self.source {
            StatsSource::Batch => {
                let m = (x.elem_count() / x.dim(1)?) as f64;
                // dx = a·(dy − Σdy/m − x̂·Σ(dy·x̂)/m), x̂ = (x − mean)·inv_std
                let b = ((&a * inv_std.sqr()?)? * &sum_dy_xc)?.affine(-1.0 / m, 0.0)?;
                let c = (&a * &sum_dy)?.affine(-1.0 / m, 0.0)?;
                Tensor::stack(&[&a, &b, &mean, &c], 0)?
            }
            StatsSource::Fixed => {
                let zeros = a.zeros_like()?;
                Tensor::stack(&[&a, &zeros, &zeros, &zeros], 0)?
            }
        };
        let dx = x.apply_op3_no_bwd(&dy, &coeffs, &BatchNormGradInput)?;
        let dgamma = (sum_dy_xc * inv_std)?;
        let d_affine = Tensor::stack(&[&dgamma, &sum_dy], 0)?;
        Ok((Some(dx), None, Some(d_affine)))
    }
}

/// Per-channel `Σ dy` and `Σ dy·(x − mean)` from `x`, `dy` `[N, C, D, H, W]` and stats `[2, C]` (only
/// the mean row is read): output `[2, C]`. CPU: f64 accumulators, rayon over plane chunks.
#[derive(Debug, Clone, Copy)]
pub struct ChannelGradSums;

impl CustomOp3 for ChannelGradSums {
    fn name(&self) -> &'static str {
        "nn3d-batch-norm-grad-sums"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, c, _) = planes(l1)?;
        let out = crate::cuda::batch_norm::grad_sums(s1, l1, s2, l2, s3, l3)?;
        Ok((out, Shape::from((2, c))))
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
        let x = contiguous_f32(s1, l1, "input")?;
        let dy = contiguous_f32(s2, l2, "output gradient")?;
        same_shape(l1, l2)?;
        let (n, c, plane) = planes(l1)?;
        let stats = rows_f32(s3, l3, 2, c, "statistics")?;
        let partial: Vec<(f64, f64)> = chunks(n * c, plane)
            .into_par_iter()
            .map(|(p, lo, hi)| {
                let range = p * plane + lo..p * plane + hi;
                grad_sums(&x[range.clone()], &dy[range], stats[p % c] as f64)
            })
            .collect();
        let mut out = vec![0f64; 2 * c];
        for ((p, _, _), (a, b)) in chunks(n * c, plane).into_iter().zip(partial) {
            out[p % c] += a;
            out[c + p % c] += b;
        }
        let out = out.into_iter().map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `dx = a·dy + b·(x − centre) + c` per channel, from `x`, `dy` `[N, C, D, H, W]` and coeffs `[4, C]`
/// (rows a, b, centre, c), as computed in [`BatchNormForward`]'s backward.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormGradInput;

impl CustomOp3 for BatchNormGradInput {
    fn name(&self) -> &'static str {
        "nn3d-batch-norm-grad-input"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = crate::cuda::batch_norm::grad_input(s1, l1, s2, l2, s3, l3)?;
        Ok((dx, l1.shape().clone()))
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
        let x = contiguous_f32(s1, l1, "input")?;
        let dy = contiguous_f32(s2, l2, "output gradient")?;
        same_shape(l1, l2)?;
        let (_, c, plane) = planes(l1)?;
        let k = rows_f32(s3, l3, 4, c, "gradient coefficients")?;
        let (a, rest) = k.split_at(c);
        let (b, rest) = rest.split_at(c);
        let (centre, cc) = rest.split_at(c);
        let dx = channel_map(
            x,
            Some(dy),
            (plane, c),
            |ci| [a[ci], b[ci], centre[ci], cc[ci]],
            |[a, b, centre, c], xv, gv| a * gv + b * (xv - centre) + c,
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The contiguous f32 data of a storage, or an error naming `what`.
pub(super) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(data) => data,
        other => bail!("batch-norm {what} must be f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((lo, hi)) => Ok(&data[lo..hi]),
        None => bail!(
            "batch-norm {what} must be contiguous, got shape {:?} strides {:?}",
            l.dims(),
            l.stride()
        ),
    }
}

/// A contiguous f32 `[rows, c]` operand.
pub(super) fn rows_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    rows: usize,
    c: usize,
    what: &str,
) -> Result<&'a [f32]> {
    if l.dims() != [rows, c] {
        bail!(
            "batch-norm {what} must be [{rows}, {c}], got {:?}",
            l.dims()
        )
    }
    contiguous_f32(s, l, what)
}

/// `(N, C, D·H·W)` of a `[N, C, D, H, W]` layout.
pub(super) fn planes(l: &Layout) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [n, c, d, h, w] if n * c * d * h * w > 0 => Ok((n, c, d * h * w)),
        _ => bail!(
            "batch-norm expects a non-empty [N, C, D, H, W] tensor, got {:?}",
            l.dims()
        ),
    }
}

pub(super) fn same_shape(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        bail!(
            "batch-norm output gradient shape {:?} differs from input shape {:?}",
            l2.dims(),
            l1.dims()
        )
    }
    Ok(())
}

/// Work items `(plane, start, end)` covering `planes` planes of `plane` elements in chunks of
/// at most [`CHUNK`]; the order is fixed, so reductions are deterministic.
pub(super) fn chunks(planes: usize, plane: usize) -> Vec<(usize, usize, usize)> {
    let per_plane = plane.div_ceil(CHUNK);
    (0..planes)
        .flat_map(|p| (0..per_plane).map(move |i| (p, i * CHUNK, ((i + 1) * CHUNK).min(plane))))
        .collect()
}

/// `out[i] = f(k, x[i], g[i])` for every `i`, with `k = coeffs(channel)` (and `g[i] = 0` when `g` is
/// `None`), in parallel over plane chunks, into a new buffer. The per-channel constants are fetched
/// once per chunk so the inner loop is a plain vectorisable map.
pub(super) fn channel_map<const N: usize, K, F>(
    x: &[f32],
    g: Option<&[f32]>,
    (plane, c): (usize, usize),
    coeffs: K,
    f: F,
) -> Vec<f32>
where
    K: Fn(usize) -> [f32; N] + Sync,
    F: Fn([f32; N], f32, f32) -> f32 + Sync,
{
    let mut out = memory::f32_buffer(x.len());
    let items = chunks(x.len() / plane, plane);
    let mut pieces: Vec<&mut [MaybeUninit<f32>]> = Vec::with_capacity(items.len());
    let mut rest = out.as_mut_slice();
    for &(_, lo, hi) in &items {
        let (head, tail) = rest.split_at_mut(hi - lo);
        pieces.push(head);
        rest = tail;
    }
    pieces
        .into_par_iter()
        .zip(items.into_par_iter())
        .for_each(|(o, (p, lo, hi))| {
            let k = coeffs(p % c);
            let xc = &x[p * plane + lo..p * plane + hi];
            match g {
                Some(g) => {
                    let gc = &g[p * plane + lo..p * plane + hi];
                    for ((o, &xv), &gv) in o.iter_mut().zip(xc).zip(gc) {
                        o.write(f(k, xv, gv));
                    }
                }
                None => {
                    for (o, &xv) in o.iter_mut().zip(xc) {
                        o.write(f(k, xv, 0.0));
                    }
                }
            }
        });
    // SAFETY: `chunks` covers every element of every plane exactly once (pieces are consecutive
    // and their lengths add up to `x.len()`), and each piece was written in full above.
    unsafe { memory::assume_init(out) }
}

/// `(Σ (x − origin), Σ (x − origin)²)` in f64.
fn shifted_sums(x: &[f32], origin: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above
        return unsafe { simd::shifted_sums(x, origin) };
    }
    shifted_sums_portable(x, origin)
}

fn shifted_sums_portable(x: &[f32], origin: f64) -> (f64, f64) {
    let mut s1 = [0f64; LANES];
    let mut s2 = [0f64; LANES];
    let mut blocks = x.chunks_exact(LANES);
    for block in &mut blocks {
        for l in 0..LANES {
            let d = block[l] as f64 - origin;
            s1[l] += d;
            s2[l] += d * d;
        }
    }
    shifted_sums_tail(blocks.remainder(), origin, s1, s2)
}

/// The last `< LANES` values of [`shifted_sums`] into lanes `0..`, then the lane totals in order.
fn shifted_sums_tail(
    rest: &[f32],
    origin: f64,
    mut s1: [f64; LANES],
    mut s2: [f64; LANES],
) -> (f64, f64) {
    for (l, &v) in rest.iter().enumerate() {
        let d = v as f64 - origin;
        s1[l] += d;
        s2[l] += d * d;
    }
    (s1.iter().sum(), s2.iter().sum())
}

/// `(Σ dy, Σ dy·(x − mean))` in f64.
fn grad_sums(x: &[f32], dy: &[f32], mean: f64) -> (f64, f64) {
    masked_sums(x, dy, mean, None)
}

/// `(Σ g, Σ g·(x − mean))` in f64 over `g = dy·[(x − m)·s + b > 0]` with `relu = Some((m, s, b))`
/// (the ReLU mask of the fused ops, the forward's own f32 formula), `g = dy` with `None`.
pub(super) fn masked_sums(
    x: &[f32],
    dy: &[f32],
    mean: f64,
    relu: Option<(f32, f32, f32)>,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above
        return unsafe { simd::masked_sums(x, dy, mean, relu) };
    }
    masked_sums_portable(x, dy, mean, relu)
}

fn masked_sums_portable(
    x: &[f32],
    dy: &[f32],
    mean: f64,
    relu: Option<(f32, f32, f32)>,
) -> (f64, f64) {
    let mut s1 = [0f64; LANES];
    let mut s2 = [0f64; LANES];
    let mut xb = x.chunks_exact(LANES);
    let mut gb = dy.chunks_exact(LANES);
    for (xs, gs) in (&mut xb).zip(&mut gb) {
        for l in 0..LANES {
            let g = masked(xs[l], gs[l], relu) as f64;
            s1[l] += g;
            s2[l] += g * (xs[l] as f64 - mean);
        }
    }
    masked_sums_tail(xb.remainder(), gb.remainder(), mean, relu, s1, s2)
}

#[inline(always)]
fn masked(x: f32, g: f32, relu: Option<(f32, f32, f32)>) -> f32 {
    match relu {
        Some((m, s, b)) if (x - m) * s + b > 0.0 => g,
        Some(_) => 0.0,
        None => g,
    }
}

/// The last `< LANES` values of [`masked_sums`] into lanes `0..`, then the lane totals in order.
fn masked_sums_tail(
    xs: &[f32],
    gs: &[f32],
    mean: f64,
    relu: Option<(f32, f32, f32)>,
    mut s1: [f64; LANES],
    mut s2: [f64; LANES],
) -> (f64, f64) {
    for (l, (&xv, &gv)) in xs.iter().zip(gs).enumerate() {
        let g = masked(xv, gv, relu) as f64;
        s1[l] += g;
        s2[l] += g * (xv as f64 - mean);
    }
    (s1.iter().sum(), s2.iter().sum())
}

/// AVX2 versions of the channel reductions: the same f32 / f64 operations (no FMA contraction) on
/// the same 8 lanes as the portable loops, so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{masked_sums_tail, shifted_sums_tail, LANES};
    use std::arch::x86_64::*;

    /// Lanes 0..4 and 4..8 of 8 f32 as two f64 vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen(v: __m256) -> (__m256d, __m256d) {
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(lo: __m256d, hi: __m256d) -> [f64; LANES] {
        let mut out = [0f64; LANES];
        // SAFETY: `out` holds 8 f64, the two unaligned stores write 4 each
        unsafe {
            _mm256_storeu_pd(out.as_mut_ptr(), lo);
            _mm256_storeu_pd(out.as_mut_ptr().add(4), hi);
        }
        out
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn shifted_sums(x: &[f32], origin: f64) -> (f64, f64) {
        let o = _mm256_set1_pd(origin);
        let (mut a_lo, mut a_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut b_lo, mut b_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut blocks = x.chunks_exact(LANES);
        for block in &mut blocks {
            // SAFETY: the block holds 8 f32
            let v = unsafe { _mm256_loadu_ps(block.as_ptr()) };
            let (lo, hi) = widen(v);
            let (d_lo, d_hi) = (_mm256_sub_pd(lo, o), _mm256_sub_pd(hi, o));
            a_lo = _mm256_add_pd(a_lo, d_lo);
            a_hi = _mm256_add_pd(a_hi, d_hi);
            b_lo = _mm256_add_pd(b_lo, _mm256_mul_pd(d_lo, d_lo));
            b_hi = _mm256_add_pd(b_hi, _mm256_mul_pd(d_hi, d_hi));
        }
        shifted_sums_tail(
            blocks.remainder(),
            origin,
            lanes(a_lo, a_hi),
            lanes(b_lo, b_hi),
        )
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn masked_sums(
        x: &[f32],
        dy: &[f32],
        mean: f64,
        relu: Option<(f32, f32, f32)>,
    ) -> (f64, f64) {
        let mu = _mm256_set1_pd(mean);
        let (m, s, b) = relu.unwrap_or((0.0, 0.0, 0.0));
        let (m, s, b) = (_mm256_set1_ps(m), _mm256_set1_ps(s), _mm256_set1_ps(b));
        let zero = _mm256_setzero_ps();
        let (mut a_lo, mut a_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut c_lo, mut c_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut xb = x.chunks_exact(LANES);
        let mut gb = dy.chunks_exact(LANES);
        for (xs, gs) in (&mut xb).zip(&mut gb) {
            // SAFETY: both blocks hold 8 f32
            let (xv, mut gv) =
                unsafe { (_mm256_loadu_ps(xs.as_ptr()), _mm256_loadu_ps(gs.as_ptr())) };
            if relu.is_some() {
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(xv, m), s), b);
                gv = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(v, zero));
            }
            let (g_lo, g_hi) = widen(gv);
            let (x_lo, x_hi) = widen(xv);
            a_lo = _mm256_add_pd(a_lo, g_lo);
            a_hi = _mm256_add_pd(a_hi, g_hi);
            c_lo = _mm256_add_pd(c_lo, _mm256_mul_pd(g_lo, _mm256_sub_pd(x_lo, mu)));
            c_hi = _mm256_add_pd(c_hi, _mm256_mul_pd(g_hi, _mm256_sub_pd(x_hi, mu)));
        }
        masked_sums_tail(
            xb.remainder(),
            gb.remainder(),
            mean,
            relu,
            lanes(a_lo, a_hi),
            lanes(c_lo, c_hi),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_plane_once() {
        let items = chunks(3, 2 * CHUNK + 5);
        assert_eq!(items.len(), 9);
        assert_eq!(items[2], (0, 2 * CHUNK, 2 * CHUNK + 5));
        assert_eq!(items[3], (1, 0, CHUNK));
        assert!(chunks(2, 1).iter().all(|&(_, lo, hi)| lo == 0 && hi == 1));
    }

    #[test]
    fn vector_and_portable_sums_agree_bitwise() {
        // every length from 0 to 40 covers each remainder; values with a wide range of magnitudes
        let x: Vec<f32> = (0..40)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let g: Vec<f32> = (0..40)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 1.9)
            .collect();
        for n in 0..=40 {
            let (xs, gs) = (&x[..n], &g[..n]);
            let cases = [
                None,
                Some((0.5f32, 1.3f32, -0.2f32)),
                Some((-1.0, -0.7, 0.4)),
            ];
            for relu in cases {
                let want = masked_sums_portable(xs, gs, 0.25, relu);
                assert_eq!(masked_sums(xs, gs, 0.25, relu), want, "n {n} relu {relu:?}");
                if let Some((m, s, b)) = relu {
                    // the mask is the forward's ReLU decision
                    let direct = xs
                        .iter()
                        .zip(gs)
                        .filter(|(&xv, _)| (xv - m) * s + b > 0.0)
                        .map(|(_, &gv)| gv as f64)
                        .sum::<f64>();
                    assert!((want.0 - direct).abs() < 1e-9, "n {n}");
                }
            }
            assert_eq!(
                shifted_sums(xs, 0.7),
                shifted_sums_portable(xs, 0.7),
                "n {n}"
            );
        }
    }

    #[test]
    fn shifted_sums_are_accurate_far_from_zero() {
        // values 1000 + k/8: mean and variance known in closed form
        let x: Vec<f32> = (0..1001).map(|k| 1000.0 + k as f32 / 8.0).collect();
        let (s1, s2) = shifted_sums(&x, x[0] as f64);
        let m = x.len() as f64;
        let mean = 1000.0 + s1 / m;
        let var = s2 / m - (s1 / m).powi(2);
        assert!((mean - 1062.5).abs() < 1e-9, "{mean}");
        // variance of k/8 for k = 0..=1000 is (1001² − 1)/12/64
        let want = (1001.0f64 * 1001.0 - 1.0) / 12.0 / 64.0;
        assert!((var - want).abs() < 1e-9 * want, "{var} vs {want}");
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::ones(3, DType::F32, &dev)?;
        let b = Tensor::zeros(3, DType::F32, &dev)?;
        let x4 = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev)?;
        assert!(batch_norm_train(&x4, &w, &b, 1e-5).is_err());
        let x1 = Tensor::zeros((1, 3, 1, 1, 1), DType::F32, &dev)?;
        let err = batch_norm_train(&x1, &w, &b, 1e-5).unwrap_err().to_string();
        assert!(err.contains("more than 1 value per channel"), "{err}");
        let x = Tensor::zeros((2, 2, 2, 2, 2), DType::F32, &dev)?;
        assert!(batch_norm_train(&x, &w, &b, 1e-5).is_err());
        let xd = Tensor::zeros((2, 3, 2, 2, 2), DType::F64, &dev)?;
        assert!(batch_norm_train(&xd, &w, &b, 1e-5).is_err());
        let x = Tensor::zeros((2, 3, 2, 2, 2), DType::F32, &dev)?;
        assert!(batch_norm_train(&x, &w, &b, -1.0).is_err());
        assert!(batch_norm_eval(&x, &w.get(0)?, &w, &w, &b, 1e-5).is_err());
        Ok(())
    }
}
