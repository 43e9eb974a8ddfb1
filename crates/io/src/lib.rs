//! Medical volumes in and out (NIfTI, HDF5), datasets, splits, preprocessing and augmentation.
//!
//! Architecture invariant: this crate never imports candle; it works on plain `Vec<f32>` / `Vec<u8>`
//! volumes so it is tested without any accelerator. Turning samples into device tensors is the
//! trainer's job (a dataset is not a batcher).
//!
//! Axis convention: a [`Volume`]'s `shape` is the file's axes (x, y, z) and its `data` is C order,
//! the last axis fastest: `index = (i * ny + j) * nz + k`.

// Voxel code indexes several arrays by one axis variable; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod augment;
pub mod dataset;
mod error;
mod h5;
pub mod loader;
pub mod nifti;
pub mod preprocess;
mod volume;

pub use augment::{Patch, RandCrop, RandRot90Flip, Rng};
pub use dataset::{Case, Dataset, LabeledSplit, Layout, Sample, Split};
pub use error::{Error, Result};
pub use h5::{decode_h5, h5_dataset_names, read_h5_dataset, read_h5_pair};
pub use loader::{load_cases, Batch, Loader, LoaderConfig};
pub use nifti::NiftiHeader;
pub use volume::{read_labels, read_volume, write_labels, write_probabilities, DataType, Volume};

#[cfg(test)]
mod tests;
