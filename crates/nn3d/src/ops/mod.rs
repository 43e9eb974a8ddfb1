//! Functional 3D ops with autograd, f32, layout `[N, C, D, H, W]`.
//!
//! - [`conv3d()`] / [`Conv3dParams`]: convolution (PyTorch `conv3d`), weight `[C_out, C_in, k..]`.
//! - [`conv_transpose3d()`] / [`ConvTranspose3dParams`]: its adjoint (PyTorch `conv_transpose3d`),
//!   weight `[C_in, C_out, k..]`.
//! - [`batch_norm_train`] / [`batch_norm_eval`]: fused batch normalisation (`batch_norm.rs`).
//! - [`batch_norm_act_train`] / [`batch_norm_act_eval`]: batch normalisation fused with the ReLU
//!   and residual add that follow it ([`Epilogue`], `bn_act.rs`; CPU kernels, other devices compose
//!   the unfused ops).
//! - [`conv3d_bn_relu`]: `relu(bn(conv3d(x)))` as one autograd node (`conv_bn.rs`; CPU, other
//!   devices compose the unfused ops).
//!
//! Design: the convolutions are built from three candle custom ops (forward, backward-data, backward-filter;
//! table in `conv3d.rs`) whose CPU kernels (`cpu_gemm.rs`) unfold one tile of output rows at a
//! time into a small column buffer and multiply it with the `gemm` crate, in parallel over tiles
//! with rayon (no full-volume im2col), or, for the 3^3 unit-stride convolutions of up to 64
//! channels, run Winograd F(2x2x2, 3x3x3) (`winograd.rs`), or, for the small deep layers with
//! more channels, unfold the whole batch with the depth taps folded out (`depth_fold.rs`); on CUDA
//! the same ops call cuDNN
//! (`crate::cuda`), for every shape.

pub(crate) mod batch_norm;
pub(crate) mod bn_act;
pub(crate) mod conv3d;
pub(crate) mod conv_bn;
pub(crate) mod conv_transpose3d;
pub(crate) mod cpu_gemm;
pub(crate) mod depth_fold;
pub(crate) mod winograd;

pub use batch_norm::{batch_norm_eval, batch_norm_train, BatchStats};
pub use bn_act::{batch_norm_act_eval, batch_norm_act_train, Epilogue};
pub use conv3d::{conv3d, Conv3dParams};
pub use conv_bn::conv3d_bn_relu;
pub use conv_transpose3d::{conv_transpose3d, ConvTranspose3dParams};

#[cfg(test)]
mod conv_tests;
