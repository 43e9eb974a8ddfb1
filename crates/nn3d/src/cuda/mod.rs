//! CUDA kernels of the nn3d custom ops (behind the `cuda` feature): cuDNN for the three
//! convolution ops, small own kernels (`batch_norm.cu`, compiled to PTX by `build.rs`) for the four
//! fused batch-norm ops.
//!
//! | custom op (`crate::ops`) | CUDA implementation |
//! |---|---|
//! | `Conv3dFwd` (+ bias) | `cudnnConvolutionForward` (+ `cudnnAddTensor`) |
//! | `Conv3dBwdData` (also `conv_transpose3d`'s forward) | `cudnnConvolutionBackwardData` |
//! | `Conv3dBwdFilter` | `cudnnConvolutionBackwardFilter` |
//! | `ChannelStats`, `BatchNormForward`, `ChannelGradSums`, `BatchNormGradInput` | `bn_*` kernels |
//!
//! Each op's `cuda_fwd` does the same shape checks as its `cpu_fwd` and then calls a function of
//! the `conv` or `batch_norm` submodule, so the backward formulas (written once, in candle ops on
//! top of these custom ops) are shared by both devices.
//!
//! cuDNN handles are neither `Send` nor `Sync`: one is kept per thread and per candle CUDA device,
//! bound to the device's stream, together with the algorithm chosen for each convolution shape
//! (cuDNN's heuristic order, first one that runs; the choice is cached).
//!
//! Precision: by default convolutions run in plain f32 (`CUDNN_FMA_MATH`), the same numbers as the
//! CPU kernels up to summation order. [`set_allow_tf32`] lets cuDNN use TF32 tensor cores (as
//! PyTorch does by default for cuDNN convolutions): faster, about 1e-3 relative error.
//!
//! The whole module is compiled by `cargo xtask gpu-build` on a machine without a GPU and checked
//! on the GPU machine by `cargo xtask gpu-check` (CUDA vs CPU on every op and gradient).

use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "cuda")]
pub(crate) mod batch_norm;
#[cfg(feature = "cuda")]
pub(crate) mod conv;
#[cfg(feature = "cuda")]
mod handle;

static ALLOW_TF32: AtomicBool = AtomicBool::new(false);

/// Lets cuDNN convolutions use TF32 tensor cores (`true`) or keeps them exact f32 (`false`, the
/// default). Affects convolutions whose shape has not run yet on the calling thread with the other
/// setting. No effect on CPU builds.
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

/// Whether cuDNN convolutions may use TF32 tensor cores (see [`set_allow_tf32`]).
pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}
