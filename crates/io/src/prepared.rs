//! Prepared cases: a volume as training and inference use it, normalised and padded once, with what
//! it takes to map a prediction back to the file's geometry. The batch loader reads its crops from
//! these (shared, never copied); evaluation and inference crop their outputs back with them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
    /// This crop with its margin and minimum size (voxels of a grid of `target` spacing) in voxels
    /// of a grid of `spacing`, rounded up so that the resampled region keeps at least as many.
    pub fn on_source_grid(&self, spacing: [f64; 3], target: [f64; 3]) -> Result<LabelCrop> {
        preprocess::resampled_shape([1; 3], spacing, target)?;
        // at most 2^32 voxels (a larger margin or size keeps the whole axis anyway)
        let scale = |n: usize, a: usize| {
            (n as f64 * target[a] / spacing[a])
                .ceil()
                .min(f64::from(u32::MAX)) as usize
        };
        Ok(LabelCrop {
            margin: std::array::from_fn(|a| self.margin[a].map(|m| scale(m, a))),
            min_size: std::array::from_fn(|a| scale(self.min_size[a], a)),
        })
    }

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
    /// Voxel spacing of the prepared grid in mm: the source's, or after resampling the target
    /// spacing up to the rounding of the shape (see [`PreparedCase::resampled`]).
    pub spacing: [f64; 3],
    /// Voxel spacing of the source volume in mm (the grid of [`PreparedCase::crop_back`]'s output,
    /// where metrics are computed).
    pub source_spacing: [f64; 3],
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
    /// Set when the case was resampled to a training spacing ([`PrepareOptions::spacing`]).
    pub resampled: Option<Resampled>,
    /// A resampled case's label on the source grid, as read (metrics compare with it, never with
    /// the label resampled there and back).
    pub source_label: Option<Vec<u8>>,
}

/// How [`PreparedCase::prepare_with`] brings a volume onto the training grid, in this order: cut
/// to the label ([`LabelCrop`]), resample to `spacing`, normalise, pad.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrepareOptions {
    /// Per-volume intensity normalisation.
    pub normalize: Normalize,
    /// Pad each side (zeros, centred) to a multiple of this (0 and 1: no padding).
    pub pad_to_multiple: usize,
    /// The label crop; its margin and minimum size count voxels of the training grid.
    pub crop_to_label: Option<LabelCrop>,
    /// Target spacing in mm (x, y, z, the volume's axes): images are resampled trilinearly and
    /// labels by nearest neighbour onto a grid of `round(shape * spacing / target)` voxels over the
    /// same field of view. `None`: no resampling.
    pub spacing: Option<[f64; 3]>,
}

/// What resampling a case to the training spacing did, to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resampled {
    /// Shape of the resampled part on the source grid (the label crop's region, else the volume).
    pub from_shape: [usize; 3],
    /// Its shape on the training grid, before padding.
    pub to_shape: [usize; 3],
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
        let opts = PrepareOptions {
            normalize: how,
            pad_to_multiple: pad_multiple,
            ..PrepareOptions::default()
        };
        Self::prepare_with(name, vol, label, &opts)
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
        let opts = PrepareOptions {
            normalize: how,
            pad_to_multiple: pad_multiple,
            crop_to_label: Some(crop),
            spacing: None,
        };
        Self::prepare_with(name, vol, label, &opts)
    }

    /// A case read from a file, prepared as `opts` says: cut to the label's region (a case without
    /// a label, or with an empty one, stays whole), resampled to the target spacing (skipped when
    /// that leaves the shape unchanged), normalised, padded. `source` keeps the file's geometry
    /// (without the voxels); [`PreparedCase::crop_back`] undoes the steps. Errors name the file.
    pub fn prepare_with(
        name: String,
        vol: Volume,
        label: Option<Vec<u8>>,
        opts: &PrepareOptions,
    ) -> Result<Self> {
        let full_shape = vol.shape;
        let named = |e: Error| match e {
            Error::Invalid(m) => Error::Invalid(format!("{}: {m}", vol.display_path().display())),
            other => other,
        };
        let region = match (&label, opts.crop_to_label) {
            (Some(l), Some(crop)) => {
                let crop = match opts.spacing {
                    Some(t) => crop.on_source_grid(vol.spacing, t).map_err(named)?,
                    None => crop,
                };
                crop.region(l, full_shape)?
            }
            _ => None,
        };
        let (mut image, mut cut_label, shape) = match region {
            Some(r) => (
                preprocess::crop(&vol.data, full_shape, r)?,
                label
                    .as_ref()
                    .map(|l| preprocess::crop(l, full_shape, r))
                    .transpose()?,
                r.size,
            ),
            None => (vol.data.clone(), label.clone(), full_shape),
        };
        let mut grid = shape;
        let mut spacing = vol.spacing;
        let mut resampled = None;
        if let Some(target) = opts.spacing {
            let to = preprocess::resampled_shape(shape, vol.spacing, target).map_err(named)?;
            if to != shape {
                image = preprocess::resize_trilinear(&image, shape, to)?;
                cut_label = cut_label
                    .map(|l| preprocess::resize_nearest(&l, shape, to))
                    .transpose()?;
                spacing = preprocess::resized_geometry(shape, to, vol.spacing, &vol.affine).0;
                grid = to;
                resampled = Some(Resampled {
                    from_shape: shape,
                    to_shape: to,
                });
            }
        }
        normalize(&mut image, opts.normalize).map_err(named)?;
        let (image, padded, before) = pad_to_multiple(&image, grid, opts.pad_to_multiple)?;
        let cut_label = cut_label
            .map(|l| pad_to_multiple(&l, grid, opts.pad_to_multiple).map(|p| p.0))
            .transpose()?;
        Ok(PreparedCase {
            name,
            shape: padded,
            spacing,
            source_spacing: vol.spacing,
            image,
            label: cut_label,
            hidden_label: None,
            pad_before: before,
            original_shape: full_shape,
            crop: region,
            source_label: resampled.and(label),
            resampled,
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
            source_spacing: spacing,
            image,
            label,
            hidden_label: None,
            pad_before: [0; 3],
            original_shape: shape,
            crop: None,
            source: None,
            resampled: None,
            source_label: None,
        }
    }

    /// The case without its label (an unlabeled training case).
    pub fn without_label(self) -> Self {
        PreparedCase {
            label: None,
            hidden_label: None,
            source_label: None,
            ..self
        }
    }

    /// The case as an unlabeled training case whose label, when it has one, is kept apart as
    /// [`PreparedCase::hidden_label`] (the benchmark data sets label their "unlabeled" cases too).
    pub fn hide_label(self) -> Self {
        PreparedCase {
            hidden_label: self.label,
            label: None,
            source_label: None,
            ..self
        }
    }

    /// `data` (one value per padded voxel) back in the original geometry: the padding removed, a
    /// resampled case taken back to the source grid by nearest neighbour (labels) and, for a case
    /// cropped to its label, put in place in the whole volume (0 outside).
    pub fn crop_back<T: Copy + Default>(&self, data: &[T]) -> Result<Vec<T>> {
        self.back(data, preprocess::resize_nearest)
    }

    /// [`PreparedCase::crop_back`] for intensities and probabilities: a resampled case goes back
    /// to the source grid by trilinear interpolation.
    pub fn crop_back_linear(&self, data: &[f32]) -> Result<Vec<f32>> {
        self.back(data, preprocess::resize_trilinear)
    }

    /// The label on the source grid (the whole volume), when the case has one: as read for a
    /// resampled case, else [`PreparedCase::crop_back`] of [`PreparedCase::label`].
    pub fn original_label(&self) -> Result<Option<Vec<u8>>> {
        match (&self.source_label, &self.label) {
            (Some(l), _) => Ok(Some(l.clone())),
            (None, Some(l)) => self.crop_back(l).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The whole volume's size on the training grid (its source shape when not resampled).
    pub fn grid_extent(&self) -> [usize; 3] {
        match self.resampled {
            None => self.original_shape,
            Some(r) => std::array::from_fn(|a| {
                ((self.original_shape[a] * r.to_shape[a]) as f64 / r.from_shape[a] as f64)
                    .round()
                    .max(1.0) as usize
            }),
        }
    }

    fn back<T: Copy + Default>(
        &self,
        data: &[T],
        resize: impl Fn(&[T], [usize; 3], [usize; 3]) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let inner = self.crop.map_or(self.original_shape, |c| c.size);
        let grid = self.resampled.map_or(inner, |r| r.to_shape);
        let unpadded = if self.shape == grid {
            crate::volume::check_len("prediction", data.len(), grid)?;
            data.to_vec()
        } else {
            crop_back(data, self.shape, self.pad_before, grid)?
        };
        let unpadded = match self.resampled {
            Some(r) => resize(&unpadded, r.to_shape, r.from_shape)?,
            None => unpadded,
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

    /// A volume with an anisotropic spacing, its label a box, and a path to name in errors.
    fn anisotropic_case() -> (Volume, Vec<u8>) {
        let shape = [20, 16, 12];
        let n: usize = shape.iter().product();
        let image: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.5).collect();
        let mut label = vec![0u8; n];
        for x in 6..14 {
            for y in 4..10 {
                for z in 3..9 {
                    label[(x * 16 + y) * 12 + z] = 2;
                }
            }
        }
        let mut vol = Volume::from_data(shape, [0.5, 0.5, 1.0], image).unwrap();
        vol.path = Some("case7.nii.gz".into());
        (vol, label)
    }

    #[test]
    fn resampling_to_a_spacing_and_back_restores_the_source_grid() -> Result<()> {
        let (vol, label) = anisotropic_case();
        let opts = PrepareOptions {
            normalize: Normalize::ZScore,
            pad_to_multiple: 4,
            crop_to_label: None,
            spacing: Some([1.0, 1.0, 2.0]),
        };
        let case = PreparedCase::prepare_with("c".into(), vol.clone(), Some(label.clone()), &opts)?;
        let r = case.resampled.expect("resampled");
        assert_eq!((r.from_shape, r.to_shape), ([20, 16, 12], [10, 8, 6]));
        assert_eq!(case.shape, [12, 8, 8], "padded to multiples of 4");
        assert_eq!(case.spacing, [1.0, 1.0, 2.0]);
        assert_eq!(case.source_spacing, [0.5, 0.5, 1.0]);
        assert_eq!(case.grid_extent(), [10, 8, 6]);
        // the training label is the nearest-neighbour resample, padded
        let grid_label = preprocess::resize_nearest(&label, [20, 16, 12], [10, 8, 6])?;
        let (padded, _, _) = pad_to_multiple(&grid_label, [10, 8, 6], 4)?;
        assert_eq!(case.label.as_deref(), Some(&padded[..]));
        // the image is resampled, then z-scored: mean 0 over the grid (padding excluded)
        let img = case.crop_back_linear(&case.image)?;
        assert_eq!(img.len(), vol.len());
        let mut grid_img = preprocess::resize_trilinear(&vol.data, vol.shape, [10, 8, 6])?;
        normalize(&mut grid_img, Normalize::ZScore)?;
        let unpadded = crop_back(&case.image, case.shape, case.pad_before, [10, 8, 6])?;
        assert_eq!(unpadded, grid_img);
        // back on the source grid: the source shape, the label as read, the box's labels again
        let back = case.crop_back(case.label.as_deref().unwrap())?;
        assert_eq!(back.len(), label.len());
        assert_eq!(case.original_label()?, Some(label.clone()));
        let agree = back.iter().zip(&label).filter(|(a, b)| a == b).count();
        assert!(agree as f64 > 0.95 * label.len() as f64, "{agree}");
        assert!(back.iter().all(|&l| l == 0 || l == 2));
        // hidden or dropped labels take the source label with them
        assert!(case.clone().hide_label().source_label.is_none());
        assert!(case.without_label().original_label()?.is_none());
        Ok(())
    }

    #[test]
    fn without_a_spacing_or_at_the_same_grid_nothing_is_resampled() -> Result<()> {
        let (vol, label) = anisotropic_case();
        let plain = PreparedCase::prepare(
            "c".into(),
            vol.clone(),
            Some(label.clone()),
            Normalize::ZScore,
            4,
        )?;
        for spacing in [None, Some([0.5, 0.5, 1.0]), Some([0.51, 0.49, 1.02])] {
            let opts = PrepareOptions {
                normalize: Normalize::ZScore,
                pad_to_multiple: 4,
                crop_to_label: None,
                spacing,
            };
            let case =
                PreparedCase::prepare_with("c".into(), vol.clone(), Some(label.clone()), &opts)?;
            assert!(case.resampled.is_none() && case.source_label.is_none());
            assert_eq!(case.image, plain.image);
            assert_eq!(case.label, plain.label);
            assert_eq!(case.spacing, [0.5, 0.5, 1.0]);
        }
        Ok(())
    }

    /// With a target spacing the crop's margin and minimum size count training-grid voxels: the
    /// region, resampled, holds at least `min_size` voxels; predictions come back in the whole
    /// volume.
    #[test]
    fn a_label_crop_with_resampling_counts_training_voxels() -> Result<()> {
        let (vol, label) = anisotropic_case();
        let opts = PrepareOptions {
            normalize: Normalize::None,
            pad_to_multiple: 1,
            crop_to_label: Some(LabelCrop {
                margin: [Some(1), Some(0), None],
                min_size: [6, 6, 0],
            }),
            spacing: Some([1.0, 1.0, 2.0]),
        };
        let case = PreparedCase::prepare_with("c".into(), vol.clone(), Some(label.clone()), &opts)?;
        let region = case.crop.expect("cropped");
        // x: box 6..14 plus 1 training voxel = 2 source voxels each side: 4..16; y: 4..10 grown to
        // 6 training voxels = 12 source voxels; z: whole
        assert_eq!((region.start[0], region.size[0]), (4, 12));
        assert_eq!(region.size[1], 12);
        assert_eq!(region.size[2], 12);
        let r = case.resampled.expect("resampled");
        assert_eq!(r.from_shape, region.size);
        assert_eq!(r.to_shape, [6, 6, 6]);
        assert_eq!(
            case.crop_back(case.label.as_deref().unwrap())?.len(),
            vol.len()
        );
        assert_eq!(case.original_label()?, Some(label));
        Ok(())
    }

    #[test]
    fn a_bad_target_spacing_is_an_error_naming_the_file() {
        let (vol, label) = anisotropic_case();
        for bad in [
            [0.0, 1.0, 1.0],
            [1.0, -1.0, 1.0],
            [1.0, 1.0, f64::NAN],
            [1e-9; 3],
        ] {
            let opts = PrepareOptions {
                spacing: Some(bad),
                ..PrepareOptions::default()
            };
            let e = PreparedCase::prepare_with("c".into(), vol.clone(), Some(label.clone()), &opts)
                .unwrap_err()
                .to_string();
            assert!(e.contains("case7.nii.gz"), "{e}");
        }
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
