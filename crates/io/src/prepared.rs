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

/// The pancreas protocol's crop (SPEC section 3): each case cut to its label's bounding box grown
/// by `margin` voxels per axis (`null`: the axis is kept whole), then to at least `min_size`
/// (centred, within the volume). Config key `data.crop_to_label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelCrop {
    /// Voxels added on each side of the label's box, per axis; `null` keeps the whole axis.
    pub margin: [Option<usize>; 3],
    /// The crop is grown to at least this size per axis (e.g. the training patch).
    #[serde(default)]
    pub min_size: [usize; 3],
}

impl LabelCrop {
    /// The box of `shape` this crop keeps for `label` (`None` when the label has no foreground:
    /// nothing to crop around).
    pub fn region(&self, label: &[u8], shape: [usize; 3]) -> Result<Option<Crop3>> {
        if preprocess::label_bbox(label, shape)?.is_none() {
            return Ok(None);
        }
        let margin = [0, 1, 2].map(|a| self.margin[a].unwrap_or(shape[a]));
        preprocess::bbox_crop(label, shape, margin, self.min_size).map(Some)
    }
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
    /// An unlabeled training case's padded labels, set apart by [`PreparedCase::hide_label`] for
    /// diagnosis only (how good the pseudo-labels are); training never reads them.
    pub hidden_label: Option<Vec<u8>>,
    /// Padding added before each axis (to crop predictions back to the original geometry).
    pub pad_before: [usize; 3],
    /// Shape of the original volume (what [`PreparedCase::crop_back`] returns).
    pub original_shape: [usize; 3],
    /// The region of the original volume this case holds, when it was cropped to its label
    /// ([`LabelCrop`]); `None`: all of it.
    pub crop: Option<Crop3>,
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
            hidden_label: None,
            pad_before: before,
            original_shape: shape,
            crop: None,
            source: Some(Volume {
                data: Vec::new(),
                ..vol
            }),
        })
    }

    /// [`PreparedCase::prepare`] after cutting the volume (and its label) to `crop`'s region
    /// around the label, before normalisation as the protocol does. A case without a label, or
    /// with an empty one, is prepared whole. [`PreparedCase::crop_back`] puts predictions back
    /// into the whole volume (0 outside the region).
    pub fn prepare_cropped(
        name: String,
        vol: Volume,
        label: Option<Vec<u8>>,
        how: Normalize,
        pad_multiple: usize,
        crop: LabelCrop,
    ) -> Result<Self> {
        let region = match &label {
            Some(l) => crop.region(l, vol.shape)?,
            None => None,
        };
        let Some(region) = region else {
            return Self::prepare(name, vol, label, how, pad_multiple);
        };
        let full_shape = vol.shape;
        let image = preprocess::crop(&vol.data, full_shape, region)?;
        let label = label
            .map(|l| preprocess::crop(&l, full_shape, region))
            .transpose()?;
        let cut = Volume {
            data: image,
            shape: region.size,
            ..vol.clone()
        };
        let mut case = Self::prepare(name, cut, label, how, pad_multiple)?;
        case.original_shape = full_shape;
        case.crop = Some(region);
        case.source = Some(Volume {
            data: Vec::new(),
            ..vol
        });
        Ok(case)
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
            hidden_label: None,
            pad_before: [0; 3],
            original_shape: shape,
            crop: None,
            source: None,
        }
    }

    /// The case without its label (an unlabeled training case).
    pub fn without_label(self) -> Self {
        PreparedCase {
            label: None,
            hidden_label: None,
            ..self
        }
    }

    /// The case as an unlabeled training case whose label, when it has one, is kept apart as
    /// [`PreparedCase::hidden_label`] (the benchmark data sets label their "unlabeled" cases too).
    pub fn hide_label(self) -> Self {
        PreparedCase {
            hidden_label: self.label,
            label: None,
            ..self
        }
    }

    /// `data` (one value per padded voxel) back in the original geometry: the padding removed
    /// and, for a case cropped to its label, put in place in the whole volume (0 outside).
    pub fn crop_back<T: Copy + Default>(&self, data: &[T]) -> Result<Vec<T>> {
        let inner = self.crop.map_or(self.original_shape, |c| c.size);
        let unpadded = if self.shape == inner {
            data.to_vec()
        } else {
            crop_back(data, self.shape, self.pad_before, inner)?
        };
        match self.crop {
            None => Ok(unpadded),
            Some(region) => {
                let after =
                    [0, 1, 2].map(|a| self.original_shape[a] - region.start[a] - region.size[a]);
                Ok(preprocess::pad(&unpadded, region.size, region.start, after)?.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_crop_keeps_the_box_with_its_margin_and_crop_back_restores_the_geometry() -> Result<()>
    {
        let shape = [20, 16, 12];
        let n: usize = shape.iter().product();
        let mut label = vec![0u8; n];
        // foreground box x 8..11, y 6..9, z 4..7
        for x in 8..11 {
            for y in 6..9 {
                for z in 4..7 {
                    label[(x * 16 + y) * 12 + z] = 1;
                }
            }
        }
        let image: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let vol = Volume::from_data(shape, [1.0, 1.0, 2.0], image.clone())?;
        let crop = LabelCrop {
            margin: [Some(2), Some(1), None],
            min_size: [0, 6, 0],
        };
        let case = PreparedCase::prepare_cropped(
            "c".into(),
            vol.clone(),
            Some(label.clone()),
            Normalize::None,
            4,
            crop,
        )?;
        // x: 8-2 .. 11+2 = 6..13 (7); y: 6-1 .. 9+1 = 5..10 (5, grown to 6: 4..10 or 5..11);
        // z: the whole axis
        let region = case.crop.expect("cropped");
        assert_eq!(region.start[0], 6);
        assert_eq!(region.size[0], 7);
        assert_eq!(region.size[1], 6);
        assert_eq!((region.start[2], region.size[2]), (0, 12));
        assert_eq!(case.original_shape, shape);
        assert_eq!(case.shape, [8, 8, 12], "padded to multiples of 4");
        // the label and the image inside the region come back in place, zeros outside
        let back = case.crop_back(case.label.as_deref().unwrap())?;
        assert_eq!(back, label);
        let img = case.crop_back(&case.image)?;
        for x in 0..shape[0] {
            for y in 0..shape[1] {
                for z in 0..shape[2] {
                    let i = (x * 16 + y) * 12 + z;
                    let inside = (0..3).all(|a| {
                        let v = [x, y, z][a];
                        v >= region.start[a] && v < region.start[a] + region.size[a]
                    });
                    assert_eq!(img[i], if inside { image[i] } else { 0.0 }, "{x} {y} {z}");
                }
            }
        }
        // no label, or an empty one: the whole volume
        let whole =
            PreparedCase::prepare_cropped("u".into(), vol.clone(), None, Normalize::None, 1, crop)?;
        assert_eq!((whole.crop, whole.shape), (None, shape));
        let empty = PreparedCase::prepare_cropped(
            "e".into(),
            vol,
            Some(vec![0; n]),
            Normalize::None,
            1,
            crop,
        )?;
        assert_eq!(empty.crop, None);
        Ok(())
    }

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
        let hidden = case.clone().hide_label();
        assert!(hidden.label.is_none());
        assert_eq!(hidden.hidden_label, case.label);
        let dropped = hidden.without_label();
        assert!(dropped.label.is_none() && dropped.hidden_label.is_none());
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
