//! CUDA side of the four fused batch-norm ops of `ops/batch_norm.rs`: launches the kernels of
//! `batch_norm.cu` (PTX built by `build.rs`). Same inputs, outputs and shape rules as the CPU
//! kernels; reductions accumulate in f64 per thread, per block and across blocks in a fixed order.

use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};

use super::handle::f32_view;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx"));
const MODULE: &str = "duoseg_nn3d_batch_norm";
/// Threads per block; must equal `BLOCK` in `batch_norm.cu`.
const BLOCK: u32 = 256;
/// At most this many blocks per channel in the reductions (each writes one partial sum).
const MAX_REDUCE_BLOCKS: usize = 128;
/// CUDA's limit on `gridDim.y`.
const MAX_GRID_Y: usize = 65535;

/// `(N, C, S)` of a non-empty `[N, C, D, H, W]` layout, checked against kernel index limits.
fn planes(l: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [n, c, d, h, w] if n * c * d * h * w > 0 => {
            if n * c > MAX_GRID_Y {
                bail!(
                    "cuda batch-norm {what}: N*C = {} exceeds {MAX_GRID_Y}",
                    n * c
                )
            }
            if n * c * d * h * w > i64::MAX as usize / 2 || n > i32::MAX as usize {
                bail!("cuda batch-norm {what}: shape {:?} too large", l.dims())
            }
            Ok((n, c, d * h * w))
        }
        _ => bail!(
            "cuda batch-norm {what}: expects a non-empty [N, C, D, H, W] tensor, got {:?}",
            l.dims()
        ),
    }
}

fn rows(l: &Layout, rows: usize, c: usize, what: &str) -> Result<()> {
    if l.dims() != [rows, c] {
        bail!(
            "cuda batch-norm {what} must be [{rows}, {c}], got {:?}",
            l.dims()
        )
    }
    Ok(())
}

fn same_shape(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        bail!(
            "cuda batch-norm output gradient shape {:?} differs from input shape {:?}",
            l2.dims(),
            l1.dims()
        )
    }
    Ok(())
}

/// Blocks per channel for a reduction over `count` values per channel.
fn reduce_blocks(count: usize) -> usize {
    count
        .div_ceil(BLOCK as usize * 16)
        .clamp(1, MAX_REDUCE_BLOCKS)
}

/// Grid of the elementwise kernels: x covers one `(n, c)` plane of `s` values, y the planes.
fn plane_grid(planes: usize, s: usize) -> LaunchConfig {
    let x = s.div_ceil(BLOCK as usize * 4).clamp(1, 65535) as u32;
    LaunchConfig {
        grid_dim: (x, planes as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn finish_grid(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32_arg(v: usize, what: &str) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("cuda batch-norm: {what} = {v} exceeds i32"),
    }
}

fn wrap(dev: &CudaDevice, out: CudaSlice<f32>) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

/// `ChannelStats`: `[2, C]` mean and biased variance per channel of `x`.
pub(crate) fn channel_stats(x: &CudaStorage, lx: &Layout) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = planes(lx, "statistics")?;
    let xv = f32_view(x, lx, "cuda batch-norm input")?;
    let nb = reduce_blocks(n * s);
    let mut partial = dev.alloc_zeros::<f64>(2 * c * nb)?;
    let mut out = dev.alloc_zeros::<f32>(2 * c)?;
    let (n32, c32, s64, nb32) = (
        i32_arg(n, "N")?,
        i32_arg(c, "C")?,
        s as i64,
        i32_arg(nb, "blocks")?,
    );
    let f = dev.get_or_load_custom_func("bn_stats_partial", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv).arg(&n32).arg(&c32).arg(&s64).arg(&mut partial);
    let cfg = LaunchConfig {
        grid_dim: (nb as u32, c as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    let f = dev.get_or_load_custom_func("bn_stats_finish", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&partial)
        .arg(&nb32)
        .arg(&xv)
        .arg(&n32)
        .arg(&c32)
        .arg(&s64)
        .arg(&mut out);
    unsafe { b.launch(finish_grid(c)) }.map_err(candle_core::Error::wrap)?;
    Ok(wrap(dev, out))
}

/// `BatchNormForward`: `y = (x − mean)·gamma/sqrt(var + eps) + beta` from stats `[2, C]` and
/// affine `[2, C]`.
pub(crate) fn forward(
    x: &CudaStorage,
    lx: &Layout,
    stats: &CudaStorage,
    ls: &Layout,
    affine: &CudaStorage,
    la: &Layout,
    eps: f64,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = planes(lx, "forward")?;
    rows(ls, 2, c, "statistics")?;
    rows(la, 2, c, "affine parameters")?;
    let xv = f32_view(x, lx, "cuda batch-norm input")?;
    let sv = f32_view(stats, ls, "cuda batch-norm statistics")?;
    let av = f32_view(affine, la, "cuda batch-norm affine parameters")?;
    let mut y = dev.alloc_zeros::<f32>(n * c * s)?;
    let (c32, s64) = (i32_arg(c, "C")?, s as i64);
    let f = dev.get_or_load_custom_func("bn_forward", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&sv)
        .arg(&av)
        .arg(&c32)
        .arg(&s64)
        .arg(&eps)
        .arg(&mut y);
    unsafe { b.launch(plane_grid(n * c, s)) }.map_err(candle_core::Error::wrap)?;
    Ok(wrap(dev, y))
}

/// `ChannelGradSums`: `[2, C]` = `Σ dy`, `Σ dy·(x − mean)` per channel, stats `[2, C]` (row 0 read).
pub(crate) fn grad_sums(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    stats: &CudaStorage,
    ls: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = planes(lx, "gradient sums")?;
    same_shape(lx, ldy)?;
    rows(ls, 2, c, "statistics")?;
    let xv = f32_view(x, lx, "cuda batch-norm input")?;
    let gv = f32_view(dy, ldy, "cuda batch-norm output gradient")?;
    let sv = f32_view(stats, ls, "cuda batch-norm statistics")?;
    let nb = reduce_blocks(n * s);
    let mut partial = dev.alloc_zeros::<f64>(2 * c * nb)?;
    let mut out = dev.alloc_zeros::<f32>(2 * c)?;
    let (n32, c32, s64, nb32) = (
        i32_arg(n, "N")?,
        i32_arg(c, "C")?,
        s as i64,
        i32_arg(nb, "blocks")?,
    );
    let f = dev.get_or_load_custom_func("bn_grad_sums_partial", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&gv)
        .arg(&sv)
        .arg(&n32)
        .arg(&c32)
        .arg(&s64)
        .arg(&mut partial);
    let cfg = LaunchConfig {
        grid_dim: (nb as u32, c as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    let f = dev.get_or_load_custom_func("bn_grad_sums_finish", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&partial).arg(&nb32).arg(&c32).arg(&mut out);
    unsafe { b.launch(finish_grid(c)) }.map_err(candle_core::Error::wrap)?;
    Ok(wrap(dev, out))
}

/// `BatchNormGradInput`: `dx = a·dy + b·(x − centre) + c` with coeffs `[4, C]` (a, b, centre, c).
pub(crate) fn grad_input(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    coeffs: &CudaStorage,
    lc: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let (n, c, s) = planes(lx, "input gradient")?;
    same_shape(lx, ldy)?;
    rows(lc, 4, c, "gradient coefficients")?;
    let xv = f32_view(x, lx, "cuda batch-norm input")?;
    let gv = f32_view(dy, ldy, "cuda batch-norm output gradient")?;
    let kv = f32_view(coeffs, lc, "cuda batch-norm gradient coefficients")?;
    let mut dx = dev.alloc_zeros::<f32>(n * c * s)?;
    let (c32, s64) = (i32_arg(c, "C")?, s as i64);
    let f = dev.get_or_load_custom_func("bn_grad_input", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&gv)
        .arg(&kv)
        .arg(&c32)
        .arg(&s64)
        .arg(&mut dx);
    unsafe { b.launch(plane_grid(n * c, s)) }.map_err(candle_core::Error::wrap)?;
    Ok(wrap(dev, dx))
}
