//! Unit tests on generated volumes (no binary blobs), plus real-data checks that skip when
//! `../shared/data` is absent.

use std::path::{Path, PathBuf};

use crate::nifti::{decode_nifti, NiftiHeader};
use crate::volume::write_raw_nifti;
use crate::*;

/// A fresh scratch directory under the system temp dir, unique per test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duoseg-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared real data folder, or `None` (after printing why) when it is absent.
pub(crate) fn shared_data(test: &str, sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let p = root.join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping {test}: {} not found", p.display());
        None
    }
}

/// Deterministic pseudo-random value of voxel (i, j, k) in [-50, 200).
fn synth(i: usize, j: usize, k: usize) -> f64 {
    let h = (i * 7919 + j * 104_729 + k * 1_299_709) % 250;
    h as f64 - 50.0
}

/// Encodes synthetic voxels of `dtype` in Fortran order as little/big-endian bytes.
fn fortran_bytes(
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

fn header(shape: [usize; 3], dtype: DataType) -> NiftiHeader {
    let spacing = [0.5, 0.75, 2.0];
    let mut affine = crate::volume::diag_affine(spacing);
    affine[0][3] = -10.0;
    affine[1][3] = 4.0;
    affine[2][3] = 7.5;
    NiftiHeader::new_3d(shape, spacing, &affine, dtype).unwrap()
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
    let direct = crate::nifti::decode_nifti_labels(bytes, p).and_then(|l| l.labels);
    let via_f32 = decode_nifti(bytes, p).and_then(|v| v.to_labels());
    match (&direct, &via_f32) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", p.display()),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("direct {direct:?} vs via f32 {via_f32:?}"),
    }
    direct
}

/// A label value of voxel (i, j, k) in [0, 4], with structure along every axis.
fn label_of(i: usize, j: usize, k: usize) -> f64 {
    ((i / 3 + 2 * j + k * k) % 5) as f64
}

#[test]
fn labels_decode_directly_in_c_order_for_integer_and_float_files() {
    let p = Path::new("lab.nii");
    for shape in [[4, 3, 2], [37, 3, 35], [16, 1, 16]] {
        let [_, ny, nz] = shape;
        let want: Vec<u8> = (0..shape[0])
            .flat_map(|i| (0..ny).flat_map(move |j| (0..nz).map(move |k| label_of(i, j, k) as u8)))
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
fn multi_member_gzip_is_read_and_trailing_garbage_is_an_error() {
    use std::io::Write as _;
    let gzip = |b: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b).unwrap();
        enc.finish().unwrap()
    };
    let p = Path::new("m.nii.gz");
    let nii = small_nii(DataType::I16);
    let (a, b) = nii.split_at(100);
    let mut two = gzip(a);
    two.extend(gzip(b));
    assert_eq!(crate::nifti::gunzip(&two, p).unwrap(), nii);
    let mut junk = gzip(&nii);
    junk.extend(b"junk");
    assert!(matches!(
        crate::nifti::gunzip(&junk, p),
        Err(Error::Gzip { .. })
    ));
    // A wrong CRC is caught.
    let mut crc = gzip(&nii);
    let n = crc.len();
    crc[n - 8] ^= 1;
    assert!(matches!(
        crate::nifti::gunzip(&crc, p),
        Err(Error::Gzip { .. })
    ));
}

/// A valid small `.nii` as bytes.
pub(crate) fn small_nii(dtype: DataType) -> Vec<u8> {
    let shape = [3, 2, 2];
    let mut bytes = header(shape, dtype).to_bytes().to_vec();
    bytes.extend([0u8; 4]);
    bytes.extend(fortran_bytes(shape, dtype, false, synth));
    bytes
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

/// Values computed by nibabel (`tests/reference/io_nifti.py`) on real LA files.
#[test]
fn la2018_matches_nibabel() {
    let Some(root) = shared_data("la2018_matches_nibabel", "la2018") else {
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/io/la2018_nibabel.json");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases.as_array().unwrap() {
        let rel = case["file"].as_str().unwrap();
        let v = read_volume(root.join(rel)).unwrap();
        let shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).unwrap();
        assert_eq!(v.shape.to_vec(), shape, "{rel}");
        assert_eq!(v.dtype.name(), case["dtype"].as_str().unwrap());
        let spacing: Vec<f64> = serde_json::from_value(case["spacing"].clone()).unwrap();
        for a in 0..3 {
            assert!((v.spacing[a] - spacing[a]).abs() < 1e-6);
        }
        let affine: Vec<Vec<f64>> = serde_json::from_value(case["affine"].clone()).unwrap();
        for r in 0..4 {
            for c in 0..4 {
                assert!((v.affine[r][c] - affine[r][c]).abs() < 1e-5, "{rel} affine");
            }
        }
        let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
        let want_sum = case["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-6 * want_sum.abs().max(1.0) + 1e-2,
            "{rel}: sum {sum} vs {want_sum}"
        );
        for probe in case["probes"].as_array().unwrap() {
            let idx: Vec<usize> = serde_json::from_value(probe["index"].clone()).unwrap();
            let want = probe["value"].as_f64().unwrap();
            let got = v.data[(idx[0] * v.shape[1] + idx[1]) * v.shape[2] + idx[2]];
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "{rel} {idx:?}: {got} vs {want}"
            );
        }
        if rel.starts_with("labelsTr") {
            let labels = v.to_labels().unwrap();
            // The direct label path gives the same bytes (nibabel's probes checked above).
            assert_eq!(read_labels(root.join(rel), None).unwrap(), labels, "{rel}");
            let ones = labels.iter().filter(|&&l| l == 1).count();
            assert_eq!(ones as f64, want_sum, "{rel}");
        }
    }
}

/// The two LA h5 cases agree with their NIfTI copies voxel for voxel (h5py order = nibabel order).
#[test]
fn la2018_h5_matches_nifti() {
    let Some(h5root) = shared_data(
        "la2018_h5_matches_nifti",
        "la2018-h5-sample/2018LA_Seg_Training Set",
    ) else {
        return;
    };
    let Some(nii) = shared_data("la2018_h5_matches_nifti", "la2018") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(&h5root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let id = case.file_name().unwrap().to_string_lossy().into_owned();
        let h5 = case.join("mri_norm2.h5");
        assert_eq!(h5_dataset_names(&h5).unwrap(), vec!["image", "label"]);
        let (img, lab) = read_h5_pair(&h5).unwrap();
        assert_eq!(img.dtype, DataType::F32);
        assert_eq!(lab.dtype, DataType::U8);
        let img_nii = read_volume(nii.join(format!("imagesTr/{id}.nii.gz"))).unwrap();
        let lab_nii = read_volume(nii.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        assert_eq!(img.shape, img_nii.shape);
        let max_diff = img
            .data
            .iter()
            .zip(&img_nii.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "{id}: max |h5 - nii| = {max_diff}");
        assert_eq!(
            lab.to_labels().unwrap(),
            lab_nii.to_labels().unwrap(),
            "{id}"
        );
        assert_eq!(read_volume(&h5).unwrap().data, img.data);
        assert_eq!(
            read_labels(&h5, Some(&img)).unwrap(),
            lab.to_labels().unwrap()
        );
    }
}

/// The direct label path agrees with decode-to-f32-then-`to_labels` on real LA labels (every
/// fourth case), geometry checked against the image as [`Dataset::load`] does.
#[test]
fn la2018_direct_labels_match_the_f32_path() {
    let Some(root) = shared_data("la2018_direct_labels_match_the_f32_path", "la2018") else {
        return;
    };
    let mut labels: Vec<_> = std::fs::read_dir(root.join("labelsTr"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    labels.sort();
    assert!(labels.len() >= 4);
    for path in labels.iter().step_by(4) {
        let name = path.file_name().unwrap();
        let image = read_volume(root.join("imagesTr").join(name)).unwrap();
        let old = read_volume(path).unwrap();
        image.check_same_geometry(&old).unwrap();
        let direct = read_labels(path, Some(&image)).unwrap();
        assert_eq!(direct, old.to_labels().unwrap(), "{}", path.display());
        assert!(direct.contains(&1), "{}", path.display());
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
    let (img2, lab2) = crate::h5::read_h5_image_labels(&path).unwrap();
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
    let (img, labels) = crate::h5::read_h5_image_labels(&good).unwrap();
    assert_eq!(labels, vec![0, 1, 2, 0, 1, 255]);
    assert_eq!(read_labels(&good, Some(&img)).unwrap(), labels);
    let bad = write("bad.h5", &[0.0, 1.0, 0.5, 0.0, 1.0, 2.0]);
    let e = read_labels(&bad, None).unwrap_err();
    assert!(
        matches!(e, Error::BadLabel { index: 2, .. }) && e.to_string().contains("bad.h5"),
        "{e}"
    );
    assert!(matches!(
        crate::h5::read_h5_image_labels(&bad),
        Err(Error::BadLabel { index: 2, .. })
    ));
}

mod dataset_tests {
    use super::*;
    use crate::dataset::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Writes a tiny labeled NIfTI pair (labels `i % 3`) under `dir` with the given file names.
    fn write_pair(img: &Path, lab: &Path) {
        let shape = [4, 3, 2];
        let image =
            Volume::from_data(shape, [1.0, 1.0, 2.0], (0..24).map(|i| i as f32).collect()).unwrap();
        write_probabilities(img, shape, &image.data, &image).unwrap();
        let labels: Vec<u8> = (0..24).map(|i| (i % 3) as u8).collect();
        write_labels(lab, shape, &labels, &image).unwrap();
    }

    #[test]
    fn msd_layout_with_channel_suffix_and_missing_files() {
        let root = scratch("msd");
        std::fs::create_dir_all(root.join("imagesTr")).unwrap();
        std::fs::create_dir_all(root.join("labelsTr")).unwrap();
        write_pair(
            &root.join("imagesTr/a_0000.nii.gz"),
            &root.join("labelsTr/a.nii.gz"),
        );
        write_pair(
            &root.join("imagesTr/b.nii.gz"),
            &root.join("labelsTr/b.nii.gz"),
        );
        let json = r#"{"labels": {"0": "background", "1": "x", "2": "y"}, "training": [
            {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"},
            {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
            "test": ["./imagesTs/c.nii.gz"]}"#;
        std::fs::write(root.join("dataset.json"), json).unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::Msd);
        assert_eq!(ds.ids(), ids(&["a", "b"]));
        assert_eq!(ds.label_names["y"], 2);
        assert!(ds.split.is_none());
        assert!(ds.case("a").unwrap().image.ends_with("a_0000.nii.gz"));
        let s = ds.load("a").unwrap();
        assert_eq!(s.label.unwrap()[5], 2);
        assert_eq!(s.image.data[5], 5.0);
        // nnU-Net v2 (no "training" list): cases come from labelsTr.
        std::fs::write(root.join("dataset.json"), r#"{"file_ending": ".nii.gz"}"#).unwrap();
        std::fs::rename(
            root.join("imagesTr/b.nii.gz"),
            root.join("imagesTr/b_0000.nii.gz"),
        )
        .unwrap();
        assert_eq!(Dataset::open(&root).unwrap().ids(), ids(&["a", "b"]));
        std::fs::rename(
            root.join("imagesTr/b_0000.nii.gz"),
            root.join("imagesTr/b.nii.gz"),
        )
        .unwrap();
        assert!(matches!(
            Dataset::open(&root),
            Err(Error::MissingFile { .. })
        ));
        // A missing label named in dataset.json.
        std::fs::write(
            root.join("dataset.json"),
            json.replace("labelsTr/b.nii.gz", "labelsTr/zz.nii.gz"),
        )
        .unwrap();
        let e = Dataset::open(&root).unwrap_err();
        assert!(
            matches!(&e, Error::MissingFile { .. }) && e.to_string().contains("zz.nii.gz"),
            "{e}"
        );
        std::fs::write(root.join("dataset.json"), "{not json").unwrap();
        assert!(matches!(Dataset::open(&root), Err(Error::Dataset { .. })));
    }

    #[test]
    fn mismatched_label_geometry_is_refused() {
        let root = scratch("pairs");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("labels")).unwrap();
        write_pair(&root.join("images/p.nii"), &root.join("labels/p.nii"));
        write_pair(&root.join("images/q.nii"), &root.join("labels/other.nii"));
        let other = Volume::from_data([4, 3, 2], [1.0, 1.0, 3.0], vec![0.0; 24]).unwrap();
        write_labels(root.join("labels/r.nii"), [4, 3, 2], &[0; 24], &other).unwrap();
        write_pair(&root.join("images/r.nii"), &root.join("scratch.nii"));
        std::fs::write(root.join("train.list"), "p\nq\n").unwrap();
        std::fs::write(root.join("test.list"), "r\n").unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::Pairs);
        assert_eq!(ds.ids(), ids(&["p", "q", "r"]));
        assert!(ds.load("p").unwrap().label.is_some());
        assert!(ds.load("q").unwrap().label.is_none());
        assert!(matches!(ds.load("r"), Err(Error::GeometryMismatch { .. })));
        assert_eq!(ds.split.clone().unwrap().test, ids(&["r"]));
        std::fs::write(root.join("test.list"), "nope\n").unwrap();
        assert!(matches!(
            Dataset::open(&root),
            Err(Error::MissingFile { .. })
        ));
    }

    #[test]
    fn h5_layout_from_synthetic_files() {
        let root = scratch("h5layout");
        for id in ["X1", "X2"] {
            let dir = root.join(LA_H5_DIR).join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(LA_H5_FILE), synthetic_h5([4, 4, 3]).0).unwrap();
        }
        std::fs::write(root.join("train.list"), "X2\n").unwrap();
        std::fs::write(
            root.join("test.list"),
            "../data/2018LA_Seg_Training Set/X1/mri_norm2.h5\n",
        )
        .unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::H5);
        assert_eq!(
            ds.split.clone().unwrap(),
            Split {
                train: ids(&["X2"]),
                test: ids(&["X1"])
            }
        );
        let s = ds.load("X1").unwrap();
        assert_eq!(s.image.shape, [4, 4, 3]);
        assert_eq!(s.label.unwrap().len(), 48);
    }

    #[test]
    fn k_folds_partition_and_are_seeded() {
        let all: Vec<String> = (0..23).map(|i| format!("c{i}")).collect();
        let folds = k_folds(&all, 5, 7).unwrap();
        let mut tests: Vec<String> = folds.iter().flat_map(|f| f.test.clone()).collect();
        tests.sort();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(tests, sorted);
        for f in &folds {
            assert_eq!(f.train.len() + f.test.len(), 23);
            assert!((4..=5).contains(&f.test.len()));
            assert!(f.test.iter().all(|t| !f.train.contains(t)));
        }
        assert_eq!(folds, k_folds(&all, 5, 7).unwrap());
        assert_ne!(folds, k_folds(&all, 5, 8).unwrap());
        assert!(k_folds(&all, 1, 0).is_err());
        assert!(k_folds(&all, 24, 0).is_err());
    }

    #[test]
    fn labeled_splits_by_count_and_by_list() {
        let train = ids(&["a", "b", "c", "d"]);
        let s = split_labeled_by_count(&train, 1).unwrap();
        assert_eq!(
            (s.labeled, s.unlabeled),
            (ids(&["a"]), ids(&["b", "c", "d"]))
        );
        assert!(split_labeled_by_count(&train, 5).is_err());
        assert!(split_labeled_by_count(&train, 0).is_err());
        let s = split_labeled_by_list(&train, &ids(&["c"])).unwrap();
        assert_eq!(s.unlabeled, ids(&["a", "b", "d"]));
        assert!(split_labeled_by_list(&train, &ids(&["z"])).is_err());
    }

    #[test]
    fn real_datasets_open_with_their_splits() {
        if let Some(root) = shared_data("real_datasets_open_with_their_splits", "la2018") {
            let ds = Dataset::open(&root).unwrap();
            assert_eq!((ds.layout, ds.cases.len()), (Layout::Msd, 100));
            let split = ds.split.clone().unwrap();
            assert_eq!((split.train.len(), split.test.len()), (80, 20));
            assert_eq!(split.train, read_list(root.join("train.list")).unwrap());
            let folds = ds.folds().unwrap();
            assert_eq!(folds.len(), 5);
            assert_eq!(folds[0], split);
            let lab = split_labeled_by_count(&split.train, 16).unwrap();
            assert_eq!(lab.unlabeled.len(), 64);
            let s = ds.load(&split.test[0]).unwrap();
            assert_eq!(s.label.unwrap().len(), s.image.len());
        }
        if let Some(root) = shared_data("real_datasets_open_with_their_splits", "la2018-h5-sample")
        {
            let ds = Dataset::open(&root).unwrap();
            assert_eq!((ds.layout, ds.cases.len()), (Layout::H5, 2));
            assert!(ds.split.is_some());
        }
        if let Some(root) = shared_data("real_datasets_open_with_their_splits", "hippocampus") {
            let ds = Dataset::open(&root).unwrap();
            assert_eq!(ds.cases.len(), 208);
            assert_eq!(ds.label_names["posterior"], 2);
            // Every pair decodes, shares one geometry and has labels in {0, 1, 2}.
            let samples = crate::load_cases(&ds, &ds.ids()).unwrap();
            assert!(samples
                .iter()
                .all(|s| s.label.as_ref().unwrap().iter().all(|&l| l <= 2)));
        }
    }
}

mod preprocess_tests {
    use crate::augment::*;
    use crate::preprocess::*;
    use rand::SeedableRng;

    #[test]
    fn zscore_matches_numpy_definition_with_and_without_mask() {
        let mut v = vec![1.0f32, 2.0, 3.0, 4.0];
        zscore(&mut v, None).unwrap();
        // numpy: (x - 2.5) / x.std() with std = sqrt(1.25).
        let s = 1.25f32.sqrt();
        assert!(v
            .iter()
            .zip([-1.5f32, -0.5, 0.5, 1.5])
            .all(|(a, b)| (a - b / s).abs() < 1e-6));
        let mut v = vec![1.0f32, 3.0, 100.0];
        zscore(&mut v, Some(&[true, true, false])).unwrap();
        assert_eq!(v, vec![-1.0, 1.0, 98.0]);
        assert!(zscore(&mut v, Some(&[false; 3])).is_err());
        let mut flat = vec![5.0f32; 4];
        zscore(&mut flat, None).unwrap();
        assert_eq!(flat, vec![0.0; 4]);
    }

    #[test]
    fn ct_window_clips_and_rescales() {
        let mut v = vec![-1000.0f32, -120.0, 60.0, 240.0, 3000.0];
        ct_window(&mut v, CtWindow::default()).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        assert!(ct_window(&mut v, CtWindow { lo: 1.0, hi: 1.0 }).is_err());
    }

    #[test]
    fn bbox_crop_grows_by_margin_and_to_min_size() {
        let shape = [10, 10, 4];
        let mut lab = vec![0u8; 400];
        lab[(4 * 10 + 5) * 4 + 2] = 1;
        lab[(5 * 10 + 6) * 4 + 2] = 1;
        let bb = label_bbox(&lab, shape).unwrap().unwrap();
        assert_eq!(
            bb,
            Crop3 {
                start: [4, 5, 2],
                size: [2, 2, 1]
            }
        );
        let c = bbox_crop(&lab, shape, [1, 1, 0], [0, 0, 0]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [3, 4, 2],
                size: [4, 4, 1]
            }
        );
        // At least 6 in-plane, the whole z axis (min size 8 > 4 keeps the axis).
        let c = bbox_crop(&lab, shape, [1, 1, 0], [6, 6, 8]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [2, 3, 0],
                size: [6, 6, 4]
            }
        );
        // Near the border the box shifts inwards.
        let mut edge = vec![0u8; 400];
        edge[(9 * 10 + 9) * 4 + 3] = 1;
        let c = bbox_crop(&edge, shape, [0; 3], [4, 4, 2]).unwrap();
        assert_eq!(
            c,
            Crop3 {
                start: [6, 6, 2],
                size: [4, 4, 2]
            }
        );
        assert!(bbox_crop(&[0u8; 400], shape, [0; 3], [0; 3]).is_err());
        let data: Vec<u16> = (0..400).collect();
        let out = crop(
            &data,
            shape,
            Crop3 {
                start: [1, 2, 3],
                size: [1, 1, 1],
            },
        )
        .unwrap();
        assert_eq!(out, vec![(10 + 2) * 4 + 3]);
    }

    #[test]
    fn pad_center_puts_the_volume_in_the_middle() {
        let (out, shape, before) = pad_center(&[1u8, 2], [1, 1, 2], [3, 2, 2]).unwrap();
        assert_eq!((shape, before), ([3, 2, 2], [1, 0, 0]));
        assert_eq!(out, vec![0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]);
    }

    // import torch, torch.nn.functional as F
    // x = torch.arange(12.).reshape(1, 1, 2, 3, 2)
    // F.interpolate(x, size=(3, 4, 3), mode="trilinear", align_corners=False).ravel()
    // F.interpolate(x, size=(3, 4, 3), mode="nearest-exact").ravel()
    #[test]
    fn resize_matches_pytorch_interpolate() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let tri = resize_trilinear(&x, [2, 3, 2], [3, 4, 3]).unwrap();
        let want = [
            0.0, 0.5, 1.0, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.0, 4.5, 5.0, 3.0, 3.5, 4.0, 4.25,
            4.75, 5.25, 5.75, 6.25, 6.75, 7.0, 7.5, 8.0, 6.0, 6.5, 7.0, 7.25, 7.75, 8.25, 8.75,
            9.25, 9.75, 10.0, 10.5, 11.0,
        ];
        assert!(
            tri.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{tri:?}"
        );
        let near = resize_nearest(&x, [2, 3, 2], [3, 4, 3]).unwrap();
        let want = [
            0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 2.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0, 7.0, 7.0, 8.0, 9.0,
            9.0, 8.0, 9.0, 9.0, 10.0, 11.0, 11.0, 6.0, 7.0, 7.0, 8.0, 9.0, 9.0, 8.0, 9.0, 9.0,
            10.0, 11.0, 11.0,
        ];
        assert_eq!(near, want);
        assert_eq!(
            resampled_shape([100, 100, 40], [0.8, 0.8, 2.5], [1.0; 3]).unwrap(),
            [80, 80, 100]
        );
        assert!(resampled_shape([1, 1, 1], [0.0, 1.0, 1.0], [1.0; 3]).is_err());
        // Same shape is the identity.
        assert_eq!(resize_trilinear(&x, [2, 3, 2], [2, 3, 2]).unwrap(), x);
    }

    // import numpy as np; m = np.arange(6).reshape(2, 3, 1)
    // [np.rot90(m, k).ravel() for k in range(4)], np.flip(m, 0).ravel(), np.flip(m, 1).ravel()
    #[test]
    fn rot90_and_flip_match_numpy() {
        let p = Patch::new(
            [2, 3, 1],
            (0..6).map(|v| v as f32).collect(),
            Some((0..6).collect()),
        )
        .unwrap();
        let want: [&[f32]; 4] = [
            &[0., 1., 2., 3., 4., 5.],
            &[2., 5., 1., 4., 0., 3.],
            &[5., 4., 3., 2., 1., 0.],
            &[3., 0., 4., 1., 5., 2.],
        ];
        for k in 0..4u8 {
            let r = rot90(p.clone(), k);
            assert_eq!(r.shape, if k % 2 == 1 { [3, 2, 1] } else { [2, 3, 1] });
            assert_eq!(r.image, want[k as usize]);
            assert_eq!(
                r.label.unwrap(),
                want[k as usize]
                    .iter()
                    .map(|&v| v as u8)
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(flip(p.clone(), 0).image, vec![3., 4., 5., 0., 1., 2.]);
        assert_eq!(flip(p.clone(), 1).image, vec![2., 1., 0., 5., 4., 3.]);
        let q = Patch::new([1, 1, 3], vec![1., 2., 3.], None).unwrap();
        assert_eq!(flip(q, 2).image, vec![3., 2., 1.]);
    }

    #[test]
    fn uamt_padding_rule() {
        // 190x142x88 vs 112x112x80: no side <= crop, no padding.
        assert_eq!(uamt_padding([190, 142, 88], [112, 112, 80]), [0, 0, 0]);
        // One side equal to the crop pads every axis: (80-80)//2+3 = 3, (112-190)//2+3 < 0 -> 0.
        assert_eq!(uamt_padding([190, 142, 80], [112, 112, 80]), [0, 0, 3]);
        assert_eq!(uamt_padding([100, 142, 88], [112, 112, 80]), [9, 0, 0]);
        // Python floor division of odd negatives: (112-115)//2 = -2 -> +3 = 1.
        assert_eq!(uamt_padding([115, 100, 88], [112, 112, 80]), [1, 9, 0]);
    }

    #[test]
    fn rand_crop_is_seeded_and_keeps_image_and_label_aligned() {
        let shape = [12, 9, 7];
        let n = 12 * 9 * 7;
        let image: Vec<f32> = (0..n).map(|v| v as f32).collect();
        let label: Vec<u8> = (0..n).map(|v| (v % 251) as u8).collect();
        let p = Patch::new(shape, image, Some(label)).unwrap();
        let crop = RandCrop { size: [5, 5, 7] };
        let a = crop.apply(&mut Rng::seed_from_u64(3), p.clone()).unwrap();
        let b = crop.apply(&mut Rng::seed_from_u64(3), p.clone()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape, [5, 5, 7]);
        for (v, l) in a.image.iter().zip(a.label.as_ref().unwrap()) {
            // Padded voxels are zero in both; others keep the label of their intensity.
            assert_eq!(
                *l,
                if *v == 0.0 {
                    0
                } else {
                    (*v as usize % 251) as u8
                }
            );
        }
        // Offsets cover [0, side - size) over many seeds: never the last position (numpy randint).
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let c = RandCrop {
                size: [5, 9 - 1, 1],
            }
            .apply(&mut Rng::seed_from_u64(seed), p.clone())
            .unwrap();
            firsts.insert(c.image[0] as usize / (9 * 7));
        }
        assert_eq!(firsts, (0..7).collect());
        let rf = RandRot90Flip
            .apply(&mut Rng::seed_from_u64(1), a.clone())
            .unwrap();
        assert_eq!(rf.image.len(), a.image.len());
        let mut sorted_a = a.image.clone();
        let mut sorted_r = rf.image.clone();
        sorted_a.sort_by(f32::total_cmp);
        sorted_r.sort_by(f32::total_cmp);
        assert_eq!(sorted_a, sorted_r);
        assert!(RandCrop { size: [0, 1, 1] }
            .apply(&mut Rng::seed_from_u64(0), p)
            .is_err());
    }

    #[test]
    fn rng_state_serialises_for_resume() {
        use rand::Rng as _;
        let mut rng = Rng::seed_from_u64(9);
        let _: u64 = rng.random();
        let saved = serde_json::to_string(&rng).unwrap();
        let mut restored: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(rng.random::<u64>(), restored.random::<u64>());
    }
}

mod loader_tests {
    use std::sync::Arc;

    use crate::loader::*;
    use crate::{Sample, Volume};

    fn samples(n: usize, labeled: bool) -> Vec<Sample> {
        (0..n)
            .map(|c| {
                let shape = [10 + c, 9, 6];
                let len = shape.iter().product::<usize>();
                Sample {
                    id: format!("case{c}"),
                    image: Volume::from_data(
                        shape,
                        [1.0; 3],
                        (0..len).map(|v| (v + 1000 * c) as f32).collect(),
                    )
                    .unwrap(),
                    label: labeled.then(|| (0..len).map(|v| (v % 2) as u8).collect()),
                }
            })
            .collect()
    }

    fn cfg(workers: usize) -> LoaderConfig {
        LoaderConfig {
            patch: [8, 8, 8],
            labeled_per_batch: 2,
            unlabeled_per_batch: 2,
            rot_flip: true,
            seed: 5,
            workers,
            prefetch: 3,
        }
    }

    #[test]
    fn batches_are_deterministic_whatever_the_thread_count_and_resume_point() {
        let (lab, unl) = (Arc::new(samples(3, true)), Arc::new(samples(4, false)));
        let one: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(1), 0)
            .unwrap()
            .take(8)
            .map(|b| b.unwrap())
            .collect();
        let three: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(3), 0)
            .unwrap()
            .take(8)
            .map(|b| b.unwrap())
            .collect();
        assert!(one == three, "thread count changed the batches");
        let resumed: Vec<Batch> = Loader::new(lab.clone(), unl.clone(), cfg(2), 5)
            .unwrap()
            .take(3)
            .map(|b| b.unwrap())
            .collect();
        assert!(one[5..] == resumed[..], "resuming at 5 changed the batches");
        let b = &one[0];
        assert_eq!((b.image.len(), b.label.len()), (4 * 512, 2 * 512));
        assert_eq!(b.iteration, 0);
        assert_eq!(
            one.iter().map(|b| b.iteration).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        // Labeled cases come first and each labeled case appears once per epoch (3 cases, 2 per batch).
        let epoch: Vec<&String> = one[..3].iter().flat_map(|b| &b.ids[..2]).collect();
        let mut first = epoch[..3].to_vec();
        first.sort();
        assert_eq!(first, vec!["case0", "case1", "case2"]);
        assert!(one
            .iter()
            .all(|b| b.ids[2..].iter().all(|id| id.starts_with("case"))));
        // Another seed gives other batches.
        let mut c = cfg(1);
        c.seed = 6;
        let other = Loader::new(lab, unl, c, 0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(other != one[0]);
    }

    #[test]
    fn loader_errors_are_typed() {
        let (lab, unl) = (Arc::new(samples(2, true)), Arc::new(samples(2, false)));
        assert!(Loader::new(Arc::new(vec![]), unl.clone(), cfg(1), 0).is_err());
        let mut c = cfg(1);
        c.workers = 0;
        assert!(Loader::new(lab.clone(), unl.clone(), c, 0).is_err());
        // A "labeled" pool without labels fails when a batch is made, as an Err item.
        let mut l = Loader::new(unl.clone(), unl, cfg(2), 0).unwrap();
        assert!(l.next().unwrap().is_err());
    }
}

/// Seeded fuzzing of the NIfTI and HDF5 entry points with mutated and arbitrary bytes: every input
/// must give `Ok` or a typed error, never a panic. (Fast enough for every `cargo test`.)
mod fuzz_tests {
    use std::io::Write;
    use std::path::Path;

    use rand::{Rng as _, SeedableRng};

    use super::{small_nii, synthetic_h5};
    use crate::nifti::{decode_nifti, gunzip};
    use crate::{decode_h5, DataType, Rng};

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
            let _ = super::labels_both_ways(&bytes, p);
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
