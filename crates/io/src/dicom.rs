//! A DICOM series (one CT or MR acquisition, one file per slice) read as a [`Volume`] and written
//! as NIfTI: `duoseg convert DICOM_DIR OUT.nii.gz`. The public pancreas data (NIH Pancreas-CT) is
//! distributed this way.
//!
//! Parsing is [`dicom_object`]'s (dicom-rs); this module turns the parsed attributes into voxels
//! and geometry:
//!
//! - Files: every regular file of the folder (and its subfolders with
//!   [`DicomOptions::recursive`]). A file without the DICOM magic (`DICM` after the 128-byte
//!   preamble, or at the start) is not DICOM and is skipped, as is a DICOM object that is not an
//!   image (no `Rows` or no `SeriesInstanceUID`: a DICOMDIR, a structured report); both are
//!   counted in [`DicomSeries::skipped`]. A file with the magic that does not parse is an error.
//! - Series: files are grouped by `SeriesInstanceUID`; a folder with several series needs
//!   [`DicomOptions::series`], else the error lists them (description, modality, slice count).
//! - Order: slices are sorted by the projection of `ImagePositionPatient` on the slice normal
//!   (the cross product of the two `ImageOrientationPatient` directions), never by
//!   `InstanceNumber` or by file name.
//! - Checks: `Rows`, `Columns`, `PixelSpacing`, `ImageOrientationPatient`, `BitsAllocated`,
//!   `BitsStored`, `HighBit` and `PixelRepresentation` are the same in every slice; consecutive
//!   slices are evenly spaced within [`DicomOptions::spacing_tolerance`] of the median gap (a
//!   missing slice, a duplicate position or a variable gap is an error naming the two files); the
//!   positions lie on one line along the normal (a tilted-gantry series is refused, not resampled).
//! - Values: `RescaleSlope` / `RescaleIntercept` are applied per slice (Hounsfield units for CT).
//!   The volume is `int16` when every slope and intercept is an integer and the values fit, else
//!   `float32`.
//! - Geometry: voxel axes are (column, row, slice), so the NIfTI shape is
//!   `[Columns, Rows, slices]` and `pixdim` is (column spacing, row spacing, slice spacing), i.e.
//!   `PixelSpacing[1], PixelSpacing[0]`, then the gap between slices. DICOM positions are in LPS
//!   (x to the patient's left, y to posterior); NIfTI is RAS+, so the first two rows of the affine
//!   change sign. The sform and qform both hold that affine, with code 1 (scanner).
//!
//! Only uncompressed pixel data is read (Implicit / Explicit VR Little Endian, Explicit VR Big
//! Endian, Deflated Explicit VR Little Endian); a compressed series (JPEG, JPEG 2000, RLE) is an
//! error that says to decompress it first (`gdcmconv --raw`, `dcmdjpeg`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::value::{DicomValueType, PrimitiveValue, Value};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::fs::open_regular;
use crate::header::NiftiHeader;
use crate::nifti::{c_to_fortran, write_nifti_bytes};
use crate::volume::{check_len, Volume};

/// How [`read_dicom_series`] finds and checks a series.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomOptions {
    /// The `SeriesInstanceUID` to read; `None` reads the folder's only series.
    pub series: Option<String>,
    /// Also read the files of subfolders (symbolic links to folders are not followed).
    pub recursive: bool,
    /// Largest allowed difference between a slice gap and the median gap, as a fraction of the
    /// median gap (default 0.05). A missing slice (a gap twice the others) is always refused.
    pub spacing_tolerance: f64,
}

impl Default for DicomOptions {
    fn default() -> Self {
        Self {
            series: None,
            recursive: false,
            spacing_tolerance: 0.05,
        }
    }
}

/// One series of a DICOM folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// `SeriesInstanceUID`.
    pub uid: String,
    /// `SeriesDescription` (empty when absent).
    pub description: String,
    /// `Modality` (`CT`, `MR`, ...; empty when absent).
    pub modality: String,
    /// Number of image files of the series.
    pub slices: usize,
}

/// A DICOM series read as a volume by [`read_dicom_series`].
#[derive(Debug, Clone)]
pub struct DicomSeries {
    /// The voxels (rescaled: Hounsfield units for CT), C order over (column, row, slice), with
    /// the RAS+ affine; `dtype` is `I16` or `F32`, `nifti` the header it is written with and
    /// `path` the folder.
    pub volume: Volume,
    /// The series that was read.
    pub info: SeriesInfo,
    /// Files skipped because they are not DICOM or not DICOM images, sorted.
    pub skipped: Vec<PathBuf>,
    /// The largest difference between a slice gap and the gap written in `pixdim` (mm): 0 for a
    /// perfectly regular series, at most `spacing_tolerance` times the gap.
    pub max_gap_error: f64,
}

impl DicomSeries {
    /// Writes the volume as NIfTI-1 (`.nii`, or gzip for `.nii.gz`) atomically, in its data type
    /// (`int16` or `float32`), with the series' affine as sform and qform.
    pub fn write_nifti(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        check_nifti_name(path)?;
        let v = &self.volume;
        check_len(&format!("volume for {}", path.display()), v.len(), v.shape)?;
        // From the fields, not `v.nifti`: they are public and may have been changed.
        let header = series_header(v.shape, v.spacing, &v.affine, v.dtype)?;
        let fortran = c_to_fortran(&v.data, v.shape);
        let bytes: Vec<u8> = match v.dtype {
            DataType::I16 => {
                let fits = |x: f32| x.fract() == 0.0 && (-32768.0..=32767.0).contains(&x);
                if let Some((index, &value)) = v.data.iter().enumerate().find(|(_, &x)| !fits(x)) {
                    return Err(Error::Invalid(format!(
                        "{}: value {value} at voxel {index} is not an int16",
                        path.display()
                    )));
                }
                fortran
                    .iter()
                    .flat_map(|&x| (x as i16).to_le_bytes())
                    .collect()
            }
            DataType::F32 => fortran.iter().flat_map(|&x| x.to_le_bytes()).collect(),
            other => {
                return Err(Error::Invalid(format!(
                    "{}: a DICOM volume is written as int16 or float32, not {other}",
                    path.display()
                )))
            }
        };
        write_nifti_bytes(path, &header, &bytes)
    }
}

/// Reads a DICOM folder's series ([`read_dicom_series`]) and writes it to `out` (`.nii` or
/// `.nii.gz`, atomically). The output name is checked before anything is read.
pub fn convert_dicom(dir: &Path, out: &Path, opts: &DicomOptions) -> Result<DicomSeries> {
    check_nifti_name(out)?;
    let series = read_dicom_series(dir, opts)?;
    series.write_nifti(out)?;
    Ok(series)
}

/// Reads one series of the DICOM files in `dir` as a volume: grouped by `SeriesInstanceUID`,
/// sorted along the slice normal, checked for consistent geometry and even spacing, rescaled, with
/// a RAS+ affine (see the module docs).
pub fn read_dicom_series(dir: &Path, opts: &DicomOptions) -> Result<DicomSeries> {
    if !(opts.spacing_tolerance.is_finite() && (0.0..1.0).contains(&opts.spacing_tolerance)) {
        return Err(Error::Invalid(format!(
            "spacing tolerance {} must be a fraction of the slice gap in [0, 1)",
            opts.spacing_tolerance
        )));
    }
    let mut files = Vec::new();
    list_files(dir, opts.recursive, &mut files)?;
    files.sort();

    let mut skipped = Vec::new();
    // SeriesInstanceUID -> headers (pixel data not read) of its files.
    let mut by_series: BTreeMap<String, Vec<(PathBuf, Header)>> = BTreeMap::new();
    for path in files {
        match read_header(&path)? {
            Some(header) => match image_series_uid(&header.obj) {
                Some(uid) => by_series.entry(uid).or_default().push((path, header)),
                None => skipped.push(path),
            },
            None => skipped.push(path),
        }
    }

    let infos: Vec<SeriesInfo> = by_series
        .iter()
        .map(|(uid, files)| SeriesInfo {
            uid: uid.clone(),
            description: text(&files[0].1.obj, tags::SERIES_DESCRIPTION),
            modality: text(&files[0].1.obj, tags::MODALITY),
            slices: files.len(),
        })
        .collect();
    let series_err = |reason: String| Error::DicomSeries {
        dir: dir.to_path_buf(),
        reason,
    };
    let info = match (&opts.series, infos.len()) {
        (_, 0) => {
            let hint = if opts.recursive {
                ""
            } else {
                " (subfolders are read only when recursive)"
            };
            return Err(series_err(format!(
                "no DICOM image files ({} files skipped as not DICOM images){hint}",
                skipped.len()
            )));
        }
        (None, 1) => infos[0].clone(),
        (None, n) => {
            return Err(series_err(format!(
                "{n} DICOM series, pick one by SeriesInstanceUID (duoseg convert --series UID): {}",
                list_series(&infos)
            )))
        }
        (Some(uid), _) => match infos.iter().find(|i| &i.uid == uid) {
            Some(info) => info.clone(),
            None => {
                return Err(series_err(format!(
                    "no DICOM series {uid}; found: {}",
                    list_series(&infos)
                )))
            }
        },
    };
    let files = by_series.remove(&info.uid).unwrap_or_default();
    let slices = files
        .iter()
        .map(|(path, header)| SliceHeader::parse(path, header))
        .collect::<Result<Vec<_>>>()?;
    let stack = stack_slices(dir, slices, opts.spacing_tolerance)?;
    let volume = read_voxels(dir, &stack)?;
    Ok(DicomSeries {
        volume,
        info,
        skipped,
        max_gap_error: stack.max_gap_error,
    })
}

/// `uid ("description", CT, 6 slices), ...` for error messages.
fn list_series(infos: &[SeriesInfo]) -> String {
    infos
        .iter()
        .map(|i| {
            format!(
                "{} ({:?}, {}, {} slices)",
                i.uid,
                i.description,
                if i.modality.is_empty() {
                    "no modality"
                } else {
                    &i.modality
                },
                i.slices
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_nifti_name(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: the output of a DICOM conversion must end in .nii or .nii.gz",
            path.display()
        )))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The regular files of `dir` (and of its subfolders when `recursive`), symbolic links to files
/// included, links to folders not followed (no cycles); FIFOs, sockets and devices are left out.
fn list_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io_err(&path, e))?;
        if kind.is_dir() {
            if recursive {
                list_files(&path, recursive, out)?;
            }
        } else if kind.is_file() {
            out.push(path);
        } else if kind.is_symlink() {
            // A dangling link or a link to something else than a file is not a slice.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// The error chain of a dicom-rs error on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let t = e.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = e.source();
    }
    text
}

/// Opens `path` and, when it starts like a DICOM file, parses it with dicom-rs (up to the pixel
/// data when `header_only`). `Ok(None)`: not DICOM.
fn open_dicom(path: &Path, header_only: bool) -> Result<Option<dicom_object::DefaultDicomObject>> {
    let mut file = open_regular(path)?;
    let mut head = Vec::with_capacity(132);
    (&mut file)
        .take(132)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    let preamble = if head.len() == 132 && &head[128..132] == b"DICM" {
        ReadPreamble::Always
    } else if head.starts_with(b"DICM") {
        ReadPreamble::Never
    } else {
        return Ok(None);
    };
    let reader = std::io::Cursor::new(head).chain(file);
    let mut options = OpenFileOptions::new().read_preamble(preamble);
    if header_only {
        options = options.read_until(tags::PIXEL_DATA);
    }
    options
        .from_reader(reader)
        .map(Some)
        .map_err(|e| Error::Dicom {
            path: path.to_path_buf(),
            reason: chain(&e),
        })
}

/// The attributes of a DICOM file up to its pixel data, and its transfer syntax.
struct Header {
    obj: InMemDicomObject,
    transfer_syntax: String,
}

/// The attributes of a DICOM file up to its pixel data; `None` when it is not DICOM.
fn read_header(path: &Path) -> Result<Option<Header>> {
    let Some(obj) = open_dicom(path, true)? else {
        return Ok(None);
    };
    let transfer_syntax = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    Ok(Some(Header {
        obj: obj.into_inner(),
        transfer_syntax,
    }))
}

/// Implicit VR Little Endian, Explicit VR Little Endian, Deflated Explicit VR Little Endian,
/// Explicit VR Big Endian: the transfer syntaxes whose pixel data is stored uncompressed.
const NATIVE_SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
];

/// The `SeriesInstanceUID` of an image object (one with `Rows`); `None` for other objects.
fn image_series_uid(obj: &InMemDicomObject) -> Option<String> {
    obj.get(tags::ROWS)?;
    let uid = text(obj, tags::SERIES_INSTANCE_UID);
    (!uid.is_empty()).then_some(uid)
}

/// A string attribute without its padding; empty when absent or not text.
fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// `Keyword (gggg,eeee)` for messages.
fn tag_name(tag: Tag) -> String {
    let name = match tag {
        tags::ROWS => "Rows",
        tags::COLUMNS => "Columns",
        tags::PIXEL_SPACING => "PixelSpacing",
        tags::IMAGE_ORIENTATION_PATIENT => "ImageOrientationPatient",
        tags::IMAGE_POSITION_PATIENT => "ImagePositionPatient",
        tags::BITS_ALLOCATED => "BitsAllocated",
        tags::BITS_STORED => "BitsStored",
        tags::HIGH_BIT => "HighBit",
        tags::PIXEL_REPRESENTATION => "PixelRepresentation",
        tags::SAMPLES_PER_PIXEL => "SamplesPerPixel",
        tags::PHOTOMETRIC_INTERPRETATION => "PhotometricInterpretation",
        tags::NUMBER_OF_FRAMES => "NumberOfFrames",
        tags::RESCALE_SLOPE => "RescaleSlope",
        tags::RESCALE_INTERCEPT => "RescaleIntercept",
        tags::SLICE_THICKNESS => "SliceThickness",
        tags::SPACING_BETWEEN_SLICES => "SpacingBetweenSlices",
        tags::PIXEL_DATA => "PixelData",
        _ => "",
    };
    format!("{name} ({:04X},{:04X})", tag.group(), tag.element())
        .trim_start()
        .to_string()
}

fn tag_err(path: &Path, tag: Tag, reason: impl Into<String>) -> Error {
    Error::DicomTag {
        path: path.to_path_buf(),
        tag: tag_name(tag),
        reason: reason.into(),
    }
}

/// The numbers of a (multi-valued) numeric attribute; `None` when absent.
fn numbers(path: &Path, obj: &InMemDicomObject, tag: Tag) -> Result<Option<Vec<f64>>> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    let v = e
        .to_multi_float64()
        .map_err(|err| tag_err(path, tag, format!("not a number: {}", chain(&err))))?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(tag_err(path, tag, format!("value {bad} is not finite")));
    }
    Ok(Some(v))
}

/// Exactly `N` numbers of a required attribute.
fn required<const N: usize>(path: &Path, obj: &InMemDicomObject, tag: Tag) -> Result<[f64; N]> {
    let v = numbers(path, obj, tag)?.ok_or_else(|| tag_err(path, tag, "missing"))?;
    <[f64; N]>::try_from(v.as_slice())
        .map_err(|_| tag_err(path, tag, format!("{} values, expected {N}", v.len())))
}

/// One number of an optional attribute.
fn optional(path: &Path, obj: &InMemDicomObject, tag: Tag) -> Result<Option<f64>> {
    match numbers(path, obj, tag)? {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => Ok(Some(v[0])),
    }
}

/// An unsigned integer attribute (US, IS); `default` when absent.
fn uint(path: &Path, obj: &InMemDicomObject, tag: Tag, default: Option<u32>) -> Result<u32> {
    match optional(path, obj, tag)? {
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) => Ok(v as u32),
        Some(v) => Err(tag_err(
            path,
            tag,
            format!("{v} is not a non-negative integer"),
        )),
        None => default.ok_or_else(|| tag_err(path, tag, "missing")),
    }
}

/// What the volume needs from one slice's attributes.
#[derive(Debug, Clone)]
struct SliceHeader {
    path: PathBuf,
    rows: usize,
    cols: usize,
    /// `PixelSpacing`: (between rows, between columns), mm.
    pixel_spacing: [f64; 2],
    /// `ImageOrientationPatient`: the row direction (increasing column index), then the column
    /// direction (increasing row index), LPS.
    orientation: [f64; 6],
    /// `ImagePositionPatient`: the centre of the first voxel, LPS, mm.
    position: [f64; 3],
    bits_allocated: u32,
    bits_stored: u32,
    high_bit: u32,
    signed: bool,
    slope: f64,
    intercept: f64,
    /// `SpacingBetweenSlices`, else `SliceThickness`: the slice spacing of a one-slice series.
    thickness: Option<f64>,
}

impl SliceHeader {
    fn parse(path: &Path, header: &Header) -> Result<Self> {
        let ts = header.transfer_syntax.as_str();
        if !NATIVE_SYNTAXES.contains(&ts) {
            return Err(Error::Dicom {
                path: path.to_path_buf(),
                reason: format!(
                    "pixel data is compressed (transfer syntax {ts}); only uncompressed DICOM is \
                     read: decompress the series first, e.g. `gdcmconv --raw IN OUT` or \
                     `dcmdjpeg IN OUT`"
                ),
            });
        }
        let obj = &header.obj;
        let samples = uint(path, obj, tags::SAMPLES_PER_PIXEL, Some(1))?;
        if samples != 1 {
            return Err(tag_err(
                path,
                tags::SAMPLES_PER_PIXEL,
                format!("{samples} samples per pixel: only grey-level images are read"),
            ));
        }
        let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION);
        if !(photometric.is_empty() || photometric.starts_with("MONOCHROME")) {
            return Err(tag_err(
                path,
                tags::PHOTOMETRIC_INTERPRETATION,
                format!("{photometric}: only MONOCHROME1 / MONOCHROME2 images are read"),
            ));
        }
        let frames = uint(path, obj, tags::NUMBER_OF_FRAMES, Some(1))?;
        if frames != 1 {
            return Err(tag_err(
                path,
                tags::NUMBER_OF_FRAMES,
                format!("{frames} frames: multi-frame objects are not read, one file per slice is"),
            ));
        }
        let rows = uint(path, obj, tags::ROWS, None)? as usize;
        let cols = uint(path, obj, tags::COLUMNS, None)? as usize;
        if rows == 0 || cols == 0 {
            return Err(tag_err(
                path,
                tags::ROWS,
                format!("empty image {rows}x{cols}"),
            ));
        }
        let pixel_spacing = required::<2>(path, obj, tags::PIXEL_SPACING)?;
        if pixel_spacing.iter().any(|&s| s <= 0.0) {
            return Err(tag_err(
                path,
                tags::PIXEL_SPACING,
                format!("{pixel_spacing:?} is not positive"),
            ));
        }
        let orientation = required::<6>(path, obj, tags::IMAGE_ORIENTATION_PATIENT)?;
        let position = required::<3>(path, obj, tags::IMAGE_POSITION_PATIENT)?;
        let bits_allocated = uint(path, obj, tags::BITS_ALLOCATED, None)?;
        if ![8, 16, 32].contains(&bits_allocated) {
            return Err(tag_err(
                path,
                tags::BITS_ALLOCATED,
                format!("{bits_allocated} bits: only 8, 16 and 32 are read"),
            ));
        }
        let bits_stored = uint(path, obj, tags::BITS_STORED, Some(bits_allocated))?;
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(tag_err(
                path,
                tags::BITS_STORED,
                format!("{bits_stored} bits stored in {bits_allocated} allocated"),
            ));
        }
        let high_bit = uint(path, obj, tags::HIGH_BIT, Some(bits_stored - 1))?;
        if high_bit >= bits_allocated || high_bit + 1 < bits_stored {
            return Err(tag_err(
                path,
                tags::HIGH_BIT,
                format!("high bit {high_bit} with {bits_stored} of {bits_allocated} bits stored"),
            ));
        }
        let signed = match uint(path, obj, tags::PIXEL_REPRESENTATION, Some(0))? {
            0 => false,
            1 => true,
            other => {
                return Err(tag_err(
                    path,
                    tags::PIXEL_REPRESENTATION,
                    format!("{other}, expected 0 (unsigned) or 1 (signed)"),
                ))
            }
        };
        let slope = optional(path, obj, tags::RESCALE_SLOPE)?.unwrap_or(1.0);
        if slope == 0.0 {
            return Err(tag_err(path, tags::RESCALE_SLOPE, "0"));
        }
        let intercept = optional(path, obj, tags::RESCALE_INTERCEPT)?.unwrap_or(0.0);
        let thickness = match optional(path, obj, tags::SPACING_BETWEEN_SLICES)? {
            Some(s) if s > 0.0 => Some(s),
            _ => optional(path, obj, tags::SLICE_THICKNESS)?.filter(|&s| s > 0.0),
        };
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            cols,
            pixel_spacing,
            orientation,
            position,
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
            slope,
            intercept,
            thickness,
        })
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// The slices of a series in order along the normal, with the volume's geometry.
struct Stack {
    slices: Vec<SliceHeader>,
    /// `[Columns, Rows, slices]`.
    shape: [usize; 3],
    /// (column spacing, row spacing, slice spacing), mm.
    spacing: [f64; 3],
    /// Voxel (column, row, slice) -> RAS+ mm.
    affine: [[f64; 4]; 4],
    max_gap_error: f64,
}

/// Relative tolerance for attributes that must agree between slices (orientation cosines,
/// pixel spacing), and for the orthonormality of the orientation.
const SAME: f64 = 1e-4;

/// Sorts the slices along the slice normal and checks that they form one regular volume.
fn stack_slices(dir: &Path, mut slices: Vec<SliceHeader>, tolerance: f64) -> Result<Stack> {
    let first = slices[0].clone();
    let o = first.orientation;
    let (row_dir, col_dir) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let orthonormal = (dot(row_dir, row_dir) - 1.0).abs() < 1e-3
        && (dot(col_dir, col_dir) - 1.0).abs() < 1e-3
        && dot(row_dir, col_dir).abs() < 1e-3;
    if !orthonormal {
        return Err(tag_err(
            &first.path,
            tags::IMAGE_ORIENTATION_PATIENT,
            format!("{o:?} are not two orthogonal unit vectors"),
        ));
    }
    let normal = cross(row_dir, col_dir);

    for s in &slices[1..] {
        let inconsistent = |tag: Tag, found: String, expected: String| Error::DicomInconsistent {
            path: s.path.clone(),
            tag: tag_name(tag),
            reason: format!("{found}, but {} has {expected}", first.path.display()),
        };
        let pairs: [(Tag, u64, u64); 6] = [
            (tags::ROWS, s.rows as u64, first.rows as u64),
            (tags::COLUMNS, s.cols as u64, first.cols as u64),
            (
                tags::BITS_ALLOCATED,
                s.bits_allocated.into(),
                first.bits_allocated.into(),
            ),
            (
                tags::BITS_STORED,
                s.bits_stored.into(),
                first.bits_stored.into(),
            ),
            (tags::HIGH_BIT, s.high_bit.into(), first.high_bit.into()),
            (
                tags::PIXEL_REPRESENTATION,
                s.signed.into(),
                first.signed.into(),
            ),
        ];
        for (tag, found, expected) in pairs {
            if found != expected {
                return Err(inconsistent(tag, found.to_string(), expected.to_string()));
            }
        }
        let differs = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .any(|(x, y)| (x - y).abs() > SAME * x.abs().max(y.abs()).max(1.0))
        };
        if differs(&s.pixel_spacing, &first.pixel_spacing) {
            return Err(inconsistent(
                tags::PIXEL_SPACING,
                format!("{:?}", s.pixel_spacing),
                format!("{:?}", first.pixel_spacing),
            ));
        }
        if differs(&s.orientation, &first.orientation) {
            return Err(inconsistent(
                tags::IMAGE_ORIENTATION_PATIENT,
                format!("{:?}", s.orientation),
                format!("{:?}", first.orientation),
            ));
        }
    }

    // Position along the normal; ties are caught as duplicate positions below.
    let along = |s: &SliceHeader| dot(s.position, normal);
    slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
    let n = slices.len();
    let (step, spacing_z, max_gap_error) = if n == 1 {
        let t = first.thickness.unwrap_or(1.0);
        (normal.map(|c| c * t), t, 0.0)
    } else {
        let gaps: Vec<f64> = slices
            .windows(2)
            .map(|w| along(&w[1]) - along(&w[0]))
            .collect();
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let spacing_err = |k: usize, what: String| Error::DicomSliceSpacing {
            dir: dir.to_path_buf(),
            reason: format!(
                "slice gap of {:.4} mm between {} and {} (positions {:.4} and {:.4} mm along the \
                 slice normal), the other gaps are {median:.4} mm: {what}",
                gaps[k],
                slices[k].path.display(),
                slices[k + 1].path.display(),
                along(&slices[k]),
                along(&slices[k + 1]),
            ),
        };
        // Two slices closer than this are at one position (a duplicate, or a second stack).
        let same_position = 1e-3_f64.max(0.01 * median);
        if let Some(k) = gaps.iter().position(|&g| g < same_position) {
            return Err(spacing_err(
                k,
                "two slices at one position (a duplicate file, or two acquisitions in one \
                 series)"
                    .to_string(),
            ));
        }
        if let Some(k) = gaps
            .iter()
            .position(|&g| (g - median).abs() > tolerance * median)
        {
            let ratio = gaps[k] / median;
            let missing = ratio.round();
            let what = if missing >= 2.0 && (ratio - missing).abs() <= tolerance.max(0.05) {
                format!("about {} missing slice(s)", missing as usize - 1)
            } else {
                format!(
                    "uneven slice spacing, more than {:.1} % off (the spacing tolerance)",
                    100.0 * tolerance
                )
            };
            return Err(spacing_err(k, what));
        }
        // The positions must lie on one line along the normal: a tilted gantry shears the stack.
        let p0 = slices[0].position;
        for s in &slices[1..] {
            let d = [0, 1, 2].map(|a| s.position[a] - p0[a]);
            let t = dot(d, normal);
            let off = [0, 1, 2].map(|a| d[a] - t * normal[a]);
            let off = dot(off, off).sqrt();
            if off > 1e-3_f64.max(tolerance * median) {
                return Err(Error::DicomSliceSpacing {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "{} is {off:.4} mm off the line of {} along the slice normal (gantry tilt \
                         or a sheared stack): not converted, resample it first",
                        s.path.display(),
                        slices[0].path.display()
                    ),
                });
            }
        }
        let last = slices[n - 1].position;
        let step = [0, 1, 2].map(|a| (last[a] - p0[a]) / (n - 1) as f64);
        let spacing_z = dot(step, step).sqrt();
        let max_gap_error = gaps
            .iter()
            .map(|g| (g - spacing_z).abs())
            .fold(0.0, f64::max);
        (step, spacing_z, max_gap_error)
    };

    let [row_spacing, col_spacing] = first.pixel_spacing;
    let origin = slices[0].position;
    // Columns of the LPS affine: along i (a row, column spacing), along j (a column, row
    // spacing), along k (the slice step), then the first voxel's centre.
    let lps_cols = [
        row_dir.map(|c| c * col_spacing),
        col_dir.map(|c| c * row_spacing),
        step,
        origin,
    ];
    let mut affine = [[0.0; 4]; 4];
    for (c, col) in lps_cols.iter().enumerate() {
        for r in 0..3 {
            // LPS -> RAS: x and y change sign.
            affine[r][c] = if r < 2 { -col[r] } else { col[r] };
        }
    }
    affine[3][3] = 1.0;
    Ok(Stack {
        shape: [first.cols, first.rows, n],
        spacing: [col_spacing, row_spacing, spacing_z],
        affine,
        max_gap_error,
        slices,
    })
}

/// The header the volume is written with: int16 or float32, sform = qform = `affine`, code 1.
fn series_header(
    shape: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    dtype: DataType,
) -> Result<NiftiHeader> {
    let mut h = NiftiHeader::new_3d(shape, spacing, affine, dtype)?;
    let descrip = b"duoseg convert: DICOM series";
    h.descrip[..descrip.len()].copy_from_slice(descrip);
    Ok(h)
}

/// The Pixel Data of a native (uncompressed) file as a little-endian byte stream, whatever the
/// transfer syntax's byte order (dicom-rs decodes OW words in the file's order).
fn pixel_bytes<'a>(path: &Path, value: &'a Value<InMemDicomObject>) -> Result<Cow<'a, [u8]>> {
    macro_rules! le {
        ($v:expr) => {
            Cow::Owned($v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
    }
    let prim = match value {
        Value::Primitive(p) => p,
        Value::PixelSequence(_) => {
            return Err(Error::Dicom {
                path: path.to_path_buf(),
                reason: "encapsulated (compressed) pixel data: decompress the series first"
                    .to_string(),
            })
        }
        Value::Sequence(_) => {
            return Err(tag_err(
                path,
                tags::PIXEL_DATA,
                "a sequence, not pixel data",
            ))
        }
    };
    Ok(match prim {
        PrimitiveValue::U8(v) => Cow::Borrowed(&v[..]),
        PrimitiveValue::U16(v) => le!(v),
        PrimitiveValue::I16(v) => le!(v),
        PrimitiveValue::U32(v) => le!(v),
        PrimitiveValue::I32(v) => le!(v),
        PrimitiveValue::Empty => Cow::Borrowed(&[][..]),
        other => {
            return Err(tag_err(
                path,
                tags::PIXEL_DATA,
                format!("holds {:?} values, not pixel samples", other.value_type()),
            ))
        }
    })
}

/// Reads every slice's pixel data into the volume, rescaled, and picks the data type.
fn read_voxels(dir: &Path, stack: &Stack) -> Result<Volume> {
    let [nx, ny, nz] = stack.shape;
    let n = nx
        .checked_mul(ny)
        .and_then(|v| v.checked_mul(nz))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: shape {:?} overflows",
                dir.display(),
                stack.shape
            ))
        })?;
    let mut data = vec![0f32; n];
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut integral = true;
    for (k, s) in stack.slices.iter().enumerate() {
        let obj = open_dicom(&s.path, false)?.ok_or_else(|| Error::Dicom {
            path: s.path.clone(),
            reason: "no longer a DICOM file (changed while being read)".to_string(),
        })?;
        let elem = obj
            .get(tags::PIXEL_DATA)
            .ok_or_else(|| tag_err(&s.path, tags::PIXEL_DATA, "missing"))?;
        let bytes = pixel_bytes(&s.path, elem.value())?;
        let size = (s.bits_allocated / 8) as usize;
        let need = nx * ny * size;
        // An odd 8-bit frame is padded to an even length: more bytes are fine, fewer are not.
        if bytes.len() < need {
            return Err(tag_err(
                &s.path,
                tags::PIXEL_DATA,
                format!(
                    "{} bytes, {}x{} pixels of {} bits need {need}",
                    bytes.len(),
                    s.rows,
                    s.cols,
                    s.bits_allocated
                ),
            ));
        }
        integral &= s.slope.fract() == 0.0 && s.intercept.fract() == 0.0;
        let shift = s.high_bit + 1 - s.bits_stored;
        let mask: u64 = (1u64 << s.bits_stored) - 1;
        let sign_bit: u64 = 1u64 << (s.bits_stored - 1);
        let sample = |b: &[u8]| -> f64 {
            let raw = match size {
                1 => u64::from(b[0]),
                2 => u64::from(u16::from_le_bytes([b[0], b[1]])),
                _ => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            };
            let v = (raw >> shift) & mask;
            let v = if s.signed && v & sign_bit != 0 {
                v as i64 - (1i64 << s.bits_stored)
            } else {
                v as i64
            };
            v as f64 * s.slope + s.intercept
        };
        // DICOM frames are row-major: pixel (row j, column i) at j * Columns + i.
        for j in 0..ny {
            for i in 0..nx {
                let p = (j * nx + i) * size;
                let v = sample(&bytes[p..p + size]);
                lo = lo.min(v);
                hi = hi.max(v);
                data[(i * ny + j) * nz + k] = v as f32;
            }
        }
    }
    let fits_i16 = lo >= f64::from(i16::MIN) && hi <= f64::from(i16::MAX);
    let dtype = if integral && fits_i16 {
        DataType::I16
    } else {
        DataType::F32
    };
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFinite {
            path: dir.to_path_buf(),
            index,
            value,
        });
    }
    let header = series_header(stack.shape, stack.spacing, &stack.affine, dtype)?;
    Ok(Volume {
        shape: stack.shape,
        spacing: stack.spacing,
        affine: stack.affine,
        dtype,
        data,
        path: Some(dir.to_path_buf()),
        nifti: Some(header),
    })
}

#[cfg(test)]
mod tests {
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{dicom_value, DataElement, VR};
    use dicom_dictionary_std::uids;
    use dicom_object::meta::FileMetaTableBuilder;

    use super::*;
    use crate::testutil::scratch;

    /// One generated slice: a CT image of `rows` x `cols` stored samples (row-major).
    #[derive(Clone)]
    struct Slice {
        series: &'static str,
        description: &'static str,
        instance: i32,
        rows: u16,
        cols: u16,
        spacing: [&'static str; 2],
        orientation: [f64; 6],
        position: [f64; 3],
        slope: &'static str,
        intercept: &'static str,
        bits_stored: u16,
        signed: bool,
        samples: Vec<u16>,
        transfer_syntax: &'static str,
    }

    const SERIES: &str = "1.2.826.0.1.3680043.8.498.1";

    impl Slice {
        fn ct(position: [f64; 3], samples: Vec<u16>) -> Self {
            Self {
                series: SERIES,
                description: "abdomen venous",
                instance: 1,
                rows: 10,
                cols: 8,
                spacing: ["0.7", "0.8"],
                orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                position,
                slope: "1",
                intercept: "-1024",
                bits_stored: 16,
                signed: true,
                samples,
                transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN,
            }
        }

        fn object(&self) -> InMemDicomObject {
            let ds = |v: f64| format!("{v}");
            let sop = format!("{}.{}", self.series, self.instance + 1000);
            let mut obj = InMemDicomObject::from_element_iter([
                DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
                DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str()),
                DataElement::new(tags::MODALITY, VR::CS, "CT"),
                DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, self.description),
                DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, self.series),
                DataElement::new(
                    tags::INSTANCE_NUMBER,
                    VR::IS,
                    self.instance.to_string().as_str(),
                ),
                DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(self.position.iter().map(|&v| ds(v)).collect()),
                ),
                DataElement::new(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(self.orientation.iter().map(|&v| ds(v)).collect()),
                ),
                DataElement::new(tags::SLICE_THICKNESS, VR::DS, "2.5"),
                DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
                DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.rows)),
                DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.cols)),
                DataElement::new(
                    tags::PIXEL_SPACING,
                    VR::DS,
                    dicom_value!(Strs, [self.spacing[0], self.spacing[1]]),
                ),
                DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
                DataElement::new(
                    tags::BITS_STORED,
                    VR::US,
                    PrimitiveValue::from(self.bits_stored),
                ),
                DataElement::new(
                    tags::HIGH_BIT,
                    VR::US,
                    PrimitiveValue::from(self.bits_stored - 1),
                ),
                DataElement::new(
                    tags::PIXEL_REPRESENTATION,
                    VR::US,
                    PrimitiveValue::from(u16::from(self.signed)),
                ),
                DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, self.intercept),
                DataElement::new(tags::RESCALE_SLOPE, VR::DS, self.slope),
            ]);
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(self.samples.iter().copied().collect()),
            ));
            obj
        }

        fn write(&self, path: &Path) {
            write_object(self.object(), self.transfer_syntax, path);
        }
    }

    fn write_object(obj: InMemDicomObject, transfer_syntax: &str, path: &Path) {
        obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax))
            .unwrap()
            .write_to_file(path)
            .unwrap();
    }

    /// The stored sample of voxel (column i, row j) of slice k: distinct for every voxel, spread
    /// over [0, 3000] (-1024 .. 1976 HU after the intercept).
    fn sample(i: usize, j: usize, k: usize) -> u16 {
        ((i * 37 + j * 101 + k * 523) % 3001) as u16
    }

    fn samples(rows: usize, cols: usize, k: usize) -> Vec<u16> {
        (0..rows)
            .flat_map(|j| (0..cols).map(move |i| sample(i, j, k)))
            .collect()
    }

    /// Six axial slices 2.5 mm apart from z = -30 mm, written in shuffled file order with
    /// instance numbers that do not follow the position.
    fn axial_series(dir: &Path) -> Vec<Slice> {
        let order = [3usize, 0, 5, 1, 4, 2];
        let instance = [6, 2, 4, 1, 5, 3];
        let mut out = Vec::new();
        for (file, &k) in order.iter().enumerate() {
            let mut s = Slice::ct([-100.5, -80.25, -30.0 + 2.5 * k as f64], samples(10, 8, k));
            s.instance = instance[k];
            s.write(&dir.join(format!("IM{file:03}")));
            out.push(s);
        }
        out
    }

    fn assert_close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() < 1e-4, "{what}: {got} != {want}");
    }

    #[test]
    fn an_axial_ct_series_converts_to_hounsfield_int16_with_the_ras_affine() {
        let dir = scratch("dicom-axial");
        let src = dir.join("series");
        std::fs::create_dir(&src).unwrap();
        axial_series(&src);
        let out = dir.join("ct.nii.gz");
        let series = convert_dicom(&src, &out, &DicomOptions::default()).unwrap();
        assert_eq!(series.info.uid, SERIES);
        assert_eq!(series.info.slices, 6);
        assert_eq!(series.info.modality, "CT");
        assert!(series.skipped.is_empty());
        assert_eq!(series.max_gap_error, 0.0);

        let v = crate::read_volume(&out).unwrap();
        // (Columns, Rows, slices) and (column spacing = PixelSpacing[1], row spacing, gap).
        assert_eq!(v.shape, [8, 10, 6]);
        assert_eq!(v.dtype, DataType::I16);
        for (a, want) in [0.8, 0.7, 2.5].into_iter().enumerate() {
            assert_close(v.spacing[a], want, "spacing");
        }
        for i in 0..8 {
            for j in 0..10 {
                for k in 0..6 {
                    let hu = f32::from(sample(i, j, k)) - 1024.0;
                    assert_eq!(v.data[(i * 10 + j) * 6 + k], hu, "voxel ({i}, {j}, {k})");
                }
            }
        }
        // LPS first voxel (-100.5, -80.25, -30) is RAS (100.5, 80.25, -30); the row direction
        // +x (LPS) is -x (RAS), the column direction +y (LPS) is -y (RAS), the slices go +z.
        let want = [
            [-0.8, 0.0, 0.0, 100.5],
            [0.0, -0.7, 0.0, 80.25],
            [0.0, 0.0, 2.5, -30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let h = v.nifti.clone().unwrap();
        assert_eq!((h.sform_code, h.qform_code), (1, 1));
        let mut qform_only = h.clone();
        qform_only.sform_code = 0;
        for (which, m) in [("sform", h.affine()), ("qform", qform_only.affine())] {
            for r in 0..4 {
                for c in 0..4 {
                    assert_close(m[r][c], want[r][c], &format!("{which} [{r}][{c}]"));
                }
            }
        }
    }

    #[test]
    fn an_oblique_series_is_sorted_along_its_normal_not_by_z_or_instance() {
        // Rows along (cos 30, sin 30, 0), columns along (0, 0, -1) (LPS): the normal is
        // row x column = (-sin 30, cos 30, 0). Slices step 3 mm along it from p0.
        let dir = scratch("dicom-oblique");
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let orientation = [c, s, 0.0, 0.0, 0.0, -1.0];
        let normal = [-s, c, 0.0];
        let p0 = [10.0, -20.0, 50.0];
        for (file, k) in [2usize, 0, 3, 1].into_iter().enumerate() {
            let position = [0, 1, 2].map(|a| p0[a] + 3.0 * k as f64 * normal[a]);
            let mut sl = Slice::ct(position, samples(10, 8, k));
            sl.orientation = orientation;
            sl.instance = 10 - file as i32;
            sl.write(&dir.join(format!("{file}.dcm")));
        }
        let v = read_dicom_series(&dir, &DicomOptions::default())
            .unwrap()
            .volume;
        assert_eq!(v.shape, [8, 10, 4]);
        for k in 0..4 {
            assert_eq!(
                v.data[(3 * 10 + 5) * 4 + k],
                f32::from(sample(3, 5, k)) - 1024.0
            );
        }
        // RAS = (-x, -y, z) of LPS, column by column.
        let want = [
            [-0.8 * c, 0.0, -3.0 * -s, -10.0],
            [-0.8 * s, 0.0, -3.0 * c, 20.0],
            [0.0, -0.7, 0.0, 50.0],
        ];
        for r in 0..3 {
            for col in 0..4 {
                assert_close(v.affine[r][col], want[r][col], &format!("[{r}][{col}]"));
            }
        }
        assert_close(v.spacing[2], 3.0, "slice spacing");
    }

    #[test]
    fn fractional_rescale_gives_float32_and_stored_bits_are_masked() {
        let dir = scratch("dicom-float");
        for k in 0..3 {
            let mut sl = Slice::ct([0.0, 0.0, k as f64], samples(10, 8, k));
            sl.slope = "0.5";
            sl.intercept = "-10.25";
            sl.signed = false;
            sl.bits_stored = 12;
            // Bits above the 12 stored ones are not part of the value (overlay bits).
            for x in &mut sl.samples {
                *x = (*x & 0x0FFF) | 0xA000;
            }
            sl.write(&dir.join(format!("s{k}")));
        }
        let out = dir.join("f.nii");
        convert_dicom(&dir, &out, &DicomOptions::default()).unwrap();
        let v = crate::read_volume(&out).unwrap();
        assert_eq!(v.dtype, DataType::F32);
        let got = v.data[(7 * 10 + 9) * 3 + 2];
        assert_eq!(got, (f64::from(sample(7, 9, 2)) * 0.5 - 10.25) as f32);

        // The public fields may be changed; writing checks them instead of truncating values.
        let mut s = read_dicom_series(&dir, &DicomOptions::default()).unwrap();
        s.volume.dtype = DataType::I16;
        let e = s.write_nifti(dir.join("x.nii")).unwrap_err();
        assert!(e.to_string().contains("is not an int16"), "{e}");
        s.volume.data.pop();
        let e = s.write_nifti(dir.join("x.nii")).unwrap_err();
        assert!(matches!(e, Error::Length { .. }), "{e}");
        assert!(!dir.join("x.nii").exists());
    }

    #[test]
    fn implicit_little_and_explicit_big_endian_files_read_the_same_values() {
        for (name, ts) in [
            ("implicit", uids::IMPLICIT_VR_LITTLE_ENDIAN),
            ("big", "1.2.840.10008.1.2.2"), // Explicit VR Big Endian (retired)
        ] {
            let dir = scratch(&format!("dicom-{name}"));
            for k in 0..2 {
                let mut sl = Slice::ct([0.0, 0.0, 2.0 * k as f64], samples(10, 8, k));
                sl.transfer_syntax = ts;
                sl.write(&dir.join(format!("s{k}")));
            }
            let v = read_dicom_series(&dir, &DicomOptions::default())
                .unwrap()
                .volume;
            for (i, j, k) in [(0, 0, 0), (7, 9, 1), (3, 4, 1)] {
                let want = f32::from(sample(i, j, k)) - 1024.0;
                assert_eq!(v.data[(i * 10 + j) * 2 + k], want, "{name} ({i}, {j}, {k})");
            }
        }
    }

    #[test]
    fn two_series_in_one_folder_are_listed_and_one_can_be_picked() {
        let dir = scratch("dicom-two");
        axial_series(&dir);
        for k in 0..2 {
            let mut sl = Slice::ct([0.0, 0.0, 5.0 * k as f64], samples(10, 8, k));
            sl.series = "1.2.826.0.1.3680043.8.498.2";
            sl.description = "scout";
            sl.write(&dir.join(format!("other{k}")));
        }
        let e = read_dicom_series(&dir, &DicomOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::DicomSeries { .. }), "{e}");
        for part in [
            "2 DICOM series",
            "1.2.826.0.1.3680043.8.498.1 (\"abdomen venous\", CT, 6 slices)",
            "1.2.826.0.1.3680043.8.498.2 (\"scout\", CT, 2 slices)",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        let pick = |uid: &str| DicomOptions {
            series: Some(uid.to_string()),
            ..DicomOptions::default()
        };
        let other = read_dicom_series(&dir, &pick("1.2.826.0.1.3680043.8.498.2")).unwrap();
        assert_eq!(other.volume.shape, [8, 10, 2]);
        assert_close(other.volume.spacing[2], 5.0, "scout spacing");
        let e = read_dicom_series(&dir, &pick("1.2.3")).unwrap_err();
        assert!(
            e.to_string().contains("no DICOM series 1.2.3; found: "),
            "{e}"
        );
        assert!(e.to_string().contains("\"scout\""), "{e}");
    }

    #[test]
    fn the_dicom_errors_keep_the_error_type_small() {
        // `Error` travels inside the trainer's error type; clippy's result_large_err limit there
        // holds while no variant carries more than three strings or paths (72 bytes).
        assert!(
            std::mem::size_of::<Error>() <= 80,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn a_slice_with_other_rows_is_an_inconsistency_naming_both_files() {
        let dir = scratch("dicom-rows");
        axial_series(&dir);
        let mut odd = Slice::ct([-100.5, -80.25, -15.0], samples(9, 8, 6));
        odd.rows = 9;
        odd.write(&dir.join("odd"));
        let e = read_dicom_series(&dir, &DicomOptions::default()).unwrap_err();
        match &e {
            Error::DicomInconsistent { path, tag, reason } => {
                assert!(path.ends_with("odd"), "{e}");
                assert_eq!(tag, "Rows (0028,0010)");
                assert!(
                    reason.starts_with("9, but ") && reason.ends_with("IM000 has 10"),
                    "{e}"
                );
            }
            _ => panic!("expected an inconsistency, got {e}"),
        }
    }

    #[test]
    fn non_dicom_files_are_skipped_and_a_corrupt_dicom_file_is_an_error() {
        let dir = scratch("dicom-skip");
        axial_series(&dir);
        std::fs::write(dir.join("README.txt"), "exported from PACS\n").unwrap();
        std::fs::write(dir.join(".DS_Store"), [0u8; 300]).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        // A DICOM object that is not an image (no Rows, like a DICOMDIR or a report).
        let report = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.88.11"),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.5"),
        ]);
        write_object(report, uids::EXPLICIT_VR_LITTLE_ENDIAN, &dir.join("report"));
        let series = read_dicom_series(&dir, &DicomOptions::default()).unwrap();
        let names: Vec<_> = series
            .skipped
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [".DS_Store", "README.txt", "empty", "report"]);
        assert_eq!(series.volume.shape, [8, 10, 6]);

        // The DICOM magic followed by garbage: an error naming the file, not a skip.
        let mut bad = vec![0u8; 128];
        bad.extend_from_slice(b"DICM\x02\x00\x10\x00garbage");
        std::fs::write(dir.join("broken.dcm"), bad).unwrap();
        let e = read_dicom_series(&dir, &DicomOptions::default()).unwrap_err();
        assert!(
            matches!(&e, Error::Dicom { path, .. } if path.ends_with("broken.dcm")),
            "{e}"
        );

        let empty = scratch("dicom-none");
        std::fs::create_dir(empty.join("sub")).unwrap();
        axial_series(&empty.join("sub"));
        let e = read_dicom_series(&empty, &DicomOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no DICOM image files"), "{e}");
        let nested = DicomOptions {
            recursive: true,
            ..DicomOptions::default()
        };
        assert_eq!(read_dicom_series(&empty, &nested).unwrap().info.slices, 6);
    }

    /// Slices at `z` (mm) in a fresh folder; the file of position `z[k]` is `s{k}`.
    fn series_at(name: &str, z: &[f64]) -> crate::testutil::Scratch {
        let dir = scratch(name);
        for (k, &z) in z.iter().enumerate() {
            Slice::ct([0.0, 0.0, z], samples(10, 8, k)).write(&dir.join(format!("s{k}")));
        }
        dir
    }

    #[test]
    fn a_missing_slice_a_duplicate_and_an_uneven_gap_are_refused_naming_the_gap() {
        let opts = DicomOptions::default();
        let dir = series_at("dicom-gap", &[0.0, 2.5, 5.0, 10.0, 12.5]);
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::DicomSliceSpacing { .. }), "{e}");
        assert!(msg.contains("slice gap of 5.0000 mm between"), "{msg}");
        assert!(msg.contains("s2 and") && msg.contains("s3 (positions 5.0000 and 10.0000"));
        assert!(msg.contains("about 1 missing slice(s)"), "{msg}");

        let dir = series_at("dicom-dup", &[0.0, 2.5, 2.5, 5.0]);
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        assert!(e.to_string().contains("two slices at one position"), "{e}");

        let dir = series_at("dicom-uneven", &[0.0, 2.5, 5.0, 7.9, 10.4]);
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        assert!(e.to_string().contains("uneven slice spacing"), "{e}");
        // Within a 20 % tolerance the same series converts, and the deviation is reported.
        let loose = DicomOptions {
            spacing_tolerance: 0.2,
            ..DicomOptions::default()
        };
        let ok = read_dicom_series(&dir, &loose).unwrap();
        assert_close(ok.volume.spacing[2], 2.6, "mean gap");
        assert_close(ok.max_gap_error, 0.3, "largest gap error");
    }

    #[test]
    fn a_tilted_stack_missing_tags_and_compressed_data_are_typed_errors() {
        let opts = DicomOptions::default();
        // Gantry tilt: each slice moves 1 mm in y as it moves 2.5 mm in z.
        let dir = scratch("dicom-tilt");
        for k in 0..3 {
            let p = [0.0, k as f64, 2.5 * k as f64];
            Slice::ct(p, samples(10, 8, k)).write(&dir.join(format!("s{k}")));
        }
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        assert!(e.to_string().contains("gantry tilt"), "{e}");

        let dir = series_at("dicom-nospacing", &[0.0, 1.0]);
        let mut obj = Slice::ct([0.0, 0.0, 2.0], samples(10, 8, 2)).object();
        obj.remove_element(tags::PIXEL_SPACING);
        write_object(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN, &dir.join("s2"));
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        match &e {
            Error::DicomTag { path, tag, reason } => {
                assert!(path.ends_with("s2"));
                assert_eq!(tag, "PixelSpacing (0028,0030)");
                assert_eq!(reason, "missing");
            }
            _ => panic!("expected a tag error, got {e}"),
        }

        let dir = series_at("dicom-short", &[0.0]);
        let mut short = Slice::ct([0.0, 0.0, 1.0], samples(10, 8, 1));
        short.samples.truncate(79);
        short.write(&dir.join("s1"));
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        assert!(
            e.to_string()
                .contains("158 bytes, 10x8 pixels of 16 bits need 160"),
            "{e}"
        );

        let dir = scratch("dicom-jpeg");
        let mut obj = Slice::ct([0.0, 0.0, 0.0], vec![]).object();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new_fragments(vec![vec![0u8; 16]])),
        ));
        write_object(obj, uids::JPEG_LOSSLESS_SV1, &dir.join("j"));
        let e = read_dicom_series(&dir, &opts).unwrap_err();
        assert!(e
            .to_string()
            .contains("compressed (transfer syntax 1.2.840.10008.1.2.4.70)"));

        let e = convert_dicom(&dir, &dir.join("out.h5"), &opts).unwrap_err();
        assert!(e.to_string().contains("must end in .nii or .nii.gz"), "{e}");
    }
}
