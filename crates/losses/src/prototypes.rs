//! Class sums of L2-normalised features, the prototypes' numerators, in one pass over the features.
//!
//! The plain tensor formulation ([`normalized_class_sums_reference`]) normalises every voxel's feature
//! vector, permutes the normalised features to `[voxels, C]` and multiplies by the class weights: three
//! full-size copies of the features that autograd keeps until the backward pass, and as many full-size
//! temporaries again in its backward. On the CPU [`normalized_class_sums`] reads the features once in their
//! `[N, C, voxels]` layout, on both cores, and its backward writes the feature gradient directly; nothing
//! full-size is kept besides the features themselves.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Squared norms below this are clamped, as [`crate::l2_normalize`] does (`max(|f|^2, 1e-24)`).
const NORM2_FLOOR: f64 = 1e-24;

/// Voxels per parallel work item.
const CHUNK: usize = 2048;

/// `S[k, c] = sum_{n, v} w[n, k, v] f[n, c, v] / max(|f[n, :, v]|, 1e-12)` for features `[N, C, ...]` and
/// class weights `[N, K, ...]` (the same spatial dims; no gradient flows into the weights): the sums of the
/// L2-normalised features of each class, `[K, C]`. On the CPU one fused pass (accumulated in f64); on other
/// devices [`normalized_class_sums_reference`].
pub fn normalized_class_sums(feat: &Tensor, weights: &Tensor) -> Result<Tensor> {
    check(feat, weights)?;
    if !feat.device().is_cpu() || !matches!(feat.dtype(), DType::F32 | DType::F64) {
        return normalized_class_sums_reference(feat, weights);
    }
    let weights = weights.detach().to_dtype(feat.dtype())?.contiguous()?;
    feat.contiguous()?.apply_op2(&weights, ClassSums)
}

/// The same sums written as tensor operations (normalise, permute to `[voxels, C]`, multiply by the
/// transposed weights): the path off the CPU, and the reference the fused pass is tested against.
pub fn normalized_class_sums_reference(feat: &Tensor, weights: &Tensor) -> Result<Tensor> {
    check(feat, weights)?;
    let f = voxels_by_channel(&crate::l2_normalize(feat)?)?; // [M, C]
    let w = voxels_by_channel(&weights.detach().to_dtype(feat.dtype())?)?; // [M, K]
    w.t()?.matmul(&f)
}

/// `[N, C, ...]` -> `[N * prod(...), C]` (voxels in row-major order, one row per voxel).
fn voxels_by_channel(x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    let mut perm: Vec<usize> = vec![0];
    perm.extend(2..rank);
    perm.push(1);
    let c = x.dim(1)?;
    x.permute(perm)?.contiguous()?.reshape(((), c))
}

fn check(feat: &Tensor, weights: &Tensor) -> Result<()> {
    let (f, w) = (feat.dims(), weights.dims());
    if f.len() < 2 || w.len() != f.len() || w[0] != f[0] || w[2..] != f[2..] {
        bail!("class sums: features {f:?} and class weights {w:?} must be [N, C, ...] and [N, K, ...]");
    }
    Ok(())
}

/// `(N, C, K, voxels per item)` of contiguous features `[N, C, ...]` and weights `[N, K, ...]`.
fn sizes(fl: &Layout, wl: &Layout) -> (usize, usize, usize, usize) {
    let (f, w) = (fl.shape().dims(), wl.shape().dims());
    (f[0], f[1], w[1], f[2..].iter().product())
}

/// The floating-point types of the fused pass.
trait Real: Copy + Send + Sync + 'static {
    fn to(self) -> f64;
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    fn to(self) -> f64 {
        f64::from(self)
    }
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn to(self) -> f64 {
        self
    }
    fn of(x: f64) -> Self {
        x
    }
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("class sums: a non-contiguous input"),
    }
}

/// Work items: `(item, first voxel, voxel count)`.
fn chunks(n: usize, v: usize) -> Vec<(usize, usize, usize)> {
    (0..n)
        .flat_map(|i| (0..v).step_by(CHUNK).map(move |s| (i, s, CHUNK.min(v - s))))
        .collect()
}

/// `1 / max(|f|, 1e-12)` of each voxel of one chunk.
fn inverse_norms<T: Real>(f: &[T], c: usize, v: usize, start: usize, len: usize) -> Vec<f64> {
    let mut sq = vec![0.0f64; len];
    for ch in 0..c {
        let row = &f[ch * v + start..ch * v + start + len];
        for (s, &x) in sq.iter_mut().zip(row) {
            *s += x.to() * x.to();
        }
    }
    sq.into_iter()
        .map(|s| 1.0 / s.max(NORM2_FLOOR).sqrt())
        .collect()
}

fn forward<T: Real>(f: &[T], w: &[T], (n, c, k, v): (usize, usize, usize, usize)) -> Vec<T> {
    let partials: Vec<Vec<f64>> = chunks(n, v)
        .into_par_iter()
        .map(|(item, start, len)| {
            let f = &f[item * c * v..(item + 1) * c * v];
            let w = &w[item * k * v..(item + 1) * k * v];
            let inv = inverse_norms(f, c, v, start, len);
            let mut out = vec![0.0f64; k * c];
            for class in 0..k {
                let wk: Vec<f64> = w[class * v + start..class * v + start + len]
                    .iter()
                    .zip(&inv)
                    .map(|(&x, &i)| x.to() * i)
                    .collect();
                if wk.iter().all(|&x| x == 0.0) {
                    continue;
                }
                for ch in 0..c {
                    let row = &f[ch * v + start..ch * v + start + len];
                    out[class * c + ch] = wk.iter().zip(row).map(|(&a, &x)| a * x.to()).sum();
                }
            }
            out
        })
        .collect();
    let mut total = vec![0.0f64; k * c];
    for p in &partials {
        for (t, x) in total.iter_mut().zip(p) {
            *t += x;
        }
    }
    total.into_iter().map(T::of).collect()
}

/// `dL/df = (a - f (f . a) / |f|^2) / |f|` with `a[c] = sum_k w[k] G[k, c]` (only `a / 1e-12` where the norm
/// is clamped, as candle's `maximum` passes no gradient to the clamped sum).
fn backward<T: Real>(
    f: &[T],
    w: &[T],
    g: &[T],
    (n, c, k, v): (usize, usize, usize, usize),
) -> Vec<T> {
    let g: Vec<f64> = g.iter().map(|x| x.to()).collect();
    let pieces: Vec<((usize, usize, usize), Vec<T>)> = chunks(n, v)
        .into_par_iter()
        .map(|(item, start, len)| {
            let f = &f[item * c * v..(item + 1) * c * v];
            let w = &w[item * k * v..(item + 1) * k * v];
            let mut a = vec![0.0f64; c * len];
            for class in 0..k {
                let wk = &w[class * v + start..class * v + start + len];
                if wk.iter().all(|&x| x.to() == 0.0) {
                    continue;
                }
                for ch in 0..c {
                    let gkc = g[class * c + ch];
                    for (acc, &x) in a[ch * len..(ch + 1) * len].iter_mut().zip(wk) {
                        *acc += x.to() * gkc;
                    }
                }
            }
            let mut sq = vec![0.0f64; len];
            let mut dot = vec![0.0f64; len];
            for ch in 0..c {
                let row = &f[ch * v + start..ch * v + start + len];
                for (j, &x) in row.iter().enumerate() {
                    let x = x.to();
                    sq[j] += x * x;
                    dot[j] += x * a[ch * len + j];
                }
            }
            let mut out = vec![T::of(0.0); c * len];
            for ch in 0..c {
                let row = &f[ch * v + start..ch * v + start + len];
                for j in 0..len {
                    let aj = a[ch * len + j];
                    out[ch * len + j] = T::of(if sq[j] < NORM2_FLOOR {
                        aj / NORM2_FLOOR.sqrt()
                    } else {
                        let inv = 1.0 / sq[j].sqrt();
                        (aj - row[j].to() * dot[j] * inv * inv) * inv
                    });
                }
            }
            ((item, start, len), out)
        })
        .collect();
    let mut grad = vec![T::of(0.0); n * c * v];
    for ((item, start, len), piece) in pieces {
        for ch in 0..c {
            let at = item * c * v + ch * v + start;
            grad[at..at + len].copy_from_slice(&piece[ch * len..(ch + 1) * len]);
        }
    }
    grad
}

/// The fused forward pass (CPU).
struct ClassSums;

impl CustomOp2 for ClassSums {
    fn name(&self) -> &'static str {
        "normalized-class-sums"
    }

    fn cpu_fwd(
        &self,
        fs: &CpuStorage,
        fl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(fl, wl);
        let shape = Shape::from((dims.2, dims.1));
        let out = match (fs, ws) {
            (CpuStorage::F32(f), CpuStorage::F32(w)) => {
                CpuStorage::F32(forward(slice(f, fl)?, slice(w, wl)?, dims))
            }
            (CpuStorage::F64(f), CpuStorage::F64(w)) => {
                CpuStorage::F64(forward(slice(f, fl)?, slice(w, wl)?, dims))
            }
            _ => bail!("class sums: features and weights must both be f32 or both f64"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        feat: &Tensor,
        weights: &Tensor,
        _sums: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let df = feat.apply_op3_no_bwd(weights, &grad.contiguous()?, &ClassSumsGrad)?;
        Ok((Some(df), None))
    }
}

/// The feature gradient of [`ClassSums`] (CPU).
struct ClassSumsGrad;

impl CustomOp3 for ClassSumsGrad {
    fn name(&self) -> &'static str {
        "normalized-class-sums-grad"
    }

    fn cpu_fwd(
        &self,
        fs: &CpuStorage,
        fl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(fl, wl);
        let out = match (fs, ws, gs) {
            (CpuStorage::F32(f), CpuStorage::F32(w), CpuStorage::F32(g)) => {
                CpuStorage::F32(backward(slice(f, fl)?, slice(w, wl)?, slice(g, gl)?, dims))
            }
            (CpuStorage::F64(f), CpuStorage::F64(w), CpuStorage::F64(g)) => {
                CpuStorage::F64(backward(slice(f, fl)?, slice(w, wl)?, slice(g, gl)?, dims))
            }
            _ => bail!("class sums gradient: mixed dtypes"),
        };
        Ok((out, fl.shape().clone()))
    }
}
