//! [`Volume`]: voxels plus geometry (shape, spacing, affine, source header), in memory; reading
//! and writing files is `nifti`, `h5` and `format`'s job.

use std::path::{Path, PathBuf};

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::header::NiftiHeader;

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
    pub(crate) fn header_like(&self, shape: [usize; 3], dtype: DataType) -> Result<NiftiHeader> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_labels_rejects_non_integer_negative_and_large_values() {
        for bad in [0.5f32, -1.0, 256.0, f32::NAN] {
            let v = Volume::from_data([1, 1, 2], [1.0; 3], vec![1.0, bad]).unwrap();
            let e = v.to_labels().unwrap_err();
            assert!(matches!(e, Error::BadLabel { index: 1, .. }), "{e}");
        }
        let v = Volume::from_data([1, 1, 3], [1.0; 3], vec![0.0, 255.0, 2.0]).unwrap();
        assert_eq!(v.to_labels().unwrap(), vec![0, 255, 2]);
    }

    #[test]
    fn geometry_mismatch_is_a_typed_error() {
        let a = Volume::from_data([2, 2, 2], [1.0; 3], vec![0.0; 8]).unwrap();
        let b = Volume::from_data([2, 2, 2], [1.0, 1.0, 2.0], vec![0.0; 8]).unwrap();
        let c = Volume::from_data([2, 1, 4], [1.0; 3], vec![0.0; 8]).unwrap();
        assert!(matches!(
            a.check_same_geometry(&b),
            Err(Error::GeometryMismatch { .. })
        ));
        assert!(matches!(
            a.check_same_geometry(&c),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
