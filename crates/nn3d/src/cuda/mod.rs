//! CUDA kernels of the nn3d custom ops (behind the `cuda` feature): cuDNN for the three
//! convolution ops, small own kernels (`batch_norm.cu`, compiled to PTX by `build.rs`) for the four
//! fused batch-norm ops.
//!
//! | custom op (`crate::ops`) | CUDA implementation |
//! |---|---|
//! | `Conv3dFwd` (+ bias) | cuDNN graph API convolution forward (+ `cudnnAddTensor`) |
//! | `Conv3dBwdData` (also `conv_transpose3d`'s forward) | graph API convolution backward-data |
//! | `Conv3dBwdFilter` | graph API convolution backward-filter |
//! | `ChannelStats`, `BatchNormForward`, `ChannelGradSums`, `BatchNormGradInput` | `bn_*` kernels |
//!
//! The graph API (`graph.rs`) is the default; a convolution it has no plan for, or every
//! convolution under [`ConvApi::Legacy`], runs through the legacy calls (`conv.rs`:
//! `cudnnConvolutionForward`, `...BackwardData`, `...BackwardFilter`).
//!
//! Each op's `cuda_fwd` does the same shape checks as its `cpu_fwd` and then calls a function of
//! the `conv` or `batch_norm` submodule, so the backward formulas (written once, in candle ops on
//! top of these custom ops) are shared by both devices.
//!
//! cuDNN handles are neither `Send` nor `Sync`: one is kept per thread and per candle CUDA device,
//! bound to the device's stream, together with the plan or algorithm chosen for each convolution
//! shape (the fastest of a timed search; the choice is cached).
//!
//! Precision: by default convolutions run in plain f32 (no tensor-core engines; `CUDNN_FMA_MATH`
//! on the legacy path), the same numbers as the CPU kernels up to summation order. [`set_allow_tf32`] lets cuDNN use TF32 tensor cores (as
//! PyTorch does by default for cuDNN convolutions): faster, about 1e-3 relative error.
//!
//! Layers, each using only those before it: `handle` (the cuDNN handle, descriptors, device
//! pointers), `graph` (graph API plans), `conv` (the three directions, the per-thread handles and
//! algorithm caches); `batch_norm` uses `handle`. Nothing here uses `crate::ops` (which calls in
//! here): shapes arrive as `crate::geometry::Geometry`.
//!
//! The whole module is compiled by `cargo xtask gpu-build` on a machine without a GPU and checked
//! on the GPU machine by `cargo xtask gpu-check` (CUDA vs CPU on every op and gradient).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

#[cfg(feature = "cuda")]
pub(crate) mod batch_norm;
#[cfg(feature = "cuda")]
pub(crate) mod conv;
#[cfg(feature = "cuda")]
mod graph;
#[cfg(feature = "cuda")]
mod handle;
#[cfg(feature = "cuda")]
mod pool;

#[cfg(feature = "cuda")]
pub use pool::retain_freed_gpu_memory;

/// Keeps freed GPU memory in the device's memory pool (see the CUDA build's documentation); a
/// CPU build has nothing to keep and returns `Ok(false)`.
#[cfg(not(feature = "cuda"))]
pub fn retain_freed_gpu_memory(_device: &candle_core::Device) -> candle_core::Result<bool> {
    Ok(false)
}

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

/// Which cuDNN API runs the convolutions. Measured on an H200 (`bench/gpu-la.json`): the graph API
/// takes a full-size 3^3 convolution's TF32 forward + backward from 17.3 to 11.6 ms and the LA
/// training step from 0.337 to 0.302 s; both pass `gpu_check` (87 of 87 within 1e-4 of the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvApi {
    /// `cudnnConvolutionForward` / `BackwardData` / `BackwardFilter` with the fastest algorithm of
    /// `cudnnFind*AlgorithmEx`.
    Legacy,
    /// The graph (backend) API with heuristics mode A engines, timed, as PyTorch's cuDNN v8 path;
    /// a convolution it has no plan for falls back to [`ConvApi::Legacy`].
    Graph,
}

/// 0: not chosen yet (read `DUOSEG_CUDNN_API` on first use), 1: legacy, 2: graph.
static CONV_API: AtomicU8 = AtomicU8::new(0);

/// Chooses the cuDNN API for convolutions from now on (overrides `DUOSEG_CUDNN_API`).
pub fn set_conv_api(api: ConvApi) {
    let v = match api {
        ConvApi::Legacy => 1,
        ConvApi::Graph => 2,
    };
    CONV_API.store(v, Ordering::Relaxed);
}

/// The cuDNN API for convolutions: set by [`set_conv_api`], else `DUOSEG_CUDNN_API=graph|legacy`,
/// else [`ConvApi::Graph`].
pub fn conv_api() -> ConvApi {
    match CONV_API.load(Ordering::Relaxed) {
        1 => ConvApi::Legacy,
        2 => ConvApi::Graph,
        _ => {
            let api = match std::env::var("DUOSEG_CUDNN_API").as_deref() {
                Ok("legacy") => ConvApi::Legacy,
                _ => ConvApi::Graph,
            };
            set_conv_api(api);
            api
        }
    }
}
