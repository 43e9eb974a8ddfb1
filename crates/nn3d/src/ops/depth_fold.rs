//! CPU kernels of the small, deep unit-stride convolutions (a few thousand output voxels for the
//! whole batch, many channels): the whole batch at once, with the depth taps folded out of the
//! unfolding.
//!
//! The column buffer holds, for each `(c, b, e)` (input channel, height tap, width tap), every
//! sample's input depth slices on the output's `OH x OW` grid:
//! `col[(c, b, e)][n, id, oh, ow] = x[n, c, id, oh - ph + b * dh, ow - pw + e * dw]` (zero outside).
//! Because depth is the outermost spatial axis, the depth tap `a` of a sample is then one GEMM over
//! a contiguous run of columns: output slices `od` in the tap's valid range read the column slices
//! `od - pd + a * dd`. Every output voxel the GEMMs compute is a real one.
//!
//! That is why these layers are not left to the W-folded kernels of `cpu_gemm.rs`, which compute
//! every output row on a grid padded along W and keep the first `OW` columns: on the deep layers W
//! is small (4 at 128 channels on hippocampus crops), so the padded grid is 1.5-2x the output and
//! so are the GEMMs. Here the GEMMs do `(3 D - 2) / (3 D)` of a dense im2col's work for 3^3 kernels
//! with padding 1, and write the output directly (no padded grid to copy out of).
//!
//! The GEMMs are split by output channel across the threads (`for_each_channel_range`), each range
//! one serial GEMM per sample and tap, so no thread's results are summed.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu_gemm::{
    for_each_channel_range, grown, transpose_filter_grad, valid_range, with_scratch3, SharedMut,
};
use crate::geometry::Geometry;

/// Size of the column buffer (`C_in * kh * kw` rows of `N * D * OH * OW` columns, shared by the
/// threads) up to which a convolution takes these kernels: 16 MiB. Measured with `bench_conv`
/// (2 threads, forward + backward, the fastest of 4 alternating rounds of 20 calls, W-folded
/// kernels -> these): (3, 128, 4, 6, 4) 7.6 -> 4.8 ms, (3, 256, 2, 3, 2) 6.6 -> 5.3 ms,
/// (4, 256, 4, 4, 3) 20.8 -> 13.2 ms, (4, 128, 8, 8, 6) 31.2 -> 21.4 ms (1.8 M values); and
/// (4, 128, 16, 16, 12), 14 M values, still 206 -> 183 ms, but for a buffer of 56 MiB.
const MAX_COL_VALUES: usize = 1 << 22;

/// Output channels below which the split by output channel leaves the threads too little each:
/// with the 1 -> 16 channel 7^3 stem (whose backward-data is a 16 -> 1 convolution, a single
/// range) these kernels took 3-4x the W-folded ones' forward + backward.
const MIN_CHANNELS: usize = 32;

/// Whether the convolution `g` runs on these kernels: unit stride, a depth kernel to fold, many
/// channels on both sides, and a column buffer of at most [`MAX_COL_VALUES`].
///
/// `DUOSEG_DEPTH_FOLD=0` in the environment turns these kernels off (read once per process), for
/// comparisons with the W-folded kernels in one binary.
pub(super) fn applies(g: &Geometry) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let [_, kh, kw] = g.kernel;
    let columns = g.batch * g.in_dims[0] * g.out_dims[1] * g.out_dims[2];
    *ENABLED.get_or_init(|| std::env::var("DUOSEG_DEPTH_FOLD").map_or(true, |v| v != "0"))
        && g.stride == [1, 1, 1]
        && g.kernel[0] > 1
        && g.c_in.min(g.c_out) >= MIN_CHANNELS
        && g.c_in * kh * kw * columns <= MAX_COL_VALUES
        && g.batch * g.out_volume() > 0
}

/// Unfolds `x [N, C_in, D, H, W]` into `col [C_in * kh * kw, N * D * OH * OW]` (module docs).
/// Returns the number of columns.
fn unfold(g: &Geometry, x: &[f32], col: &mut Vec<f32>) -> usize {
    let [d, h, w] = g.in_dims;
    let [_, oh_n, ow_n] = g.out_dims;
    let [_, kh, kw] = g.kernel;
    let plane = oh_n * ow_n;
    let per_sample = d * plane;
    let total = g.batch * per_sample;
    let col = grown(col, g.c_in * kh * kw * total);
    let col_ptr = SharedMut(col.as_mut_ptr());
    let s_in = g.in_volume();
    (0..g.batch * g.c_in).into_par_iter().for_each(|nc| {
        let (n, c) = (nc / g.c_in, nc % g.c_in);
        let x_c = &x[nc * s_in..(nc + 1) * s_in];
        for b in 0..kh {
            let off_h = (b * g.dilation[1]) as isize - g.pad[1];
            let (h_lo, h_hi) = valid_range(off_h, 1, h, oh_n);
            for e in 0..kw {
                let off_w = (e * g.dilation[2]) as isize - g.pad[2];
                let (w_lo, w_hi) = valid_range(off_w, 1, w, ow_n);
                let row = (c * kh + b) * kw + e;
                // SAFETY: sample n's columns of row (c, b, e): inside `col`, and written by this
                // (n, c) task alone.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        col_ptr.get().add(row * total + n * per_sample),
                        per_sample,
                    )
                };
                for (slab, x_d) in dst.chunks_exact_mut(plane).zip(x_c.chunks_exact(h * w)) {
                    for (oh, out) in slab.chunks_exact_mut(ow_n).enumerate() {
                        if oh < h_lo || oh >= h_hi || w_lo >= w_hi {
                            out.fill(0.0);
                            continue;
                        }
                        let ih = (oh as isize + off_h) as usize;
                        let iw = (w_lo as isize + off_w) as usize;
                        out[..w_lo].fill(0.0);
                        out[w_hi..].fill(0.0);
                        out[w_lo..w_hi].copy_from_slice(&x_d[ih * w + iw..][..w_hi - w_lo]);
                    }
                }
            }
        }
    });
    total
}

/// The output slices `od` that depth tap `a` reaches (`lo..hi`) and the first input slice it reads.
fn depth_tap_range(g: &Geometry, a: usize) -> Option<(usize, usize, usize)> {
    let off = (a * g.dilation[0]) as isize - g.pad[0];
    let (lo, hi) = valid_range(off, 1, g.in_dims[0], g.out_dims[0]);
    (lo < hi).then(|| (lo, hi, (lo as isize + off) as usize))
}

/// The weight of a convolution these kernels compute, as the caller holds it.
#[derive(Clone, Copy)]
pub(super) enum Weight<'a> {
    /// `[C_out, C_in, kd, kh, kw]`, the convolution's own.
    Gather(&'a [f32]),
    /// The weight `[C_in, C_out, kd, kh, kw]` of the convolution whose backward-data this one is
    /// (`cpu_gemm`'s flipped-kernel form): this convolution's weight is it transposed in the
    /// channels and flipped in every spatial axis.
    Flipped(&'a [f32]),
}

/// `wr[a][o][(c, b, e)]`: depth tap `a`'s weight as a `[C_in * kh * kw, C_out]` matrix for each
/// `a`, from the weight in either form (one pass, so a backward-data does not flip and then repack).
fn weights_by_depth_tap(g: &Geometry, weight: Weight, wr: &mut Vec<f32>) {
    let [kd, kh, kw] = g.kernel;
    let (hw, taps) = (kh * kw, kd * kh * kw);
    let k2 = g.c_in * hw;
    let wr = grown(wr, kd * g.c_out * k2);
    let wr_ptr = SharedMut(wr.as_mut_ptr());
    // one task per output channel o: it reads its own weights in order and writes rows wr[a][o]
    (0..g.c_out).into_par_iter().for_each(|o| {
        for a in 0..kd {
            // SAFETY: row wr[a][o] lies inside `wr` and is this task's alone.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(wr_ptr.get().add((a * g.c_out + o) * k2), k2)
            };
            match weight {
                Weight::Gather(w) => {
                    let w_o = &w[o * g.c_in * taps..][..g.c_in * taps];
                    for (dst_c, w_c) in dst.chunks_exact_mut(hw).zip(w_o.chunks_exact(taps)) {
                        copy_taps(&w_c[a * hw..][..hw], dst_c, false);
                    }
                }
                Weight::Flipped(w) => {
                    for (c, dst_c) in dst.chunks_exact_mut(hw).enumerate() {
                        let src = &w[(c * g.c_out + o) * taps + (kd - 1 - a) * hw..][..hw];
                        copy_taps(src, dst_c, true);
                    }
                }
            }
        }
    });
}

/// `dst = src`, or `src` reversed: a 3x3 plane of taps inline (a `memcpy` call per nine values
/// was a tenth of a 256-channel layer's forward), other sizes by a loop.
#[inline(always)]
fn copy_taps(src: &[f32], dst: &mut [f32], reversed: bool) {
    if let (Ok(s), Ok(d)) = (
        <&[f32; 9]>::try_from(src),
        <&mut [f32; 9]>::try_from(&mut *dst),
    ) {
        *d = *s;
        if reversed {
            d.reverse();
        }
        return;
    }
    for (i, v) in dst.iter_mut().enumerate() {
        *v = src[if reversed { src.len() - 1 - i } else { i }];
    }
}

/// `out [N, C_out, OD, OH, OW] = conv(x, w) (+ bias)` for a convolution that [`applies`].
///
/// # Safety
/// `out` must be valid for writes of the whole output; every element is written.
pub(super) unsafe fn conv_forward(
    g: &Geometry,
    x: &[f32],
    weight: Weight,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let [kd, kh, kw] = g.kernel;
    let [_, oh_n, ow_n] = g.out_dims;
    let (plane, s_out, d) = (oh_n * ow_n, g.out_volume(), g.in_dims[0]);
    let k2 = g.c_in * kh * kw;
    with_scratch3(|col, wr, _| {
        let total = unfold(g, x, col);
        weights_by_depth_tap(g, weight, wr);
        let out = SharedMut(out);
        let (col, wr): (&[f32], &[f32]) = (col, wr);
        for_each_channel_range(g.c_out, |o0, o1| {
            for n in 0..g.batch {
                for o in o0..o1 {
                    // SAFETY: out[n, o] is inside the output and this channel range's alone.
                    unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add((n * g.c_out + o) * s_out),
                            s_out,
                        )
                    }
                    .fill(bias.map_or(0.0, |b| b[o]));
                }
                for a in 0..kd {
                    let Some((lo, hi, id0)) = depth_tap_range(g, a) else {
                        continue;
                    };
                    // SAFETY: dst = out[n, o0..o1, lo..hi] as [(hi - lo) * plane, o1 - o0] (column
                    // stride s_out), this range's alone; lhs = sample n's column slices
                    // id0..id0 + hi - lo, [(hi - lo) * plane, k2] with column stride `total`
                    // (id0 + hi - lo <= D); rhs = wr[a][o0..o1] as [k2, o1 - o0].
                    unsafe {
                        gemm(
                            (hi - lo) * plane,
                            o1 - o0,
                            k2,
                            out.get().add((n * g.c_out + o0) * s_out + lo * plane),
                            s_out as isize,
                            1,
                            true,
                            col.as_ptr().add((n * d + id0) * plane),
                            total as isize,
                            1,
                            wr.as_ptr().add((a * g.c_out + o0) * k2),
                            k2 as isize,
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
        });
    })
}

/// `dW [C_out, C_in, kd, kh, kw]` of `conv(x, w)` given `dy [N, C_out, OD, OH, OW]`, for a
/// convolution that [`applies`]: per depth tap `a`, `dW_a^T [k2, C_out] += col_shifted * dy_n^T`
/// over the samples, then the taps interleaved into the weight's layout.
pub(super) fn conv_backward_filter(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [kd, kh, kw] = g.kernel;
    let [_, oh_n, ow_n] = g.out_dims;
    let (plane, s_out, d) = (oh_n * ow_n, g.out_volume(), g.in_dims[0]);
    let hw = kh * kw;
    let k2 = g.c_in * hw;
    let mut dw_t = vec![0f32; kd * k2 * g.c_out];
    with_scratch3(|col, _, _| {
        let total = unfold(g, x, col);
        let col: &[f32] = col;
        let dw_ptr = SharedMut(dw_t.as_mut_ptr());
        for_each_channel_range(g.c_out, |o0, o1| {
            for a in 0..kd {
                let Some((lo, hi, id0)) = depth_tap_range(g, a) else {
                    continue;
                };
                for n in 0..g.batch {
                    // SAFETY: dst = dW_a^T[:, o0..o1] ([k2, o1 - o0], row stride C_out), this
                    // range's columns alone; lhs = sample n's column slices id0.. as
                    // [k2, (hi - lo) * plane] (row stride `total`); rhs = dy[n, o0..o1, lo..hi]
                    // transposed, [(hi - lo) * plane, o1 - o0] with column stride s_out.
                    unsafe {
                        gemm(
                            k2,
                            o1 - o0,
                            (hi - lo) * plane,
                            dw_ptr.get().add(a * k2 * g.c_out + o0),
                            1,
                            g.c_out as isize,
                            true,
                            col.as_ptr().add((n * d + id0) * plane),
                            1,
                            total as isize,
                            dy.as_ptr().add((n * g.c_out + o0) * s_out + lo * plane),
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
                }
            }
        });
    });
    // dW[o, c, a, b, e] = dW_a^T[(c, b, e), o]: row a * k2 + c * hw + be is column (c, a, be),
    // worked out once rather than by two divisions per row in every block of the transpose
    let column: Vec<usize> = (0..kd * k2)
        .map(|r| {
            let (a, c, be) = (r / k2, r % k2 / hw, r % hw);
            (c * kd + a) * hw + be
        })
        .collect();
    transpose_filter_grad(g, &dw_t, |r| column[r])
}
