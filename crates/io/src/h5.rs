//! HDF5 volumes: the LA distribution's `mri_norm2.h5` (`image` float32, `label` uint8, gzip chunks).
//!
//! Read with the pure-Rust `hdf5-reader` crate (no libhdf5, no build script). HDF5 datasets are
//! C order already, so h5py's `f["image"][:]` is exactly [`Volume::data`]. The files carry no
//! geometry: spacing is 1 mm and the affine the identity unless the caller knows better.

use std::path::Path;

use hdf5_reader::{Datatype, H5Type, Hdf5File};

use crate::error::{Error, Result};
use crate::volume::{diag_affine, DataType, Volume};

fn h5_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Hdf5 {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn open(path: &Path) -> Result<Hdf5File> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_file(bytes, path)
}

fn decode_file(bytes: Vec<u8>, path: &Path) -> Result<Hdf5File> {
    Hdf5File::from_vec(bytes).map_err(|e| h5_err(path, e))
}

/// Upper bound on decoded elements per stored byte: deflate cannot expand more than ~1032:1, so a
/// dataset claiming more is corrupt (and must not make us allocate gigabytes up front).
const MAX_EXPANSION: usize = 1032;

/// Names of the datasets in the file's root group, sorted.
pub fn h5_dataset_names(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let file = open(path)?;
    let (_, datasets) = file
        .root_group()
        .and_then(|g| g.members())
        .map_err(|e| h5_err(path, e))?;
    let mut names: Vec<String> = datasets
        .iter()
        .map(|d| d.name().trim_start_matches('/').to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads the 3-D dataset `name` of an HDF5 file as a [`Volume`].
pub fn read_h5_dataset(path: impl AsRef<Path>, name: &str) -> Result<Volume> {
    let path = path.as_ref();
    let file = open(path)?;
    volume_from_file(&file, path, name)
}

/// Reads the `image` and `label` datasets of one file (decoded once), checking they share a shape.
pub fn read_h5_pair(path: impl AsRef<Path>) -> Result<(Volume, Volume)> {
    let path = path.as_ref();
    let file = open(path)?;
    let image = volume_from_file(&file, path, "image")?;
    let label = volume_from_file(&file, path, "label")?;
    image.check_same_geometry(&label)?;
    Ok((image, label))
}

/// `image` as a [`Volume`] and `label` as `u8` labels (C order) of one file, decoded once: the
/// result and errors of [`read_h5_pair`] followed by [`Volume::to_labels`] on the label. A `uint8`
/// label dataset is read as it is stored (every value is a label), other types through `f32`.
pub(crate) fn read_h5_image_labels(path: &Path) -> Result<(Volume, Vec<u8>)> {
    let file = open(path)?;
    let image = volume_from_file(&file, path, "image")?;
    let labels = labels_from_file(&file, path, Some(&image))?;
    Ok((image, labels))
}

/// The `label` dataset of an HDF5 file as `u8` labels, geometry checked against `image` if given.
pub(crate) fn read_h5_labels(path: &Path, image: Option<&Volume>) -> Result<Vec<u8>> {
    let file = open(path)?;
    labels_from_file(&file, path, image)
}

fn labels_from_file(file: &Hdf5File, path: &Path, image: Option<&Volume>) -> Result<Vec<u8>> {
    let (ds, shape, n, dtype) = dataset_layout(file, path, "label")?;
    if dtype != DataType::U8 {
        let label = volume_from_file(file, path, "label")?;
        if let Some(image) = image {
            image.check_same_geometry(&label)?;
        }
        return label.to_labels();
    }
    let labels =
        typed::<u8>(&ds, n).map_err(|e| h5_err(path, format!("dataset \"label\": {e}")))?;
    if let Some(image) = image {
        // The geometry of an h5 label: its shape, 1 mm spacing, identity affine.
        let spacing = [1.0; 3];
        image.check_geometry_of(path, shape, spacing, &diag_affine(spacing))?;
    }
    Ok(labels)
}

/// Decodes dataset `name` of an in-memory HDF5 file (the fuzzed entry point).
pub fn decode_h5(bytes: Vec<u8>, path: &Path, name: &str) -> Result<Volume> {
    let file = decode_file(bytes, path)?;
    volume_from_file(&file, path, name)
}

/// Dataset `name` of `file` with its checked 3-D shape, element count and data type.
fn dataset_layout(
    file: &Hdf5File,
    path: &Path,
    name: &str,
) -> Result<(hdf5_reader::Dataset, [usize; 3], usize, DataType)> {
    let file_len = usize::try_from(file.storage().len()).unwrap_or(usize::MAX);
    let ds = file
        .dataset(name)
        .map_err(|e| h5_err(path, format!("dataset {name:?}: {e}")))?;
    let dims = ds.shape().to_vec();
    if dims.len() != 3 {
        return Err(h5_err(
            path,
            format!("dataset {name:?} has shape {dims:?}, expected 3-D"),
        ));
    }
    if dims.contains(&0) {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            shape: dims.iter().map(|&d| d as i64).collect(),
        });
    }
    let mut shape = [0usize; 3];
    for a in 0..3 {
        shape[a] = usize::try_from(dims[a])
            .map_err(|_| h5_err(path, format!("dataset {name:?} shape {dims:?} too large")))?;
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .filter(|&n| n <= (1 << 31) && n <= file_len.saturating_mul(MAX_EXPANSION))
        .ok_or_else(|| {
            h5_err(
                path,
                format!("dataset {name:?} shape {dims:?} too large for a {file_len}-byte file"),
            )
        })?;
    let dtype = match ds.dtype() {
        Datatype::FixedPoint { size, signed, .. } => match (size, signed) {
            (1, false) => DataType::U8,
            (1, true) => DataType::I8,
            (2, false) => DataType::U16,
            (2, true) => DataType::I16,
            (4, false) => DataType::U32,
            (4, true) => DataType::I32,
            (8, false) => DataType::U64,
            (8, true) => DataType::I64,
            _ => return Err(unsupported(path, name, ds.dtype())),
        },
        Datatype::FloatingPoint { size: 4, .. } => DataType::F32,
        Datatype::FloatingPoint { size: 8, .. } => DataType::F64,
        other => return Err(unsupported(path, name, other)),
    };
    Ok((ds, shape, n, dtype))
}

/// Reads `count` elements of `ds` as `T`.
fn typed<T: H5Type + Default + Copy>(
    ds: &hdf5_reader::Dataset,
    n: usize,
) -> hdf5_reader::error::Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    ds.read_into(&mut v)?;
    Ok(v)
}

fn volume_from_file(file: &Hdf5File, path: &Path, name: &str) -> Result<Volume> {
    let (ds, shape, n, dtype) = dataset_layout(file, path, name)?;
    let read_err = |e: hdf5_reader::error::Error| h5_err(path, format!("dataset {name:?}: {e}"));
    let data: Vec<f32> = match dtype {
        DataType::F32 => typed::<f32>(&ds, n).map_err(read_err)?,
        DataType::F64 => typed::<f64>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        DataType::U8 => typed::<u8>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        DataType::I8 => typed::<i8>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        DataType::U16 => typed::<u16>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        DataType::I16 => typed::<i16>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        DataType::U32 => typed::<u32>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        DataType::I32 => typed::<i32>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        DataType::U64 => typed::<u64>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        DataType::I64 => typed::<i64>(&ds, n)
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
    };
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFinite {
            path: path.to_path_buf(),
            index,
            value,
        });
    }
    let spacing = [1.0; 3];
    Ok(Volume {
        shape,
        spacing,
        affine: diag_affine(spacing),
        dtype,
        data,
        path: Some(path.to_path_buf()),
        nifti: None,
    })
}

fn unsupported(path: &Path, name: &str, dt: &Datatype) -> Error {
    Error::UnsupportedDataType {
        path: path.to_path_buf(),
        what: format!("{dt:?} in dataset {name:?}"),
    }
}
