//! Medical volumes in and out (NIfTI, HDF5), datasets, splits, preprocessing and augmentation.
//!
//! Architecture invariant: this crate never imports candle; it works on plain `Vec<f32>` / `Vec<u8>`
//! volumes so it is tested without any accelerator. Turning samples into device tensors is the
//! trainer's job (a dataset is not a batcher).
