//! In-memory training data: cases loaded once (via `duoseg-io` or the phantom generator),
//! normalised and padded, then sampled as random crops each iteration.

use std::path::Path;

use candle_core::{bail, Result};
use duoseg_io::{preprocess, Volume};

use crate::config::{DataConfig, Normalize, Split};
use crate::phantom::PhantomCase;

/// One prepared case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case id.
    pub name: String,
    /// Shape after padding (x, y, z).
    pub shape: [usize; 3],
    /// Voxel spacing in mm.
    pub spacing: [f64; 3],
    /// Normalised intensities, C-order.
    pub image: Vec<f32>,
    /// Labels, when known.
    pub label: Option<Vec<u8>>,
    /// Padding added before each axis (to crop predictions back to the original geometry).
    pub pad_before: [usize; 3],
    /// Shape of the original file.
    pub original_shape: [usize; 3],
    /// The original image volume (geometry for writing predictions), when read from a file.
    pub source: Option<Volume>,
}

/// Labeled, unlabeled and test cases.
#[derive(Debug, Clone, Default)]
pub struct TrainData {
    /// Labeled training cases.
    pub labeled: Vec<Case>,
    /// Unlabeled training cases (their labels, if any, are dropped).
    pub unlabeled: Vec<Case>,
    /// Test cases (with labels).
    pub test: Vec<Case>,
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Applies the configured intensity normalisation in place (`duoseg-io` preprocessing).
pub fn normalize(image: &mut [f32], how: Normalize) -> Result<()> {
    match how {
        Normalize::None => Ok(()),
        Normalize::ZScore => preprocess::zscore(image, None).map_err(err),
        Normalize::Window { lo, hi } => {
            preprocess::ct_window(image, preprocess::CtWindow { lo, hi }).map_err(err)?;
            preprocess::zscore(image, None).map_err(err)
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
    preprocess::pad_center(data, shape, target).map_err(err)
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
        preprocess::Crop3 {
            start: before,
            size: shape,
        },
    )
    .map_err(err)
}

impl Case {
    /// A case read from a file: normalised and padded as `cfg` says; `source` keeps the geometry.
    pub fn prepare(
        name: String,
        vol: Volume,
        label: Option<Vec<u8>>,
        cfg: &DataConfig,
    ) -> Result<Self> {
        let shape = vol.shape;
        let mut image = vol.data.clone();
        normalize(&mut image, cfg.normalize)?;
        let (image, new, before) = pad_to_multiple(&image, shape, cfg.pad_to_multiple)?;
        let label = label
            .map(|l| pad_to_multiple(&l, shape, cfg.pad_to_multiple).map(|p| p.0))
            .transpose()?;
        Ok(Case {
            name,
            shape: new,
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

    /// A phantom case (already z-scored, 1 mm spacing).
    pub fn from_phantom(p: PhantomCase, keep_label: bool) -> Self {
        Case {
            name: p.name,
            shape: p.shape,
            spacing: [1.0; 3],
            image: p.image,
            label: keep_label.then_some(p.label),
            pad_before: [0; 3],
            original_shape: p.shape,
            source: None,
        }
    }
}

/// Loads the labeled, unlabeled and test cases that `cfg` describes (`root` overrides `cfg.root`).
pub fn load(cfg: &DataConfig, root: Option<&Path>) -> Result<TrainData> {
    if let Some(s) = &cfg.synthetic {
        let set = s.generate();
        return Ok(TrainData {
            labeled: set
                .labeled
                .into_iter()
                .map(|c| Case::from_phantom(c, true))
                .collect(),
            unlabeled: set
                .unlabeled
                .into_iter()
                .map(|c| Case::from_phantom(c, false))
                .collect(),
            test: set
                .test
                .into_iter()
                .map(|c| Case::from_phantom(c, true))
                .collect(),
        });
    }
    let Some(root) = root.or(cfg.root.as_deref()) else {
        bail!("no data folder: give --data DIR or data.root")
    };
    let ds = duoseg_io::Dataset::open(root).map_err(err)?;
    let (train, test) = match &cfg.split {
        Split::Lists => match &ds.split {
            Some(s) => (s.train.clone(), s.test.clone()),
            None => bail!(
                "{}: the dataset has no train/test lists; use a fold or holdout split",
                root.display()
            ),
        },
        Split::Fold { fold } => {
            let folds = ds.folds().map_err(err)?;
            let Some(f) = folds.get(*fold) else {
                bail!("fold {fold} requested, folds.json has {}", folds.len())
            };
            (f.train.clone(), f.test.clone())
        }
        Split::Holdout { test } => {
            let ids = ds.ids();
            if *test >= ids.len() {
                bail!(
                    "holdout of {test} cases leaves no training case among {}",
                    ids.len()
                )
            }
            let cut = ids.len() - test;
            (ids[..cut].to_vec(), ids[cut..].to_vec())
        }
    };
    if cfg.labeled > train.len() {
        bail!(
            "{} labeled cases requested, the training list has {}",
            cfg.labeled,
            train.len()
        )
    }
    let get = |id: &String, keep_label: bool| -> Result<Case> {
        let s = ds.load(id).map_err(err)?;
        if keep_label && s.label.is_none() {
            bail!("case {id} has no label")
        }
        Case::prepare(s.id, s.image, if keep_label { s.label } else { None }, cfg)
    };
    Ok(TrainData {
        labeled: train[..cfg.labeled]
            .iter()
            .map(|id| get(id, true))
            .collect::<Result<_>>()?,
        unlabeled: train[cfg.labeled..]
            .iter()
            .map(|id| get(id, false))
            .collect::<Result<_>>()?,
        test: test.iter().map(|id| get(id, true)).collect::<Result<_>>()?,
    })
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
