//! Prepared cases: a volume as training and inference use it, normalised and padded once, with what
//! it takes to map a prediction back to the file's geometry. The batch loader reads its crops from
//! these (shared, never copied); evaluation and inference crop their outputs back with them.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::preprocess::{self, Crop3, CtWindow};
use crate::volume::Volume;

/// Per-volume intensity normalisation applied on loading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalize {
    /// Use the stored intensities (LA is stored z-scored).
    #[default]
    None,
    /// Subtract the volume's mean, divide by its standard deviation.
    ZScore,
    /// CT: clip to `[lo, hi]` (HU), rescale to [0, 1], then z-score.
    Window {
        /// Lower bound (HU).
        lo: f32,
        /// Upper bound (HU).
        hi: f32,
    },
}

/// Applies `how` to `image` in place.
pub fn normalize(image: &mut [f32], how: Normalize) -> Result<()> {
    match how {
        Normalize::None => Ok(()),
        Normalize::ZScore => preprocess::zscore(image, None),
        Normalize::Window { lo, hi } => {
            preprocess::ct_window(image, CtWindow { lo, hi })?;
            preprocess::zscore(image, None)
        }
    }
}

/// Pads centrally with zeros so each side is a multiple of `multiple`; returns the new shape and the
/// padding before each axis.
pub fn pad_to_multiple<T: Copy + Default>(
    data: &[T],
    shape: [usize; 3],
    multiple: usize,
) -> Result<(Vec<T>, [usize; 3], [usize; 3])> {
    let m = multiple.max(1);
    let target: [usize; 3] = std::array::from_fn(|a| shape[a].div_ceil(m) * m);
    preprocess::pad_center(data, shape, target)
}

/// Crops `[before, before + shape)` out of a padded volume (inverse of [`pad_to_multiple`]).
pub fn crop_back<T: Copy>(
    data: &[T],
    padded: [usize; 3],
    before: [usize; 3],
    shape: [usize; 3],
) -> Result<Vec<T>> {
    preprocess::crop(
        data,
        padded,
        Crop3 {
            start: before,
            size: shape,
        },
    )
}

/// One case ready for training or inference.
#[derive(Debug, Clone)]
pub struct PreparedCase {
    /// Case id.
    pub name: String,
    /// Shape after padding (x, y, z).
    pub shape: [usize; 3],
    /// Voxel spacing in mm.
    pub spacing: [f64; 3],
    /// Normalised, padded intensities, C order.
    pub image: Vec<f32>,
    /// Padded labels, when known.
    pub label: Option<Vec<u8>>,
    /// Padding added before each axis (to crop predictions back to the original geometry).
    pub pad_before: [usize; 3],
    /// Shape of the original volume.
    pub original_shape: [usize; 3],
    /// The original volume's geometry (header, affine; no voxels), when read from a file.
    pub source: Option<Volume>,
}

impl PreparedCase {
    /// A case read from a file: normalised as `how` says and padded to a multiple of
    /// `pad_multiple`; `source` keeps the geometry (without the voxels).
    pub fn prepare(
        name: String,
        vol: Volume,
        label: Option<Vec<u8>>,
        how: Normalize,
        pad_multiple: usize,
    ) -> Result<Self> {
        let shape = vol.shape;
        let mut image = vol.data.clone();
        normalize(&mut image, how)?;
        let (image, padded, before) = pad_to_multiple(&image, shape, pad_multiple)?;
        let label = label
            .map(|l| pad_to_multiple(&l, shape, pad_multiple).map(|p| p.0))
            .transpose()?;
        Ok(PreparedCase {
            name,
            shape: padded,
            spacing: vol.spacing,
            image,
            label,
            pad_before: before,
            original_shape: shape,
            source: Some(Volume {
                data: Vec::new(),
                ..vol
            }),
        })
    }

    /// A case made in memory, used as it is (no normalisation, no padding, no source file).
    pub fn in_memory(
        name: String,
        shape: [usize; 3],
        spacing: [f64; 3],
        image: Vec<f32>,
        label: Option<Vec<u8>>,
    ) -> Self {
        PreparedCase {
            name,
            shape,
            spacing,
            image,
            label,
            pad_before: [0; 3],
            original_shape: shape,
            source: None,
        }
    }

    /// The case without its label (an unlabeled training case).
    pub fn without_label(self) -> Self {
        PreparedCase {
            label: None,
            ..self
        }
    }

    /// `data` (one value per padded voxel) cropped back to the original geometry.
    pub fn crop_back<T: Copy>(&self, data: &[T]) -> Result<Vec<T>> {
        if self.shape == self.original_shape {
            return Ok(data.to_vec());
        }
        crop_back(data, self.shape, self.pad_before, self.original_shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_and_crop_back_invert() -> Result<()> {
        let img: Vec<f32> = (0..105).map(|i| i as f32).collect();
        let (p, new, before) = pad_to_multiple(&img, [5, 7, 3], 4)?;
        assert_eq!(new, [8, 8, 4]);
        assert_eq!(crop_back(&p, new, before, [5, 7, 3])?, img);
        Ok(())
    }

    #[test]
    fn prepared_case_crops_back_to_the_file_shape() -> Result<()> {
        let img: Vec<f32> = (0..105).map(|i| i as f32).collect();
        let vol = Volume::from_data([5, 7, 3], [1.0, 1.0, 2.0], img.clone())?;
        let label: Vec<u8> = (0..105).map(|i| (i % 3) as u8).collect();
        let case = PreparedCase::prepare("c".into(), vol, Some(label.clone()), Normalize::None, 4)?;
        assert_eq!(case.shape, [8, 8, 4]);
        assert_eq!(case.original_shape, [5, 7, 3]);
        assert_eq!(case.crop_back(&case.image)?, img);
        assert_eq!(case.crop_back(case.label.as_deref().unwrap())?, label);
        assert!(case.source.as_ref().is_some_and(|v| v.data.is_empty()));
        assert!(case.without_label().label.is_none());
        Ok(())
    }

    #[test]
    fn window_normalisation() -> Result<()> {
        let mut v = vec![-500.0, -120.0, 60.0, 240.0, 900.0];
        normalize(
            &mut v,
            Normalize::Window {
                lo: -120.0,
                hi: 240.0,
            },
        )?;
        assert!((v[0] - v[1]).abs() < 1e-6 && (v[3] - v[4]).abs() < 1e-6);
        assert!((v.iter().sum::<f32>() / 5.0).abs() < 1e-5);
        Ok(())
    }
}
