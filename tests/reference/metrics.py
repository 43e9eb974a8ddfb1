"""Reference values for duoseg-metrics, computed with medpy 0.5.2 (the papers' metric code).

Run from the repository root:

    pip install medpy==0.5.2 numpy scipy
    python tests/reference/metrics.py            # writes tests/fixtures/metrics/medpy_cases.json

Every case stores its masks run-length encoded (C order, flattened: the lengths of alternating runs
of False and True, starting with False) next to the parameters that generated them, the spacing,
and medpy's values in voxels ("vox", no spacing) and millimetres ("mm", with the spacing):
dc, jc, hd95, asd, assd, hd (medpy.metric.binary), plus from medpy's own directed surface distances
the normalised surface Dice at `nsd_tolerance` (same unit) and MONAI's HD95 variant (the larger of
the two directed 95th percentiles). Undefined values (an empty mask, where medpy raises) are null.
Multi-class cases store label volumes (RLE per class value) and the metrics per class.

Two values are ours, not medpy's, and marked so: with exactly one empty mask the surface Dice is 0
(no surface voxel lies near a missing surface); and medpy 0.5.2's `dc` of two empty masks is NaN
(numpy scalar division by 0.0 warns instead of raising, so medpy's `except ZeroDivisionError: 1.0`
never runs): it is stored as null with `"dc_nan": true`, and duoseg reports 1, the value medpy's
code intends and the one its `jc` returns.
"""

import json
import os
import re

import numpy as np
import scipy.ndimage as ndi
import medpy
from medpy.metric import binary

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "metrics", "medpy_cases.json")
NSD_TOLERANCE = 1.5
surface_distances = getattr(binary, "__surface_distances")


def rle(mask):
    flat = np.asarray(mask, dtype=bool).ravel()
    runs, current, count = [], False, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    return [int(r) for r in runs]


def blob(shape, seed, sigma, threshold, shift=(0, 0, 0)):
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="constant")
    noise = np.roll(noise, shift, axis=(0, 1, 2))
    return noise > threshold * noise.std()


def ball(shape, centre, radius):
    idx = np.indices(shape)
    d2 = sum((idx[a] - centre[a]) ** 2 for a in range(3))
    return d2 <= radius * radius


def metrics(pred, gt, spacing):
    pred, gt = pred.astype(bool), gt.astype(bool)
    with np.errstate(invalid="ignore"):
        dc = float(binary.dc(pred, gt))
    out = {"dc": None if np.isnan(dc) else dc, "jc": float(binary.jc(pred, gt))}
    if np.isnan(dc):
        out["dc_nan"] = True
    if pred.any() and gt.any():
        a = surface_distances(pred, gt, spacing)
        b = surface_distances(gt, pred, spacing)
        out.update(
            hd95=float(binary.hd95(pred, gt, voxelspacing=spacing)),
            asd=float(binary.asd(pred, gt, voxelspacing=spacing)),
            assd=float(binary.assd(pred, gt, voxelspacing=spacing)),
            hd=float(binary.hd(pred, gt, voxelspacing=spacing)),
            nsd=float((np.sum(a <= NSD_TOLERANCE) + np.sum(b <= NSD_TOLERANCE)) / (len(a) + len(b))),
            hd95_max_directed=float(max(np.percentile(a, 95), np.percentile(b, 95))),
        )
    else:
        nsd = None if not (pred.any() or gt.any()) else 0.0  # ours: one surface missing
        out.update(hd95=None, asd=None, assd=None, hd=None, nsd=nsd, hd95_max_directed=None)
    return out


def binary_case(name, params, pred, gt, spacing):
    assert pred.shape == gt.shape
    return {
        "name": name,
        "params": params,
        "shape": list(pred.shape),
        "spacing": list(spacing),
        "pred": rle(pred),
        "gt": rle(gt),
        "vox": metrics(pred, gt, None),
        "mm": metrics(pred, gt, spacing),
    }


def main():
    cases = []
    # Random blobs: smoothed noise thresholded, the prediction from a nearby seed and a shift.
    for seed, shape, spacing in [
        (0, (30, 25, 20), (1.0, 1.0, 1.0)),
        (1, (30, 25, 20), (0.7, 1.3, 2.5)),
        (2, (40, 32, 16), (0.625, 0.625, 0.625)),
        (3, (24, 36, 28), (1.5, 0.8, 0.8)),
        (4, (33, 17, 29), (0.9, 2.0, 1.1)),
    ]:
        gt_params = {"kind": "blob", "seed": seed, "sigma": 2.5, "threshold": 0.6}
        pred_params = {"kind": "blob", "seed": seed, "sigma": 2.5, "threshold": 0.4, "shift": [1, -1, 0]}
        gt = blob(shape, seed, 2.5, 0.6)
        pred = blob(shape, seed, 2.5, 0.4, shift=(1, -1, 0))
        cases.append(binary_case(f"blob_seed{seed}", {"gt": gt_params, "pred": pred_params}, pred, gt, spacing))
    # Masks touching every border of the array.
    shape = (20, 18, 16)
    gt = blob(shape, 10, 2.0, -0.3)
    pred = blob(shape, 11, 2.0, -0.2)
    cases.append(binary_case("touching_border", {"gt_seed": 10, "pred_seed": 11}, pred, gt, (1.2, 0.6, 0.9)))
    full = np.ones(shape, dtype=bool)
    cases.append(binary_case("full_array_vs_blob", {"gt": "full"}, gt, full, (1.0, 2.0, 3.0)))
    # Single voxels.
    a = np.zeros((9, 10, 11), dtype=bool)
    b = np.zeros_like(a)
    a[2, 3, 4] = True
    b[7, 1, 9] = True
    cases.append(binary_case("single_voxels", {}, a, b, (0.5, 1.5, 2.0)))
    c = ball((9, 10, 11), (4, 5, 5), 3.5)
    cases.append(binary_case("single_voxel_vs_ball", {}, a, c, (1.0, 1.0, 1.0)))
    cases.append(binary_case("corner_voxel_vs_ball", {}, np.pad(np.ones((1, 1, 1), bool), ((0, 8), (0, 9), (0, 10))), c, (2.0, 1.0, 0.5)))
    # Holes: a ball with an inner cavity against the solid ball.
    solid = ball((26, 26, 26), (13, 12, 13), 10)
    hollow = solid & ~ball((26, 26, 26), (12, 13, 13), 5)
    cases.append(binary_case("ball_with_hole", {}, hollow, solid, (1.0, 1.0, 1.0)))
    cases.append(binary_case("ball_with_hole_aniso", {}, solid, hollow, (0.8, 1.1, 1.7)))
    # MONAI's known answer: cubes one voxel apart on each axis.
    p = np.zeros((12, 12, 12), dtype=bool)
    q = np.zeros_like(p)
    p[3:8, 3:8, 3:8] = True
    q[4:9, 4:9, 4:9] = True
    cases.append(binary_case("cubes_one_apart", {}, p, q, (1.0, 1.0, 1.0)))
    # Empty masks.
    empty = np.zeros((10, 10, 10), dtype=bool)
    cube = np.zeros_like(empty)
    cube[2:5, 2:6, 3:7] = True
    cases.append(binary_case("empty_prediction", {}, empty, cube, (1.0, 1.0, 1.0)))
    cases.append(binary_case("empty_label", {}, cube, empty, (1.0, 1.0, 1.0)))
    cases.append(binary_case("both_empty", {}, empty, empty, (1.0, 1.0, 1.0)))

    # Multi-class label volumes: three classes from thresholds of one smoothed field, the prediction
    # from a shifted field; class 3 is absent from the prediction.
    multi = []
    shape, spacing = (28, 24, 20), (0.8, 1.0, 1.6)
    rng = np.random.default_rng(42)
    field = ndi.gaussian_filter(rng.standard_normal(shape), 3.0, mode="constant")
    field /= field.std()
    gt = np.digitize(field, [0.3, 0.9, 1.6]).astype(np.uint8)
    pred = np.digitize(np.roll(field, (1, 0, -1), axis=(0, 1, 2)), [0.2, 1.0, 99.0]).astype(np.uint8)
    per_class = {}
    for c in (1, 2, 3):
        per_class[str(c)] = {"vox": metrics(pred == c, gt == c, None), "mm": metrics(pred == c, gt == c, spacing)}
    multi.append({
        "name": "three_classes",
        "shape": list(shape),
        "spacing": list(spacing),
        "classes": [1, 2, 3],
        "pred": {str(c): rle(pred == c) for c in (1, 2, 3)},
        "gt": {str(c): rle(gt == c) for c in (1, 2, 3)},
        "per_class": per_class,
    })

    doc = {
        "generator": "tests/reference/metrics.py",
        "medpy": medpy.__version__ if hasattr(medpy, "__version__") else "0.5.2",
        "numpy": np.__version__,
        "nsd_tolerance": NSD_TOLERANCE,
        "rle": "C-order run lengths alternating False/True, starting with False",
        "binary": cases,
        "multiclass": multi,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    text = json.dumps(doc, indent=1, allow_nan=False)
    # One line per list of integers (the run lengths, shapes, classes).
    text = re.sub(r"\[\s*(\d+(?:,\s*\d+)*)\s*\]", lambda m: "[" + ", ".join(m.group(1).split(",")).replace("  ", "").replace(" \n", "").replace("\n", "").replace(", ", ",").replace(",", ", ") + "]", text)
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {len(cases)} binary and {len(multi)} multi-class cases to {OUT}")


if __name__ == "__main__":
    main()
