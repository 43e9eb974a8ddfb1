//! GPU memory reuse between steps.
//!
//! candle allocates every tensor with `cuMemAllocAsync` from the device's default memory pool, whose
//! release threshold is 0: at each synchronisation (every loss value copied to the host) the pool
//! hands its free memory back to the driver, and the next step maps it again. PyTorch's caching
//! allocator keeps freed blocks instead. [`retain_freed_gpu_memory`] does the same for the pool.

use std::ffi::c_void;

use candle_core::cuda::cudarc::driver::sys;
use candle_core::{bail, Device, Result};

/// Sets the release threshold of `device`'s default memory pool to the maximum, so memory freed
/// by one training step is reused by the next instead of being unmapped and mapped again. The
/// pool's reserved size then stays at the peak of the run (as with PyTorch). Process-wide for the
/// device, hence the binary's decision, like [`crate::retain_freed_memory`] on the CPU. Returns
/// `Ok(false)` for a CPU device.
pub fn retain_freed_gpu_memory(device: &Device) -> Result<bool> {
    let Device::Cuda(dev) = device else {
        return Ok(false);
    };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let status = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if status != sys::CUresult::CUDA_SUCCESS {
        bail!("cuDeviceGetDefaultMemPool failed: {status:?}")
    }
    let mut threshold = u64::MAX;
    let status = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast::<c_void>(),
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        bail!("setting the memory pool's release threshold failed: {status:?}")
    }
    Ok(true)
}
