"""Python half of `cargo xtask bench metrics`: medpy on the very same masks as the Rust half.

Needs: pip install medpy==0.5.2 numpy scipy nibabel
Usage: python xtask/src/bench/metrics.py LABEL_DIR REPEATS ID...

Reads LABEL_DIR/<ID>.nii.gz with nibabel (C order, file axes, as duoseg-io), takes class 1 as the
reference mask, builds the perturbed predictions exactly as crates/metrics/examples/bench_metrics.rs
(shift by 2 voxels along axes 0 and 1 with zero fill: out[i, j] = mask[i - 2, j + 2]; one erosion /
dilation with the 6-connected cross, outside = background), times medpy's dc + jc + hd95 + asd
(voxel units) REPEATS times, keeps the median, and prints one JSON object on stdout.
"""

import json
import os
import sys
import time

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
from medpy.metric import binary


def perturb(mask, name):
    cross = ndi.generate_binary_structure(3, 1)
    if name == "shift":
        out = np.zeros_like(mask)
        out[2:, :-2, :] = mask[:-2, 2:, :]
        return out
    if name == "erosion":
        return ndi.binary_erosion(mask, structure=cross, iterations=1)
    return ndi.binary_dilation(mask, structure=cross, iterations=1)


def fingerprint(mask):
    idx = np.flatnonzero(mask)
    return {"voxels": int(idx.size), "index_sum": int(idx.astype(np.uint64).sum())}


def main():
    label_dir, repeats, ids = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    cases = []
    for case in ids:
        labels = np.asarray(nib.load(os.path.join(label_dir, f"{case}.nii.gz")).dataobj)
        gt = labels == 1
        for name in ("shift", "erosion", "dilation"):
            pred = perturb(gt, name)
            times = []
            for _ in range(max(repeats, 1)):
                start = time.perf_counter()
                values = (
                    binary.dc(pred, gt),
                    binary.jc(pred, gt),
                    binary.hd95(pred, gt),
                    binary.asd(pred, gt),
                )
                times.append(time.perf_counter() - start)
            cases.append({
                "case": case,
                "perturbation": name,
                "pred": fingerprint(pred),
                "gt": fingerprint(gt),
                "seconds": float(np.median(times)),
                "dice": float(values[0]),
                "jaccard": float(values[1]),
                "hd95": float(values[2]),
                "asd": float(values[3]),
            })
    import medpy
    print(json.dumps({
        "medpy": getattr(medpy, "__version__", "unknown"),
        "numpy": np.__version__,
        "repeats": repeats,
        "cases": cases,
    }))


if __name__ == "__main__":
    main()
