//! 3D layers for candle: `conv3d`, `conv_transpose3d`, fused `BatchNorm3d`, `Dropout3d`, with CPU
//! kernels (slab im2col + GEMM, rayon) and, behind the `cuda` feature, cuDNN kernels.
//!
//! Architecture invariant: depends only on candle; layout is always `[N, C, D, H, W]`, f32.
