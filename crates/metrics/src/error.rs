//! The one error type of the crate.

/// Everything that can go wrong when computing metrics: inputs that do not fit together.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// A mask or label slice does not hold as many voxels as its shape says.
    #[error("slice of {len} voxels does not match shape {shape:?}")]
    Length { len: usize, shape: [usize; 3] },
    /// Prediction and label have different lengths.
    #[error("prediction of {pred} voxels != label of {label} voxels")]
    SizeMismatch { pred: usize, label: usize },
    /// A spacing that is not finite and positive.
    #[error("spacing {spacing:?} must be finite and positive on every axis")]
    Spacing { spacing: [f64; 3] },
    /// A percentile outside [0, 100].
    #[error("percentile {0} outside [0, 100]")]
    Percentile(f64),
    /// A surface-Dice tolerance that is negative or not finite.
    #[error("surface dice tolerance {0} mm must be finite and >= 0")]
    Tolerance(f64),
    /// A class value of 0 (background) asked for as a foreground class.
    #[error("class 0 is background and cannot be evaluated as foreground")]
    BackgroundClass,
}
