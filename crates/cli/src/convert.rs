//! `duoseg convert DICOM_DIR OUT.nii.gz`: a DICOM series (one file per slice, e.g. NIH Pancreas-CT)
//! as one NIfTI volume, through `duoseg_io::dicom` (docs/dicom.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use duoseg_io::{convert_dicom, DicomOptions};

/// Convert a DICOM series (one file per slice) to a NIfTI volume
///
/// Reads the files of DICOM_DIR (with --recursive, of its subfolders too), skips files that are
/// not DICOM images, and groups the slices by SeriesInstanceUID: a folder with several series needs
/// --series (the error lists them). Slices are ordered along the slice normal (from
/// ImagePositionPatient and ImageOrientationPatient, not InstanceNumber) and must share their size,
/// pixel spacing, orientation and bit depth and be evenly spaced: a missing slice, a duplicate
/// position or a tilted gantry is an error naming the files. Values are rescaled
/// (RescaleSlope / RescaleIntercept: Hounsfield units for CT) and written as int16 when they are
/// integers that fit, else float32. The NIfTI axes are (columns, rows, slices) with the scanner's
/// geometry as a RAS+ affine (sform and qform, code 1). Only uncompressed DICOM is read: decompress
/// JPEG / JPEG 2000 / RLE series first (gdcmconv --raw, dcmdjpeg).
///
/// Prints what was converted (series, slices, shape, spacing, data type, value range) on stdout;
/// an unreadable or inconsistent series is one error line and exit code 1.
///
/// Examples:
///   duoseg convert Pancreas-CT/PANCREAS_0001 imagesTr/pancreas_001.nii.gz --recursive
///   duoseg convert study/ ct.nii.gz --series 1.3.6.1.4.1.9328.50.4.2
///   duoseg convert --json series/ ct.nii > converted.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ConvertArgs {
    /// Folder with the DICOM files of the series.
    #[arg(value_name = "DICOM_DIR")]
    dir: PathBuf,
    /// Output volume (.nii or .nii.gz), written atomically.
    #[arg(value_name = "OUT")]
    out: PathBuf,
    /// SeriesInstanceUID of the series to convert when the folder holds several.
    #[arg(long, value_name = "UID")]
    series: Option<String>,
    /// Also read the files of subfolders (a TCIA download nests study and series folders).
    #[arg(long)]
    recursive: bool,
    /// Largest allowed difference between a slice gap and the median gap, as a fraction of it.
    #[arg(long, value_name = "FRACTION", default_value_t = DicomOptions::default().spacing_tolerance)]
    spacing_tolerance: f64,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `duoseg convert`.
pub fn run(args: ConvertArgs) -> Result<crate::Outcome> {
    if args.out.exists() && !args.overwrite {
        bail!(
            "{} exists; give --overwrite to replace it, or another output file",
            args.out.display()
        );
    }
    let opts = DicomOptions {
        series: args.series,
        recursive: args.recursive,
        spacing_tolerance: args.spacing_tolerance,
    };
    let s = convert_dicom(&args.dir, &args.out, &opts)?;
    let v = &s.volume;
    let (lo, hi) = v
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    if args.json {
        let j = serde_json::json!({
            "out": args.out,
            "series": s.info.uid,
            "description": s.info.description,
            "modality": s.info.modality,
            "slices": s.info.slices,
            "shape": v.shape,
            "spacing": v.spacing,
            "dtype": v.dtype.name(),
            "min": lo,
            "max": hi,
            "affine": v.affine,
            "max_gap_error": s.max_gap_error,
            "skipped": s.skipped,
        });
        println!("{j}");
    } else {
        let [nx, ny, nz] = v.shape;
        let [sx, sy, sz] = v.spacing;
        println!(
            "converted series {} ({:?}, {}): {} slices -> {}",
            s.info.uid,
            s.info.description,
            s.info.modality,
            s.info.slices,
            args.out.display()
        );
        println!(
            "  shape {nx} x {ny} x {nz} (columns, rows, slices), spacing {sx:.4} x {sy:.4} x \
             {sz:.4} mm, {}, values {lo} .. {hi}",
            v.dtype
        );
        if s.max_gap_error > 1e-3 {
            println!(
                "  slice gaps differ from {sz:.4} mm by up to {:.4} mm",
                s.max_gap_error
            );
        }
        if let Some(first) = s.skipped.first() {
            println!(
                "  skipped {} file(s) that are not DICOM images (first: {})",
                s.skipped.len(),
                first.display()
            );
        }
    }
    Ok(crate::Outcome::Ok)
}
