"""Cross-check of `duoseg convert` against SimpleITK (ITK's GDCM series reader) and nibabel.

Run: pip install pydicom nibabel numpy SimpleITK
     cargo build --release -p cli
     python tests/reference/dicom_convert.py [target/release/duoseg]

pydicom writes small CT series (files shuffled, instance numbers scrambled): axial, oblique
(rotated in-plane and tilted out of the axial plane), and sagittal with descending positions, in
Explicit and Implicit VR Little Endian. Each is converted by duoseg and read back with nibabel; the
same files are read by SimpleITK, whose image is in LPS. For each series the script checks that
duoseg's affine equals diag(-1, -1, 1) @ [direction * spacing | origin] of SimpleITK (LPS -> RAS),
and that the voxels are equal (SimpleITK's array is [z, y, x], nibabel's [x, y, z]). It prints one
line per series and exits 1 on the first mismatch. The Rust tests do not need it: it was run once
when `duoseg convert` was written (all series agreed to 1e-4 mm), and can be rerun after changes.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/duoseg"
ROWS, COLS = 12, 9


def rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def write_series(folder, row_dir, col_dir, origin, gap, n, syntax, rng):
    """n slices; slice k at origin + k * gap * normal (LPS), written in a random file order."""
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    series_uid = generate_uid()
    order = rng.permutation(n)
    volume = rng.integers(-1024, 2000, size=(n, ROWS, COLS)).astype(np.int16)
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = syntax
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = "cross-check"
        ds.InstanceNumber = int(n - k)  # reversed: must not be used for the order
        position = np.asarray(origin) + k * gap * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = ["0.7", "0.8"]
        ds.SliceThickness = f"{gap}"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = (volume[k].astype(np.int32) + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"{file_index:03d}.dcm", enforce_file_format=True)


def check(name, folder):
    out = folder.parent / f"{name}.nii.gz"
    subprocess.run([BIN, "convert", str(folder), str(out)], check=True, stdout=subprocess.DEVNULL)
    ours = nib.load(str(out))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(ref.GetSpacing())
    lps[:3, 3] = ref.GetOrigin()
    want = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    err = np.abs(ours.affine - want).max()
    same = np.array_equal(
        np.asarray(ours.dataobj).astype(np.float64),
        sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(np.float64),
    )
    print(f"{name}: shape {ours.shape}, affine max |diff| {err:.2e} mm, voxels equal: {same}")
    if err > 1e-4 or not same:
        print("duoseg:\n", ours.affine, "\nSimpleITK (RAS):\n", want)
        sys.exit(1)


def main():
    rng = np.random.default_rng(0)
    tilt = rotation(0, 20) @ rotation(2, 30)
    cases = [
        ("axial", [1, 0, 0], [0, 1, 0], [-100.5, -80.25, -30.0], 2.5, 7, ExplicitVRLittleEndian),
        ("oblique", tilt[:, 0], tilt[:, 1], [12.0, -40.0, 55.5], 3.0, 6, ImplicitVRLittleEndian),
        ("sagittal", [0, 1, 0], [0, 0, -1], [40.0, -90.0, 120.0], -1.5, 5, ExplicitVRLittleEndian),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, row_dir, col_dir, origin, gap, n, syntax in cases:
            folder = Path(tmp) / name
            folder.mkdir()
            write_series(folder, row_dir, col_dir, origin, gap, n, syntax, rng)
            check(name, folder)
    print("ok: duoseg convert agrees with SimpleITK on", len(cases), "series")


if __name__ == "__main__":
    main()
