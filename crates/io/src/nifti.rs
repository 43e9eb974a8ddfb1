//! NIfTI-1 single-file (`.nii`, `.nii.gz`) reader and writer.
//!
//! Own header parser rather than the `nifti` crate: we need the raw header to write results with the
//! source geometry, typed errors on every malformed byte (fuzzed), and a fast path from `uint8` +
//! `scl_slope` to the C-order `f32` buffer of [`Volume`] without an `ndarray` detour.
//!
//! Axis order: NIfTI stores voxels with the first axis fastest (Fortran order); [`Volume`] holds
//! them with the last axis fastest (C order, numpy's view of `nib.load(p).get_fdata()`), so reading
//! and writing transpose.

use std::io::Write;
use std::path::Path;

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::fs::{read_maybe_gz_bounded, write_atomic};
use crate::header::{header_err, WRITE_VOX_OFFSET};
pub use crate::header::{NiftiHeader, HEADER_SIZE};
use crate::volume::Volume;

/// The parts of a `.nii` byte buffer needed to decode its voxels.
struct Layout<'a> {
    header: NiftiHeader,
    shape: [usize; 3],
    dtype: DataType,
    /// The voxel bytes, Fortran order.
    raw: &'a [u8],
}

/// The header's shape and data type, where the voxels start, and where they end (the file size the
/// header declares).
fn declared_layout(header: &NiftiHeader, path: &Path) -> Result<([usize; 3], DataType, u64, u64)> {
    let shape = header.shape(path)?;
    let dtype =
        DataType::from_nifti_code(header.datatype).ok_or_else(|| Error::UnsupportedDataType {
            path: path.to_path_buf(),
            what: format!("NIfTI code {}", header.datatype),
        })?;
    let offset = header.vox_offset;
    if !(offset.is_finite() && offset >= HEADER_SIZE as f32 && offset < 1e12) {
        return Err(header_err(path, format!("vox_offset {offset} is invalid")));
    }
    let offset = offset as u64;
    let nvox = shape
        .iter()
        .try_fold(1u64, |acc, &s| acc.checked_mul(s as u64));
    let expected = nvox
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| header_err(path, format!("shape {shape:?} overflows")))?;
    Ok((shape, dtype, offset, expected))
}

/// Reads a `.nii` or `.nii.gz` file's bytes; a gzip stream is decoded only up to the size its
/// header declares (plus [`crate::fs::TRAILING_SLACK`]), so a small file that expands to gigabytes is refused
/// before it is held in memory.
fn read_nifti_bytes(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gz_bounded(path, HEADER_SIZE, |head| {
        if head.len() < HEADER_SIZE {
            // Too short for a header: decoded whole (it is small), and `layout` says what is wrong.
            return Ok(HEADER_SIZE as u64);
        }
        let header = NiftiHeader::parse(head, path)?;
        let (_, _, _, expected) = declared_layout(&header, path)?;
        Ok(expected)
    })
}

/// Parses and checks the header and locates the voxel bytes.
fn layout<'a>(bytes: &'a [u8], path: &Path) -> Result<Layout<'a>> {
    let header = NiftiHeader::parse(bytes, path)?;
    let (shape, dtype, offset, expected) = declared_layout(&header, path)?;
    if (bytes.len() as u64) < expected {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            expected,
            found: bytes.len() as u64,
        });
    }
    Ok(Layout {
        raw: &bytes[offset as usize..expected as usize],
        header,
        shape,
        dtype,
    })
}

/// Parses a complete (already decompressed) `.nii` byte buffer into a [`Volume`].
pub fn decode_nifti(bytes: &[u8], path: &Path) -> Result<Volume> {
    let Layout {
        header,
        shape,
        dtype,
        raw,
    } = layout(bytes, path)?;
    let (slope, inter) = header.scaling();
    let data = convert_transpose(raw, dtype, header.big_endian, shape, slope, inter);
    // Integer samples scale monotonically, so they are all finite when the extreme values of the
    // type are: only float data (or absurd scalings) need the scan over every voxel.
    let value = sample_to_f32(dtype, header.big_endian, slope, inter);
    let extremes_finite = dtype.is_integer() && {
        let (lo, hi) = integer_extremes(dtype, header.big_endian);
        value(&lo).is_finite() && value(&hi).is_finite()
    };
    if !extremes_finite {
        if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                path: path.to_path_buf(),
                index,
                value,
            });
        }
    }
    Ok(Volume {
        shape,
        spacing: header.spacing(),
        affine: header.affine(),
        dtype,
        data,
        path: Some(path.to_path_buf()),
        nifti: Some(header),
    })
}

/// Reads a `.nii` or `.nii.gz` file.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    let bytes = read_nifti_bytes(path)?;
    decode_nifti(&bytes, path)
}

/// A label map decoded straight from NIfTI voxels (see [`decode_nifti_labels`]).
#[derive(Debug)]
pub struct NiftiLabels {
    pub header: NiftiHeader,
    pub shape: [usize; 3],
    /// The labels (C order), or the [`Error::BadLabel`] of the first voxel (C order) that is not
    /// an integer in [0, 255]; kept apart so that callers can check geometry first, as the
    /// decode-then-[`Volume::to_labels`] path does.
    pub labels: Result<Vec<u8>>,
}

/// Decodes a `.nii` buffer straight to `u8` labels in C order, without the `f32` volume: the same
/// labels and errors as [`decode_nifti`] followed by [`Volume::to_labels`] (a non-finite value is
/// [`Error::NonFinite`], a fraction, negative or > 255 value [`Error::BadLabel`]; scaling applied).
/// `path` only names the file in errors (the fuzzed entry point of [`crate::read_labels`]).
pub fn decode_nifti_labels(bytes: &[u8], path: &Path) -> Result<NiftiLabels> {
    let Layout {
        header,
        shape,
        dtype,
        raw,
    } = layout(bytes, path)?;
    let (slope, inter) = header.scaling();
    let big = header.big_endian;
    let value = sample_to_f32(dtype, big, slope, inter);
    let exact = |v: f32| f32::from(v as u8) == v;
    // Valid voxels decode to `v as u8`. Tables for 1- and 2-byte samples: entry = label, or 256
    // for a value that is not a label; then one cheap check over the voxels (none at all when every
    // entry is a label, e.g. unscaled uint8).
    let ok = match dtype.size() {
        1 => {
            let lut: [u16; 256] = std::array::from_fn(|b| {
                let v = value(&[b as u8]);
                if exact(v) {
                    u16::from(v as u8)
                } else {
                    256
                }
            });
            let all_ok = lut.iter().all(|&l| l < 256) || raw.iter().all(|&b| lut[b as usize] < 256);
            all_ok.then(|| fortran_to_c::<1, u8>(raw, shape, |[b]| lut[b as usize] as u8))
        }
        2 => {
            // Keyed by the two bytes as stored, read little-endian whatever the file's order.
            let lut: Vec<u16> = (0..=u16::MAX)
                .map(|key| {
                    let v = value(&key.to_le_bytes());
                    if exact(v) {
                        u16::from(v as u8)
                    } else {
                        256
                    }
                })
                .collect();
            let all_ok = raw
                .chunks_exact(2)
                .all(|c| lut[usize::from(u16::from_le_bytes([c[0], c[1]]))] < 256);
            all_ok.then(|| {
                fortran_to_c::<2, u8>(raw, shape, |b| {
                    lut[usize::from(u16::from_le_bytes(b))] as u8
                })
            })
        }
        4 => {
            let all_ok = raw.chunks_exact(4).all(|c| exact(value(c)));
            all_ok.then(|| fortran_to_c::<4, u8>(raw, shape, |b| value(&b) as u8))
        }
        _ => {
            let all_ok = raw.chunks_exact(8).all(|c| exact(value(c)));
            all_ok.then(|| fortran_to_c::<8, u8>(raw, shape, |b| value(&b) as u8))
        }
    };
    let labels = match ok {
        Some(labels) => Ok(labels),
        None => {
            // Error path: the first offending voxel in C order, non-finite values first.
            let size = dtype.size();
            let [nx, ny, nz] = shape;
            let c_order = || {
                (0..nx).flat_map(move |i| {
                    (0..ny).flat_map(move |j| {
                        (0..nz).map(move |k| ((i * ny + j) * nz + k, (k * ny + j) * nx + i))
                    })
                })
            };
            let at = |f: usize| value(&raw[f * size..(f + 1) * size]);
            if let Some((index, f)) = c_order().find(|&(_, f)| !at(f).is_finite()) {
                return Err(Error::NonFinite {
                    path: path.to_path_buf(),
                    index,
                    value: at(f),
                });
            }
            let (index, f) = c_order().find(|&(_, f)| !exact(at(f))).unwrap_or((0, 0));
            Err(Error::BadLabel {
                path: path.to_path_buf(),
                index,
                value: at(f),
            })
        }
    };
    Ok(NiftiLabels {
        header,
        shape,
        labels,
    })
}

/// Reads a `.nii` or `.nii.gz` file as labels (see [`decode_nifti_labels`]).
pub(crate) fn read_nifti_labels(path: &Path) -> Result<NiftiLabels> {
    let bytes = read_nifti_bytes(path)?;
    decode_nifti_labels(&bytes, path)
}

/// Decodes Fortran-order raw voxels of `dtype` into C-order scaled `f32` in one pass.
fn convert_transpose(
    raw: &[u8],
    dtype: DataType,
    big_endian: bool,
    shape: [usize; 3],
    slope: f64,
    inter: f64,
) -> Vec<f32> {
    let value = sample_to_f32(dtype, big_endian, slope, inter);
    match dtype.size() {
        1 => {
            // 256-entry table: each byte value scaled once, in f64 like nibabel.
            let lut: [f32; 256] = std::array::from_fn(|b| value(&[b as u8]));
            fortran_to_c::<1, f32>(raw, shape, |[b]| lut[b as usize])
        }
        2 => fortran_to_c::<2, f32>(raw, shape, |b| value(&b)),
        4 => fortran_to_c::<4, f32>(raw, shape, |b| value(&b)),
        _ => fortran_to_c::<8, f32>(raw, shape, |b| value(&b)),
    }
}

/// The scaled `f32` value of one sample of `dtype` from its bytes: `(v * slope + inter) as f32`
/// in f64 like nibabel, or `v as f32` when there is no scaling.
fn sample_to_f32(
    dtype: DataType,
    big_endian: bool,
    slope: f64,
    inter: f64,
) -> impl Fn(&[u8]) -> f32 {
    let read = sample_reader(dtype, big_endian);
    let unscaled = slope == 1.0 && inter == 0.0;
    move |b| {
        let v = read(b);
        if unscaled {
            v as f32
        } else {
            (v * slope + inter) as f32
        }
    }
}

/// The stored bytes of the smallest and largest value of an integer `dtype`.
fn integer_extremes(dtype: DataType, big_endian: bool) -> (Vec<u8>, Vec<u8>) {
    macro_rules! ext {
        ($t:ty) => {
            if big_endian {
                (
                    <$t>::MIN.to_be_bytes().to_vec(),
                    <$t>::MAX.to_be_bytes().to_vec(),
                )
            } else {
                (
                    <$t>::MIN.to_le_bytes().to_vec(),
                    <$t>::MAX.to_le_bytes().to_vec(),
                )
            }
        };
    }
    match dtype {
        DataType::U8 => ext!(u8),
        DataType::I8 => ext!(i8),
        DataType::I16 => ext!(i16),
        DataType::U16 => ext!(u16),
        DataType::I32 => ext!(i32),
        DataType::U32 => ext!(u32),
        DataType::I64 => ext!(i64),
        DataType::U64 => ext!(u64),
        DataType::F32 => ext!(f32),
        DataType::F64 => ext!(f64),
    }
}

/// Tile edge (voxels) of [`fortran_to_c`] along the first and the last axis.
const TILE_I: usize = 16;
const TILE_K: usize = 16;

/// Decodes Fortran-order samples of `N` bytes into a C-order buffer, conversion fused with the
/// transpose: for each `j`, tiles of `TILE_K` source rows (k) x `TILE_I` samples (i) are decoded
/// into a small array with sequential reads, then written out as `TILE_I` contiguous runs of
/// `TILE_K` destination values.
fn fortran_to_c<const N: usize, T: Copy + Default>(
    raw: &[u8],
    shape: [usize; 3],
    decode: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    let [nx, ny, nz] = shape;
    let mut dst = vec![T::default(); nx * ny * nz];
    let sample = |c: &[u8]| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        decode(a)
    };
    let mut tile = [[T::default(); TILE_K]; TILE_I];
    for j in 0..ny {
        for k0 in (0..nz).step_by(TILE_K) {
            let kt = TILE_K.min(nz - k0);
            for i0 in (0..nx).step_by(TILE_I) {
                let it = TILE_I.min(nx - i0);
                let rows = |dk: usize| {
                    let s = ((k0 + dk) * ny + j) * nx + i0;
                    raw[s * N..(s + it) * N].chunks_exact(N)
                };
                if kt == TILE_K {
                    // Fixed trip count over k: unrolled.
                    for dk in 0..TILE_K {
                        for (t, c) in tile.iter_mut().zip(rows(dk)) {
                            t[dk] = sample(c);
                        }
                    }
                } else {
                    for dk in 0..kt {
                        for (t, c) in tile.iter_mut().zip(rows(dk)) {
                            t[dk] = sample(c);
                        }
                    }
                }
                for (di, t) in tile.iter().enumerate().take(it) {
                    let o = ((i0 + di) * ny + j) * nz + k0;
                    dst[o..o + kt].copy_from_slice(&t[..kt]);
                }
            }
        }
    }
    dst
}

/// One sample of `dtype` from its bytes, as f64.
fn sample_reader(dtype: DataType, big_endian: bool) -> fn(&[u8]) -> f64 {
    macro_rules! rd {
        ($t:ty, $n:expr) => {
            if big_endian {
                |c: &[u8]| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(&c[..$n]);
                    <$t>::from_be_bytes(a) as f64
                }
            } else {
                |c: &[u8]| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(&c[..$n]);
                    <$t>::from_le_bytes(a) as f64
                }
            }
        };
    }
    match dtype {
        DataType::U8 => rd!(u8, 1),
        DataType::I8 => rd!(i8, 1),
        DataType::I16 => rd!(i16, 2),
        DataType::U16 => rd!(u16, 2),
        DataType::I32 => rd!(i32, 4),
        DataType::U32 => rd!(u32, 4),
        DataType::I64 => rd!(i64, 8),
        DataType::U64 => rd!(u64, 8),
        DataType::F32 => rd!(f32, 4),
        DataType::F64 => rd!(f64, 8),
    }
}

/// C order (last axis fastest) to Fortran order (first axis fastest), tiled for the cache.
pub(crate) fn c_to_fortran<T: Copy + Default>(src: &[T], shape: [usize; 3]) -> Vec<T> {
    let [nx, ny, nz] = shape;
    let mut dst = vec![T::default(); src.len()];
    const TILE: usize = 32;
    for j in 0..ny {
        for k0 in (0..nz).step_by(TILE) {
            for i0 in (0..nx).step_by(TILE) {
                for k in k0..(k0 + TILE).min(nz) {
                    let dst_row = (k * ny + j) * nx;
                    for i in i0..(i0 + TILE).min(nx) {
                        dst[dst_row + i] = src[(i * ny + j) * nz + k];
                    }
                }
            }
        }
    }
    dst
}

/// Writes `header` + little-endian `voxels` (already in Fortran order) to `path` atomically,
/// gzip-compressed when the name ends in `.gz`.
pub(crate) fn write_nifti_bytes(path: &Path, header: &NiftiHeader, voxels: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(WRITE_VOX_OFFSET + voxels.len());
    buf.extend_from_slice(&header.to_bytes());
    buf.extend_from_slice(&[0u8; WRITE_VOX_OFFSET - HEADER_SIZE]);
    buf.extend_from_slice(voxels);
    let gz = path.extension().is_some_and(|e| e == "gz");
    let bytes = if gz {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&buf).map_err(|source| io_err(path, source))?;
        enc.finish().map_err(|source| io_err(path, source))?
    } else {
        buf
    };
    write_atomic(path, &bytes)
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use rand::{Rng as _, SeedableRng};

    use super::*;
    use crate::fs::gunzip;
    use crate::testutil::{
        fortran_bytes, header, label_of, scratch, small_nii, synth, write_raw_nifti,
    };
    use crate::{read_volume, Rng};

    fn expected_value(dtype: DataType, v: f64) -> f64 {
        match dtype {
            DataType::U8 => v.max(0.0).trunc(),
            DataType::I8 => v.clamp(-128.0, 127.0).trunc(),
            DataType::U16 | DataType::U32 | DataType::U64 => v.max(0.0).trunc(),
            _ => v,
        }
    }

    const ALL_TYPES: [DataType; 10] = [
        DataType::U8,
        DataType::I8,
        DataType::I16,
        DataType::U16,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F32,
        DataType::F64,
    ];

    /// A `.nii` buffer of `dtype` with voxel values `f(i, j, k)` and the given scaling.
    fn label_nii(
        shape: [usize; 3],
        dtype: DataType,
        big_endian: bool,
        scaling: (f32, f32),
        f: impl Fn(usize, usize, usize) -> f64,
    ) -> Vec<u8> {
        let mut h = header(shape, dtype);
        (h.scl_slope, h.scl_inter) = scaling;
        let mut bytes = h.to_bytes().to_vec();
        if big_endian {
            // Only the fields the decoder needs: sizeof_hdr, dim, datatype, bitpix, vox_offset, scaling.
            let swap = |b: &mut [u8], off: usize, n: usize| b[off..off + n].reverse();
            swap(&mut bytes, 0, 4);
            for i in 0..8 {
                swap(&mut bytes, 40 + 2 * i, 2);
                swap(&mut bytes, 76 + 4 * i, 4);
            }
            for off in [70, 72, 252, 254] {
                swap(&mut bytes, off, 2);
            }
            for off in [108, 112, 116] {
                swap(&mut bytes, off, 4);
            }
            for off in (280..328).step_by(4) {
                swap(&mut bytes, off, 4);
            }
        }
        bytes.extend([0u8; 4]);
        bytes.extend(fortran_bytes(shape, dtype, big_endian, f));
        bytes
    }

    /// The direct label decoder and decode-to-f32-then-`to_labels` give the same labels or the same
    /// error.
    fn labels_both_ways(bytes: &[u8], p: &Path) -> Result<Vec<u8>> {
        let direct = decode_nifti_labels(bytes, p).and_then(|l| l.labels);
        let via_f32 = decode_nifti(bytes, p).and_then(|v| v.to_labels());
        match (&direct, &via_f32) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", p.display()),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("direct {direct:?} vs via f32 {via_f32:?}"),
        }
        direct
    }

    #[test]
    fn every_dtype_round_trips_in_c_order_with_scaling() {
        let dir = scratch("dtypes");
        // The other shapes span several (full and partial) tiles of the transposing decoder.
        for shape in [[5, 4, 3], [3, 2, 37], [35, 2, 33]] {
            for dtype in ALL_TYPES {
                for gz in [false, true] {
                    let mut h = header(shape, dtype);
                    h.scl_slope = 0.5;
                    h.scl_inter = -3.0;
                    let path = dir.join(format!("v_{dtype}.nii{}", if gz { ".gz" } else { "" }));
                    write_raw_nifti(&path, &h, &fortran_bytes(shape, dtype, false, synth)).unwrap();
                    let v = read_volume(&path).unwrap();
                    assert_eq!(v.shape, shape);
                    assert_eq!(v.dtype, dtype);
                    assert_eq!(v.spacing, [0.5, 0.75, 2.0]);
                    assert_eq!(v.affine[0][3], -10.0);
                    let [_, ny, nz] = shape;
                    for i in 0..shape[0] {
                        for j in 0..ny {
                            for k in 0..nz {
                                let want = expected_value(dtype, synth(i, j, k)) * 0.5 - 3.0;
                                let got = v.data[(i * ny + j) * nz + k];
                                assert_eq!(got, want as f32, "{dtype} at ({i},{j},{k})");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn big_endian_files_read_like_little_endian_ones() {
        let shape = [3, 2, 2];
        for dtype in [DataType::I16, DataType::F32, DataType::F64] {
            let h = header(shape, dtype);
            let mut bytes = h.to_bytes().to_vec();
            // Byte-swap every numeric header field we read by rebuilding from a swapped copy.
            let swap = |b: &mut [u8], off: usize, n: usize| b[off..off + n].reverse();
            swap(&mut bytes, 0, 4);
            for i in 0..8 {
                swap(&mut bytes, 40 + 2 * i, 2);
                swap(&mut bytes, 76 + 4 * i, 4);
            }
            for off in [68, 70, 72, 74, 120, 252, 254] {
                swap(&mut bytes, off, 2);
            }
            for off in [
                56, 60, 64, 108, 112, 116, 124, 128, 132, 136, 256, 260, 264, 268, 272, 276,
            ] {
                swap(&mut bytes, off, 4);
            }
            for off in (280..328).step_by(4) {
                swap(&mut bytes, off, 4);
            }
            bytes.extend([0u8; 4]);
            bytes.extend(fortran_bytes(shape, dtype, true, synth));
            let v = decode_nifti(&bytes, Path::new("be.nii")).unwrap();
            assert!(v.nifti.as_ref().unwrap().big_endian);
            assert_eq!(v.spacing, [0.5, 0.75, 2.0]);
            assert_eq!(v.data[(2 * 2 + 1) * 2 + 1], synth(2, 1, 1) as f32);
        }
    }

    #[test]
    fn zero_or_nan_slope_means_no_scaling() {
        let shape = [2, 2, 2];
        for slope in [0.0, f32::NAN] {
            let mut h = header(shape, DataType::U8);
            h.scl_slope = slope;
            h.scl_inter = 100.0;
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend([0u8; 4]);
            bytes.extend(fortran_bytes(shape, DataType::U8, false, synth));
            let v = decode_nifti(&bytes, Path::new("s.nii")).unwrap();
            assert_eq!(v.data[0], synth(0, 0, 0).max(0.0) as f32);
        }
    }

    #[test]
    fn labels_decode_directly_in_c_order_for_integer_and_float_files() {
        let p = Path::new("lab.nii");
        for shape in [[4, 3, 2], [37, 3, 35], [16, 1, 16]] {
            let [_, ny, nz] = shape;
            let want: Vec<u8> = (0..shape[0])
                .flat_map(|i| {
                    (0..ny).flat_map(move |j| (0..nz).map(move |k| label_of(i, j, k) as u8))
                })
                .collect();
            for dtype in ALL_TYPES {
                for big_endian in [false, true] {
                    let bytes = label_nii(shape, dtype, big_endian, (1.0, 0.0), label_of);
                    let got = labels_both_ways(&bytes, p).unwrap();
                    assert_eq!(got, want, "{dtype} {shape:?} big-endian {big_endian}");
                }
            }
            // Scaling is applied: stored 2v + 1 with slope 0.5, inter -0.5 gives v back.
            for dtype in [DataType::U8, DataType::I16, DataType::F32] {
                let bytes = label_nii(shape, dtype, false, (0.5, -0.5), |i, j, k| {
                    2.0 * label_of(i, j, k) + 1.0
                });
                assert_eq!(labels_both_ways(&bytes, p).unwrap(), want, "{dtype} scaled");
            }
        }
        // The whole uint8 range is valid, including 255.
        let bytes = label_nii([4, 4, 16], DataType::U8, false, (1.0, 0.0), |i, j, k| {
            ((i * 64 + j * 16 + k) % 256) as f64
        });
        let got = labels_both_ways(&bytes, p).unwrap();
        assert_eq!(got.iter().copied().max(), Some(255));
    }

    #[test]
    fn labels_reject_fractions_negatives_large_and_non_finite_values() {
        let p = Path::new("bad_lab.nii");
        let shape = [5, 3, 4];
        // The first bad voxel in C order is (1, 2, 3) = index 23; another one later, at (4, 0, 0).
        let bad_at = |bad: f64| {
            move |i: usize, j: usize, k: usize| match (i, j, k) {
                (1, 2, 3) | (4, 0, 0) => bad,
                _ => label_of(i, j, k),
            }
        };
        let cases: [(DataType, f64, f32); 6] = [
            (DataType::F32, 0.5, 0.5),
            (DataType::F64, 2.25, 2.25),
            (DataType::I16, -1.0, -1.0),
            (DataType::U16, 300.0, 300.0),
            (DataType::I32, 256.0, 256.0),
            (DataType::I8, -7.0, -7.0),
        ];
        for (dtype, bad, value) in cases {
            let bytes = label_nii(shape, dtype, false, (1.0, 0.0), bad_at(bad));
            let e = labels_both_ways(&bytes, p).unwrap_err();
            match e {
                Error::BadLabel {
                    index, value: v, ..
                } => {
                    assert_eq!((index, v), (23, value), "{dtype}");
                    assert!(e.to_string().contains("bad_lab.nii"), "{e}");
                }
                other => panic!("{dtype}: {other}"),
            }
        }
        // NaN and infinity are non-finite errors, as when reading the volume.
        for bad in [f64::NAN, f64::INFINITY] {
            let bytes = label_nii(shape, DataType::F32, false, (1.0, 0.0), bad_at(bad));
            let e = labels_both_ways(&bytes, p).unwrap_err();
            assert!(matches!(e, Error::NonFinite { index: 23, .. }), "{e}");
        }
        // A scaling that makes integers fractional.
        let bytes = label_nii(shape, DataType::U8, false, (0.5, 0.0), |i, j, k| {
            label_of(i, j, k) + 1.0
        });
        assert!(matches!(
            labels_both_ways(&bytes, p),
            Err(Error::BadLabel { .. })
        ));
    }

    #[test]
    fn malformed_nifti_gives_typed_errors_naming_the_file() {
        let p = Path::new("bad.nii");
        let good = small_nii(DataType::F32);
        // Wrong magic.
        let mut b = good.clone();
        b[344..348].copy_from_slice(b"abcd");
        let e = decode_nifti(&b, p).unwrap_err();
        assert!(
            matches!(e, Error::BadMagic { .. }) && e.to_string().contains("bad.nii"),
            "{e}"
        );
        // Not a header at all.
        assert!(matches!(
            decode_nifti(b"hello", p),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode_nifti(&[7u8; 400], p),
            Err(Error::BadMagic { .. })
        ));
        // Unsupported data type (complex64 = 32).
        let mut b = good.clone();
        b[70..72].copy_from_slice(&32i16.to_le_bytes());
        assert!(matches!(
            decode_nifti(&b, p),
            Err(Error::UnsupportedDataType { .. })
        ));
        // Truncated voxels.
        let e = decode_nifti(&good[..good.len() - 1], p).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "{e}");
        // Empty volume.
        let mut b = good.clone();
        b[42..44].copy_from_slice(&0i16.to_le_bytes());
        assert!(matches!(decode_nifti(&b, p), Err(Error::Empty { .. })));
        // 4-D with more than one frame.
        let mut b = good.clone();
        b[40..42].copy_from_slice(&4i16.to_le_bytes());
        b[48..50].copy_from_slice(&2i16.to_le_bytes());
        assert!(matches!(decode_nifti(&b, p), Err(Error::Header { .. })));
        // NaN intensity.
        let mut b = good.clone();
        b[352..356].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            decode_nifti(&b, p),
            Err(Error::NonFinite { index: 0, .. })
        ));
        // Infinity produced by scaling.
        let mut b = good.clone();
        b[112..116].copy_from_slice(&f32::MAX.to_le_bytes());
        assert!(matches!(decode_nifti(&b, p), Err(Error::NonFinite { .. })));
        // Bad vox_offset.
        let mut b = good;
        b[108..112].copy_from_slice(&(-5.0f32).to_le_bytes());
        assert!(matches!(decode_nifti(&b, p), Err(Error::Header { .. })));
    }

    /// A gzip bomb: a valid header declaring a few voxels, followed by 200 MB of zeros (about 200 KB
    /// compressed). Reading it must stop at the declared size, not expand the stream.
    #[test]
    fn a_gzip_stream_longer_than_its_header_declares_is_refused_before_expanding() {
        let dir = scratch("gzbomb");
        let mut bytes = small_nii(DataType::U8);
        let declared = bytes.len() as u64;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let path = dir.join("bomb.nii.gz");
        std::fs::write(&path, &bomb).unwrap();
        for result in [
            read_nifti(&path).map(|_| ()),
            read_nifti_labels(&path).map(|_| ()),
        ] {
            match result {
                Err(Error::TooLarge { size, reason, .. }) => {
                    assert_eq!(size, declared + crate::fs::TRAILING_SLACK);
                    assert!(reason.contains("more than"), "{reason}");
                }
                other => panic!("expected TooLarge, got {:?}", other.err()),
            }
        }
        // The same header with its true voxels and a little trailing data is read.
        bytes.extend([7u8; 100]);
        let path = dir.join("ok.nii.gz");
        std::fs::write(&path, gzip(&bytes)).unwrap();
        assert_eq!(read_nifti(&path).unwrap().shape, [3, 2, 2]);
    }

    /// A header declaring more voxels than its gzip file could ever decode to (deflate expands at
    /// most 1032-fold) is refused from the header alone, before any large allocation.
    #[test]
    fn a_header_declaring_more_than_the_gzip_file_can_hold_is_refused() {
        let dir = scratch("gzhuge");
        let h = header([2000, 2000, 2000], DataType::F64);
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend([0u8; 4]);
        bytes.extend([0u8; 4096]);
        let path = dir.join("huge.nii.gz");
        std::fs::write(&path, gzip(&bytes)).unwrap();
        match read_nifti(&path) {
            Err(Error::TooLarge { size, .. }) => assert_eq!(size, 64_000_000_352),
            other => panic!("expected TooLarge, got {:?}", other.err()),
        }
        // Uncompressed, the same file is simply truncated.
        let path = dir.join("huge.nii");
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_nifti(&path), Err(Error::Truncated { .. })));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// One random mutation: flip bytes, overwrite a header field with an extreme value, truncate,
    /// or extend.
    fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
        for _ in 0..rng.random_range(1..4) {
            if b.is_empty() {
                break;
            }
            match rng.random_range(0..5) {
                0 => {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                1 => {
                    // An extreme value into a 2- or 4-byte field of the header.
                    let i = rng.random_range(0..b.len().min(348).saturating_sub(4).max(1));
                    let extreme: [u8; 4] = match rng.random_range(0..6) {
                        0 => [0xff; 4],
                        1 => [0; 4],
                        2 => f32::NAN.to_le_bytes(),
                        3 => f32::INFINITY.to_le_bytes(),
                        4 => i32::MIN.to_le_bytes(),
                        _ => (-1i32).to_le_bytes(),
                    };
                    let n = if rng.random() { 2 } else { 4 };
                    let end = (i + n).min(b.len());
                    b[i..end].copy_from_slice(&extreme[..end - i]);
                }
                2 => {
                    let n = rng.random_range(0..b.len());
                    b.truncate(n);
                }
                3 => {
                    let n = rng.random_range(0..64);
                    b.extend((0..n).map(|_| rng.random::<u8>()));
                }
                _ => {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        b
    }

    /// Seeded fuzzing of the NIfTI entry point with mutated and arbitrary bytes: every input must
    /// give `Ok` or a typed error, never a panic. (Fast enough for every `cargo test`.)
    #[test]
    fn nifti_never_panics_on_mutated_or_random_bytes() {
        let p = Path::new("fuzz.nii");
        let seeds: Vec<Vec<u8>> = [
            DataType::U8,
            DataType::I16,
            DataType::F32,
            DataType::F64,
            DataType::U64,
        ]
        .into_iter()
        .map(small_nii)
        .collect();
        let mut rng = Rng::seed_from_u64(0xF022);
        let (mut ok, mut err) = (0, 0);
        for case in 0..50_000 {
            let seed = &seeds[case % seeds.len()];
            let bytes = match case % 10 {
                0 => (0..rng.random_range(0..800))
                    .map(|_| rng.random())
                    .collect(),
                _ => mutate(&mut rng, seed.clone()),
            };
            match decode_nifti(&bytes, p) {
                Ok(v) => {
                    assert_eq!(v.data.len(), v.shape.iter().product::<usize>());
                    ok += 1;
                }
                Err(e) => {
                    assert!(
                        e.to_string().contains("fuzz.nii") || e.to_string().contains("<memory>"),
                        "{e}"
                    );
                    err += 1;
                }
            }
        }
        assert!(ok > 1000 && err > 1000, "ok {ok} err {err}");
        // The direct label decoder gives the same labels or the same error as the f32 path.
        for case in 0..5000 {
            let bytes = mutate(&mut rng, seeds[case % seeds.len()].clone());
            let _ = labels_both_ways(&bytes, p);
        }
        // Corrupted gzip streams: decompression errors are typed too.
        for case in 0..3000 {
            let gz = gzip(&seeds[case % seeds.len()]);
            let bytes = mutate(&mut rng, gz);
            if let Ok(raw) = gunzip(&bytes, p) {
                let _ = decode_nifti(&raw, p);
            }
        }
    }
}
