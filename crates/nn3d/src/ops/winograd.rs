//! Winograd F(2x2x2, 3x3x3) CPU kernels for the 3^3, unit-stride, undilated convolutions that make
//! up most of both networks (forward, and through `cpu_gemm`'s flipped-kernel form, backward-data;
//! backward-filter by the adjoint of the same transforms).
//!
//! In 1D, F(2, 3) computes two outputs of a 3-tap correlation `y_q = sum_a g_a d_{q+a}` from four
//! inputs with four multiplies: `y = A^T [(G g) * (B^T d)]`, where
//!
//! ```text
//! B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1 1  1  0]
//!       [0  1  1  0]        [1/2  1/2  1/2]          [0 1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [ 0    0    1 ]
//! ```
//!
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). In 3D the transforms
//! apply along each axis: a 2x2x2 output tile comes from a 4x4x4 input tile, and the channel sum
//! becomes 64 independent GEMMs, one per transformed position `xi`:
//! `M[xi] [C_out, T] = U[xi] [C_out, C_in] * V[xi] [C_in, T]` over `T` tiles, with
//! `U = G w G^T` (per axis) and `V = B^T d B`. That is 64 multiplies per 8 outputs and input
//! channel instead of 216 (3.4x fewer); the transforms are additions only.
//!
//! The gradient of the weight follows from the same factorisation: `dU[xi] = sum_t (A dY_t A^T)[xi]
//! V_t[xi]^T` (again 64 GEMMs, reducing over tiles), then `dw = G^T dU G` per axis.
//!
//! Work is cut into chunks of tiles (one sample, one row of tiles along D, a few rows along H, every
//! tile along W), sized so that a chunk's transformed input and output stay in the L2 cache, and
//! run in parallel with rayon. Each stage keeps W innermost, so the transforms are element-wise loops
//! over contiguous memory: the input transform's D and H passes run over whole input rows, and its W
//! pass (like the output gradient's), whose tiles read every other column, deinterleaves with SIMD
//! shuffles on x86-64.
//!
//! Rounding: the transforms add and subtract up to 16 input values (and the weight transform
//! halves), so results differ from the direct (im2col) kernels by a few f32 ulps of the largest
//! partial sums; the tests bound the difference against a f64 reference at 1e-5 relative.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu_gemm::{grown, with_scratch3, SharedMut};
use crate::geometry::Geometry;

/// Tiles along W times rows along H per chunk aim at this many tile-channel values (per
/// transformed position) in the working buffers: `64 * C * T` floats, about 1 MiB each.
const CHUNK_VALUES: usize = 4096;

/// Whether `g` is a convolution these kernels compute: kernel 3^3, unit stride, no dilation, and
/// channel counts where they beat the direct kernels (the deep layers, with few tiles and many
/// channels, stay with `cpu_gemm`'s whole-batch GEMMs).
///
/// `DUOSEG_WINOGRAD=0` in the environment turns these kernels off (read once per process), for
/// measuring them against the direct ones.
pub(crate) fn applies(g: &Geometry) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DUOSEG_WINOGRAD").map_or(true, |v| v != "0"))
        && g.kernel == [3, 3, 3]
        && g.stride == [1, 1, 1]
        && g.dilation == [1, 1, 1]
        && g.c_in.max(g.c_out) <= MAX_CHANNELS
        && g.batch * g.out_volume() > 0
}

/// Channel counts above which the direct kernels are used (see [`applies`]). Measured with
/// `bench_conv` (2 threads, forward + backward, direct -> Winograd): 64 channels on
/// (4, 64, 16, 16, 12) 0.062 -> 0.040 s and (3, 64, 8, 12, 8) 0.023 -> 0.016 s, but 128 on
/// (4, 128, 8, 8, 6) 0.043 -> 0.049 s and 256 on (4, 256, 4, 4, 3) 0.044 -> 0.104 s: with few
/// tiles and many channels, the weight transforms and the per-thread `dU` dominate.
const MAX_CHANNELS: usize = 64;

/// How the output is cut into 2x2x2 tiles and the tiles into chunks.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    /// Tiles along D, H and W: `ceil(out / 2)`.
    tiles: [usize; 3],
    /// Tile rows along H per chunk.
    rows: usize,
}

impl Tiling {
    fn new(g: &Geometry) -> Self {
        let tiles = g.out_dims.map(|o| o.div_ceil(2));
        let c = g.c_in.max(g.c_out).max(1);
        let rows = (CHUNK_VALUES / c / tiles[2].max(1)).clamp(1, tiles[1].max(1));
        Tiling { tiles, rows }
    }

    /// `(n, tile row along D, first tile row along H, end)` of every chunk.
    fn chunks(&self, batch: usize) -> Vec<(usize, usize, usize, usize)> {
        let [td, th, _] = self.tiles;
        let mut out = Vec::with_capacity(batch * td * th.div_ceil(self.rows));
        for n in 0..batch {
            for d in 0..td {
                let mut h0 = 0;
                while h0 < th {
                    let h1 = (h0 + self.rows).min(th);
                    out.push((n, d, h0, h1));
                    h0 = h1;
                }
            }
        }
        out
    }
}

/// `G` (4 x 3) of F(2, 3).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `U [64, C_out, C_in]` with `U[(i, j, k), o, c] = sum G[i][a] G[j][b] G[k][e] w[o, c, a, b, e]`.
/// Parallel over the output channels: run serially, it took a tenth of a 64-channel forward.
fn transform_weight(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let (co, ci) = (g.c_out, g.c_in);
    let mut u = vec![0f32; 64 * co * ci];
    let u_ptr = SharedMut(u.as_mut_ptr());
    (0..co).into_par_iter().for_each(|o| {
        for c in 0..ci {
            let k = &w[(o * ci + c) * 27..][..27];
            // along e (W), then b (H), then a (D)
            let mut t1 = [0f32; 3 * 3 * 4];
            for ab in 0..9 {
                for (kk, gk) in G.iter().enumerate() {
                    t1[ab * 4 + kk] = (0..3).map(|e| gk[e] * k[ab * 3 + e]).sum();
                }
            }
            let mut t2 = [0f32; 3 * 4 * 4];
            for a in 0..3 {
                for (j, gj) in G.iter().enumerate() {
                    for kk in 0..4 {
                        t2[(a * 4 + j) * 4 + kk] =
                            (0..3).map(|b| gj[b] * t1[(a * 3 + b) * 4 + kk]).sum();
                    }
                }
            }
            for (i, gi) in G.iter().enumerate() {
                for jk in 0..16 {
                    let v: f32 = (0..3).map(|a| gi[a] * t2[a * 16 + jk]).sum();
                    // SAFETY: inside `u`; the element (i, j, k, o, c) belongs to this `o` alone.
                    unsafe { *u_ptr.get().add(((i * 16 + jk) * co + o) * ci + c) = v };
                }
            }
        }
    });
    u
}

/// `dw [C_out, C_in * 27]` from `dU^T [64, C_in, C_out]`: `dw = G^T dU G` along each axis.
fn weight_grad_from_transformed(g: &Geometry, du_t: &[f32]) -> Vec<f32> {
    let (co, ci) = (g.c_out, g.c_in);
    let mut dw = vec![0f32; co * ci * 27];
    dw.par_chunks_mut((ci * 27).max(1))
        .enumerate()
        .for_each(|(o, dw_o)| {
            let mut d = [0f32; 64];
            for c in 0..ci {
                for (xi, v) in d.iter_mut().enumerate() {
                    *v = du_t[(xi * ci + c) * co + o];
                }
                // along k (W): 64 -> (i, j, e) 48
                let mut t1 = [0f32; 16 * 3];
                for ij in 0..16 {
                    for e in 0..3 {
                        t1[ij * 3 + e] = (0..4).map(|kk| G[kk][e] * d[ij * 4 + kk]).sum();
                    }
                }
                // along j (H): -> (i, b, e) 36
                let mut t2 = [0f32; 4 * 9];
                for i in 0..4 {
                    for b in 0..3 {
                        for e in 0..3 {
                            t2[(i * 3 + b) * 3 + e] =
                                (0..4).map(|j| G[j][b] * t1[(i * 4 + j) * 3 + e]).sum();
                        }
                    }
                }
                let out = &mut dw_o[c * 27..][..27];
                for a in 0..3 {
                    for be in 0..9 {
                        out[a * 9 + be] = (0..4).map(|i| G[i][a] * t2[i * 9 + be]).sum();
                    }
                }
            }
        });
    dw
}

/// `outputs[o][l] = f(inputs[..][l])[o]` for every lane `l < outputs[0].len()` (every output and
/// input at least that long), in blocks of 8 lanes that the compiler turns into vector operations:
/// a plain loop over rows of 16 (the tiles along W of a hippocampus crop) runs as its scalar
/// remainder, since the vectorised loop wants 32 lanes or more.
#[inline(always)]
fn map_lanes<const I: usize, const O: usize>(
    inputs: [&[f32]; I],
    outputs: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let n = outputs[0].len();
    let blocks = n / 8;
    for b in 0..blocks {
        let base = b * 8;
        let ins: [&[f32; 8]; I] =
            std::array::from_fn(|k| inputs[k][base..base + 8].try_into().expect("8 lanes"));
        let mut outs = [[0f32; 8]; O];
        for l in 0..8 {
            let v = f(std::array::from_fn(|k| ins[k][l]));
            for o in 0..O {
                outs[o][l] = v[o];
            }
        }
        for o in 0..O {
            outputs[o][base..base + 8].copy_from_slice(&outs[o]);
        }
    }
    for l in blocks * 8..n {
        let v = f(std::array::from_fn(|k| inputs[k][l]));
        for o in 0..O {
            outputs[o][l] = v[o];
        }
    }
}

/// `B^T` of one axis applied element-wise to four equally long rows: `out[q] = (B^T rows)[q]`.
#[inline(always)]
fn input_transform_rows(r: [&[f32]; 4], out: [&mut [f32]; 4]) {
    map_lanes(r, out, |[r0, r1, r2, r3]| {
        [r0 - r2, r1 + r2, r2 - r1, r1 - r3]
    });
}

/// Four disjoint `len`-long slices of `v` at increasing `starts`.
#[inline(always)]
fn four_mut(v: &mut [f32], starts: [usize; 4], len: usize) -> [&mut [f32]; 4] {
    let (_, rest) = v.split_at_mut(starts[0]);
    let (a, rest) = rest.split_at_mut(starts[1] - starts[0]);
    let (b, rest) = rest.split_at_mut(starts[2] - starts[1]);
    let (c, d) = rest.split_at_mut(starts[3] - starts[2]);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
}

/// `B^T` along W of one zero-padded row `row` (`2 n + 2` long, `n = out[0].len()`): tile `t` reads
/// `row[2 t .. 2 t + 4]`. The compiler does not vectorise these stride-2 reads, so on x86-64 the
/// tiles go 8 (AVX2) or 4 (SSE) at a time through explicit deinterleaving shuffles ([`simd_w`]).
#[inline(always)]
fn input_transform_w(row: &[f32], [o0, o1, o2, o3]: [&mut [f32]; 4]) {
    let n = o0.len();
    let (row, o1, o2, o3) = (&row[..2 * n + 2], &mut o1[..n], &mut o2[..n], &mut o3[..n]);
    #[cfg(target_arch = "x86_64")]
    let done = simd_w::input(row, [&mut *o0, &mut *o1, &mut *o2, &mut *o3]);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for t in done..n {
        let (r0, r1, r2, r3) = (row[2 * t], row[2 * t + 1], row[2 * t + 2], row[2 * t + 3]);
        o0[t] = r0 - r2;
        o1[t] = r1 + r2;
        o2[t] = r2 - r1;
        o3[t] = r1 - r3;
    }
}

/// The transformed input `V [64, C_in, T]` of one chunk `(n, td, th0..th1)`, `T = rows * TW`.
///
/// The axes go D, H, W: the first two passes run over whole input rows (zero-padded along W to the
/// `2 TW + 2` columns the tiles read, contiguous and long), and only the last, along W, reads the
/// overlapping 4-column windows, straight into `V`. `slab` holds the D-transformed rows of the chunk
/// `[C_in, 4 (i), 2 rows + 2 (h), 2 TW + 2]`, then one tile row's H-transformed rows `[4 (i), 4 (j),
/// 2 TW + 2]`, then a zero row.
#[inline(always)]
fn transform_input(
    g: &Geometry,
    tiling: &Tiling,
    x_n: &[f32],
    (td, th0, th1): (usize, usize, usize),
    slab: &mut Vec<f32>,
    v: &mut Vec<f32>,
) {
    let [d, h, wd] = g.in_dims;
    let [pd, ph, pw] = g.pad;
    let tw_n = tiling.tiles[2];
    let rows = th1 - th0;
    let t_len = rows * tw_n;
    let hl_n = 2 * rows + 2;
    let ci = g.c_in;
    let plane = h * wd;
    // a padded row: row[j] = x[j - pw] for j in lo..hi, zero elsewhere
    let lw = 2 * tw_n + 2;
    let lo = pw.clamp(0, lw as isize) as usize;
    let hi = (wd as isize + pw).clamp(lo as isize, lw as isize) as usize;
    let first = (lo as isize - pw) as usize;
    let d_len = ci * 4 * hl_n * lw;
    let slab = grown(slab, d_len + 16 * lw + wd);
    let (d_t, rest) = slab.split_at_mut(d_len);
    let (h_t, zeros) = rest.split_at_mut(16 * lw);
    zeros.fill(0.0);
    let zeros = &zeros[..];
    for c in 0..ci {
        let x_c = &x_n[c * d * plane..][..d * plane];
        for hl in 0..hl_n {
            let ih = (2 * th0 + hl) as isize - ph;
            let at = |i: usize| ((c * 4 + i) * hl_n + hl) * lw;
            let [o0, o1, o2, o3] = four_mut(d_t, [at(0), at(1), at(2), at(3)], lw);
            if ih < 0 || ih >= h as isize {
                for o in [o0, o1, o2, o3] {
                    o.fill(0.0);
                }
                continue;
            }
            let src = |a: usize| -> &[f32] {
                let id = (2 * td + a) as isize - pd;
                if id < 0 || id >= d as isize {
                    &zeros[..hi - lo]
                } else {
                    &x_c[id as usize * plane + ih as usize * wd + first..][..hi - lo]
                }
            };
            for o in [&mut *o0, &mut *o1, &mut *o2, &mut *o3] {
                o[..lo].fill(0.0);
                o[hi..].fill(0.0);
            }
            // B^T along D of the four input rows at depths 2 td - pd + 0..4
            input_transform_rows(
                [src(0), src(1), src(2), src(3)],
                [
                    &mut o0[lo..hi],
                    &mut o1[lo..hi],
                    &mut o2[lo..hi],
                    &mut o3[lo..hi],
                ],
            );
        }
    }
    let v = grown(v, 64 * ci * t_len);
    for c in 0..ci {
        for r in 0..rows {
            // h_t[(i, j)] = B^T along H of the D-transformed rows (i, 2 r + 0..4)
            for i in 0..4 {
                let row = |j: usize| &d_t[((c * 4 + i) * hl_n + 2 * r + j) * lw..][..lw];
                let b = i * 4 * lw;
                let out = four_mut(h_t, [b, b + lw, b + 2 * lw, b + 3 * lw], lw);
                input_transform_rows([row(0), row(1), row(2), row(3)], out);
            }
            // B^T along W straight into V[(i, j, k), c, r * TW ..]
            for ij in 0..16 {
                let at = |k: usize| ((ij * 4 + k) * ci + c) * t_len + r * tw_n;
                let out = four_mut(v, [at(0), at(1), at(2), at(3)], tw_n);
                input_transform_w(&h_t[ij * lw..][..lw], out);
            }
        }
    }
}

/// `dst [64, M, N] (+)= a [64, M, K] * b^T` for the 64 transformed positions, through `gemm`:
/// the forward's `M[xi] = U[xi] V[xi]` as `M^T [T, C_out] = V^T [T, C_in] U^T [C_in, C_out]`.
fn gemm_forward(g: &Geometry, u: &[f32], v: &[f32], m: &mut Vec<f32>, t_len: usize) {
    let (co, ci) = (g.c_out, g.c_in);
    let m = grown(m, 64 * co * t_len);
    for xi in 0..64 {
        // SAFETY: dst = M[xi] as [T, C_out] (row stride 1, column stride T), lhs = V[xi]^T
        // [T, C_in] (column stride T), rhs = U[xi]^T [C_in, C_out] (column stride C_in); all lie
        // inside their buffers (64 blocks of C * T resp. C_out * C_in).
        unsafe {
            gemm(
                t_len,
                co,
                ci,
                m.as_mut_ptr().add(xi * co * t_len),
                t_len as isize,
                1,
                false,
                v.as_ptr().add(xi * ci * t_len),
                t_len as isize,
                1,
                u.as_ptr().add(xi * co * ci),
                ci as isize,
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

/// `A^T` of one axis applied element-wise to four equally long rows: the two outputs.
#[inline(always)]
fn output_transform_rows(r: [&[f32]; 4], o0: &mut [f32], o1: &mut [f32]) {
    map_lanes(r, [o0, o1], |[r0, r1, r2, r3]| [r0 + r1 + r2, r1 - r2 - r3]);
}

/// Writes the output tiles of one chunk from `M [64, C_out, T]`: `Y = A^T M A` per axis, plus bias,
/// clipped to the output's extent.
///
/// # Safety
/// `out` must point at sample `n`'s output `[C_out, OD, OH, OW]`, whose rows of this chunk no
/// other task writes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output(
    g: &Geometry,
    tiling: &Tiling,
    m: &[f32],
    (td, th0, th1): (usize, usize, usize),
    bias: Option<&[f32]>,
    out: *mut f32,
    scratch: &mut Vec<f32>,
) {
    let [od_n, oh_n, ow_n] = g.out_dims;
    let tw_n = tiling.tiles[2];
    let rows = th1 - th0;
    let t_len = rows * tw_n;
    let co = g.c_out;
    let s_out = g.out_volume();
    // along D: a_d [2 (ii), 16 (j, k), T]; along H: a_h [2 (ii), 2 (jj), 4 (k), T]
    let (a_d, a_h) = grown(scratch, 48 * t_len).split_at_mut(32 * t_len);
    for o in 0..co {
        let b = bias.map_or(0.0, |b| b[o]);
        let mv = |xi: usize| &m[(xi * co + o) * t_len..][..t_len];
        for jk in 0..16 {
            let (lo, hi) = a_d.split_at_mut(16 * t_len);
            output_transform_rows(
                [mv(jk), mv(16 + jk), mv(32 + jk), mv(48 + jk)],
                &mut lo[jk * t_len..][..t_len],
                &mut hi[jk * t_len..][..t_len],
            );
        }
        for ii in 0..2 {
            for k in 0..4 {
                let av = |j: usize| &a_d[(ii * 16 + j * 4 + k) * t_len..][..t_len];
                let (lo, hi) = a_h.split_at_mut(8 * t_len);
                output_transform_rows(
                    [av(0), av(1), av(2), av(3)],
                    &mut lo[(ii * 4 + k) * t_len..][..t_len],
                    &mut hi[(ii * 4 + k) * t_len..][..t_len],
                );
            }
        }
        for r in 0..rows {
            for ii in 0..2 {
                let od = 2 * td + ii;
                if od >= od_n {
                    continue;
                }
                for jj in 0..2 {
                    let oh = 2 * (th0 + r) + jj;
                    if oh >= oh_n {
                        continue;
                    }
                    // SAFETY: row (o, od, oh) of sample n's output, this chunk's alone.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.add(o * s_out + (od * oh_n + oh) * ow_n),
                            ow_n,
                        )
                    };
                    let hv = |k: usize| &a_h[((jj * 2 + ii) * 4 + k) * t_len + r * tw_n..][..tw_n];
                    let (m0, m1, m2, m3) = (hv(0), hv(1), hv(2), hv(3));
                    let pairs = ow_n / 2;
                    for (t, pair) in dst.chunks_exact_mut(2).enumerate().take(pairs) {
                        pair[0] = m0[t] + m1[t] + m2[t] + b;
                        pair[1] = m1[t] - m2[t] - m3[t] + b;
                    }
                    if ow_n % 2 == 1 {
                        let t = pairs;
                        dst[2 * t] = m0[t] + m1[t] + m2[t] + b;
                    }
                }
            }
        }
    }
}

/// One chunk of tiles: sample-independent geometry and the tile rows `(td, th0, th1)`.
struct Chunk<'a> {
    g: &'a Geometry,
    tiling: &'a Tiling,
    rows: (usize, usize, usize),
}

impl Chunk<'_> {
    fn tiles(&self) -> usize {
        (self.rows.2 - self.rows.1) * self.tiling.tiles[2]
    }
}

/// Whether the CPU runs the AVX2 builds of the chunk kernels (the transforms are element-wise
/// loops that the compiler vectorises 8 wide there, 4 wide in the baseline x86-64 build).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Input transform, GEMMs and output transform of one forward chunk.
///
/// # Safety
/// As [`transform_output`].
#[inline(always)]
unsafe fn forward_chunk_body(
    c: &Chunk,
    x_n: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
    [slab, v, m]: [&mut Vec<f32>; 3],
) {
    transform_input(c.g, c.tiling, x_n, c.rows, slab, v);
    gemm_forward(c.g, u, v, m, c.tiles());
    // SAFETY: forwarded from the caller.
    unsafe { transform_output(c.g, c.tiling, m, c.rows, bias, out, slab) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_chunk_avx2(
    c: &Chunk,
    x_n: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
    bufs: [&mut Vec<f32>; 3],
) {
    // SAFETY: forwarded from the caller.
    unsafe { forward_chunk_body(c, x_n, u, bias, out, bufs) }
}

/// [`forward_chunk_body`], in its AVX2 build where the CPU has it.
///
/// # Safety
/// As [`transform_output`].
unsafe fn forward_chunk(
    c: &Chunk,
    x_n: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
    bufs: [&mut Vec<f32>; 3],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; the rest is the caller's.
        return unsafe { forward_chunk_avx2(c, x_n, u, bias, out, bufs) };
    }
    // SAFETY: the caller's.
    unsafe { forward_chunk_body(c, x_n, u, bias, out, bufs) }
}

/// Input and output-gradient transforms of one chunk, and the 64 GEMMs that add its share to
/// `du_t` (`dU^T [64, C_in, C_out]`).
#[inline(always)]
fn filter_grad_chunk_body(
    c: &Chunk,
    x_n: &[f32],
    dy_n: &[f32],
    du_t: &mut [f32],
    [slab, v, mdy]: [&mut Vec<f32>; 3],
) {
    let (ci, co) = (c.g.c_in, c.g.c_out);
    transform_input(c.g, c.tiling, x_n, c.rows, slab, v);
    transform_output_grad(c.g, c.tiling, dy_n, c.rows, mdy, slab);
    let t_len = c.tiles();
    assert!(
        du_t.len() >= 64 * ci * co && v.len() >= 64 * ci * t_len && mdy.len() >= 64 * co * t_len
    );
    for xi in 0..64 {
        // SAFETY: dst = dU^T[xi] [C_in, C_out] (row stride C_out), lhs = V[xi] [C_in, T] (row
        // stride T), rhs = Mdy[xi]^T [T, C_out] (column stride T), all inside their buffers (the
        // assert above).
        unsafe {
            gemm(
                ci,
                co,
                t_len,
                du_t.as_mut_ptr().add(xi * ci * co),
                1,
                co as isize,
                true,
                v.as_ptr().add(xi * ci * t_len),
                1,
                t_len as isize,
                mdy.as_ptr().add(xi * co * t_len),
                t_len as isize,
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn filter_grad_chunk_avx2(
    c: &Chunk,
    x_n: &[f32],
    dy_n: &[f32],
    du_t: &mut [f32],
    bufs: [&mut Vec<f32>; 3],
) {
    filter_grad_chunk_body(c, x_n, dy_n, du_t, bufs)
}

/// [`filter_grad_chunk_body`], in its AVX2 build where the CPU has it.
fn filter_grad_chunk(
    c: &Chunk,
    x_n: &[f32],
    dy_n: &[f32],
    du_t: &mut [f32],
    bufs: [&mut Vec<f32>; 3],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { filter_grad_chunk_avx2(c, x_n, dy_n, du_t, bufs) };
    }
    filter_grad_chunk_body(c, x_n, dy_n, du_t, bufs)
}

/// `out [N, C_out, OD, OH, OW] = conv(x, w) (+ bias)` for a convolution where [`applies`] holds.
pub(crate) fn conv_forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    debug_assert!(g.kernel == [3, 3, 3] && g.stride == [1, 1, 1] && g.dilation == [1, 1, 1]);
    let tiling = Tiling::new(g);
    let u = transform_weight(g, w);
    let (s_in, s_out) = (g.in_volume(), g.out_volume());
    let mut out = crate::memory::f32_buffer(g.batch * g.c_out * s_out);
    let out_ptr = SharedMut(out.as_mut_ptr().cast::<f32>());
    tiling
        .chunks(g.batch)
        .par_iter()
        .for_each(|&(n, td, th0, th1)| {
            with_scratch3(|slab, v, m| {
                let x_n = &x[n * g.c_in * s_in..(n + 1) * g.c_in * s_in];
                let chunk = Chunk {
                    g,
                    tiling: &tiling,
                    rows: (td, th0, th1),
                };
                // SAFETY: sample n's output; the chunk writes its own rows (od in 2td..2td+2,
                // oh in 2th0..2th1) only.
                unsafe {
                    forward_chunk(
                        &chunk,
                        x_n,
                        &u,
                        bias,
                        out_ptr.get().add(n * g.c_out * s_out),
                        [slab, v, m],
                    )
                };
            })
        });
    // SAFETY: the chunks cover every tile of every sample, and each tile writes every output
    // voxel it covers (clipped to the output), for every channel.
    unsafe { crate::memory::assume_init(out) }
}

/// `A` of one axis applied element-wise to two equally long rows: the four outputs.
#[inline(always)]
fn output_grad_transform_rows(y0: &[f32], y1: &[f32], out: [&mut [f32]; 4]) {
    map_lanes([y0, y1], out, |[y0, y1]| [y0, y0 + y1, y0 - y1, -y1]);
}

/// `A` along W of one output-gradient row `row` (`2 n` long, `n = out[0].len()`): tile `t` holds
/// `row[2 t]` and `row[2 t + 1]` (vectorised as [`input_transform_w`]).
#[inline(always)]
fn output_grad_transform_w(row: &[f32], [o0, o1, o2, o3]: [&mut [f32]; 4]) {
    let n = o0.len();
    let (row, o1, o2, o3) = (&row[..2 * n], &mut o1[..n], &mut o2[..n], &mut o3[..n]);
    #[cfg(target_arch = "x86_64")]
    let done = simd_w::output_grad(row, [&mut *o0, &mut *o1, &mut *o2, &mut *o3]);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for t in done..n {
        let (y0, y1) = (row[2 * t], row[2 * t + 1]);
        o0[t] = y0;
        o1[t] = y0 + y1;
        o2[t] = y0 - y1;
        o3[t] = -y1;
    }
}

/// The W passes' stride-2 reads, deinterleaved with shuffles: 8 tiles per step with AVX2 where the
/// chunk kernels run their AVX2 builds ([`has_avx2`]), then 4 with SSE (always there on x86-64). Each
/// function returns how many tiles it wrote; the caller's scalar loop does the rest.
#[cfg(target_arch = "x86_64")]
mod simd_w {
    use std::arch::x86_64::*;

    /// `(even, odd)` lanes of the 16 floats at `p`: `p[0, 2, .., 14]` and `p[1, 3, .., 15]`.
    ///
    /// # Safety
    /// AVX2; 16 readable floats at `p`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn deinterleave8(p: *const f32) -> (__m256, __m256) {
        // SAFETY: the caller's.
        let (a, b) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
        // per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs in order 0 2 1 3
        let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        let fix = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (fix(e), fix(o))
    }

    /// `(even, odd)` lanes of the 8 floats at `p`.
    ///
    /// # Safety
    /// 8 readable floats at `p`.
    #[inline(always)]
    unsafe fn deinterleave4(p: *const f32) -> (__m128, __m128) {
        // SAFETY: the caller's.
        let (a, b) = unsafe { (_mm_loadu_ps(p), _mm_loadu_ps(p.add(4))) };
        (
            _mm_shuffle_ps::<0b10_00_10_00>(a, b),
            _mm_shuffle_ps::<0b11_01_11_01>(a, b),
        )
    }

    /// [`super::input_transform_w`]'s tiles in blocks: `row` is `2 n + 2` long, each output `n`.
    pub(super) fn input(row: &[f32], mut out: [&mut [f32]; 4]) -> usize {
        let n = out[0].len();
        assert!(row.len() >= 2 * n + 2 && out.iter().all(|o| o.len() == n));
        let mut t = 0;
        if super::has_avx2() {
            // SAFETY: the CPU has AVX2; the lengths are checked above.
            t = unsafe { input_avx2(&row[..2 * n + 2], out.each_mut().map(|o| o.as_mut_ptr())) };
        }
        let [o0, o1, o2, o3] = out;
        while t + 4 <= n {
            // SAFETY: tiles t..t + 4 read row[2 t .. 2 t + 10] <= row[.. 2 n + 2] and write
            // o[t..t + 4] inside the outputs.
            unsafe {
                let p = row.as_ptr().add(2 * t);
                let (r0, r1) = deinterleave4(p);
                let (r2, r3) = deinterleave4(p.add(2));
                _mm_storeu_ps(o0.as_mut_ptr().add(t), _mm_sub_ps(r0, r2));
                _mm_storeu_ps(o1.as_mut_ptr().add(t), _mm_add_ps(r1, r2));
                _mm_storeu_ps(o2.as_mut_ptr().add(t), _mm_sub_ps(r2, r1));
                _mm_storeu_ps(o3.as_mut_ptr().add(t), _mm_sub_ps(r1, r3));
            }
            t += 4;
        }
        t
    }

    /// # Safety
    /// AVX2; `row` `2 n + 2` long and `out` four disjoint writable runs of `n`.
    #[target_feature(enable = "avx2")]
    unsafe fn input_avx2(row: &[f32], out: [*mut f32; 4]) -> usize {
        let n = (row.len() - 2) / 2;
        let mut t = 0;
        while t + 8 <= n {
            // SAFETY: tiles t..t + 8 read row[2 t .. 2 t + 18] <= row[.. 2 n + 2] and write
            // o[t..t + 8] inside the outputs (which the caller lends mutably).
            unsafe {
                let p = row.as_ptr().add(2 * t);
                let (r0, r1) = deinterleave8(p);
                let (r2, r3) = deinterleave8(p.add(2));
                let dst = |k: usize| out[k].add(t);
                _mm256_storeu_ps(dst(0), _mm256_sub_ps(r0, r2));
                _mm256_storeu_ps(dst(1), _mm256_add_ps(r1, r2));
                _mm256_storeu_ps(dst(2), _mm256_sub_ps(r2, r1));
                _mm256_storeu_ps(dst(3), _mm256_sub_ps(r1, r3));
            }
            t += 8;
        }
        t
    }

    /// [`super::output_grad_transform_w`]'s tiles in blocks: `row` is `2 n` long, each output `n`.
    pub(super) fn output_grad(row: &[f32], mut out: [&mut [f32]; 4]) -> usize {
        let n = out[0].len();
        assert!(row.len() >= 2 * n && out.iter().all(|o| o.len() == n));
        let mut t = 0;
        if super::has_avx2() {
            // SAFETY: the CPU has AVX2; the lengths are checked above.
            t = unsafe { output_grad_avx2(&row[..2 * n], out.each_mut().map(|o| o.as_mut_ptr())) };
        }
        let [o0, o1, o2, o3] = out;
        while t + 4 <= n {
            // SAFETY: tiles t..t + 4 read row[2 t .. 2 t + 8] <= row[.. 2 n] and write o[t..t + 4].
            unsafe {
                let (y0, y1) = deinterleave4(row.as_ptr().add(2 * t));
                _mm_storeu_ps(o0.as_mut_ptr().add(t), y0);
                _mm_storeu_ps(o1.as_mut_ptr().add(t), _mm_add_ps(y0, y1));
                _mm_storeu_ps(o2.as_mut_ptr().add(t), _mm_sub_ps(y0, y1));
                _mm_storeu_ps(o3.as_mut_ptr().add(t), _mm_sub_ps(_mm_setzero_ps(), y1));
            }
            t += 4;
        }
        t
    }

    /// # Safety
    /// AVX2; `row` `2 n` long and `out` four disjoint writable runs of `n`.
    #[target_feature(enable = "avx2")]
    unsafe fn output_grad_avx2(row: &[f32], out: [*mut f32; 4]) -> usize {
        let n = row.len() / 2;
        let mut t = 0;
        while t + 8 <= n {
            // SAFETY: tiles t..t + 8 read row[2 t .. 2 t + 16] <= row[.. 2 n] and write o[t..t + 8].
            unsafe {
                let (y0, y1) = deinterleave8(row.as_ptr().add(2 * t));
                let dst = |k: usize| out[k].add(t);
                _mm256_storeu_ps(dst(0), y0);
                _mm256_storeu_ps(dst(1), _mm256_add_ps(y0, y1));
                _mm256_storeu_ps(dst(2), _mm256_sub_ps(y0, y1));
                _mm256_storeu_ps(dst(3), _mm256_sub_ps(_mm256_setzero_ps(), y1));
            }
            t += 8;
        }
        t
    }
}

/// The transformed output gradient `A dY A^T` of one chunk, `[64, C_out, T]`, zero where a tile
/// reaches past the output.
#[inline(always)]
fn transform_output_grad(
    g: &Geometry,
    tiling: &Tiling,
    dy_n: &[f32],
    (td, th0, th1): (usize, usize, usize),
    mdy: &mut Vec<f32>,
    scratch: &mut Vec<f32>,
) {
    let [od_n, oh_n, ow_n] = g.out_dims;
    let tw_n = tiling.tiles[2];
    let rows = th1 - th0;
    let t_len = rows * tw_n;
    let co = g.c_out;
    let s_out = g.out_volume();
    let mdy = grown(mdy, 64 * co * t_len);
    // along W: z_w [2 (ii), 2 (jj), 4 (k), T]; along H: z_h [2 (ii), 4 (j), 4 (k), T]; and an
    // output row padded to the tiles' 2 TW columns (when OW is odd)
    let scratch = grown(scratch, 16 * t_len + 32 * t_len + 2 * tw_n);
    let (z_w, rest) = scratch.split_at_mut(16 * t_len);
    let (z_h, padded) = rest.split_at_mut(32 * t_len);
    padded.fill(0.0);
    for o in 0..co {
        for r in 0..rows {
            for ii in 0..2 {
                for jj in 0..2 {
                    let od = 2 * td + ii;
                    let oh = 2 * (th0 + r) + jj;
                    let b = (ii * 2 + jj) * 4 * t_len + r * tw_n;
                    let out = four_mut(z_w, [b, b + t_len, b + 2 * t_len, b + 3 * t_len], tw_n);
                    if od >= od_n || oh >= oh_n {
                        out.into_iter().for_each(|z| z.fill(0.0));
                        continue;
                    }
                    let src = &dy_n[o * s_out + (od * oh_n + oh) * ow_n..][..ow_n];
                    if ow_n == 2 * tw_n {
                        output_grad_transform_w(src, out);
                    } else {
                        // the last tile's second column lies past the output: zero (set above)
                        padded[..ow_n].copy_from_slice(src);
                        output_grad_transform_w(padded, out);
                    }
                }
            }
        }
        // along H: (ii, jj, k) -> (ii, j, k)
        for ii in 0..2 {
            for k in 0..4 {
                let y0 = &z_w[(ii * 8 + k) * t_len..][..t_len];
                let y1 = &z_w[(ii * 8 + 4 + k) * t_len..][..t_len];
                let at = |j: usize| (ii * 16 + j * 4 + k) * t_len;
                output_grad_transform_rows(
                    y0,
                    y1,
                    four_mut(z_h, [at(0), at(1), at(2), at(3)], t_len),
                );
            }
        }
        // along D: (ii, j, k) -> (i, j, k), into mdy[xi, o]
        for jk in 0..16 {
            let y0 = &z_h[jk * t_len..][..t_len];
            let y1 = &z_h[(16 + jk) * t_len..][..t_len];
            let at = |i: usize| ((i * 16 + jk) * co + o) * t_len;
            output_grad_transform_rows(y0, y1, four_mut(mdy, [at(0), at(1), at(2), at(3)], t_len));
        }
    }
}

/// `dW [C_out, C_in * 27]` of `conv(x, w)` given `dy`, for a convolution where [`applies`] holds.
pub(crate) fn conv_backward_filter(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(g.kernel == [3, 3, 3] && g.stride == [1, 1, 1] && g.dilation == [1, 1, 1]);
    let tiling = Tiling::new(g);
    let (s_in, s_out) = (g.in_volume(), g.out_volume());
    let (co, ci) = (g.c_out, g.c_in);
    let len = 64 * ci * co;
    let chunks = tiling.chunks(g.batch);
    let per_part = chunks
        .len()
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1);
    let parts: Vec<Vec<f32>> = chunks
        .par_chunks(per_part)
        .map(|part| {
            let mut du_t = vec![0f32; len];
            for &(n, td, th0, th1) in part {
                with_scratch3(|slab, v, mdy| {
                    let x_n = &x[n * ci * s_in..(n + 1) * ci * s_in];
                    let dy_n = &dy[n * co * s_out..(n + 1) * co * s_out];
                    let chunk = Chunk {
                        g,
                        tiling: &tiling,
                        rows: (td, th0, th1),
                    };
                    filter_grad_chunk(&chunk, x_n, dy_n, &mut du_t, [slab, v, mdy]);
                })
            }
            du_t
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut du_t = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for p in parts {
        du_t.par_chunks_mut(1 << 14)
            .zip(p.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    weight_grad_from_transformed(g, &du_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_tests::Lcg;

    /// Direct f64 gather convolution and its weight gradient against `dy`.
    fn naive(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let [d, h, wd] = g.in_dims;
        let [od, oh, ow] = g.out_dims;
        let mut y = vec![0f64; g.batch * g.c_out * od * oh * ow];
        let mut dw = vec![0f64; w.len()];
        for n in 0..g.batch {
            for o in 0..g.c_out {
                for q0 in 0..od {
                    for q1 in 0..oh {
                        for q2 in 0..ow {
                            let yi = (((n * g.c_out + o) * od + q0) * oh + q1) * ow + q2;
                            for c in 0..g.c_in {
                                for a in 0..27 {
                                    let p0 = (q0 + a / 9) as isize - g.pad[0];
                                    let p1 = (q1 + a / 3 % 3) as isize - g.pad[1];
                                    let p2 = (q2 + a % 3) as isize - g.pad[2];
                                    if p0 < 0
                                        || p1 < 0
                                        || p2 < 0
                                        || p0 >= d as isize
                                        || p1 >= h as isize
                                        || p2 >= wd as isize
                                    {
                                        continue;
                                    }
                                    let xi = (((n * g.c_in + c) * d + p0 as usize) * h
                                        + p1 as usize)
                                        * wd
                                        + p2 as usize;
                                    let wi = (o * g.c_in + c) * 27 + a;
                                    y[yi] += w[wi] as f64 * x[xi] as f64;
                                    dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dw)
    }

    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()))
            / scale
    }

    #[test]
    fn forward_and_filter_gradient_match_direct_loops() {
        let mut rng = Lcg(7);
        // odd and even extents, paddings 0..2 (the flipped form of backward-data uses 2 - pad),
        // a crop (output smaller than "same"), several chunks along H, and 1-voxel outputs
        // (batch, c_in, c_out, in_dims, out_dims, pad)
        type Case = (usize, usize, usize, [usize; 3], [usize; 3], [isize; 3]);
        let cases: &[Case] = &[
            (2, 3, 4, [5, 6, 7], [5, 6, 7], [1, 1, 1]),
            (1, 2, 3, [6, 5, 9], [4, 3, 7], [0, 0, 0]),
            (2, 2, 2, [3, 4, 5], [5, 6, 7], [2, 2, 2]),
            (1, 1, 1, [1, 1, 1], [1, 1, 1], [1, 1, 1]),
            (1, 3, 2, [7, 4, 6], [4, 2, 5], [0, 1, 0]),
            (2, 70, 3, [4, 40, 9], [4, 40, 9], [1, 1, 1]),
            (1, 5, 64, [6, 7, 8], [6, 7, 8], [1, 1, 1]),
            // 13 and 10 tiles along W: the 8-wide, 4-wide and scalar paths of the W passes
            (1, 2, 3, [3, 4, 26], [3, 4, 26], [1, 1, 1]),
            (2, 3, 2, [4, 3, 19], [4, 3, 19], [1, 1, 1]),
            (1, 2, 2, [3, 3, 21], [1, 1, 19], [0, 0, 0]),
        ];
        for &(batch, c_in, c_out, in_dims, out_dims, pad) in cases {
            let g = Geometry {
                batch,
                c_in,
                c_out,
                in_dims,
                out_dims,
                kernel: [3; 3],
                stride: [1; 3],
                pad,
                dilation: [1; 3],
            };
            let x = rng.vec(batch * c_in * g.in_volume());
            let w = rng.vec(c_out * c_in * 27);
            let b = rng.vec(c_out);
            let dy = rng.vec(batch * c_out * g.out_volume());
            let (y, dw) = naive(&g, &x, &w, &dy);
            let got = conv_forward(&g, &x, &w, None);
            let e = rel_err(&got, &y);
            assert!(e < 1e-5, "{g:?}: forward rel err {e:e}");
            let with_bias = conv_forward(&g, &x, &w, Some(&b));
            let y_b: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(i, v)| v + b[i / g.out_volume() % c_out] as f64)
                .collect();
            let e = rel_err(&with_bias, &y_b);
            assert!(e < 1e-5, "{g:?}: forward + bias rel err {e:e}");
            let got = conv_backward_filter(&g, &x, &dy);
            let e = rel_err(&got, &dw);
            assert!(e < 1e-5, "{g:?}: weight gradient rel err {e:e}");
        }
    }

    #[test]
    fn chunks_cover_every_tile_once() {
        let g = Geometry {
            batch: 2,
            c_in: 16,
            c_out: 16,
            in_dims: [9, 33, 17],
            out_dims: [9, 33, 17],
            kernel: [3; 3],
            stride: [1; 3],
            pad: [1; 3],
            dilation: [1; 3],
        };
        let t = Tiling::new(&g);
        assert_eq!(t.tiles, [5, 17, 9]);
        let mut seen = [0u8; 2 * 5 * 17];
        for (n, d, h0, h1) in t.chunks(2) {
            assert!(h1 > h0 && h1 - h0 <= t.rows);
            for h in h0..h1 {
                seen[(n * 5 + d) * 17 + h] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }
}
