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
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::volume::{DataType, Volume};

/// Size of the NIfTI-1 header in bytes.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in files we write (header + 4 empty extension bytes).
const WRITE_VOX_OFFSET: usize = 352;

/// The NIfTI-1 header fields, parsed into native values (endianness already resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeader {
    pub dim_info: u8,
    pub dim: [i16; 8],
    pub intent_p: [f32; 3],
    pub intent_code: i16,
    pub datatype: i16,
    pub bitpix: i16,
    pub slice_start: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub slice_end: i16,
    pub slice_code: u8,
    pub xyzt_units: u8,
    pub cal_max: f32,
    pub cal_min: f32,
    pub slice_duration: f32,
    pub toffset: f32,
    pub descrip: [u8; 80],
    pub aux_file: [u8; 24],
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern: [f32; 3],
    pub qoffset: [f32; 3],
    pub srow: [[f32; 4]; 3],
    pub intent_name: [u8; 16],
    /// Whether the source file was big-endian (we always write little-endian).
    pub big_endian: bool,
}

impl NiftiHeader {
    /// A fresh header for a 3-D volume of `datatype`, with the given spacing and affine (sform and
    /// qform both set, code 1 = scanner anatomical).
    pub fn new_3d(
        shape: [usize; 3],
        spacing: [f64; 3],
        affine: &[[f64; 4]; 4],
        dtype: DataType,
    ) -> Result<Self> {
        let mut dim = [1i16; 8];
        dim[0] = 3;
        for a in 0..3 {
            dim[a + 1] = i16::try_from(shape[a]).map_err(|_| {
                Error::Invalid(format!(
                    "shape {shape:?} too large for NIfTI-1 (max 32767 per axis)"
                ))
            })?;
        }
        let mut pixdim = [1f32; 8];
        for a in 0..3 {
            pixdim[a + 1] = spacing[a] as f32;
        }
        let mut srow = [[0f32; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = affine[r][c] as f32;
            }
        }
        let (quatern, qoffset, qfac) = affine_to_quatern(affine);
        pixdim[0] = qfac;
        let (code, bitpix) = dtype.nifti_code();
        Ok(Self {
            dim_info: 0,
            dim,
            intent_p: [0.0; 3],
            intent_code: 0,
            datatype: code,
            bitpix,
            slice_start: 0,
            pixdim,
            vox_offset: WRITE_VOX_OFFSET as f32,
            scl_slope: 1.0,
            scl_inter: 0.0,
            slice_end: 0,
            slice_code: 0,
            xyzt_units: 2 | 8, // mm, s
            cal_max: 0.0,
            cal_min: 0.0,
            slice_duration: 0.0,
            toffset: 0.0,
            descrip: [0; 80],
            aux_file: [0; 24],
            qform_code: 1,
            sform_code: 1,
            quatern,
            qoffset,
            srow,
            intent_name: [0; 16],
            big_endian: false,
        })
    }

    /// Parses the first 348 bytes of a `.nii` file.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < HEADER_SIZE {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: HEADER_SIZE as u64,
                found: bytes.len() as u64,
            });
        }
        let b = &bytes[..HEADER_SIZE];
        let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let big_endian = match (le, i32::from_be_bytes([b[0], b[1], b[2], b[3]])) {
            (348, _) => false,
            (_, 348) => true,
            _ => {
                return Err(Error::BadMagic {
                    path: path.to_path_buf(),
                    found: String::from_utf8_lossy(&b[344..348]).into_owned(),
                    sizeof_hdr: le,
                })
            }
        };
        let magic = &b[344..348];
        if magic != b"n+1\0" {
            let found = String::from_utf8_lossy(magic).into_owned();
            return Err(if magic == b"ni1\0" {
                Error::Header {
                    path: path.to_path_buf(),
                    reason:
                        "two-file NIfTI (.hdr/.img, magic ni1) is not supported; convert to .nii"
                            .into(),
                }
            } else {
                Error::BadMagic {
                    path: path.to_path_buf(),
                    found,
                    sizeof_hdr: 348,
                }
            });
        }
        let r = Fields { b, big_endian };
        let mut h = Self {
            dim_info: b[39],
            dim: [0; 8],
            intent_p: [r.f32(56), r.f32(60), r.f32(64)],
            intent_code: r.i16(68),
            datatype: r.i16(70),
            bitpix: r.i16(72),
            slice_start: r.i16(74),
            pixdim: [0.0; 8],
            vox_offset: r.f32(108),
            scl_slope: r.f32(112),
            scl_inter: r.f32(116),
            slice_end: r.i16(120),
            slice_code: b[122],
            xyzt_units: b[123],
            cal_max: r.f32(124),
            cal_min: r.f32(128),
            slice_duration: r.f32(132),
            toffset: r.f32(136),
            descrip: [0; 80],
            aux_file: [0; 24],
            qform_code: r.i16(252),
            sform_code: r.i16(254),
            quatern: [r.f32(256), r.f32(260), r.f32(264)],
            qoffset: [r.f32(268), r.f32(272), r.f32(276)],
            srow: [[0.0; 4]; 3],
            intent_name: [0; 16],
            big_endian,
        };
        for i in 0..8 {
            h.dim[i] = r.i16(40 + 2 * i);
            h.pixdim[i] = r.f32(76 + 4 * i);
        }
        for (row, srow) in h.srow.iter_mut().enumerate() {
            for (c, v) in srow.iter_mut().enumerate() {
                *v = r.f32(280 + 16 * row + 4 * c);
            }
        }
        h.descrip.copy_from_slice(&b[148..228]);
        h.aux_file.copy_from_slice(&b[228..252]);
        h.intent_name.copy_from_slice(&b[328..344]);
        Ok(h)
    }

    /// Serialises the header (little-endian, magic `n+1`, 348 bytes).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &348i32.to_le_bytes());
        put(38, b"r");
        put(39, &[self.dim_info]);
        for i in 0..8 {
            put(40 + 2 * i, &self.dim[i].to_le_bytes());
            put(76 + 4 * i, &self.pixdim[i].to_le_bytes());
        }
        for i in 0..3 {
            put(56 + 4 * i, &self.intent_p[i].to_le_bytes());
        }
        put(68, &self.intent_code.to_le_bytes());
        put(70, &self.datatype.to_le_bytes());
        put(72, &self.bitpix.to_le_bytes());
        put(74, &self.slice_start.to_le_bytes());
        put(108, &self.vox_offset.to_le_bytes());
        put(112, &self.scl_slope.to_le_bytes());
        put(116, &self.scl_inter.to_le_bytes());
        put(120, &self.slice_end.to_le_bytes());
        put(122, &[self.slice_code, self.xyzt_units]);
        put(124, &self.cal_max.to_le_bytes());
        put(128, &self.cal_min.to_le_bytes());
        put(132, &self.slice_duration.to_le_bytes());
        put(136, &self.toffset.to_le_bytes());
        put(148, &self.descrip);
        put(228, &self.aux_file);
        put(252, &self.qform_code.to_le_bytes());
        put(254, &self.sform_code.to_le_bytes());
        for i in 0..3 {
            put(256 + 4 * i, &self.quatern[i].to_le_bytes());
            put(268 + 4 * i, &self.qoffset[i].to_le_bytes());
        }
        for (row, srow) in self.srow.iter().enumerate() {
            for (c, v) in srow.iter().enumerate() {
                put(280 + 16 * row + 4 * c, &v.to_le_bytes());
            }
        }
        put(328, &self.intent_name);
        put(344, b"n+1\0");
        b
    }

    /// The 3-D shape, checking that any axes beyond the third have length 1.
    pub fn shape(&self, path: &Path) -> Result<[usize; 3]> {
        let nd = self.dim[0];
        if !(1..=7).contains(&nd) {
            return Err(header_err(path, format!("dim[0] = {nd} is not in 1..=7")));
        }
        let nd = nd as usize;
        let dims: Vec<i64> = (1..=nd).map(|a| i64::from(self.dim[a])).collect();
        if dims.iter().any(|&d| d <= 0) {
            return Err(Error::Empty {
                path: path.to_path_buf(),
                shape: dims,
            });
        }
        if dims.iter().skip(3).any(|&d| d != 1) {
            return Err(header_err(
                path,
                format!("dim {dims:?}: only 3-D volumes are supported"),
            ));
        }
        let mut shape = [1usize; 3];
        for (a, s) in shape.iter_mut().enumerate().take(nd.min(3)) {
            *s = dims[a] as usize;
        }
        Ok(shape)
    }

    /// Voxel spacing in mm, from `pixdim[1..4]` and the spatial unit of `xyzt_units`.
    pub fn spacing(&self) -> [f64; 3] {
        let unit = match self.xyzt_units & 0x07 {
            1 => 1000.0, // metre
            3 => 0.001,  // micron
            _ => 1.0,    // mm or unknown
        };
        let mut s = [1.0; 3];
        for (a, v) in s.iter_mut().enumerate() {
            let p = f64::from(self.pixdim[a + 1]).abs();
            *v = if p.is_finite() && p > 0.0 {
                p * unit
            } else {
                1.0
            };
        }
        s
    }

    /// Voxel-to-world affine: the sform if `sform_code > 0`, else the qform if `qform_code > 0`,
    /// else `diag(pixdim)` (NIfTI method 1).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        if self.sform_code > 0 {
            for (r, row) in self.srow.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    m[r][c] = f64::from(*v);
                }
            }
        } else if self.qform_code > 0 {
            let [b, c, d] = self.quatern.map(f64::from);
            let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
            let rot = [
                [
                    a * a + b * b - c * c - d * d,
                    2.0 * (b * c - a * d),
                    2.0 * (b * d + a * c),
                ],
                [
                    2.0 * (b * c + a * d),
                    a * a + c * c - b * b - d * d,
                    2.0 * (c * d - a * b),
                ],
                [
                    2.0 * (b * d - a * c),
                    2.0 * (c * d + a * b),
                    a * a + d * d - c * c - b * b,
                ],
            ];
            let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let zoom = [
                f64::from(self.pixdim[1]),
                f64::from(self.pixdim[2]),
                f64::from(self.pixdim[3]) * qfac,
            ];
            for r in 0..3 {
                for c in 0..3 {
                    m[r][c] = rot[r][c] * zoom[c];
                }
                m[r][3] = f64::from(self.qoffset[r]);
            }
        } else {
            for a in 0..3 {
                m[a][a] = f64::from(self.pixdim[a + 1]);
            }
        }
        m
    }

    /// `(slope, inter)` as nibabel applies them: none (1, 0) when the slope is 0 or not finite.
    pub fn scaling(&self) -> (f64, f64) {
        let slope = f64::from(self.scl_slope);
        if slope == 0.0 || !slope.is_finite() {
            return (1.0, 0.0);
        }
        let inter = f64::from(self.scl_inter);
        (slope, if inter.is_finite() { inter } else { 0.0 })
    }
}

fn header_err(path: &Path, reason: String) -> Error {
    Error::Header {
        path: path.to_path_buf(),
        reason,
    }
}

struct Fields<'a> {
    b: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        if self.big_endian {
            a.reverse();
        }
        a
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.arr(off))
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_le_bytes(self.arr(off))
    }
}

/// Quaternion parameters (b, c, d), offset and qfac of an affine (the NIfTI reference algorithm,
/// `nifti_mat44_to_quatern`, simplified: the rotation is orthonormalised by column normalisation).
fn affine_to_quatern(m: &[[f64; 4]; 4]) -> ([f32; 3], [f32; 3], f32) {
    let mut r = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let norm = (0..3).map(|i| m[i][c] * m[i][c]).sum::<f64>().sqrt();
        for i in 0..3 {
            r[i][c] = if norm > 0.0 {
                m[i][c] / norm
            } else if i == c {
                1.0
            } else {
                0.0
            };
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (a, b, c, d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            let bb = 0.5 * xd.sqrt();
            b = bb;
            c = 0.25 * (r[0][1] + r[1][0]) / bb;
            d = 0.25 * (r[0][2] + r[2][0]) / bb;
            a = 0.25 * (r[2][1] - r[1][2]) / bb;
        } else if yd > 1.0 {
            let cc = 0.5 * yd.sqrt();
            c = cc;
            b = 0.25 * (r[0][1] + r[1][0]) / cc;
            d = 0.25 * (r[1][2] + r[2][1]) / cc;
            a = 0.25 * (r[0][2] - r[2][0]) / cc;
        } else {
            let dd = 0.5 * zd.max(0.0).sqrt();
            d = dd;
            b = if dd > 0.0 {
                0.25 * (r[0][2] + r[2][0]) / dd
            } else {
                0.0
            };
            c = if dd > 0.0 {
                0.25 * (r[1][2] + r[2][1]) / dd
            } else {
                0.0
            };
            a = if dd > 0.0 {
                0.25 * (r[1][0] - r[0][1]) / dd
            } else {
                1.0
            };
        }
    }
    let s = if a < 0.0 { -1.0 } else { 1.0 };
    (
        [(s * b) as f32, (s * c) as f32, (s * d) as f32],
        [m[0][3] as f32, m[1][3] as f32, m[2][3] as f32],
        qfac,
    )
}

/// Whether `bytes` start with the gzip magic.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Reads a whole file, decompressing it when it is gzip (detected by content, not name).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    gunzip(&raw, path)
}

/// Decompresses a (possibly multi-member) gzip buffer in one call per member, straight into an
/// output buffer sized from the ISIZE trailer (CRC-32 and length of every member are checked).
pub(crate) fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let gz_err = |kind: std::io::ErrorKind, msg: String| Error::Gzip {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, msg),
    };
    // ISIZE (last 4 bytes) is the uncompressed size mod 2^32 (of the last member): a good capacity
    // hint, capped so that a corrupt trailer cannot make us allocate gigabytes up front.
    let hint = match raw.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]) as usize,
        None => 0,
    };
    // +1: a full buffer would cost one more call (and a reallocation) just to see the stream end.
    let cap = hint.min(raw.len().saturating_mul(1032)).min(1 << 30) + 1;
    let mut out = Vec::with_capacity(cap);
    let mut input = raw;
    loop {
        let mut inflate = flate2::Decompress::new_gzip(15);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(1 << 16));
            }
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let consumed = usize::try_from(before_in).unwrap_or(usize::MAX);
            let status = inflate
                .decompress_vec(
                    input.get(consumed..).unwrap_or_default(),
                    &mut out,
                    flate2::FlushDecompress::Finish,
                )
                .map_err(|e| gz_err(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if status == flate2::Status::StreamEnd {
                break;
            }
            if inflate.total_in() == before_in && inflate.total_out() == before_out {
                // Room left in `out` and nothing consumed: the input ended inside the member.
                return Err(gz_err(
                    std::io::ErrorKind::UnexpectedEof,
                    "gzip stream ends before its end marker".into(),
                ));
            }
        }
        let consumed = usize::try_from(inflate.total_in()).unwrap_or(usize::MAX);
        input = input.get(consumed..).unwrap_or_default();
        if input.is_empty() {
            return Ok(out);
        }
        if !is_gzip(input) {
            return Err(gz_err(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes after the gzip stream are not another gzip member",
                    input.len()
                ),
            ));
        }
    }
}

/// The parts of a `.nii` byte buffer needed to decode its voxels.
struct Layout<'a> {
    header: NiftiHeader,
    shape: [usize; 3],
    dtype: DataType,
    /// The voxel bytes, Fortran order.
    raw: &'a [u8],
}

/// Parses and checks the header and locates the voxel bytes.
fn layout<'a>(bytes: &'a [u8], path: &Path) -> Result<Layout<'a>> {
    let header = NiftiHeader::parse(bytes, path)?;
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
    let bytes = read_maybe_gz(path)?;
    decode_nifti(&bytes, path)
}

/// A label map decoded straight from NIfTI voxels (see [`decode_nifti_labels`]).
pub(crate) struct NiftiLabels {
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
pub(crate) fn decode_nifti_labels(bytes: &[u8], path: &Path) -> Result<NiftiLabels> {
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
    let bytes = read_maybe_gz(path)?;
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

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, source));
    }
    Ok(())
}
