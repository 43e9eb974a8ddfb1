//! Helpers shared by the unit tests: scratch folders and small NIfTI / HDF5 fixtures generated in
//! memory (no binary blobs in the repository).

use std::path::{Path, PathBuf};

use crate::{DataType, NiftiHeader, Result};

/// A fresh scratch directory under the system temp dir, unique per test, removed with everything
/// in it when the guard drops (also when the test panics), so test runs leave nothing behind.
pub(crate) fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("duoseg-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A scratch directory that removes itself on drop; derefs to its path.
pub(crate) struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // a test may have removed or replaced it already: nothing to report then
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random value of voxel (i, j, k) in [-50, 200).
pub(crate) fn synth(i: usize, j: usize, k: usize) -> f64 {
    let h = (i * 7919 + j * 104_729 + k * 1_299_709) % 250;
    h as f64 - 50.0
}

/// Encodes synthetic voxels of `dtype` in Fortran order as little/big-endian bytes.
pub(crate) fn fortran_bytes(
    shape: [usize; 3],
    dtype: DataType,
    big_endian: bool,
    f: impl Fn(usize, usize, usize) -> f64,
) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..shape[2] {
        for j in 0..shape[1] {
            for i in 0..shape[0] {
                let v = f(i, j, k);
                let mut b: Vec<u8> = match dtype {
                    DataType::U8 => vec![v.max(0.0) as u8],
                    DataType::I8 => vec![(v.clamp(-128.0, 127.0) as i8) as u8],
                    DataType::I16 => (v as i16).to_le_bytes().to_vec(),
                    DataType::U16 => (v.max(0.0) as u16).to_le_bytes().to_vec(),
                    DataType::I32 => (v as i32).to_le_bytes().to_vec(),
                    DataType::U32 => (v.max(0.0) as u32).to_le_bytes().to_vec(),
                    DataType::I64 => (v as i64).to_le_bytes().to_vec(),
                    DataType::U64 => (v.max(0.0) as u64).to_le_bytes().to_vec(),
                    DataType::F32 => (v as f32).to_le_bytes().to_vec(),
                    DataType::F64 => v.to_le_bytes().to_vec(),
                };
                if big_endian {
                    b.reverse();
                }
                out.extend(b);
            }
        }
    }
    out
}

pub(crate) fn header(shape: [usize; 3], dtype: DataType) -> NiftiHeader {
    let spacing = [0.5, 0.75, 2.0];
    let mut affine = crate::volume::diag_affine(spacing);
    affine[0][3] = -10.0;
    affine[1][3] = 4.0;
    affine[2][3] = 7.5;
    NiftiHeader::new_3d(shape, spacing, &affine, dtype).unwrap()
}

/// Writes raw NIfTI bytes (already Fortran order) of any type: tests build every data type with it.
pub(crate) fn write_raw_nifti(
    path: &Path,
    header: &NiftiHeader,
    fortran_bytes: &[u8],
) -> Result<()> {
    crate::nifti::write_nifti_bytes(path, header, fortran_bytes)
}

/// A label value of voxel (i, j, k) in [0, 4], with structure along every axis.
pub(crate) fn label_of(i: usize, j: usize, k: usize) -> f64 {
    ((i / 3 + 2 * j + k * k) % 5) as f64
}

/// A valid small `.nii` as bytes.
pub(crate) fn small_nii(dtype: DataType) -> Vec<u8> {
    let shape = [3, 2, 2];
    let mut bytes = header(shape, dtype).to_bytes().to_vec();
    bytes.extend([0u8; 4]);
    bytes.extend(fortran_bytes(shape, dtype, false, synth));
    bytes
}

/// An LA-style `.h5` folder under `root`: `LA_H5_DIR/<id>/LA_H5_FILE` of shape `[4, 4, 3]` for
/// each of `ids`.
pub(crate) fn write_h5_cases(root: &std::path::Path, ids: &[&str]) {
    use crate::dataset::{LA_H5_DIR, LA_H5_FILE};
    for id in ids {
        let dir = root.join(LA_H5_DIR).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(LA_H5_FILE), synthetic_h5([4, 4, 3]).0).unwrap();
    }
}

/// A small LA-style h5 file (gzip-chunked `image` f32 and `label` u8) built in memory.
pub(crate) fn synthetic_h5(shape: [usize; 3]) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    use hdf5_writer::{
        DatasetBuilder, FilterDescription, Hdf5Builder, Hdf5Writer, WriteOptions, FILTER_DEFLATE,
    };
    let n = shape.iter().product::<usize>();
    let image: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let label: Vec<u8> = (0..n).map(|i| u8::from(i % 5 == 0)).collect();
    let dims: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let chunk: Vec<u64> = shape.iter().map(|&s| (s as u64).div_ceil(2)).collect();
    let gzip = FilterDescription {
        id: FILTER_DEFLATE,
        name: None,
        client_data: vec![4],
    };
    let plan = Hdf5Builder::new()
        .dataset(
            DatasetBuilder::typed_data("image", dims.clone(), &image)
                .unwrap()
                .chunked(chunk.clone())
                .filter(gzip.clone()),
        )
        .dataset(
            DatasetBuilder::typed_data("label", dims, &label)
                .unwrap()
                .chunked(chunk)
                .filter(gzip),
        )
        .dataset(DatasetBuilder::typed_data("flat", vec![4u64], &[1.0f32, 2.0, 3.0, 4.0]).unwrap())
        .dataset(DatasetBuilder::typed_data("nan", vec![1u64, 1, 2], &[1.0f32, f32::NAN]).unwrap())
        .into_plan()
        .unwrap();
    let bytes = Hdf5Writer::new(std::io::Cursor::new(Vec::new()), WriteOptions::default())
        .finish(plan)
        .unwrap()
        .into_inner();
    (bytes, image, label)
}
