//! Volume files by name: [`read_volume`] / [`read_labels`] pick the NIfTI or HDF5 reader from the
//! extension; [`write_labels`] / [`write_probabilities`] write results as NIfTI with the geometry
//! of a source volume.

use std::path::Path;

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::volume::{check_len, Volume};
use crate::{h5, nifti};

/// Which reader a path needs, by extension.
enum Format {
    Nifti,
    Hdf5,
}

fn format_of(path: &Path) -> Result<Format> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Ok(Format::Nifti)
    } else if name.ends_with(".h5") || name.ends_with(".hdf5") {
        Ok(Format::Hdf5)
    } else {
        Err(Error::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

/// Reads a volume: `.nii` / `.nii.gz`, or the `image` dataset of an `.h5` file
/// (use [`crate::read_h5_dataset`] for `label`, [`crate::read_h5_pair`] for both).
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    match format_of(path)? {
        Format::Nifti => nifti::read_nifti(path),
        Format::Hdf5 => h5::read_h5_dataset(path, "image"),
    }
}

/// Reads a label map as `u8` classes in C order (the order of [`Volume::data`]): `.nii` /
/// `.nii.gz` are decoded straight to bytes (no `f32` volume), `.h5` files give their `label`
/// dataset. The result and errors are those of `read_volume(path)?.to_labels()` (a non-finite value
/// is [`Error::NonFinite`], a fraction, negative or > 255 value [`Error::BadLabel`]). With
/// `image`, the label must also share its shape and geometry
/// ([`Volume::check_same_geometry`]), checked before the values are judged.
pub fn read_labels(path: impl AsRef<Path>, image: Option<&Volume>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    match format_of(path)? {
        Format::Nifti => {
            let nifti::NiftiLabels {
                header,
                shape,
                labels,
            } = nifti::read_nifti_labels(path)?;
            if let Some(image) = image {
                image.check_geometry_of(path, shape, header.spacing(), &header.affine())?;
            }
            labels
        }
        Format::Hdf5 => h5::read_h5_labels(path, image),
    }
}

/// Writes a uint8 label map (C order, `shape` = `like.shape`) as NIfTI with the geometry of `like`,
/// atomically (temp file + rename); gzip when `path` ends in `.gz`.
pub fn write_labels(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    labels: &[u8],
    like: &Volume,
) -> Result<()> {
    let path = path.as_ref();
    check_len(
        &format!("labels for {}", path.display()),
        labels.len(),
        shape,
    )?;
    let header = like.header_like(shape, DataType::U8)?;
    let fortran = nifti::c_to_fortran(labels, shape);
    nifti::write_nifti_bytes(path, &header, &fortran)
}

/// Writes an f32 map (probabilities, C order) as NIfTI with the geometry of `like`, atomically.
pub fn write_probabilities(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    probs: &[f32],
    like: &Volume,
) -> Result<()> {
    let path = path.as_ref();
    check_len(
        &format!("probabilities for {}", path.display()),
        probs.len(),
        shape,
    )?;
    let header = like.header_like(shape, DataType::F32)?;
    let fortran = nifti::c_to_fortran(probs, shape);
    let bytes: Vec<u8> = fortran.iter().flat_map(|v| v.to_le_bytes()).collect();
    nifti::write_nifti_bytes(path, &header, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fortran_bytes, header, label_of, scratch, synth, write_raw_nifti};

    #[test]
    fn labels_and_probabilities_keep_the_source_geometry() {
        let dir = scratch("write");
        let shape = [4, 3, 2];
        let mut h = header(shape, DataType::I16);
        h.descrip[..4].copy_from_slice(b"test");
        let src = dir.join("img.nii.gz");
        write_raw_nifti(&src, &h, &fortran_bytes(shape, DataType::I16, false, synth)).unwrap();
        let img = read_volume(&src).unwrap();
        let labels: Vec<u8> = (0..24).map(|i| (i % 3) as u8).collect();
        for name in ["lab.nii.gz", "lab.nii"] {
            let out = dir.join(name);
            write_labels(&out, shape, &labels, &img).unwrap();
            let back = read_volume(&out).unwrap();
            assert_eq!(back.dtype, DataType::U8);
            assert_eq!(back.to_labels().unwrap(), labels);
            img.check_same_geometry(&back).unwrap();
            assert_eq!(&back.nifti.as_ref().unwrap().descrip[..4], b"test");
        }
        let probs: Vec<f32> = (0..24).map(|i| i as f32 / 24.0).collect();
        let out = dir.join("prob.nii.gz");
        write_probabilities(&out, shape, &probs, &img).unwrap();
        let back = read_volume(&out).unwrap();
        assert_eq!(back.data, probs);
        assert_eq!(back.affine, img.affine);
        // In-memory geometry source (no NIfTI header): spacing and affine still survive.
        let mem = Volume::from_data(shape, [0.5, 0.75, 2.0], vec![0.0; 24]).unwrap();
        write_labels(&out, shape, &labels, &mem).unwrap();
        let back = read_volume(&out).unwrap();
        mem.check_same_geometry(&back).unwrap();
        // No temp files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn writers_reject_wrong_lengths_and_shapes() {
        let dir = scratch("badwrite");
        let mem = Volume::from_data([2, 2, 2], [1.0; 3], vec![0.0; 8]).unwrap();
        let e = write_labels(dir.join("a.nii"), [2, 2, 2], &[0u8; 7], &mem).unwrap_err();
        assert!(matches!(e, Error::Length { len: 7, .. }), "{e}");
        let e = write_labels(dir.join("a.nii"), [2, 2, 1], &[0u8; 4], &mem).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        assert!(Volume::from_data([2, 2, 2], [1.0; 3], vec![0.0; 9]).is_err());
    }

    #[test]
    fn read_labels_checks_geometry_against_the_image_and_reads_gz() {
        let dir = scratch("read_labels");
        let shape = [6, 5, 18];
        let image_path = dir.join("image.nii.gz");
        write_raw_nifti(
            &image_path,
            &header(shape, DataType::F32),
            &fortran_bytes(shape, DataType::F32, false, synth),
        )
        .unwrap();
        let image = read_volume(&image_path).unwrap();
        let label_path = dir.join("label.nii.gz");
        write_raw_nifti(
            &label_path,
            &header(shape, DataType::U8),
            &fortran_bytes(shape, DataType::U8, false, label_of),
        )
        .unwrap();
        let labels = read_labels(&label_path, Some(&image)).unwrap();
        assert_eq!(
            labels,
            read_volume(&label_path).unwrap().to_labels().unwrap()
        );
        assert_eq!(labels, read_labels(&label_path, None).unwrap());
        // Other spacing, other shape.
        let mut h = header(shape, DataType::U8);
        h.pixdim[3] = 3.0;
        h.srow[2][2] = 3.0;
        let moved = dir.join("moved.nii");
        write_raw_nifti(
            &moved,
            &h,
            &fortran_bytes(shape, DataType::U8, false, label_of),
        )
        .unwrap();
        let e = read_labels(&moved, Some(&image)).unwrap_err();
        assert!(
            matches!(e, Error::GeometryMismatch { .. }) && e.to_string().contains("moved.nii"),
            "{e}"
        );
        let small = dir.join("small.nii");
        write_raw_nifti(
            &small,
            &header([6, 5, 2], DataType::U8),
            &fortran_bytes([6, 5, 2], DataType::U8, false, label_of),
        )
        .unwrap();
        assert!(matches!(
            read_labels(&small, Some(&image)),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            read_labels(dir.join("x.mha"), None),
            Err(Error::UnknownFormat { .. })
        ));
    }

    #[test]
    fn truncated_or_corrupt_gzip_is_a_gzip_error() {
        let dir = scratch("gz");
        let path = dir.join("v.nii.gz");
        write_raw_nifti(
            &path,
            &header([3, 2, 2], DataType::U8),
            &fortran_bytes([3, 2, 2], DataType::U8, false, synth),
        )
        .unwrap();
        let gz = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.nii.gz");
        std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
        let e = read_volume(&cut).unwrap_err();
        assert!(
            matches!(e, Error::Gzip { .. }) && e.to_string().contains("cut.nii.gz"),
            "{e}"
        );
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0x55;
        let corrupt = dir.join("corrupt.nii.gz");
        std::fs::write(&corrupt, &bad).unwrap();
        assert!(read_volume(&corrupt).is_err());
        assert!(matches!(
            read_volume(dir.join("missing.nii")),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            read_volume(dir.join("x.mha")),
            Err(Error::UnknownFormat { .. })
        ));
    }
}
