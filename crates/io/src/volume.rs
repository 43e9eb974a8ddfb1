//! [`Volume`]: voxels plus geometry, read from NIfTI or HDF5, written back as NIfTI.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::nifti::{self, NiftiHeader};

/// The on-disk data type of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// Whether the type holds integers (labels are integer volumes).
    pub fn is_integer(self) -> bool {
        !matches!(self, Self::F32 | Self::F64)
    }

    /// numpy's name of the type (`uint8`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }

    /// The NIfTI-1 `datatype` code, or `None` for types we do not read.
    pub fn from_nifti_code(code: i16) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            4 => Self::I16,
            8 => Self::I32,
            16 => Self::F32,
            64 => Self::F64,
            256 => Self::I8,
            512 => Self::U16,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            _ => return None,
        })
    }

    /// `(datatype, bitpix)` of the NIfTI-1 header.
    pub fn nifti_code(self) -> (i16, i16) {
        let code = match self {
            Self::U8 => 2,
            Self::I16 => 4,
            Self::I32 => 8,
            Self::F32 => 16,
            Self::F64 => 64,
            Self::I8 => 256,
            Self::U16 => 512,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
        };
        (code, 8 * self.size() as i16)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A 3-D volume: scaled intensities in C order plus the geometry of its source file.
///
/// `data[(i * ny + j) * nz + k]` is voxel `(i, j, k)` of the file's axes (x, y, z), the last axis
/// fastest: exactly numpy's `np.asarray(nib.load(p).get_fdata())` or h5py's `f["image"][:]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// File axis order (x, y, z).
    pub shape: [usize; 3],
    /// Voxel size in mm, same order.
    pub spacing: [f64; 3],
    /// Voxel -> world (sform if `sform_code > 0`, else qform, else `diag(spacing)`).
    pub affine: [[f64; 4]; 4],
    /// On-disk data type.
    pub dtype: DataType,
    /// Scaled intensities (`scl_slope` / `scl_inter` applied), C order.
    pub data: Vec<f32>,
    /// The file it was read from (`None` for volumes built in memory); named in errors.
    pub path: Option<PathBuf>,
    /// The source NIfTI header, kept to write results with the same geometry.
    pub nifti: Option<NiftiHeader>,
}

/// Identity 4x4.
pub(crate) fn diag_affine(spacing: [f64; 3]) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for a in 0..3 {
        m[a][a] = spacing[a];
    }
    m[3][3] = 1.0;
    m
}

impl Volume {
    /// A volume built in memory (synthetic data, a resampled image): affine `diag(spacing)`,
    /// dtype `F32`, no source file. Errors when `data.len()` does not match `shape`.
    pub fn from_data(shape: [usize; 3], spacing: [f64; 3], data: Vec<f32>) -> Result<Self> {
        check_len("volume", data.len(), shape)?;
        Ok(Self {
            shape,
            spacing,
            affine: diag_affine(spacing),
            dtype: DataType::F32,
            data,
            path: None,
            nifti: None,
        })
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the volume has no voxels (never true for a volume read from a file).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The path for error messages (`<memory>` for in-memory volumes).
    pub fn display_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("<memory>"))
    }

    /// The intensities as label values; errors on a non-integer, negative or > 255 value.
    pub fn to_labels(&self) -> Result<Vec<u8>> {
        // Saturating casts, then a check that each value survived the round trip (false for
        // fractions, negatives, > 255 and NaN): two plain, vectorisable passes.
        let labels: Vec<u8> = self.data.iter().map(|&v| v as u8).collect();
        let exact = |(&v, &l): (&f32, &u8)| f32::from(l) == v;
        if !self.data.iter().zip(&labels).all(exact) {
            let index = self
                .data
                .iter()
                .zip(&labels)
                .position(|p| !exact(p))
                .unwrap_or(0);
            return Err(Error::BadLabel {
                path: self.display_path(),
                index,
                value: self.data[index],
            });
        }
        Ok(labels)
    }

    /// Checks that `label` has this image's shape, spacing (1e-3 mm) and affine (1e-3).
    pub fn check_same_geometry(&self, label: &Volume) -> Result<()> {
        self.check_geometry_of(
            &label.display_path(),
            label.shape,
            label.spacing,
            &label.affine,
        )
    }

    /// [`Volume::check_same_geometry`] against the geometry of the file `label`.
    pub(crate) fn check_geometry_of(
        &self,
        label: &Path,
        shape: [usize; 3],
        spacing: [f64; 3],
        affine: &[[f64; 4]; 4],
    ) -> Result<()> {
        if self.shape != shape {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "image {} vs label {}",
                    self.display_path().display(),
                    label.display()
                ),
                left: self.shape,
                right: shape,
            });
        }
        let mismatch = |reason: String| Error::GeometryMismatch {
            image: self.display_path(),
            label: label.to_path_buf(),
            reason,
        };
        for a in 0..3 {
            if (self.spacing[a] - spacing[a]).abs() > 1e-3 {
                return Err(mismatch(format!(
                    "spacing {:?} != {:?}",
                    self.spacing, spacing
                )));
            }
        }
        for r in 0..3 {
            for c in 0..4 {
                if (self.affine[r][c] - affine[r][c]).abs() > 1e-3 {
                    return Err(mismatch(format!(
                        "affine {:?} != {:?}",
                        self.affine, affine
                    )));
                }
            }
        }
        Ok(())
    }

    /// A NIfTI header for `dtype` data of `shape` with this volume's geometry.
    fn header_like(&self, shape: [usize; 3], dtype: DataType) -> Result<NiftiHeader> {
        if shape != self.shape {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "output vs geometry source {}",
                    self.display_path().display()
                ),
                left: shape,
                right: self.shape,
            });
        }
        let mut h = match &self.nifti {
            Some(src) => src.clone(),
            None => NiftiHeader::new_3d(shape, self.spacing, &self.affine, dtype)?,
        };
        let (code, bitpix) = dtype.nifti_code();
        h.datatype = code;
        h.bitpix = bitpix;
        h.dim = [3, 1, 1, 1, 1, 1, 1, 1];
        for a in 0..3 {
            h.dim[a + 1] = i16::try_from(shape[a])
                .map_err(|_| Error::Invalid(format!("shape {shape:?} too large for NIfTI-1")))?;
        }
        h.vox_offset = 352.0;
        h.scl_slope = 1.0;
        h.scl_inter = 0.0;
        h.cal_min = 0.0;
        h.cal_max = 0.0;
        h.intent_code = 0;
        h.intent_p = [0.0; 3];
        h.intent_name = [0; 16];
        h.big_endian = false;
        Ok(h)
    }
}

pub(crate) fn check_len(what: &str, len: usize, shape: [usize; 3]) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(Error::Length {
            what: what.to_string(),
            len,
            shape,
        });
    }
    Ok(())
}

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
        Format::Hdf5 => crate::h5::read_h5_dataset(path, "image"),
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
        Format::Hdf5 => crate::h5::read_h5_labels(path, image),
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

/// Writes raw NIfTI bytes (already Fortran order) of any type: tests build every data type with it.
#[cfg(test)]
pub(crate) fn write_raw_nifti(
    path: &Path,
    header: &NiftiHeader,
    fortran_bytes: &[u8],
) -> Result<()> {
    nifti::write_nifti_bytes(path, header, fortran_bytes)
}
