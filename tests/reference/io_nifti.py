"""Reference values for crates/io: nibabel's view of a few real LA NIfTI files.

Run: pip install nibabel numpy
     python tests/reference/io_nifti.py [../shared/data/la2018] > tests/fixtures/io/la2018_nibabel.json
Stores shape, dtype, spacing, affine, sum and a few voxel values (C-order index into
np.asarray(img.get_fdata())) for the first three training cases' images and labels.
"""
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/la2018")
ids = [l.strip() for l in (root / "train.list").read_text().split() if l.strip()][:3]
out = []
rng = np.random.default_rng(0)
for case in ids:
    for rel in (f"imagesTr/{case}.nii.gz", f"labelsTr/{case}.nii.gz"):
        img = nib.load(root / rel)
        data = np.asarray(img.get_fdata())
        probes = []
        for _ in range(8):
            idx = [int(rng.integers(0, s)) for s in data.shape]
            probes.append({"index": idx, "value": float(data[tuple(idx)])})
        flat_max = [int(i) for i in np.unravel_index(int(np.argmax(data)), data.shape)]
        probes.append({"index": flat_max, "value": float(data[tuple(flat_max)])})
        out.append({
            "file": rel,
            "shape": list(data.shape),
            "dtype": str(img.get_data_dtype()),
            "spacing": [float(z) for z in img.header.get_zooms()[:3]],
            "affine": img.affine.tolist(),
            "sum": float(data.sum()),
            "probes": probes,
        })
json.dump(out, sys.stdout, indent=1)
print()
