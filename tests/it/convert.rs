//! `duoseg convert` on a DICOM series generated here (dicom-rs writes it): what it prints, the
//! volume it writes, and one error line with exit code 1 on a folder with two series.

use std::path::Path;
use std::process::Command;

use dicom_core::value::PrimitiveValue;
use dicom_core::{dicom_value, DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

fn scratch(name: &str) -> crate::Scratch {
    crate::Scratch::new("convert", name)
}

fn duoseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duoseg"))
        .args(args)
        .output()
        .unwrap()
}

/// Stored sample of pixel (column i, row j) of slice k; the CT value is this minus 1024.
fn sample(i: usize, j: usize, k: usize) -> u16 {
    ((i * 37 + j * 101 + k * 523) % 3001) as u16
}

/// Writes one axial CT slice of 10 rows x 8 columns at height `z` (mm) to `path`.
fn write_slice(path: &Path, series: &str, description: &str, k: usize, z: f64) {
    let pixels: Vec<u16> = (0..10)
        .flat_map(|j| (0..8).map(move |i| sample(i, j, k)))
        .collect();
    let position = ["-100.5".to_string(), "-80.25".to_string(), format!("{z}")];
    let sop = format!("{series}.{k}");
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str()),
        DataElement::new(tags::MODALITY, VR::CS, "CT"),
        DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, description),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series),
        DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(position.into_iter().collect()),
        ),
        DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            dicom_value!(Strs, ["1", "0", "0", "0", "1", "0"]),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(10u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(
            tags::PIXEL_SPACING,
            VR::DS,
            dicom_value!(Strs, ["0.7", "0.8"]),
        ),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into_iter().collect()),
        ),
    ]);
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

const SERIES: &str = "1.2.826.0.1.3680043.8.498.77";

/// Four slices 2.5 mm apart, file names in another order than the positions.
fn write_series(dir: &Path) {
    for (name, k) in [("a", 2), ("b", 0), ("c", 3), ("d", 1)] {
        write_slice(
            &dir.join(name),
            SERIES,
            "pancreas venous",
            k,
            -30.0 + 2.5 * k as f64,
        );
    }
}

#[test]
fn convert_writes_the_series_as_nifti_and_prints_what_it_converted() {
    let dir = scratch("ok");
    let dcm = dir.join("dcm");
    std::fs::create_dir(&dcm).unwrap();
    write_series(&dcm);
    std::fs::write(dcm.join("README.txt"), "not DICOM\n").unwrap();
    let out = dir.join("ct.nii.gz");
    let run = duoseg(&["convert", dcm.to_str().unwrap(), out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let hu: Vec<i32> = (0..8)
        .flat_map(|i| (0..10).flat_map(move |j| (0..4).map(move |k| sample(i, j, k))))
        .map(|s| i32::from(s) - 1024)
        .collect();
    let (lo, hi) = (hu.iter().min().unwrap(), hu.iter().max().unwrap());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for part in [
        format!("converted series {SERIES} (\"pancreas venous\", CT): 4 slices"),
        "shape 8 x 10 x 4 (columns, rows, slices)".to_string(),
        "spacing 0.8000 x 0.7000 x 2.5000 mm, int16".to_string(),
        format!("values {lo} .. {hi}"),
        "skipped 1 file(s) that are not DICOM images".to_string(),
    ] {
        assert!(stdout.contains(&part), "{part:?} not in {stdout}");
    }
    let v = duoseg_io::read_volume(&out).unwrap();
    assert_eq!(v.shape, [8, 10, 4]);
    for (i, j, k) in [(0, 0, 0), (7, 9, 3), (2, 5, 1)] {
        let hu = f32::from(sample(i, j, k)) - 1024.0;
        assert_eq!(v.data[(i * 10 + j) * 4 + k], hu);
    }
    // LPS (-100.5, -80.25, -30) is RAS (100.5, 80.25, -30).
    let origin = [v.affine[0][3], v.affine[1][3], v.affine[2][3]];
    assert_eq!(origin, [100.5, 80.25, -30.0]);

    // An existing output is kept unless --overwrite; --json gives one object.
    let again = duoseg(&["convert", dcm.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let json = duoseg(&[
        "convert",
        "--json",
        "--overwrite",
        dcm.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(json.status.success());
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(j["series"], SERIES);
    assert_eq!(j["slices"], 4);
    assert_eq!(j["shape"], serde_json::json!([8, 10, 4]));
    assert_eq!(j["dtype"], "int16");
    assert_eq!(j["skipped"].as_array().unwrap().len(), 1);
}

#[test]
fn convert_fails_with_one_line_listing_the_series_of_a_mixed_folder() {
    let dir = scratch("two");
    write_series(&dir);
    let other = "1.2.826.0.1.3680043.8.498.78";
    for k in 0..2 {
        write_slice(
            &dir.join(format!("x{k}")),
            other,
            "localizer",
            k,
            5.0 * k as f64,
        );
    }
    let out = dir.join("ct.nii.gz");
    let run = duoseg(&["convert", dir.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8(run.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    for part in [
        format!("{SERIES} (\"pancreas venous\", CT, 4 slices)"),
        format!("{other} (\"localizer\", CT, 2 slices)"),
        "--series UID".to_string(),
    ] {
        assert!(err.contains(&part), "{part:?} not in {err}");
    }
    assert!(!out.exists());

    let run = duoseg(&[
        "convert",
        "--series",
        other,
        dir.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    assert_eq!(duoseg_io::read_volume(&out).unwrap().shape, [8, 10, 2]);

    let missing = dir.join("no-such-folder");
    let out = dir.join("never-written.nii.gz");
    let run = duoseg(&["convert", missing.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8(run.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
    assert!(!out.exists());
}
