//! HDF5 volumes: the LA distribution's `mri_norm2.h5` (`image` float32, `label` uint8, gzip chunks).
//!
//! Read with the pure-Rust `hdf5-reader` crate (no libhdf5, no build script). HDF5 datasets are
//! C order already, so h5py's `f["image"][:]` is exactly [`Volume::data`]. The files carry no
//! geometry: the readers give 1 mm spacing and the identity affine; a dataset opened with
//! [`crate::Dataset::with_spacing_for_h5`] (the trainer's `data.spacing_mm`) gives its volumes the
//! spacing the caller knows (LA: 0.625 mm isotropic) after the label's geometry check.

use std::path::Path;

use hdf5_reader::{Datatype, H5Type, Hdf5File};

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::fs::read_regular;
use crate::volume::{diag_affine, Volume};

fn h5_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Hdf5 {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn open(path: &Path) -> Result<Hdf5File> {
    decode_file(read_regular(path)?, path)
}

fn decode_file(bytes: Vec<u8>, path: &Path) -> Result<Hdf5File> {
    Hdf5File::from_vec(bytes).map_err(|e| h5_err(path, e))
}

/// Upper bound on decoded bytes per byte of the file: deflate cannot expand more than ~1032:1, so a
/// dataset whose elements take more bytes is corrupt (and must not make us allocate gigabytes up
/// front).
const MAX_EXPANSION: usize = 1032;

/// Names of the datasets in the file's root group, sorted.
pub fn h5_dataset_names(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    decode_h5_dataset_names(read_regular(path)?, path)
}

/// [`h5_dataset_names`] of an in-memory HDF5 file (`path` only names it in errors; fuzzed).
pub fn decode_h5_dataset_names(bytes: Vec<u8>, path: &Path) -> Result<Vec<String>> {
    let file = decode_file(bytes, path)?;
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
    decode_h5_labels(read_regular(path)?, path, image)
}

/// The `label` dataset of an in-memory HDF5 file as `u8` labels (C order), geometry checked against
/// `image` if given: what [`crate::read_labels`] gives for an `.h5` path (`path` only names the
/// file in errors; fuzzed).
pub fn decode_h5_labels(bytes: Vec<u8>, path: &Path, image: Option<&Volume>) -> Result<Vec<u8>> {
    let file = decode_file(bytes, path)?;
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
    // Bytes, not elements: deflate makes at most MAX_EXPANSION bytes per file byte, whatever the type
    // (counting elements let an 8-byte type ask for 8x more).
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .filter(|&n| {
            n <= (1 << 31)
                && n.saturating_mul(dtype.size()) <= file_len.saturating_mul(MAX_EXPANSION)
        })
        .ok_or_else(|| {
            h5_err(
                path,
                format!(
                    "dataset {name:?} shape {dims:?} of {} too large for a {file_len}-byte file",
                    dtype.name()
                ),
            )
        })?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand::{Rng as _, SeedableRng};

    use super::*;
    use crate::testutil::{scratch, synthetic_h5};
    use crate::{read_labels, Rng};

    #[test]
    fn synthetic_h5_reads_in_c_order_with_typed_errors() {
        let dir = scratch("h5");
        let (bytes, image, label) = synthetic_h5([5, 4, 3]);
        let path = dir.join("mri_norm2.h5");
        std::fs::write(&path, &bytes).unwrap();
        let (img, lab) = read_h5_pair(&path).unwrap();
        assert_eq!(img.shape, [5, 4, 3]);
        assert_eq!(img.data, image);
        assert_eq!(lab.to_labels().unwrap(), label);
        // The direct label path: uint8 as stored, geometry checked against the image.
        assert_eq!(read_labels(&path, Some(&img)).unwrap(), label);
        let (img2, lab2) = read_h5_image_labels(&path).unwrap();
        assert_eq!((img2, lab2), (img.clone(), label.clone()));
        let other = Volume::from_data([5, 4, 2], [1.0; 3], vec![0.0; 40]).unwrap();
        assert!(matches!(
            read_labels(&path, Some(&other)),
            Err(Error::ShapeMismatch { .. })
        ));
        assert_eq!(
            h5_dataset_names(&path).unwrap(),
            vec!["flat", "image", "label", "nan"]
        );
        let p = Path::new("x.h5");
        assert!(matches!(
            decode_h5(bytes.clone(), p, "flat"),
            Err(Error::Hdf5 { .. })
        ));
        assert!(matches!(
            decode_h5(bytes.clone(), p, "nan"),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            decode_h5(bytes.clone(), p, "missing"),
            Err(Error::Hdf5 { .. })
        ));
        assert!(matches!(
            decode_h5(bytes[..bytes.len() / 2].to_vec(), p, "image"),
            Err(Error::Hdf5 { .. })
        ));
        assert!(matches!(
            decode_h5(b"not hdf5".to_vec(), p, "image"),
            Err(Error::Hdf5 { .. })
        ));
    }

    /// A float `label` dataset goes through the f32 path: integers are labels, fractions errors.
    #[test]
    fn h5_float_labels_are_checked_like_volumes() {
        use hdf5_writer::{DatasetBuilder, Hdf5Builder, Hdf5Writer, WriteOptions};
        let dir = scratch("h5_float_labels");
        let write = |name: &str, label: &[f32]| {
            let image = vec![0.5f32; 6];
            let plan = Hdf5Builder::new()
                .dataset(DatasetBuilder::typed_data("image", vec![1u64, 2, 3], &image).unwrap())
                .dataset(DatasetBuilder::typed_data("label", vec![1u64, 2, 3], label).unwrap())
                .into_plan()
                .unwrap();
            let bytes = Hdf5Writer::new(std::io::Cursor::new(Vec::new()), WriteOptions::default())
                .finish(plan)
                .unwrap()
                .into_inner();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let good = write("good.h5", &[0.0, 1.0, 2.0, 0.0, 1.0, 255.0]);
        let (img, labels) = read_h5_image_labels(&good).unwrap();
        assert_eq!(labels, vec![0, 1, 2, 0, 1, 255]);
        assert_eq!(read_labels(&good, Some(&img)).unwrap(), labels);
        let bad = write("bad.h5", &[0.0, 1.0, 0.5, 0.0, 1.0, 2.0]);
        let e = read_labels(&bad, None).unwrap_err();
        assert!(
            matches!(e, Error::BadLabel { index: 2, .. }) && e.to_string().contains("bad.h5"),
            "{e}"
        );
        assert!(matches!(
            read_h5_image_labels(&bad),
            Err(Error::BadLabel { index: 2, .. })
        ));
    }

    /// A file with one chunked dataset `image` of type `T` (3 x 5 x 7 zeros) whose dataspace then
    /// claims `dims` (object header checksum redone): chunks outside the stored ones read as the fill
    /// value, so a few hundred bytes can declare any size.
    fn h5_claiming<T: hdf5_writer::H5WriteElement + Default + Copy>(dims: [u64; 3]) -> Vec<u8> {
        use hdf5_writer::{jenkins_lookup3, DatasetBuilder, Hdf5Builder, Hdf5Writer, WriteOptions};
        let stored = [3u64, 5, 7];
        let plan = Hdf5Builder::new()
            .dataset(
                DatasetBuilder::typed_data("image", stored.to_vec(), &[T::default(); 105])
                    .unwrap()
                    .chunked(vec![2u64, 3, 4]),
            )
            .into_plan()
            .unwrap();
        let mut b = Hdf5Writer::new(std::io::Cursor::new(Vec::new()), WriteOptions::default())
            .finish(plan)
            .unwrap()
            .into_inner();
        let le = |d: [u64; 3]| -> Vec<u8> { d.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let from = le(stored);
        let at = b.windows(24).position(|w| w == from.as_slice()).unwrap();
        b[at..at + 24].copy_from_slice(&le(dims));
        // The v2 object header holding the dataspace: "OHDR", version, flags, chunk size, messages,
        // then the Jenkins lookup3 checksum of all that.
        let start = b[..at].windows(4).rposition(|w| w == b"OHDR").unwrap();
        let width = 1usize << (b[start + 5] & 3);
        let mut size = [0u8; 8];
        size[..width].copy_from_slice(&b[start + 6..start + 6 + width]);
        let end = start + 6 + width + usize::try_from(u64::from_le_bytes(size)).unwrap();
        let checksum = jenkins_lookup3(&b[start..end]);
        b[end..end + 4].copy_from_slice(&checksum.to_le_bytes());
        b
    }

    /// Regression (docs/reliability.md; found reviewing the allocation bound the fuzz targets
    /// check): the size bound counts the bytes a dataset's elements take, not the elements, so a
    /// float64 dataset whose dimensions claim more bytes than deflate can make from the file is
    /// refused before its buffer is allocated (the element bound let an 8-byte type allocate 8x
    /// more: here 2400 bytes per file byte, read as fill values).
    #[test]
    fn h5_size_bound_counts_bytes_not_elements() {
        let p = Path::new("big.h5");
        let len = h5_claiming::<f64>([3, 5, 7]).len() as u64;
        // 300 elements per file byte: within the bound for uint8, 2400 bytes for float64.
        let dims = [300 * len, 1, 1];
        let e = match decode_h5(h5_claiming::<f64>(dims), p, "image") {
            Ok(v) => panic!(
                "a {len}-byte file decoded to a float64 volume of {:?}",
                v.shape
            ),
            Err(e) => e,
        };
        assert!(
            matches!(e, Error::Hdf5 { .. })
                && e.to_string().contains("big.h5")
                && e.to_string().contains("float64 too large"),
            "{e}"
        );
        if let Err(e) = decode_h5(h5_claiming::<u8>(dims), p, "image") {
            assert!(!e.to_string().contains("too large"), "{e}");
        }
    }

    /// Seeded fuzzing of the HDF5 entry point with mutated and arbitrary bytes: every input must
    /// give `Ok` or a typed error, never a panic. (Fast enough for every `cargo test`.)
    #[test]
    fn hdf5_never_panics_on_mutated_or_random_bytes() {
        let p = Path::new("fuzz.h5");
        let (seed, _, _) = synthetic_h5([4, 3, 2]);
        let mut rng = Rng::seed_from_u64(0xF025);
        let (mut ok, mut err) = (0, 0);
        for case in 0..20_000 {
            let bytes = match case % 10 {
                0 => {
                    // Arbitrary bytes behind a valid signature.
                    let mut b = seed[..8].to_vec();
                    b.extend((0..rng.random_range(0..600)).map(|_| rng.random::<u8>()));
                    b
                }
                _ => {
                    // Mutations anywhere in the file: superblock, object headers, B-tree, chunks.
                    let mut b = seed.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                    if case % 7 == 0 {
                        b.truncate(rng.random_range(0..b.len()));
                    }
                    b
                }
            };
            let name = if case % 2 == 0 { "image" } else { "label" };
            match decode_h5(bytes, p, name) {
                Ok(v) => {
                    assert_eq!(v.data.len(), v.shape.iter().product::<usize>());
                    ok += 1;
                }
                Err(_) => err += 1,
            }
        }
        assert!(ok > 100 && err > 100, "ok {ok} err {err}");
    }
}
