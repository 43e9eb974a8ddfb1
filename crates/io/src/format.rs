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

/// Writes the class probabilities of one case as one multi-channel float NIfTI: a 4-D image
/// `(x, y, z, K)`, channel k the probability of class k (background included), with `like`'s
/// geometry and `intent_name` "probabilities". `probs` is class-major: K blocks of `shape` voxels
/// in C order, as [`write_probabilities`] takes one of them.
pub fn write_probability_maps(
    path: impl AsRef<Path>,
    shape: [usize; 3],
    probs: &[f32],
    n_classes: usize,
    like: &Volume,
) -> Result<()> {
    let path = path.as_ref();
    let n: usize = shape.iter().product();
    if n_classes == 0 || probs.len() != n * n_classes {
        return Err(Error::Length {
            what: format!("{n_classes}-class probabilities for {}", path.display()),
            len: probs.len(),
            shape,
        });
    }
    let mut header = like.header_like(shape, DataType::F32)?;
    header.dim[0] = 4;
    header.dim[4] = i16::try_from(n_classes)
        .map_err(|_| Error::Invalid(format!("{n_classes} classes do not fit a NIfTI-1 axis")))?;
    header.pixdim[4] = 1.0;
    header.intent_name = [0; 16];
    header.intent_name[..13].copy_from_slice(b"probabilities");
    // NIfTI order: x fastest, then y, z, then the channel: each class's Fortran-order block in turn
    let bytes: Vec<u8> = probs
        .chunks(n)
        .flat_map(|class| nifti::c_to_fortran(class, shape))
        .flat_map(|v| v.to_le_bytes())
        .collect();
    nifti::write_nifti_bytes(path, &header, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fortran_bytes, header, label_of, scratch, synth, write_raw_nifti};

    /// The multi-channel probability file: a 4-D header (x, y, z, K) with the source's affine, and
    /// channel k's voxels in NIfTI order equal to class k's map.
    #[test]
    fn probability_maps_are_one_4d_file_with_a_channel_per_class() {
        let dir = scratch("probmaps");
        let shape = [4, 3, 2];
        let src = dir.join("img.nii.gz");
        let h = header(shape, DataType::I16);
        write_raw_nifti(&src, &h, &fortran_bytes(shape, DataType::I16, false, synth)).unwrap();
        let like = read_volume(&src).unwrap();
        let n = 24;
        let probs: Vec<f32> = (0..3 * n).map(|i| i as f32 / 100.0).collect();
        let out = dir.join("p.nii.gz");
        write_probability_maps(&out, shape, &probs, 3, &like).unwrap();
        let bytes = crate::fs::gunzip(&std::fs::read(&out).unwrap(), &out).unwrap();
        let back = crate::NiftiHeader::parse(&bytes, &out).unwrap();
        assert_eq!(&back.dim[..5], &[4, 4, 3, 2, 3]);
        assert_eq!(back.srow, h.srow);
        assert_eq!(&back.intent_name[..13], b"probabilities");
        let data: Vec<f32> = bytes[back.vox_offset as usize..]
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(data.len(), 3 * n);
        for k in 0..3 {
            let want = nifti::c_to_fortran(&probs[k * n..(k + 1) * n], shape);
            assert_eq!(&data[k * n..(k + 1) * n], want.as_slice(), "channel {k}");
        }
        // a 4-D file is not mistaken for a label map or an image
        assert!(read_volume(&out).is_err());
        assert!(write_probability_maps(&out, shape, &probs[1..], 3, &like).is_err());
    }

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
