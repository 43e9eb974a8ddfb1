//! The NIfTI-1 header: parsing (either endianness), serialising (little-endian) and the geometry
//! it describes (shape, spacing, affine, scaling). Public as [`crate::nifti::NiftiHeader`].

use std::path::Path;

use crate::dtype::DataType;
use crate::error::{Error, Result};

/// Size of the NIfTI-1 header in bytes.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in files we write (header + 4 empty extension bytes).
pub(crate) const WRITE_VOX_OFFSET: usize = 352;

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

pub(crate) fn header_err(path: &Path, reason: String) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::header;

    #[test]
    fn qform_is_used_when_sform_code_is_zero() {
        // 90 degrees about z (quaternion b=c=0, d=sin(45)), qfac -1, pixdim (2, 3, 4).
        let mut h = header([2, 2, 2], DataType::U8);
        h.sform_code = 0;
        h.qform_code = 1;
        h.quatern = [0.0, 0.0, std::f32::consts::FRAC_1_SQRT_2];
        h.qoffset = [1.0, 2.0, 3.0];
        h.pixdim = [-1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0];
        let a = h.affine();
        let want = [
            [0.0, -3.0, 0.0, 1.0],
            [2.0, 0.0, 0.0, 2.0],
            [0.0, 0.0, -4.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for r in 0..4 {
            for c in 0..4 {
                assert!((a[r][c] - want[r][c]).abs() < 1e-6, "{a:?}");
            }
        }
        // And the writer's affine -> quaternion conversion reproduces it.
        let h2 = NiftiHeader::new_3d([2, 2, 2], [2.0, 3.0, 4.0], &want, DataType::U8).unwrap();
        let mut h2q = h2.clone();
        h2q.sform_code = 0;
        let a2 = h2q.affine();
        for r in 0..4 {
            for c in 0..4 {
                assert!((a2[r][c] - want[r][c]).abs() < 1e-5, "{a2:?}");
            }
        }
        // No transform at all: diag(pixdim).
        h.qform_code = 0;
        assert_eq!(h.affine()[1][1], 3.0);
    }
}
