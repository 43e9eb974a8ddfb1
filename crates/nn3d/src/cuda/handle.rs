//! The cuDNN handle, descriptor wrappers that free themselves, and device-memory helpers shared
//! by the CUDA ops (the lowest layer of `cuda`: it uses none of the other modules).

use std::ffi::c_void;
use std::sync::Arc;

use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream, CudaView, SyncOnDrop};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};

/// Largest workspace a convolution algorithm or execution plan may ask for (2 GiB).
pub(crate) const MAX_WORKSPACE: usize = 2 << 30;

/// Fails with `what` and the status unless `status` is success.
pub(crate) fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        bail!("cudnn {what} failed: {status:?}")
    }
}

/// Whether `status` says "this algorithm / configuration is not supported" (cuDNN 9 groups those
/// codes as 3000..3999), as opposed to a real failure.
pub(crate) fn is_not_supported(status: sys::cudnnStatus_t) -> bool {
    (status as u32) / 1000 == 3
}

/// A cuDNN handle bound to one candle CUDA device's stream.
pub(crate) struct Cudnn {
    raw: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
}

impl Cudnn {
    /// A new handle on `stream` (whose context must be current on this thread).
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let mut raw: sys::cudnnHandle_t = std::ptr::null_mut();
        check(unsafe { sys::cudnnCreate(&mut raw) }, "create handle")?;
        let handle = Self { raw, stream };
        let cu_stream = handle.stream.cu_stream() as sys::cudaStream_t;
        check(
            unsafe { sys::cudnnSetStream(handle.raw, cu_stream) },
            "set stream",
        )?;
        Ok(handle)
    }

    pub(crate) fn raw(&self) -> sys::cudnnHandle_t {
        self.raw
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // Nothing useful can be done about a failure while dropping.
            let _ = self.stream.context().bind_to_thread();
            let _ = unsafe { sys::cudnnDestroy(self.raw) };
        }
    }
}

/// `dims` as the `i32` cuDNN wants, or an error naming `what`.
fn dims_i32(dims: &[usize], what: &str) -> Result<Vec<i32>> {
    dims.iter()
        .map(|&d| match i32::try_from(d) {
            Ok(v) if v > 0 => Ok(v),
            _ => bail!("cudnn {what}: dimension {d} of {dims:?} is out of range"),
        })
        .collect()
}

/// A packed (C-order) f32 tensor descriptor of rank 4 or more.
pub(crate) struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    pub(crate) fn new(dims: &[usize]) -> Result<Self> {
        let d = dims_i32(dims, "tensor")?;
        let mut strides = vec![1i32; d.len()];
        let mut acc: i64 = 1;
        for i in (0..d.len()).rev() {
            strides[i] = match i32::try_from(acc) {
                Ok(v) => v,
                Err(_) => bail!("cudnn tensor {dims:?} has more than 2^31 elements"),
            };
            acc *= d[i] as i64;
        }
        if acc > i32::MAX as i64 {
            bail!("cudnn tensor {dims:?} has more than 2^31 elements")
        }
        let mut raw: sys::cudnnTensorDescriptor_t = std::ptr::null_mut();
        check(
            unsafe { sys::cudnnCreateTensorDescriptor(&mut raw) },
            "create tensor descriptor",
        )?;
        let desc = Self(raw);
        let status = unsafe {
            sys::cudnnSetTensorNdDescriptor(
                desc.0,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                d.len() as i32,
                d.as_ptr(),
                strides.as_ptr(),
            )
        };
        check(status, &format!("set tensor descriptor {dims:?}"))?;
        Ok(desc)
    }

    pub(crate) fn raw(&self) -> sys::cudnnTensorDescriptor_t {
        self.0
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        let _ = unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}

/// A packed f32 filter descriptor `[C_out, C_in, kd, kh, kw]`.
pub(crate) struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    pub(crate) fn new(dims: &[usize]) -> Result<Self> {
        let d = dims_i32(dims, "filter")?;
        let mut raw: sys::cudnnFilterDescriptor_t = std::ptr::null_mut();
        check(
            unsafe { sys::cudnnCreateFilterDescriptor(&mut raw) },
            "create filter descriptor",
        )?;
        let desc = Self(raw);
        let status = unsafe {
            sys::cudnnSetFilterNdDescriptor(
                desc.0,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                d.len() as i32,
                d.as_ptr(),
            )
        };
        check(status, &format!("set filter descriptor {dims:?}"))?;
        Ok(desc)
    }

    pub(crate) fn raw(&self) -> sys::cudnnFilterDescriptor_t {
        self.0
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        let _ = unsafe { sys::cudnnDestroyFilterDescriptor(self.0) };
    }
}

/// A 3D cross-correlation descriptor (what PyTorch and candle call convolution), f32 compute.
pub(crate) struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    pub(crate) fn new(pad: [usize; 3], stride: [usize; 3], dilation: [usize; 3]) -> Result<Self> {
        let (p, s, d) = (
            dims_i32_allow_zero(&pad)?,
            dims_i32(&stride, "convolution stride")?,
            dims_i32(&dilation, "convolution dilation")?,
        );
        let mut raw: sys::cudnnConvolutionDescriptor_t = std::ptr::null_mut();
        check(
            unsafe { sys::cudnnCreateConvolutionDescriptor(&mut raw) },
            "create convolution descriptor",
        )?;
        let desc = Self(raw);
        let status = unsafe {
            sys::cudnnSetConvolutionNdDescriptor(
                desc.0,
                3,
                p.as_ptr(),
                s.as_ptr(),
                d.as_ptr(),
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
        };
        check(
            status,
            &format!("set convolution descriptor (padding {pad:?}, stride {stride:?}, dilation {dilation:?})"),
        )?;
        Ok(desc)
    }

    pub(crate) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<()> {
        check(
            unsafe { sys::cudnnSetConvolutionMathType(self.0, math) },
            "set convolution math type",
        )
    }

    pub(crate) fn raw(&self) -> sys::cudnnConvolutionDescriptor_t {
        self.0
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        let _ = unsafe { sys::cudnnDestroyConvolutionDescriptor(self.0) };
    }
}

fn dims_i32_allow_zero(pad: &[usize; 3]) -> Result<[i32; 3]> {
    let mut out = [0i32; 3];
    for (o, &p) in out.iter_mut().zip(pad) {
        *o = match i32::try_from(p) {
            Ok(v) => v,
            Err(_) => bail!("cudnn convolution padding {pad:?} is out of range"),
        };
    }
    Ok(out)
}

/// The f32 elements of a contiguous CUDA argument as a view starting at its offset; `what` names
/// it in errors.
pub(crate) fn f32_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, f32>> {
    if !l.is_contiguous() {
        bail!("{what}: expected a contiguous tensor, got layout {l:?}")
    }
    let slice: &CudaSlice<f32> = s.as_cuda_slice::<f32>()?;
    let (start, len) = (l.start_offset(), l.shape().elem_count());
    if start + len > slice.len() {
        bail!(
            "{what}: storage of {} elements shorter than layout {l:?}",
            slice.len()
        )
    }
    Ok(slice.slice(start..start + len))
}

/// Raw device pointer of a view for a cuDNN call. The returned guard records the use on the
/// stream when dropped: keep it alive until the call has been issued.
pub(crate) fn const_ptr<'a>(
    v: &'a CudaView<'_, f32>,
    stream: &'a CudaStream,
) -> (*const c_void, SyncOnDrop<'a>) {
    use candle_core::cuda::cudarc::driver::DevicePtr;
    let (ptr, guard) = v.device_ptr(stream);
    (ptr as usize as *const c_void, guard)
}

/// Raw mutable device pointer of a slice for a cuDNN call; see [`const_ptr`].
pub(crate) fn mut_ptr<'a, T>(
    v: &'a mut CudaSlice<T>,
    stream: &'a CudaStream,
) -> (*mut c_void, SyncOnDrop<'a>) {
    use candle_core::cuda::cudarc::driver::DevicePtrMut;
    let (ptr, guard) = v.device_ptr_mut(stream);
    (ptr as usize as *mut c_void, guard)
}

/// Runs `f(workspace, bytes)` with a freshly allocated workspace of `bytes` bytes (a null pointer
/// when `bytes` is 0), freed after `f` returns.
pub(crate) fn with_workspace<R>(
    dev: &CudaDevice,
    stream: &CudaStream,
    bytes: usize,
    f: impl FnOnce(*mut c_void, usize) -> R,
) -> Result<R> {
    if bytes == 0 {
        return Ok(f(std::ptr::null_mut(), 0));
    }
    // Safety: cuDNN only writes the workspace; its contents need no initialisation.
    let mut ws = unsafe { dev.alloc::<u8>(bytes) }?;
    let (ptr, _guard) = mut_ptr(&mut ws, stream);
    Ok(f(ptr, bytes))
}
