//! 3D layers for candle: `conv3d`, `conv_transpose3d`, fused `BatchNorm3d`, `Dropout3d`, with CPU
//! kernels (slab im2col + GEMM, rayon) and, behind the `cuda` feature, cuDNN kernels.
//!
//! Architecture invariant: depends only on candle; layout is always `[N, C, D, H, W]`, f32.
//! Inside, `ops` calls the CUDA kernels of `cuda`, never the other way; both take the convolution's
//! shape from `geometry`, which uses nothing of the crate.

pub mod cuda;
mod geometry;
pub mod ops;

mod conv;
pub use conv::{
    conv3d, conv3d_no_bias, conv_transpose3d, Conv3d, Conv3dConfig, ConvTranspose3d,
    ConvTranspose3dConfig,
};

mod batch_norm;
mod dropout;
mod upsample;
pub use upsample::{interpolation_matrix, upsample_trilinear};
mod memory;
pub mod profile;
mod threads;
pub use batch_norm::{
    batch_norm3d, is_batch_norm_buffer, trainable_vars, BatchNorm3d, BatchNorm3dConfig,
    BATCH_NORM_BUFFERS,
};
pub use dropout::Dropout3d;
pub use memory::retain_freed_memory;
pub use ops::Epilogue;
pub use threads::{calm_candle_workers, CANDLE_WORKER_SPIN_LIMIT};
