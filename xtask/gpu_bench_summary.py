"""Summarises the output folder of xtask/gpu-bench.sh into gpu.json (stdout): the GPU issue's
figures, duoseg beside PyTorch's best mode, each with its target.

usage: python3 xtask/gpu_bench_summary.py <results dir> [--commit SHA]

Per workload (LA dual step, hippocampus step, LA-volume inference): duoseg's median seconds, each
PyTorch mode's (default, cudnn.benchmark, bf16 autocast), the best of them, the ratio duoseg / best
and whether it meets the target (LA step and inference <= 0.5x, hippocampus step <= 20 ms). Peak
device memory of every part is taken from nvidia-smi's samples (gpu-memory.csv, every 100 ms) within
that part's phase (phases.txt), so both implementations are measured the same way (the CUDA context
included); PyTorch's own counters are reported beside it. Only the standard library.
"""
import json
import os
import sys
from datetime import datetime

MODES = ("default", "benchmark", "bf16")


def load(folder, name):
    """The last JSON object line of <name>.json, or None."""
    path = os.path.join(folder, name + ".json")
    if not os.path.exists(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    found = json.loads(line)
                except json.JSONDecodeError:
                    pass
    return found


def phases(folder):
    """[(name, start, end)] from phases.txt (each phase ends where the next begins)."""
    path = os.path.join(folder, "phases.txt")
    if not os.path.exists(path):
        return []
    marks = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                marks.append((float(parts[0]), parts[1]))
    return [(n, t, marks[i + 1][0]) for i, (t, n) in enumerate(marks[:-1])]


def memory_peaks(folder):
    """Peak MiB in use per phase, from nvidia-smi's csv (timestamp, 'N MiB')."""
    path = os.path.join(folder, "gpu-memory.csv")
    if not os.path.exists(path):
        return {}
    samples = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2:
                continue
            try:
                t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                mib = float(parts[1].split()[0])
            except ValueError:
                continue
            samples.append((t, mib))
    peaks = {}
    for name, start, end in phases(folder):
        inside = [m for t, m in samples if start <= t <= end]
        if inside and name != "idle":
            peaks[name] = max(inside)
    return peaks


def gib(mib):
    return None if mib is None else round(mib / 1024, 3)


def workload(folder, peaks, duoseg_part, torch_part, key, target):
    """duoseg vs each PyTorch mode for one workload; `key` is the seconds field of the torch JSON."""
    d = load(folder, duoseg_part)
    d_s = None
    if d is not None:
        d_s = d.get("step_s_median") or d.get("infer_s")
    torch = {}
    for mode in MODES:
        t = load(folder, torch_part.format(mode=mode))
        if t is not None and t.get(key) is not None:
            torch[mode] = {
                "s": t[key],
                "peak_device_gib_smi": gib(peaks.get(torch_part.format(mode=mode))),
                "peak_gib_torch": t.get("peak_gib") or t.get("peak_reserved_gib"),
            }
    best = min(torch.items(), key=lambda kv: kv[1]["s"]) if torch else None
    out = {
        "duoseg_s": d_s,
        "duoseg_peak_device_gib_smi": gib(peaks.get(duoseg_part)),
        "pytorch": torch,
        "pytorch_best_mode": best[0] if best else None,
        "target": target,
    }
    if d_s is not None and best:
        ratio = d_s / best[1]["s"]
        out["ratio_duoseg_over_best"] = round(ratio, 3)
        if target.startswith("ratio"):
            out["meets_target"] = ratio <= float(target.split("<=")[1])
        out["peak_memory_at_most_pytorch"] = (
            out["duoseg_peak_device_gib_smi"] is not None
            and best[1]["peak_device_gib_smi"] is not None
            and out["duoseg_peak_device_gib_smi"] <= best[1]["peak_device_gib_smi"]
        )
    if d_s is not None and target.startswith("seconds"):
        out["meets_target"] = d_s <= float(target.split("<=")[1])
    if d is not None:
        out["duoseg"] = d
    return out


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    folder = args[0]
    commit = args[args.index("--commit") + 1] if "--commit" in args else None
    peaks = memory_peaks(folder)
    gpu = None
    smi = os.path.join(folder, "nvidia-smi.txt")
    if os.path.exists(smi):
        with open(smi) as f:
            for line in f:
                if "NVIDIA" in line and "Driver" not in line and "|" in line:
                    gpu = line.strip("| \n")
                    break
    rc = {}
    rc_path = os.path.join(folder, "rc.txt")
    if os.path.exists(rc_path):
        with open(rc_path) as f:
            for line in f:
                parts = line.split(" rc ")
                if len(parts) == 2:
                    rc[parts[0].strip()] = int(parts[1]) if parts[1].strip().isdigit() else parts[1].strip()
    report = {
        "benchmark": "GPU: duoseg beside PyTorch in one device call (xtask/gpu-bench.sh)",
        "commit": commit,
        "gpu": gpu,
        "exit_codes": rc,
        "la_step": workload(folder, peaks, "la_step_duoseg", "la_torch_{mode}", "step_s_median", "ratio<=0.5"),
        "hippocampus_step": workload(folder, peaks, "hip_step_duoseg", "hip_step_torch_{mode}", "step_s_median", "seconds<=0.020"),
        "la_infer": workload(folder, peaks, "la_infer_duoseg", "la_infer_torch_{mode}", "infer_s", "ratio<=0.5"),
        "gpu_memory_peak_mib_per_part": peaks,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
