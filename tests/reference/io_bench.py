"""nibabel half of `cargo xtask bench io`: decode every LA case (image + label), sequentially and
with a process pool of all cores, after one warm-up pass. Prints one JSON object.

Run: pip install nibabel numpy
     python tests/reference/io_bench.py ../shared/data/la2018 [repeats]
Images: img.get_fdata(dtype=np.float32) (scaled, as duoseg's f32 Volume); labels:
np.asarray(img.dataobj) (raw uint8, the fastest nibabel path), foreground counted.
"""
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def decode(args):
    root, case = args
    img = nib.load(os.path.join(root, "imagesTr", case + ".nii.gz")).get_fdata(dtype=np.float32)
    lab = np.asarray(nib.load(os.path.join(root, "labelsTr", case + ".nii.gz")).dataobj)
    return float(img.sum(dtype=np.float64)), int((lab > 0).sum())


def main():
    root = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ids = sorted(p.name[: -len(".nii.gz")] for p in Path(root, "labelsTr").glob("*.nii.gz"))
    work = [(root, i) for i in ids]
    sums = [decode(w) for w in work]
    cores = os.cpu_count() or 1
    seq, par = [], []
    with mp.Pool(cores) as pool:
        pool.map(decode, work[:cores])  # start the workers before timing
        for _ in range(repeats):
            t = time.perf_counter()
            for w in work:
                decode(w)
            seq.append(time.perf_counter() - t)
            t = time.perf_counter()
            pool.map(decode, work, chunksize=1)
            par.append(time.perf_counter() - t)
    print(json.dumps({
        "cases": len(ids),
        "processes": cores,
        "nibabel": nib.__version__,
        "sequential_s": min(seq),
        "parallel_s": min(par),
        "sequential_ms_per_case": 1e3 * min(seq) / len(ids),
        "parallel_ms_per_case": 1e3 * min(par) / len(ids),
        "image_sum": sum(s[0] for s in sums),
        "label_foreground": sum(s[1] for s in sums),
    }))


if __name__ == "__main__":
    main()
