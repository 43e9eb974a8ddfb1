//! The one error type of `duoseg-io`: every variant names the file (or shape) involved.

use std::path::PathBuf;

/// Everything that can go wrong reading, checking or writing volumes and datasets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a regular file (a FIFO, a device, a directory, a symbolic link to
    /// one): it is neither read (a FIFO would block forever) nor replaced by an atomic write.
    #[error("{path}: not a regular file (it is a {kind})")]
    NotRegularFile { path: PathBuf, kind: String },
    /// Another process holds the folder's lock (another run writing into the same folder).
    #[error("{path}: another duoseg process is writing into this folder")]
    Locked { path: PathBuf },
    /// Decoding would hold more than the input can honestly declare (a gzip bomb, a header
    /// declaring more than the file or the memory can hold).
    #[error("{path}: too large to read: {reason}")]
    TooLarge {
        path: PathBuf,
        /// The size in bytes that was refused.
        size: u64,
        reason: String,
    },
    /// The gzip stream is truncated or corrupt.
    #[error("{path}: truncated or corrupt gzip stream: {source}")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither a NIfTI-1 single file (`n+1`) nor any other format we know.
    #[error("{path}: not a NIfTI-1 file (magic {found:?}, sizeof_hdr {sizeof_hdr})")]
    BadMagic {
        path: PathBuf,
        found: String,
        sizeof_hdr: i32,
    },
    /// A NIfTI header field is invalid.
    #[error("{path}: bad NIfTI header: {reason}")]
    Header { path: PathBuf, reason: String },
    /// The on-disk data type is not one we read (complex, RGB, ...).
    #[error("{path}: unsupported data type {what}")]
    UnsupportedDataType { path: PathBuf, what: String },
    /// The file ends before all voxels were read.
    #[error("{path}: truncated: need {expected} bytes, file has {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// The volume has no voxels.
    #[error("{path}: empty volume (shape {shape:?})")]
    Empty { path: PathBuf, shape: Vec<i64> },
    /// An intensity is NaN or infinite.
    #[error("{path}: non-finite intensity {value} at voxel {index}")]
    NonFinite {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    /// A label value is not an integer in [0, 255].
    #[error("{path}: label value {value:?} at voxel {index} is not an integer in [0, 255]")]
    BadLabel {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    /// Two volumes (or a buffer and a volume) that must have one shape do not.
    #[error("{what}: shape {left:?} != {right:?}")]
    ShapeMismatch {
        what: String,
        left: [usize; 3],
        right: [usize; 3],
    },
    /// An image and its label have different spacing or affine.
    #[error("{image} vs {label}: geometry mismatch: {reason}")]
    GeometryMismatch {
        image: PathBuf,
        label: PathBuf,
        reason: String,
    },
    /// A buffer's length does not match its shape.
    #[error("{what}: {len} values for shape {shape:?}")]
    Length {
        what: String,
        len: usize,
        shape: [usize; 3],
    },
    /// The HDF5 file is malformed or uses a feature we do not read.
    #[error("{path}: hdf5: {reason}")]
    Hdf5 { path: PathBuf, reason: String },
    /// The file name has no extension we know how to read.
    #[error("{path}: unknown volume format (expected .nii, .nii.gz or .h5)")]
    UnknownFormat { path: PathBuf },
    /// A dataset description (dataset.json, a list, folds.json) is malformed.
    #[error("{path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    /// A file named by a dataset description does not exist.
    #[error("{manifest}: names {missing}, which does not exist")]
    MissingFile { manifest: PathBuf, missing: PathBuf },
    /// A DICOM file cannot be parsed, or its pixel data is encoded in a way we do not read
    /// (compressed transfer syntaxes, colour images, multi-frame objects).
    #[error("{path}: DICOM: {reason}")]
    Dicom { path: PathBuf, reason: String },
    /// A DICOM attribute that the volume needs is missing or malformed in one file of the series.
    #[error("{path}: DICOM {tag}: {reason}")]
    DicomTag {
        path: PathBuf,
        /// The attribute's keyword and tag, e.g. `PixelSpacing (0028,0030)`.
        tag: String,
        reason: String,
    },
    /// A DICOM folder does not name one series: it has none, or several and none was picked, or
    /// the picked one is not there. The message lists the series found.
    #[error("{dir}: {reason}")]
    DicomSeries { dir: PathBuf, reason: String },
    /// Two slices of one series disagree on an attribute that must be the same for a volume.
    #[error("{path}: DICOM {tag} is {reason}")]
    DicomInconsistent {
        path: PathBuf,
        tag: String,
        /// This slice's value and the other slices' (with the file they were read from).
        reason: String,
    },
    /// The slices of a DICOM series are not evenly spaced along the slice normal (a missing slice,
    /// two slices at one position, a variable gap) or not stacked along it (gantry tilt).
    #[error("{dir}: {reason}")]
    DicomSliceSpacing { dir: PathBuf, reason: String },
    /// An invalid argument (crop size, split, spacing, ...).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
