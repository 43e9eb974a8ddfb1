//! The shape of one 3D convolution, shared by the ops (`crate::ops`) and their CPU (`ops/cpu_gemm.rs`)
//! and CUDA (`crate::cuda`) kernels.
//!
//! Architecture invariant: this module uses nothing of the crate, so that `ops` and `cuda` both
//! depend on it and neither on the other for the shape (`ops` calls into `cuda`, never back).

/// Shape of a *gather* convolution
/// `out[n, o, q] = sum_{c, a} w[o, c, a] * x[n, c, q * stride - pad + a * dilation]`
/// (zero outside the input) over contiguous f32 buffers in `[N, C, D, H, W]` order; `x` is the
/// input `[N, C_in, in_dims]`, `w` the weight `[C_out, C_in, kernel]`, `out` `[N, C_out, out_dims]`.
/// `pad` may be negative (a crop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) in_dims: [usize; 3],
    pub(crate) out_dims: [usize; 3],
    pub(crate) kernel: [usize; 3],
    pub(crate) stride: [usize; 3],
    pub(crate) pad: [isize; 3],
    pub(crate) dilation: [usize; 3],
}

impl Geometry {
    /// Voxels of one input channel: `D * H * W`.
    pub(crate) fn in_volume(&self) -> usize {
        self.in_dims.iter().product()
    }

    /// Voxels of one output channel: `OD * OH * OW`.
    pub(crate) fn out_volume(&self) -> usize {
        self.out_dims.iter().product()
    }

    /// Rows of the column matrix: `C_in * kd * kh * kw`.
    pub(crate) fn k_len(&self) -> usize {
        self.c_in * self.kernel.iter().product::<usize>()
    }
}
