//! CPU kernels of the 3D convolutions: tile-wise im2col + `gemm`, parallel over tiles with rayon.
//! The 3^3, unit-stride convolutions with up to 64 channels (most of both networks) go to the
//! Winograd kernels of `winograd.rs` instead ([`super::winograd::applies`]), and the small, deep
//! unit-stride ones with more channels to the depth-folded whole-batch kernels of `depth_fold.rs`
//! ([`super::depth_fold::applies`]): forward and backward-filter directly, backward-data through
//! the flipped-kernel forward below.
//!
//! Everything is expressed through one [`Geometry`] (`crate::geometry`), a *gather* convolution
//! `out[n, o, q] = sum_{c, a} w[o, c, a] * x[n, c, q * stride - pad + a * dilation]`
//! (zero outside the input), over contiguous f32 buffers in `[N, C, D, H, W]` order.
//!
//! - [`conv_forward`]: a tile is a run of output rows `(od, oh)` of one sample (about
//!   [`TILE_COLUMNS`] output voxels). The tile's input patches are unfolded into a column buffer
//!   `[C_in * kd * kh * kw, P]` (never the whole volume) and multiplied by the weight into the
//!   output, as `out^T [P, C_out] = col^T [P, K] * W^T [K, C_out]`: the tile's columns are the
//!   GEMM's long `m` side, which `gemm`'s 16-row micro-kernel runs about 1.3-1.6x faster than
//!   `C_out` rows (measured with `examples/bench_conv.rs`, AVX2, 2 threads: 16 -> 16 channels
//!   forward 0.36 -> 0.23 s, 32 -> 32 0.086 -> 0.054 s, 128 -> 128 0.023 -> 0.016 s).
//!   With unit W stride (the common case) the `kw` taps along W are folded out of the unfolding
//!   ([`forward_tile_folded`]): rows padded to `OW + dw * (kw - 1)` are unfolded once per
//!   `(c, a, b)` and each tap is the same buffer shifted, `kw` GEMMs with `K / kw`.
//! - [`conv_backward_filter`]: the same unfolding; `dW^T [K, C_out] += col * dY_tile^T`,
//!   accumulated per thread, summed and transposed at the end (folded likewise,
//!   [`backward_filter_tile_folded`]).
//! - A folded convolution whose whole batch fits in one tile ([`WHOLE_BATCH_COLUMNS`], the deep
//!   layers) runs as one column buffer for all samples and GEMMs split by output channel across
//!   the threads.
//! - [`conv_backward_data`]: for unit stride, a gather convolution of `dY` with the flipped,
//!   transposed kernel (so the fast forward kernel is reused). Otherwise one task per input depth
//!   slice `(n, id)`: `dcol [C_in * kh * kw, OH * OW] = sum_a W_a^T * dY[n, :, od(a)]` by GEMM, then a
//!   2D col2im adds `dcol` into that slice, which no other task writes.
//!
//! Extra memory: each rayon thread keeps two working buffers ([`with_scratch`]: a column buffer,
//! `K * TILE_COLUMNS` floats at most, e.g. 1.7 MiB for 16 channels and 3^3, and a padded tile)
//! from one call to the next, plus, for backward-filter, one `dW` per thread; outputs are
//! allocated once, uninitialised where every element gets written.
//!
//! Measured (`examples/bench_conv.rs`, 2 cores shared with other jobs, CPU time of the process):
//! 16 -> 16, 3^3, padding 1 on (2, 16, 112, 112, 80): forward 0.47 s, forward + backward about 1.6 s
//! (0.6 s and 1.9 s before the W taps were folded), before the GEMM orientation above.
//! `TILE_COLUMNS` 512, 1024 and 2048 were within noise of each other; 4096 and whole depth slices
//! were slower.

use std::cell::RefCell;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::depth_fold::{self, Weight};
use crate::geometry::Geometry;

/// Target number of output voxels per tile: big enough for an efficient GEMM, small enough that the
/// column buffer stays in the L2 cache.
const TILE_COLUMNS: usize = 1024;

/// Tiles `(n, first row, end row)` over the output rows `r = od * OH + oh` of each sample.
fn tiles(g: &Geometry) -> Vec<(usize, usize, usize)> {
    let [od, oh, ow] = g.out_dims;
    let rows = od * oh;
    let mut per_tile = (TILE_COLUMNS / ow.max(1)).max(1);
    // keep at least a few tiles per thread so that rayon can balance the work
    let min_tiles = 4 * rayon::current_num_threads();
    while per_tile > 1 && g.batch * rows.div_ceil(per_tile) < min_tiles {
        per_tile = per_tile.div_ceil(2);
    }
    let mut tiles = Vec::with_capacity(g.batch * rows.div_ceil(per_tile));
    for n in 0..g.batch {
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + per_tile).min(rows);
            tiles.push((n, r0, r1));
            r0 = r1;
        }
    }
    tiles
}

/// A raw pointer that rayon tasks may share; every use writes a region no other task touches.
/// (Also used by the Winograd kernels, `super::winograd`.)
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Each thread's working buffers, kept from one kernel call to the next: allocating them per
    /// call cost a page fault per 4 KiB and a zero fill each time (about 4 % of a training step).
    /// The direct kernels use two (a column buffer and a padded output or gradient tile), the
    /// Winograd kernels three (`super::winograd`); they hold at most one tile's or chunk's values,
    /// a few MiB per rayon thread.
    static SCRATCH: RefCell<[Vec<f32>; 3]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's three scratch buffers. Their contents are whatever the last call
/// left: `f` must write every element it reads. (A nested call, which the kernels never make,
/// gets fresh buffers.)
pub(super) fn with_scratch3<R>(
    f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>) -> R,
) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let [a, b, c] = &mut *bufs;
            f(a, b, c)
        }
        Err(_) => f(&mut Vec::new(), &mut Vec::new(), &mut Vec::new()),
    })
}

/// The first `len` floats of the scratch buffer `buf`, which grows (zero-filled) when shorter and
/// never shrinks. The kernels share the per-thread buffers at different sizes (the Winograd chunk's
/// stages, the column buffers of the other layers), and a `resize` down and back up zero-filled the
/// difference every time. The contents are stale, as a reused buffer's always were: every caller
/// writes its slice in full before reading it (in tests the new floats are NaN, so a read before a
/// write shows).
pub(super) fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, if cfg!(test) { f32::NAN } else { 0.0 });
    }
    &mut buf[..len]
}

/// [`with_scratch3`] with the first two buffers, for the direct kernels.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    with_scratch3(|a, b, _| f(a, b))
}

/// Runs `f` over `items` in parallel, in `per_thread` contiguous chunks per rayon thread, each with
/// its own state from `init` (an accumulator), and returns the chunks' states. More chunks balance
/// the threads better; fewer keep the states (and their summation) cheap.
fn for_each_chunked<T: Sync, S: Send>(
    items: &[T],
    per_thread: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &T) + Sync + Send,
) -> Vec<S> {
    let parts = per_thread * rayon::current_num_threads();
    let chunk = items.len().div_ceil(parts).max(1);
    items
        .par_chunks(chunk)
        .map(|chunk| {
            let mut state = init();
            for item in chunk {
                f(&mut state, item);
            }
            state
        })
        .collect()
}

/// The input row along W that output row `r = od * OH + oh` reads at depth tap `a` and height tap
/// `b` in channel `x_c`, or `None` where that lands in the zero padding.
fn input_row<'x>(g: &Geometry, x_c: &'x [f32], r: usize, a: usize, b: usize) -> Option<&'x [f32]> {
    let [d, h, w] = g.in_dims;
    let oh_n = g.out_dims[1];
    let id = ((r / oh_n) * g.stride[0] + a * g.dilation[0]) as isize - g.pad[0];
    let ih = ((r % oh_n) * g.stride[1] + b * g.dilation[1]) as isize - g.pad[1];
    if id < 0 || id >= d as isize || ih < 0 || ih >= h as isize {
        return None;
    }
    Some(&x_c[(id as usize * h + ih as usize) * w..][..w])
}

/// The output indices `o` in `0..n_out` with `0 <= o * stride + offset < len`, as a range.
pub(super) fn valid_range(
    offset: isize,
    stride: usize,
    len: usize,
    n_out: usize,
) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    let room = len as isize - offset;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let hi = (hi as usize).min(n_out);
    let lo = (lo as usize).min(hi);
    (lo, hi)
}

/// Unfolds the patches of output rows `r0..r1` of one sample `x_n` (`[C_in, D, H, W]`) into
/// `col` (`[K, (r1 - r0) * OW]`, K ordered as the weight's `(c, a, b, e)`).
fn unfold(g: &Geometry, x_n: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
    let [d, h, w] = g.in_dims;
    let ow_n = g.out_dims[2];
    let [kd, kh, kw] = g.kernel;
    let sw = g.stride[2];
    let dw = g.dilation[2];
    let pw = g.pad[2];
    let p = (r1 - r0) * ow_n;
    let plane = h * w;
    let mut rows = col.chunks_exact_mut(p);
    for c in 0..g.c_in {
        let x_c = &x_n[c * d * plane..(c + 1) * d * plane];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let Some(dst) = rows.next() else { return };
                    let off_w = (e * dw) as isize - pw;
                    let (lo, hi) = valid_range(off_w, sw, w, ow_n);
                    for (t, r) in (r0..r1).enumerate() {
                        let out = &mut dst[t * ow_n..(t + 1) * ow_n];
                        let Some(src) = input_row(g, x_c, r, a, b).filter(|_| lo < hi) else {
                            out.fill(0.0);
                            continue;
                        };
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if sw == 1 {
                            let s0 = (lo as isize + off_w) as usize;
                            out[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                        } else {
                            for (ow, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                                *o = src[((ow * sw) as isize + off_w) as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `out [N, C_out, OD, OH, OW] = conv(x [N, C_in, D, H, W], w [C_out, K]) (+ bias [C_out])`.
pub(crate) fn conv_forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::conv_forward(g, x, w, bias);
    }
    let (k, s_in, s_out) = (g.k_len(), g.in_volume(), g.out_volume());
    let ow = g.out_dims[2];
    let len = g.batch * g.c_out * s_out;
    if len == 0 || k == 0 {
        let mut out = vec![0f32; len];
        if let Some(b) = bias {
            for (i, chunk) in out.chunks_exact_mut(s_out.max(1)).enumerate() {
                chunk.fill(b[i % g.c_out]);
            }
        }
        return out;
    }
    let mut out = crate::memory::f32_buffer(len);
    let out_ptr = SharedMut(out.as_mut_ptr().cast::<f32>());
    if depth_fold::applies(g) {
        // SAFETY: `out` holds the whole output, which depth_fold::conv_forward writes in full.
        unsafe { depth_fold::conv_forward(g, x, Weight::Gather(w), bias, out_ptr.get()) };
        return unsafe { crate::memory::assume_init(out) };
    }
    let folded = g.stride[2] == 1 && g.kernel[2] > 1;
    if folded && whole_batch(g) {
        // SAFETY: `out` holds the whole output, which forward_whole_batch_folded writes in full.
        unsafe { forward_whole_batch_folded(g, x, w, bias, out_ptr.get()) };
        return unsafe { crate::memory::assume_init(out) };
    }
    for_each_chunked(
        &tiles(g),
        4,
        || (),
        |_, &(n, r0, r1)| {
            with_scratch(|col, tmp| {
                let x_n = &x[n * g.c_in * s_in..(n + 1) * g.c_in * s_in];
                let base = n * g.c_out * s_out + r0 * ow;
                if folded {
                    // SAFETY: as below; forward_tile_folded writes rows `base + o * s_out .. + p` only.
                    unsafe {
                        forward_tile_folded(
                            g,
                            x_n,
                            r0,
                            r1,
                            w,
                            bias,
                            out_ptr.get().add(base),
                            col,
                            tmp,
                        )
                    };
                    return;
                }
                let p = (r1 - r0) * ow;
                let col = grown(col, k * p);
                unfold(g, x_n, r0, r1, col);
                let dst = out_ptr.get();
                if let Some(b) = bias {
                    for (o, &bo) in b.iter().enumerate() {
                        // SAFETY: the tile `base + o * s_out .. + p` belongs to this task only.
                        unsafe { std::slice::from_raw_parts_mut(dst.add(base + o * s_out), p) }
                            .fill(bo);
                    }
                }
                // SAFETY: dst rows `base + o * s_out .. + p` (o < c_out) lie inside `out` and belong to
                // this task; lhs is `w` [c_out, k] row-major, rhs is `col` [k, p] row-major.
                unsafe {
                    gemm(
                        p,
                        g.c_out,
                        k,
                        dst.add(base),
                        s_out as isize,
                        1,
                        bias.is_some(),
                        col.as_ptr(),
                        p as isize,
                        1,
                        w.as_ptr(),
                        k as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
            })
        },
    );
    // SAFETY: the tiles cover every output row of every sample, and the GEMM (k > 0) wrote every
    // element of each tile for all c_out channels.
    unsafe { crate::memory::assume_init(out) }
}

/// The unfolding of [`forward_tile_folded`]: for each `(c, a, b)` the tile's input rows, padded to
/// `Wp = OW + dw * (kw - 1)`, into `col [C_in * kd * kh, T * Wp]`. Returns `(Wp, T * Wp, C_in * kd * kh)`.
fn unfold_padded_rows(
    g: &Geometry,
    x_n: &[f32],
    r0: usize,
    r1: usize,
    col: &mut Vec<f32>,
) -> (usize, usize, usize) {
    let [kd, kh, kw] = g.kernel;
    let wp = g.out_dims[2] + g.dilation[2] * (kw - 1);
    let row_len = (r1 - r0) * wp;
    let k_fold = g.c_in * kd * kh;
    let col = grown(col, k_fold * row_len);
    let s_c = g.in_volume();
    for (c, rows) in col.chunks_exact_mut((kd * kh * row_len).max(1)).enumerate() {
        // SAFETY: `rows` is channel c's `kd * kh` rows of `row_len` values, borrowed mutably.
        unsafe {
            unfold_channel_rows(
                g,
                &x_n[c * s_c..(c + 1) * s_c],
                r0,
                r1,
                rows.as_mut_ptr(),
                row_len,
            )
        };
    }
    (wp, row_len, k_fold)
}

/// The `kd * kh` padded rows `(a, b)` of one input channel `x_c`: row `(a, b)` at
/// `dst + (a * kh + b) * stride`, `(r1 - r0) * Wp` values each.
///
/// # Safety
/// Those rows must be valid for writes and written by no one else meanwhile.
unsafe fn unfold_channel_rows(
    g: &Geometry,
    x_c: &[f32],
    r0: usize,
    r1: usize,
    dst: *mut f32,
    stride: usize,
) {
    let wd = g.in_dims[2];
    let ow_n = g.out_dims[2];
    let [kd, kh, kw] = g.kernel;
    let dw = g.dilation[2];
    let pw = g.pad[2];
    let wp = ow_n + dw * (kw - 1);
    let row_len = (r1 - r0) * wp;
    // padded row j holds x[.., j - pw] (zero outside 0..W)
    let (lo, hi) = valid_range(-pw, 1, wd, wp);
    for a in 0..kd {
        for b in 0..kh {
            // SAFETY: the caller's rows.
            let dst_row =
                unsafe { std::slice::from_raw_parts_mut(dst.add((a * kh + b) * stride), row_len) };
            for (t, r) in (r0..r1).enumerate() {
                let seg = &mut dst_row[t * wp..(t + 1) * wp];
                let Some(src) = input_row(g, x_c, r, a, b).filter(|_| lo < hi) else {
                    seg.fill(0.0);
                    continue;
                };
                seg[..lo].fill(0.0);
                seg[hi..].fill(0.0);
                let s0 = (lo as isize - pw) as usize;
                seg[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
            }
        }
    }
}

/// One forward tile for unit W stride, with the `kw` taps along W folded out of the unfolding.
///
/// The column buffer holds, for each `(c, a, b)`, the tile's input rows padded to
/// `Wp = OW + dw * (kw - 1)` (`col [C_in * kd * kh, T * Wp]`); the tap `e` is the same buffer shifted
/// by `e * dw`, so `kw` GEMMs with `K = C_in * kd * kh` (weight columns `(c, a, b, e)`, stride `kw`)
/// accumulate the tile on a padded grid `tmp [C_out, T * Wp]`, whose first `OW` columns of each row
/// are then copied out. This writes `kw` times fewer column values than [`unfold`].
///
/// # Safety
/// `dst` must point at the tile's first output element (`out[n, 0, r0 * OW]`) with rows
/// `dst + o * OD * OH * OW .. + (r1 - r0) * OW` valid for writes and owned by the caller.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_tile_folded(
    g: &Geometry,
    x_n: &[f32],
    r0: usize,
    r1: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    dst: *mut f32,
    col: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
) {
    let [_, _, ow_n] = g.out_dims;
    let [_, _, kw] = g.kernel;
    let dw = g.dilation[2];
    let t_n = r1 - r0;
    let (wp, row_len, k_fold) = unfold_padded_rows(g, x_n, r0, r1, col);
    let tmp = grown(tmp, g.c_out * row_len);
    // the last row's valid outputs end at (t_n - 1) * wp + ow_n <= row_len - dw * (kw - 1)
    let n_cols = row_len - dw * (kw - 1);
    for e in 0..kw {
        // SAFETY: lhs = w[:, :, :, :, e] as [c_out, k_fold] (row stride K, column stride kw),
        // rhs = col shifted by e * dw as [k_fold, n_cols] (row stride row_len; the last column
        // read is row_len - 1), dst = tmp [c_out, n_cols] with row stride row_len.
        unsafe {
            gemm(
                n_cols,
                g.c_out,
                k_fold,
                tmp.as_mut_ptr(),
                row_len as isize,
                1,
                e > 0,
                col.as_ptr().add(e * dw),
                row_len as isize,
                1,
                w.as_ptr().add(e),
                (k_fold * kw) as isize,
                kw as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    }
    let s_out = g.out_volume();
    for o in 0..g.c_out {
        let b = bias.map_or(0.0, |b| b[o]);
        let src = &tmp[o * row_len..(o + 1) * row_len];
        // SAFETY: the caller owns rows `dst + o * s_out .. + t_n * ow_n`.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.add(o * s_out), t_n * ow_n) };
        rows_off_padded_grid(src, wp, out, ow_n, b);
    }
}

/// The first `ow` values of each `wp`-long row of `padded`, plus `bias`, into the `ow`-long rows
/// of `out` (the folded forward's output leaves its padded grid).
fn rows_off_padded_grid(padded: &[f32], wp: usize, out: &mut [f32], ow: usize, bias: f32) {
    for (out_row, row) in out.chunks_exact_mut(ow).zip(padded.chunks_exact(wp)) {
        for (v, &s) in out_row.iter_mut().zip(&row[..ow]) {
            *v = s + bias;
        }
    }
}

/// The `ow`-long rows of `rows` onto the `wp`-long rows of `padded`, zero in the `wp - ow`
/// padding columns (the folded backward-filter's output gradient on the padded grid).
fn rows_onto_padded_grid(rows: &[f32], ow: usize, padded: &mut [f32], wp: usize) {
    for (seg, s) in padded.chunks_exact_mut(wp).zip(rows.chunks_exact(ow)) {
        seg[..ow].copy_from_slice(s);
        seg[ow..].fill(0.0);
    }
}

/// `dW [C_out, K]` of `conv(x, w)` given `dy [N, C_out, OD, OH, OW]`.
///
/// Accumulates `dW^T [K, C_out] += col [K, P] * dY_tile^T` (this orientation runs about twice as
/// fast in `gemm` as `dW += dY_tile * col^T`) and transposes at the end.
pub(crate) fn conv_backward_filter(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::conv_backward_filter(g, x, dy);
    }
    let (k, s_in, s_out) = (g.k_len(), g.in_volume(), g.out_volume());
    let ow = g.out_dims[2];
    let len = g.c_out * k;
    if g.batch * s_out == 0 || len == 0 {
        return vec![0f32; len];
    }
    if depth_fold::applies(g) {
        return depth_fold::conv_backward_filter(g, x, dy);
    }
    let folded = g.stride[2] == 1 && g.kernel[2] > 1;
    if folded && whole_batch(g) {
        return transpose_filter_grad(g, &backward_filter_whole_batch_folded(g, x, dy), |r| r);
    }
    // one accumulator per thread: for the deep layers `dW` is larger than the tiles it sums
    let parts = for_each_chunked(
        &tiles(g),
        1,
        || vec![0f32; len],
        |dw_t: &mut Vec<f32>, &(n, r0, r1)| {
            with_scratch(|col, dy_pad| {
                let dy_n = &dy[n * g.c_out * s_out..(n + 1) * g.c_out * s_out];
                if folded {
                    backward_filter_tile_folded(
                        g,
                        &x[n * g.c_in * s_in..(n + 1) * g.c_in * s_in],
                        dy_n,
                        r0,
                        r1,
                        dw_t,
                        col,
                        dy_pad,
                    );
                    return;
                }
                let p = (r1 - r0) * ow;
                let col = grown(col, k * p);
                unfold(
                    g,
                    &x[n * g.c_in * s_in..(n + 1) * g.c_in * s_in],
                    r0,
                    r1,
                    col,
                );
                let rhs = &dy[n * g.c_out * s_out + r0 * ow..];
                // SAFETY: lhs is col [k, p] row-major, rhs is dy's tile transposed [p, c_out]
                // (column stride s_out, inside dy), dst is the fold's own dw_t [k, c_out].
                unsafe {
                    gemm(
                        k,
                        g.c_out,
                        p,
                        dw_t.as_mut_ptr(),
                        1,
                        g.c_out as isize,
                        true,
                        col.as_ptr(),
                        1,
                        p as isize,
                        rhs.as_ptr(),
                        s_out as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
            })
        },
    );
    let mut parts = parts.into_iter();
    let mut dw_t = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        dw_t.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    transpose_filter_grad(g, &dw_t, |r| r)
}

/// `dW [C_out, K]` from `dW^T`, whose row `r` (`C_out` values) is the weight column
/// `column_of_row(r)`: the identity for this file's kernels, the depth taps' order for
/// `depth_fold.rs`.
pub(super) fn transpose_filter_grad(
    g: &Geometry,
    dw_t: &[f32],
    column_of_row: impl Fn(usize) -> usize + Sync,
) -> Vec<f32> {
    /// Output channels per task: each reads a contiguous run of every `dW^T` row.
    const BLOCK: usize = 16;
    let (k, co) = (g.k_len(), g.c_out);
    let mut dw = vec![0f32; dw_t.len()];
    dw.par_chunks_mut((BLOCK * k).max(1))
        .enumerate()
        .for_each(|(blk, dw_blk)| {
            let o0 = blk * BLOCK;
            for (r, row) in dw_t.chunks_exact(co).enumerate() {
                let kk = column_of_row(r);
                for (i, &v) in row[o0..].iter().take(dw_blk.len() / k).enumerate() {
                    dw_blk[i * k + kk] = v;
                }
            }
        });
    dw
}

/// Output columns (all samples, on the W-padded grid of the folded kernels) up to which a
/// convolution runs as one column buffer for the whole batch and `kw` GEMMs that are parallel
/// inside, instead of tiles in parallel: a batch that fits in one tile. These are the deep,
/// low-resolution layers, whose tiles would be a few dozen columns against a weight (and a
/// per-thread weight gradient to zero and sum) of up to 1.8 M values. Measured with
/// `bench_conv`, forward + backward: 256 channels on (4, 256, 4, 4, 3) 0.067 s instead of 0.090 s;
/// (3, 128, 4, 6, 4) and (4, 128, 8, 8, 6) equal either way; but (3, 64, 8, 12, 8), 2880 columns,
/// 0.057 s instead of 0.026 s, hence no higher limit.
const WHOLE_BATCH_COLUMNS: usize = TILE_COLUMNS;

/// Whether the folded convolution `g` takes the whole-batch path ([`WHOLE_BATCH_COLUMNS`]).
fn whole_batch(g: &Geometry) -> bool {
    let [od, oh, ow] = g.out_dims;
    let wp = ow + g.dilation[2] * (g.kernel[2] - 1);
    g.batch * od * oh * wp <= WHOLE_BATCH_COLUMNS
}

/// The column buffer of the whole batch for the folded kernels: `col [C_in * kd * kh, N * OD * OH * Wp]`,
/// sample `n`'s padded rows in columns `n * OD * OH * Wp ..`. Returns `(Wp, total columns, K / kw)`.
fn unfold_whole_batch(g: &Geometry, x: &[f32], col: &mut Vec<f32>) -> (usize, usize, usize) {
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.out_dims;
    let wp = ow + g.dilation[2] * (kw - 1);
    let per_sample = od * oh * wp;
    let total = g.batch * per_sample;
    let k_fold = g.c_in * kd * kh;
    let s_in = g.in_volume();
    let col = grown(col, k_fold * total);
    let col_ptr = SharedMut(col.as_mut_ptr());
    (0..g.batch * g.c_in).into_par_iter().for_each(|nc| {
        let (n, c) = (nc / g.c_in, nc % g.c_in);
        // SAFETY: rows (c, a, b) of sample n: `kd * kh` rows of `per_sample` values at
        // `(c * kd * kh + a * kh + b) * total + n * per_sample`, inside `col` and this (n, c)'s alone.
        unsafe {
            unfold_channel_rows(
                g,
                &x[nc * s_in..(nc + 1) * s_in],
                0,
                od * oh,
                col_ptr.get().add(c * kd * kh * total + n * per_sample),
                total,
            )
        };
    });
    (wp, total, k_fold)
}

/// [`conv_forward`] of a folded convolution on the whole batch at once (see
/// [`WHOLE_BATCH_COLUMNS`]): the tap `e` GEMMs of [`forward_tile_folded`] over every sample's
/// columns, split by output channel across the threads ([`for_each_channel_range`]).
///
/// # Safety
/// `out` must be valid for writes of the whole output `[N, C_out, OD, OH, OW]`.
unsafe fn forward_whole_batch_folded(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let [od, oh, ow] = g.out_dims;
    let [_, _, kw] = g.kernel;
    let dw = g.dilation[2];
    let s_out = g.out_volume();
    with_scratch(|col, tmp| {
        let (wp, total, k_fold) = unfold_whole_batch(g, x, col);
        let tmp = grown(tmp, g.c_out * total);
        let n_cols = total - dw * (kw - 1);
        let tmp_ptr = SharedMut(tmp.as_mut_ptr());
        let col: &[f32] = col;
        for_each_channel_range(g.c_out, |o0, o1| {
            for e in 0..kw {
                // SAFETY: as in forward_tile_folded, with `total` columns in place of one tile's;
                // this range writes the columns o0..o1 of `tmp` alone.
                unsafe {
                    gemm(
                        n_cols,
                        o1 - o0,
                        k_fold,
                        tmp_ptr.get().add(o0 * total),
                        total as isize,
                        1,
                        e > 0,
                        col.as_ptr().add(e * dw),
                        total as isize,
                        1,
                        w.as_ptr().add(o0 * k_fold * kw + e),
                        (k_fold * kw) as isize,
                        kw as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
            }
        });
        let rows = od * oh;
        let out = SharedMut(out);
        let tmp: &[f32] = tmp;
        (0..g.batch * g.c_out).into_par_iter().for_each(|no| {
            let (n, o) = (no / g.c_out, no % g.c_out);
            let b = bias.map_or(0.0, |b| b[o]);
            let src = &tmp[o * total + n * rows * wp..][..rows * wp];
            // SAFETY: the caller lets us write the whole output; this is out[n, o], this task's alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(no * s_out), s_out) };
            rows_off_padded_grid(src, wp, dst, ow, b);
        });
    })
}

/// Runs `f(o0, o1)` on contiguous ranges of the `c_out` output channels, one per rayon thread,
/// in parallel: the whole-batch GEMMs split by output channel, each range one serial GEMM per tap.
/// gemm's own parallel split of these small GEMMs was no faster on 2 threads than one serial GEMM
/// (`bench_conv`, forward + backward, 2 threads: (3, 128, 4, 6, 4) 0.018 -> 0.010-0.013 s,
/// (3, 256, 2, 3, 2) 0.015 -> 0.012 s).
pub(super) fn for_each_channel_range(c_out: usize, f: impl Fn(usize, usize) + Sync) {
    let parts = rayon::current_num_threads().clamp(1, c_out.max(1));
    let step = c_out.div_ceil(parts);
    (0..parts).into_par_iter().for_each(|p| {
        let (o0, o1) = (p * step, ((p + 1) * step).min(c_out));
        if o0 < o1 {
            f(o0, o1)
        }
    });
}

/// `dW^T [K, C_out]` of a folded convolution on the whole batch at once (see
/// [`WHOLE_BATCH_COLUMNS`]): the tap `e` GEMMs of [`backward_filter_tile_folded`] over every
/// sample's columns, split by output channel across the threads; each writes its own rows and
/// columns of `dW^T`, so no accumulator is shared or summed.
fn backward_filter_whole_batch_folded(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [od, oh, ow] = g.out_dims;
    let [_, _, kw] = g.kernel;
    let dw = g.dilation[2];
    let s_out = g.out_volume();
    let mut dw_t = vec![0f32; g.c_out * g.k_len()];
    with_scratch(|col, dy_pad| {
        let (wp, total, k_fold) = unfold_whole_batch(g, x, col);
        let dy_pad = grown(dy_pad, g.c_out * total);
        let rows = od * oh;
        dy_pad
            .par_chunks_mut(total)
            .enumerate()
            .for_each(|(o, dy_pad_o)| {
                for n in 0..g.batch {
                    let src = &dy[(n * g.c_out + o) * s_out..][..s_out];
                    let dst = &mut dy_pad_o[n * rows * wp..][..rows * wp];
                    rows_onto_padded_grid(src, ow, dst, wp);
                }
            });
        let n_cols = total - dw * (kw - 1);
        let dw_ptr = SharedMut(dw_t.as_mut_ptr());
        let (col, dy_pad): (&[f32], &[f32]) = (col, dy_pad);
        for_each_channel_range(g.c_out, |o0, o1| {
            for e in 0..kw {
                // SAFETY: as in backward_filter_tile_folded, with `total` columns in place of one
                // tile's; the rows (c, a, b, e) of dw_t are this tap's alone (no read of dst),
                // and of them this range writes the columns o0..o1 alone.
                unsafe {
                    gemm(
                        k_fold,
                        o1 - o0,
                        n_cols,
                        dw_ptr.get().add(e * g.c_out + o0),
                        1,
                        (kw * g.c_out) as isize,
                        false,
                        col.as_ptr().add(e * dw),
                        1,
                        total as isize,
                        dy_pad.as_ptr().add(o0 * total),
                        total as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                }
            }
        });
    });
    dw_t
}

/// One backward-filter tile for unit W stride, with the W taps folded as in
/// [`forward_tile_folded`]: `dy`'s tile is copied onto the padded grid (`dy_pad [C_out, T * Wp]`,
/// zero in the `Wp - OW` padding columns), then for each tap `e`
/// `dW^T[(c, a, b, e), :] += col_shifted_e [K / kw, T * Wp] * dy_pad^T`.
#[allow(clippy::too_many_arguments)]
fn backward_filter_tile_folded(
    g: &Geometry,
    x_n: &[f32],
    dy_n: &[f32],
    r0: usize,
    r1: usize,
    dw_t: &mut [f32],
    col: &mut Vec<f32>,
    dy_pad: &mut Vec<f32>,
) {
    let [_, _, ow_n] = g.out_dims;
    let [_, _, kw] = g.kernel;
    let dw = g.dilation[2];
    let s_out = g.out_volume();
    let (wp, row_len, k_fold) = unfold_padded_rows(g, x_n, r0, r1, col);
    let dy_pad = grown(dy_pad, g.c_out * row_len);
    for (o, pad_row) in dy_pad.chunks_exact_mut(row_len).enumerate() {
        let src = &dy_n[o * s_out + r0 * ow_n..][..(r1 - r0) * ow_n];
        rows_onto_padded_grid(src, ow_n, pad_row, wp);
    }
    let n_cols = row_len - dw * (kw - 1);
    for e in 0..kw {
        // SAFETY: lhs = col shifted by e * dw as [k_fold, n_cols] (row stride row_len, last read
        // row_len - 1), rhs = dy_pad^T [n_cols, c_out] (column stride row_len), dst = the rows
        // (c, a, b, e) of dw_t [K, c_out]: row stride kw * c_out from offset e * c_out.
        unsafe {
            gemm(
                k_fold,
                g.c_out,
                n_cols,
                dw_t.as_mut_ptr().add(e * g.c_out),
                1,
                (kw * g.c_out) as isize,
                true,
                col.as_ptr().add(e * dw),
                1,
                row_len as isize,
                dy_pad.as_ptr(),
                row_len as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    }
}

/// `dx [N, C_in, D, H, W]` of `conv(x, w)` given `dy [N, C_out, OD, OH, OW]` and `w [C_out, K]`:
/// the transposed convolution.
pub(crate) fn conv_backward_data(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if g.stride == [1, 1, 1] {
        backward_data_unit_stride(g, dy, w)
    } else {
        backward_data_col2im(g, dy, w)
    }
}

/// Unit stride: `dx = gather-conv(dy, flip(w)^T)` with padding `dilation * (k - 1) - pad`.
fn backward_data_unit_stride(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut pad = [0isize; 3];
    for (i, p) in pad.iter_mut().enumerate() {
        *p = (g.dilation[i] * (g.kernel[i] - 1)) as isize - g.pad[i];
    }
    let flipped = Geometry {
        batch: g.batch,
        c_in: g.c_out,
        c_out: g.c_in,
        in_dims: g.out_dims,
        out_dims: g.in_dims,
        kernel: g.kernel,
        stride: [1, 1, 1],
        pad,
        dilation: g.dilation,
    };
    if depth_fold::applies(&flipped) {
        let mut dx = crate::memory::f32_buffer(g.batch * g.c_in * g.in_volume());
        // SAFETY: `dx` holds the whole output of the flipped convolution, which
        // depth_fold::conv_forward writes in full.
        unsafe {
            depth_fold::conv_forward(
                &flipped,
                dy,
                Weight::Flipped(w),
                None,
                dx.as_mut_ptr().cast(),
            );
            return crate::memory::assume_init(dx);
        }
    }
    let [kd, kh, kw] = g.kernel;
    let taps = kd * kh * kw;
    // w' [C_in, C_out, kd, kh, kw] with w'[c, o, a'] = w[o, c, k - 1 - a']
    let mut wt = vec![0f32; w.len()];
    wt.par_chunks_mut((g.c_out * taps).max(1))
        .enumerate()
        .for_each(|(c, wt_c)| {
            for (o, dst) in wt_c.chunks_exact_mut(taps).enumerate() {
                let src = &w[(o * g.c_in + c) * taps..][..taps];
                for (t, v) in dst.iter_mut().enumerate() {
                    *v = src[taps - 1 - t];
                }
            }
        });
    conv_forward(&flipped, dy, &wt, None)
}

/// Any stride: per input depth slice, GEMM into a 2D column buffer, then col2im.
fn backward_data_col2im(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let [d, h, wd] = g.in_dims;
    let [od_n, oh_n, ow_n] = g.out_dims;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [dd, dh, dw] = g.dilation;
    let [pd, ph, pw] = g.pad;
    let (s_in, s_out) = (g.in_volume(), g.out_volume());
    let plane_out = oh_n * ow_n;
    let m2 = g.c_in * kh * kw;
    let taps = kd * kh * kw;
    // wt[a] = [C_in * kh * kw, C_out] with wt[a][(c, b, e)][o] = w[o, c, a, b, e]
    let mut wt = vec![0f32; kd * m2 * g.c_out];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for a in 0..kd {
                for be in 0..kh * kw {
                    wt[(a * m2 + c * kh * kw + be) * g.c_out + o] =
                        w[(o * g.c_in + c) * taps + a * kh * kw + be];
                }
            }
        }
    }
    let mut dx = vec![0f32; g.batch * g.c_in * s_in];
    if dx.is_empty() || plane_out == 0 {
        return dx;
    }
    let dx_ptr = SharedMut(dx.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..g.batch)
        .flat_map(|n| (0..d).map(move |i| (n, i)))
        .collect();
    for_each_chunked(
        &tasks,
        4,
        || (),
        |_, &(n, id)| {
            with_scratch(|dcol, _| {
                let dcol = grown(dcol, m2 * plane_out);
                let mut first = true;
                for a in 0..kd {
                    let t = id as isize + pd - (a * dd) as isize;
                    if t < 0 || t % sd as isize != 0 || t as usize / sd >= od_n {
                        continue;
                    }
                    let od = t as usize / sd;
                    let rhs = &dy[n * g.c_out * s_out + od * plane_out..];
                    // SAFETY: lhs wt[a] [m2, c_out] row-major, rhs dy[n, :, od] [c_out, plane_out] with row
                    // stride s_out, dst the task's own dcol [m2, plane_out].
                    unsafe {
                        gemm(
                            m2,
                            plane_out,
                            g.c_out,
                            dcol.as_mut_ptr(),
                            1,
                            plane_out as isize,
                            !first,
                            wt[a * m2 * g.c_out..].as_ptr(),
                            1,
                            g.c_out as isize,
                            rhs.as_ptr(),
                            1,
                            s_out as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        )
                    }
                    first = false;
                }
                if first {
                    return;
                }
                for c in 0..g.c_in {
                    // SAFETY: the slice dx[n, c, id] belongs to this task only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            dx_ptr.get().add((n * g.c_in + c) * s_in + id * h * wd),
                            h * wd,
                        )
                    };
                    for b in 0..kh {
                        for e in 0..kw {
                            let src = &dcol[((c * kh + b) * kw + e) * plane_out..][..plane_out];
                            let off_w = (e * dw) as isize - pw;
                            let (lo, hi) = valid_range(off_w, sw, wd, ow_n);
                            if lo >= hi {
                                continue;
                            }
                            for oh in 0..oh_n {
                                let ih = (oh * sh + b * dh) as isize - ph;
                                if ih < 0 || ih >= h as isize {
                                    continue;
                                }
                                let row = &mut dst[ih as usize * wd..][..wd];
                                let s = &src[oh * ow_n..][..ow_n];
                                for ow in lo..hi {
                                    row[((ow * sw) as isize + off_w) as usize] += s[ow];
                                }
                            }
                        }
                    }
                }
            })
        },
    );
    dx
}
