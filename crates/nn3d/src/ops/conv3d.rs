//! `conv3d` and the three custom ops every 3D convolution is built from.
//!
//! | op | arguments | computes | backward |
//! |---|---|---|---|
//! | [`Conv3dFwd`] (`CustomOp2`, or `CustomOp3` with a bias) | `x [N, C_in, D, H, W]`, `w [C_out, C_in, kd, kh, kw]`, `bias [C_out]` | `y [N, C_out, OD, OH, OW]` | `dx` by [`Conv3dBwdData`], `dw` by [`Conv3dBwdFilter`], `dbias` = sum of `dy` |
//! | [`Conv3dBwdData`] (`CustomOp2`) | `dy`, `w` | `dx` with spatial dims `input_dims` (= `conv_transpose3d` forward) | `d dy` by [`Conv3dFwd`], `dw` by [`Conv3dBwdFilter`] |
//! | [`Conv3dBwdFilter`] (`CustomOp2`) | `x`, `dy` | `dw [C_out, C_in, kernel]` | `dx` by [`Conv3dBwdData`], `d dy` by [`Conv3dFwd`] |
//!
//! All arguments reach `cpu_fwd` contiguous (the callers make them so) and f32. The CPU kernels
//! live in [`super::cpu_gemm`]; a CUDA backend adds `cuda_fwd` to these three ops. Since each
//! backward is built from the same three ops, gradients of any order are available.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::cpu_gemm;
use crate::geometry::Geometry;

/// Stride, padding and dilation of a 3D convolution, per spatial axis `(D, H, W)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dParams {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl Default for Conv3dParams {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        }
    }
}

impl Conv3dParams {
    /// The same stride, padding and dilation on all three axes.
    pub fn uniform(stride: usize, padding: usize, dilation: usize) -> Self {
        Self {
            stride: [stride; 3],
            padding: [padding; 3],
            dilation: [dilation; 3],
        }
    }

    /// Output spatial size for input `dims` and `kernel`, or an error when it would be empty.
    pub fn output_dims(&self, dims: [usize; 3], kernel: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for i in 0..3 {
            if self.stride[i] == 0 || self.dilation[i] == 0 || kernel[i] == 0 {
                bail!(
                    "conv3d: stride {:?}, dilation {:?} and kernel {kernel:?} must be positive",
                    self.stride,
                    self.dilation
                )
            }
            let span = self.dilation[i] * (kernel[i] - 1) + 1;
            let padded = dims[i] + 2 * self.padding[i];
            if padded < span {
                bail!("conv3d: kernel {kernel:?} (dilation {:?}) larger than padded input {dims:?} (padding {:?})", self.dilation, self.padding)
            }
            out[i] = (padded - span) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn geometry(
        &self,
        batch: usize,
        c_in: usize,
        c_out: usize,
        in_dims: [usize; 3],
        out_dims: [usize; 3],
        kernel: [usize; 3],
    ) -> Geometry {
        Geometry {
            batch,
            c_in,
            c_out,
            in_dims,
            out_dims,
            kernel,
            stride: self.stride,
            pad: self.padding.map(|p| p as isize),
            dilation: self.dilation,
        }
    }
}

/// 3D convolution (cross-correlation, as PyTorch's `conv3d`), f32.
///
/// `x [N, C_in, D, H, W]`, `w [C_out, C_in, kd, kh, kw]`, `bias [C_out]` → `[N, C_out, OD, OH, OW]`
/// with `OD = (D + 2 * padding - dilation * (kd - 1) - 1) / stride + 1` (likewise H, W).
/// Differentiable in `x`, `w` and `bias`. Every shape runs as the custom ops (CPU kernels, cuDNN on
/// CUDA), the strided 2^3 down convolutions included: as reshape + permute + matmul they were 4x slower
/// on the CPU, and 5x slower than PyTorch's cuDNN on an H200 (5.1 against 0.94 ms forward + backward of
/// 16 -> 32 on (2, 16, 112, 112, 80), `bench/gpu-la.json`).
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv3dParams) -> Result<Tensor> {
    let (_, c_in, dims) = dims5("conv3d input", x)?;
    let (c_out, wc, kernel) = dims5("conv3d weight", w)?;
    if wc != c_in {
        bail!(
            "conv3d: weight {:?} expects {wc} input channels, input {:?} has {c_in}",
            w.dims(),
            x.dims()
        )
    }
    check_bias("conv3d", bias, c_out)?;
    p.output_dims(dims, kernel)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    match bias {
        None => x.apply_op2(&w, Conv3dFwd { params: p }),
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Conv3dFwd { params: p }),
    }
}

/// `(dim 0, dim 1, spatial dims)` of a rank-5 f32 tensor.
pub(crate) fn dims5(what: &str, t: &Tensor) -> Result<(usize, usize, [usize; 3])> {
    if t.dtype() != DType::F32 {
        bail!("{what}: expected f32, got {:?}", t.dtype())
    }
    match *t.dims() {
        [a, b, d, h, w] => Ok((a, b, [d, h, w])),
        _ => bail!("{what}: expected a rank-5 tensor, got shape {:?}", t.dims()),
    }
}

pub(crate) fn check_bias(what: &str, bias: Option<&Tensor>, c_out: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.dims() != [c_out] || b.dtype() != DType::F32 {
            bail!(
                "{what}: bias must be f32 [{c_out}], got {:?} {:?}",
                b.dtype(),
                b.dims()
            )
        }
    }
    Ok(())
}

/// The f32 slice of a contiguous CPU argument.
fn slice<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    if !l.is_contiguous() {
        bail!("{what}: expected a contiguous tensor, got layout {l:?}")
    }
    let data = s.as_slice::<f32>()?;
    let start = l.start_offset();
    match data.get(start..start + l.shape().elem_count()) {
        Some(v) => Ok(v),
        None => bail!("{what}: storage shorter than layout {l:?}"),
    }
}

fn layout_dims5(what: &str, l: &Layout) -> Result<(usize, usize, [usize; 3])> {
    match *l.dims() {
        [a, b, d, h, w] => Ok((a, b, [d, h, w])),
        _ => bail!("{what}: expected a rank-5 tensor, got shape {:?}", l.dims()),
    }
}

/// Forward convolution `y = conv3d(x, w) (+ bias)`; see the module table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3dFwd {
    pub(crate) params: Conv3dParams,
}

impl Conv3dFwd {
    /// Shape checks shared by every backend: `(geometry, output shape)`.
    pub(crate) fn geometry(&self, lx: &Layout, lw: &Layout) -> Result<(Geometry, Shape)> {
        let (n, c_in, dims) = layout_dims5("conv3d input", lx)?;
        let (c_out, wc, kernel) = layout_dims5("conv3d weight", lw)?;
        if wc != c_in {
            bail!(
                "conv3d: weight {:?} does not match input {:?}",
                lw.dims(),
                lx.dims()
            )
        }
        let out = self.params.output_dims(dims, kernel)?;
        let g = self.params.geometry(n, c_in, c_out, dims, out, kernel);
        Ok((g, Shape::from(vec![n, c_out, out[0], out[1], out[2]])))
    }

    pub(crate) fn cpu(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, shape) = self.geometry(lx, lw)?;
        let x = slice("conv3d input", sx, lx)?;
        let w = slice("conv3d weight", sw, lw)?;
        Ok((
            CpuStorage::F32(cpu_gemm::conv_forward(&g, x, w, bias)),
            shape,
        ))
    }

    /// `(dx, dw)`, each only when its argument takes part in autograd (an input image needs no
    /// gradient, which saves the first layer's backward-data).
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, input_dims) = dims5("conv3d input", x)?;
        let (_, _, kernel) = dims5("conv3d weight", w)?;
        let params = self.params;
        let dx = match x.track_op() {
            true => Some(grad.apply_op2(w, Conv3dBwdData { params, input_dims })?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(x.apply_op2(&grad, Conv3dBwdFilter { params, kernel })?),
            false => None,
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv3dFwd {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp2::name(self));
        self.cpu(sx, lx, sw, lw, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (g, shape) = self.geometry(lx, lw)?;
        Ok((
            crate::cuda::conv::conv_forward(&g, sx, lx, sw, lw, None)?,
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, grad)
    }
}

impl CustomOp3 for Conv3dFwd {
    fn name(&self) -> &'static str {
        "conv3d-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp3::name(self));
        let (c_out, _, _) = layout_dims5("conv3d weight", lw)?;
        if lb.dims() != [c_out] {
            bail!(
                "conv3d: bias {:?} does not match weight {:?}",
                lb.dims(),
                lw.dims()
            )
        }
        let b = slice("conv3d bias", sb, lb)?;
        self.cpu(sx, lx, sw, lw, Some(b))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
        sb: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (g, shape) = self.geometry(lx, lw)?;
        if lb.dims() != [g.c_out] {
            bail!(
                "conv3d: bias {:?} does not match weight {:?}",
                lb.dims(),
                lw.dims()
            )
        }
        Ok((
            crate::cuda::conv::conv_forward(&g, sx, lx, sw, lw, Some((sb, lb)))?,
            shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, grad)?;
        let db = bias_grad(grad)?;
        Ok((dx, dw, Some(db)))
    }
}

/// `sum over (N, D, H, W)` of `grad [N, C, D, H, W]`: summing the contiguous last axis first is
/// much faster in candle than one multi-axis sum.
pub(crate) fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    let (n, c, [d, h, w]) = dims5("conv bias grad", grad)?;
    grad.contiguous()?
        .reshape((n, c, d * h * w))?
        .sum(2)?
        .sum(0)
}

/// `impl CustomOp2` for a backward op (`$op`: [`Conv3dBwdData`], [`Conv3dBwdFilter`]), which differ
/// only in these parts: the op's `name`, its two arguments' names in errors, its CPU kernel
/// (`cpu_gemm`) and CUDA kernel (`crate::cuda::conv`), both run on the shapes checked by
/// `$op::geometry`; `bwd` is `$op::grads`.
macro_rules! backward_op2 {
    ($op:ident, $name:literal, [$what_a:literal, $what_b:literal], $cpu:path, $cuda:path) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                sa: &CpuStorage,
                la: &Layout,
                sb: &CpuStorage,
                lb: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let _timer = crate::profile::Timer::start(CustomOp2::name(self));
                let (g, shape) = self.geometry(la, lb)?;
                let a = slice($what_a, sa, la)?;
                let b = slice($what_b, sb, lb)?;
                Ok((CpuStorage::F32($cpu(&g, a, b)), shape))
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                sa: &candle_core::CudaStorage,
                la: &Layout,
                sb: &candle_core::CudaStorage,
                lb: &Layout,
            ) -> Result<(candle_core::CudaStorage, Shape)> {
                let (g, shape) = self.geometry(la, lb)?;
                Ok(($cuda(&g, sa, la, sb, lb)?, shape))
            }

            fn bwd(
                &self,
                a: &Tensor,
                b: &Tensor,
                _res: &Tensor,
                grad: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                self.grads(a, b, grad)
            }
        }
    };
}

/// Input gradient of a convolution, `dx = conv3d_backward_data(dy, w)` with spatial size
/// `input_dims`; also the forward of `conv_transpose3d`. See the module table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3dBwdData {
    pub(crate) params: Conv3dParams,
    pub(crate) input_dims: [usize; 3],
}

impl Conv3dBwdData {
    /// Shape checks shared by every backend: `(geometry of the forward convolution, dx shape)`.
    pub(crate) fn geometry(&self, ldy: &Layout, lw: &Layout) -> Result<(Geometry, Shape)> {
        let (n, c_out, out_dims) = layout_dims5("conv3d backward-data grad", ldy)?;
        let (wo, c_in, kernel) = layout_dims5("conv3d backward-data weight", lw)?;
        if wo != c_out {
            bail!(
                "conv3d backward-data: weight {:?} does not match grad {:?}",
                lw.dims(),
                ldy.dims()
            )
        }
        let g = self
            .params
            .geometry(n, c_in, c_out, self.input_dims, out_dims, kernel);
        let [d, h, w] = self.input_dims;
        Ok((g, Shape::from(vec![n, c_in, d, h, w])))
    }

    /// `(d dy, dw)`: `d dy` by [`Conv3dFwd`] of `grad` with `w`, `dw` by [`Conv3dBwdFilter`] of
    /// `grad` (in the input's place) with `dy`.
    fn grads(
        &self,
        dy: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, kernel) = dims5("conv3d weight", w)?;
        let params = self.params;
        let d_dy = grad.apply_op2(w, Conv3dFwd { params })?;
        let dw = grad.apply_op2(dy, Conv3dBwdFilter { params, kernel })?;
        Ok((Some(d_dy), Some(dw)))
    }
}

backward_op2!(
    Conv3dBwdData,
    "conv3d-backward-data",
    ["conv3d backward-data grad", "conv3d backward-data weight"],
    cpu_gemm::conv_backward_data,
    crate::cuda::conv::conv_backward_data
);

/// Weight gradient of a convolution, `dw = conv3d_backward_filter(x, dy)`. See the module table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3dBwdFilter {
    pub(crate) params: Conv3dParams,
    pub(crate) kernel: [usize; 3],
}

impl Conv3dBwdFilter {
    /// Shape checks shared by every backend: `(geometry of the forward convolution, dw shape)`.
    pub(crate) fn geometry(&self, lx: &Layout, ldy: &Layout) -> Result<(Geometry, Shape)> {
        let (n, c_in, in_dims) = layout_dims5("conv3d backward-filter input", lx)?;
        let (ny, c_out, out_dims) = layout_dims5("conv3d backward-filter grad", ldy)?;
        if ny != n {
            bail!(
                "conv3d backward-filter: input {:?} and grad {:?} differ in batch",
                lx.dims(),
                ldy.dims()
            )
        }
        let g = self
            .params
            .geometry(n, c_in, c_out, in_dims, out_dims, self.kernel);
        let [kd, kh, kw] = self.kernel;
        Ok((g, Shape::from(vec![c_out, c_in, kd, kh, kw])))
    }

    /// `(dx, d dy)`: `dx` by [`Conv3dBwdData`] of `dy` with `grad` (in the weight's place),
    /// `d dy` by [`Conv3dFwd`] of `x` with `grad`.
    fn grads(
        &self,
        x: &Tensor,
        dy: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, input_dims) = dims5("conv3d input", x)?;
        let params = self.params;
        let dx = dy.apply_op2(&grad, Conv3dBwdData { params, input_dims })?;
        let d_dy = x.apply_op2(&grad, Conv3dFwd { params })?;
        Ok((Some(dx), Some(d_dy)))
    }
}

backward_op2!(
    Conv3dBwdFilter,
    "conv3d-backward-filter",
    [
        "conv3d backward-filter input",
        "conv3d backward-filter grad"
    ],
    cpu_gemm::conv_backward_filter,
    crate::cuda::conv::conv_backward_filter
);
