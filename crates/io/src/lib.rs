//! Medical volumes in and out (NIfTI, HDF5), datasets, splits, preprocessing and augmentation.
//!
//! Architecture invariant: this crate never imports candle; it works on plain `Vec<f32>` / `Vec<u8>`
//! volumes so it is tested without any accelerator. Turning samples into device tensors is the
//! trainer's job (a dataset is not a batcher).
//!
//! Axis convention: a [`Volume`]'s `shape` is the file's axes (x, y, z) and its `data` is C order,
//! the last axis fastest: `index = (i * ny + j) * nz + k`.
//!
//! Module layering: each module uses only modules listed before it (no import cycles), so a format
//! reader never depends on the dataset code above it and the in-memory [`Volume`] never on a reader:
//!
//! 1. `error`: the one [`Error`] type.
//! 2. [`fs`]: atomic writes, regular-file-only reading, gzip.
//! 3. `dtype`: the on-disk [`DataType`].
//! 4. `header`: the NIfTI-1 header (public as [`nifti::NiftiHeader`]).
//! 5. `volume`: [`Volume`], voxels plus geometry, in memory.
//! 6. [`nifti`], `h5`: the two file formats, bytes to [`Volume`] and back.
//! 7. `format`: [`read_volume`] / [`read_labels`] by extension, [`write_labels`] /
//!    [`write_probabilities`].
//! 8. [`preprocess`], then [`augment`]: voxel operations on buffers.
//! 9. [`prepared`]: a case cut, resampled, normalised and padded once for training and inference
//!    ([`PreparedCase`]), with what it takes to map predictions back to the file's grid.
//! 10. [`dataset`], then [`loader`]: cases, splits, and seeded batches read from prepared cases.
//! 11. [`check`]: a dataset folder checked case by case (`duoseg inspect DIR`).
//! 12. [`dicom`]: a DICOM series read with dicom-rs into a [`Volume`] and written as NIfTI
//!     (`duoseg convert`); it uses `volume`, `header`, `nifti` and `fs` only.

// Voxel code indexes several arrays by one axis variable; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod augment;
pub mod check;
pub mod dataset;
pub mod dicom;
mod dtype;
mod error;
mod format;
pub mod fs;
mod h5;
mod header;
pub mod loader;
pub mod nifti;
pub mod prepared;
pub mod preprocess;
mod volume;

#[cfg(test)]
pub(crate) mod testutil;

pub use augment::{Patch, RandCrop, RandRot90Flip, Rng};
pub use dataset::{Case, Dataset, LabeledSplit, Layout, Sample, Split};
pub use dicom::{convert_dicom, read_dicom_series, DicomOptions, DicomSeries, SeriesInfo};
pub use dtype::DataType;
pub use error::{Error, Result};
pub use format::{
    read_labels, read_volume, write_labels, write_probabilities, write_probability_maps,
};
pub use h5::{
    decode_h5, decode_h5_dataset_names, decode_h5_labels, h5_dataset_names, read_h5_dataset,
    read_h5_pair,
};
pub use loader::{load_cases, Batch, Loader, LoaderConfig};
pub use nifti::NiftiHeader;
pub use prepared::{LabelCrop, Normalize, PrepareOptions, PreparedCase, Resampled};
pub use volume::Volume;
