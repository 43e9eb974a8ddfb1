//! `conv_transpose3d`: the adjoint of `conv3d`, i.e. its input gradient.
//!
//! The forward is [`Conv3dBwdData`] (the backward-data op of the convolution with the same stride,
//! padding and dilation, asked for the larger output size); its gradients reuse [`super::conv3d`](mod@super::conv3d)'s
//! ops: `dx = Conv3dFwd(dy, w)`, `dw = Conv3dBwdFilter(dy, x)`.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv3d::{bias_grad, check_bias, dims5, Conv3dBwdData, Conv3dParams};

/// Stride, padding, output padding and dilation of a transposed 3D convolution, per axis `(D, H, W)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose3dParams {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output_padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl Default for ConvTranspose3dParams {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            output_padding: [0; 3],
            dilation: [1; 3],
        }
    }
}

impl ConvTranspose3dParams {
    /// The same settings on all three axes.
    pub fn uniform(stride: usize, padding: usize, output_padding: usize, dilation: usize) -> Self {
        Self {
            stride: [stride; 3],
            padding: [padding; 3],
            output_padding: [output_padding; 3],
            dilation: [dilation; 3],
        }
    }

    /// The convolution whose input gradient this transposed convolution is.
    pub fn conv_params(&self) -> Conv3dParams {
        Conv3dParams {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    /// Output spatial size `(I - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`.
    ///
    /// `output_padding` must be smaller than `stride` (PyTorch also allows values below `dilation`;
    /// those are not supported here).
    pub fn output_dims(&self, dims: [usize; 3], kernel: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for i in 0..3 {
            let (s, d, k) = (self.stride[i], self.dilation[i], kernel[i]);
            if s == 0 || d == 0 || k == 0 || dims[i] == 0 {
                bail!(
                    "conv_transpose3d: stride {:?}, dilation {:?}, kernel {kernel:?} and input {dims:?} must be positive",
                    self.stride,
                    self.dilation
                )
            }
            if self.output_padding[i] >= s {
                bail!(
                    "conv_transpose3d: output_padding {:?} must be smaller than stride {:?}",
                    self.output_padding,
                    self.stride
                )
            }
            let full = (dims[i] - 1) * s + d * (k - 1) + self.output_padding[i] + 1;
            if full <= 2 * self.padding[i] {
                bail!("conv_transpose3d: padding {:?} leaves no output for input {dims:?}, kernel {kernel:?}", self.padding)
            }
            out[i] = full - 2 * self.padding[i];
        }
        Ok(out)
    }
}

/// Transposed 3D convolution (PyTorch's `conv_transpose3d`), f32.
///
/// `x [N, C_in, D, H, W]`, `w [C_in, C_out, kd, kh, kw]` (PyTorch layout), `bias [C_out]` →
/// `[N, C_out, OD, OH, OW]`, see [`ConvTranspose3dParams::output_dims`]. Differentiable in `x`, `w`
/// and `bias`. Every shape runs as the custom ops (CPU kernels, cuDNN on CUDA): as matmul + permute the
/// V-Net's 2^3 stride-2 up convolutions were slower on the CPU (1.2 against 0.8 s) and 9x slower than
/// PyTorch's cuDNN on an H200 (8.0 against 0.90 ms forward + backward, `bench/gpu-la.json`).
pub fn conv_transpose3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: ConvTranspose3dParams,
) -> Result<Tensor> {
    let (_, c_in, dims) = dims5("conv_transpose3d input", x)?;
    let (wc, c_out, kernel) = dims5("conv_transpose3d weight", w)?;
    if wc != c_in {
        bail!(
            "conv_transpose3d: weight {:?} expects {wc} input channels, input {:?} has {c_in}",
            w.dims(),
            x.dims()
        )
    }
    check_bias("conv_transpose3d", bias, c_out)?;
    let out_dims = p.output_dims(dims, kernel)?;
    let op = Conv3dBwdData {
        params: p.conv_params(),
        input_dims: out_dims,
    };
    let y = x.contiguous()?.apply_op2(&w.contiguous()?, op)?;
    match bias {
        None => Ok(y),
        Some(b) if y.device().is_cpu() => y.contiguous()?.apply_op2(&b.contiguous()?, CpuBiasAdd),
        Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1, 1))?),
    }
}

/// `y [N, C, D, H, W] + bias [C]` on the CPU. candle's `broadcast_add` would do as well, but its
/// backward sums over four axes at once, which candle's CPU backend does about 70 times slower than
/// [`bias_grad`] (0.9 s against 13 ms on a (2, 16, 112, 112, 80) gradient).
#[derive(Clone, Copy, Debug)]
struct CpuBiasAdd;

impl CustomOp2 for CpuBiasAdd {
    fn name(&self) -> &'static str {
        "conv-bias-add"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp2::name(self));
        let (c, vol) = match *ly.dims() {
            [_, c, d, h, w] => (c, d * h * w),
            _ => bail!(
                "conv bias add: expected a rank-5 tensor, got {:?}",
                ly.dims()
            ),
        };
        if lb.dims() != [c] || !ly.is_contiguous() || !lb.is_contiguous() {
            bail!(
                "conv bias add: contiguous [N, {c}, ..] and [{c}] expected, got {:?} and {:?}",
                ly.dims(),
                lb.dims()
            )
        }
        let y = &sy.as_slice::<f32>()?[ly.start_offset()..][..ly.shape().elem_count()];
        let b = &sb.as_slice::<f32>()?[lb.start_offset()..][..c];
        let mut out = y.to_vec();
        if vol > 0 {
            out.par_chunks_mut(vol).enumerate().for_each(|(i, chunk)| {
                let bi = b[i % c];
                chunk.iter_mut().for_each(|v| *v += bi);
            });
        }
        Ok((CpuStorage::F32(out), ly.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(bias_grad(grad)?)))
    }
}
