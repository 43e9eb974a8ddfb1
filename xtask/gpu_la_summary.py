"""Summarises the output folder of xtask/gpu-la-bench.sh into one JSON object (stdout).

usage: python3 xtask/gpu_la_summary.py <results dir> [<results dir>...]

Later folders fill in what earlier ones lack (a file found in several is taken from the last), so
results of one benchmark split over several device calls can be combined; every entry names the
folder it came from. Only the standard library: it runs on the GPU machine and here.

Per duoseg run (`duoseg-<tag>-log.jsonl`): seconds per step, median and minimum over the steps
after the first 10 (the first ones include cuDNN's algorithm search), the first step, and the test
Dice of its summary. Per PyTorch mode (`torch.jsonl`): its own median step, peak memory and
sliding-window time. bench_step (`step-<tf32|f32>.json`): one step on random data, the median of each
phase. The op benchmark (`nn3d-rust.json`, `nn3d-torch.json`): forward and
forward + backward seconds per op on both sides. Files ending in `-graph` (runs under
`DUOSEG_CUDNN_API=graph`, see gpu-la-bench.sh) are reported beside the legacy ones. GPU memory in use (`gpu-memory.csv`, sampled once
a second by nvidia-smi) is split into the phases of `phases.txt` and its peak reported per phase.
"""
import json
import os
import statistics
import sys
from datetime import datetime


def load_json_lines(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        # bench_nn3d prints one JSON object over several lines after gpu-run's own line.
        try:
            text = open(path).read()
            return json.loads(text[text.index("{"):])
        except (OSError, ValueError):
            return None


def duoseg_run(folder, tag):
    log = load_json_lines(os.path.join(folder, f"duoseg-{tag}-log.jsonl"))
    steps = [entry["s_per_step"] for entry in log if "s_per_step" in entry]
    if not steps:
        return None
    steady = steps[10:] or steps
    run = {
        "source": folder,
        "iterations": len(steps),
        "step_s_median": statistics.median(steady),
        "step_s_min": min(steady),
        "first_step_s": steps[0],
        "steps_in_median": len(steady),
    }
    summary = load_json(os.path.join(folder, f"duoseg-{tag}-summary.json"))
    if summary:
        s = summary.get("summary", {})
        cls = s.get("mean") or s.get("1") or {}
        dice = cls.get("dice", {}).get("mean")
        if dice is not None:
            run["test_dice"] = dice
            run["test_cases"] = len(summary.get("cases", {}))
    return run


def memory_peaks(folder):
    phases_path = os.path.join(folder, "phases.txt")
    mem_path = os.path.join(folder, "gpu-memory.csv")
    if not (os.path.exists(phases_path) and os.path.exists(mem_path)):
        return None
    phases = []
    for line in open(phases_path):
        parts = line.split()
        if len(parts) == 2:
            phases.append((float(parts[0]), parts[1]))
    samples = []
    for line in open(mem_path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].endswith("MiB"):
            continue
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        samples.append((t, int(parts[1].split()[0])))
    peaks = {}
    for (start, name), (end, _) in zip(phases, phases[1:]):
        inside = [m for t, m in samples if start <= t < end]
        if inside:
            peaks[name] = max(inside)
    return {"source": folder, "peak_mib_by_phase": peaks} if peaks else None


def nn3d(folder, suffix=""):
    rust = load_json(os.path.join(folder, f"nn3d-rust{suffix}.json"))
    torch = load_json(os.path.join(folder, "nn3d-torch.json"))
    if not rust or not torch:
        return None
    by_name = {r["name"]: r for r in torch.get("results", [])}
    ops = []
    for r in rust.get("results", []):
        t = by_name.get(r["name"])
        if t:
            ops.append({
                "name": r["name"],
                "duoseg_forward_s": r["forward_s"],
                "duoseg_forward_backward_s": r["forward_backward_s"],
                "pytorch_forward_s": t["forward_s"],
                "pytorch_forward_backward_s": t["forward_backward_s"],
            })
    return {"source": folder, "pytorch": torch.get("implementation"), "ops": ops}


def main():
    folders = sys.argv[1:]
    if not folders:
        sys.exit("usage: gpu_la_summary.py <results dir> [<results dir>...]")
    out = {"benchmark": "gpu-la", "duoseg": {}, "pytorch": {}}
    for folder in folders:
        smi = os.path.join(folder, "nvidia-smi.txt")
        for tag in ("f32", "tf32", "f32-graph", "tf32-graph"):
            run = duoseg_run(folder, tag)
            if run:
                out["duoseg"][tag] = run
        torch_path = os.path.join(folder, "torch.jsonl")
        if os.path.exists(torch_path):
            for entry in load_json_lines(torch_path):
                entry["source"] = folder
                out["pytorch"][entry.get("mode", "?")] = entry
                out["gpu"] = entry.get("gpu") or out.get("gpu")
        step_files = sorted(f for f in os.listdir(folder) if f.startswith("step-") and f.endswith(".json"))
        for name in step_files:
            mode = name[len("step-"):-len(".json")]
            step = load_json(os.path.join(folder, name))
            if step:
                step["source"] = folder
                out.setdefault("duoseg_step_phases", {})[mode] = step
        ops = nn3d(folder)
        if ops:
            out["nn3d"] = ops
        ops = nn3d(folder, "-graph")
        if ops:
            out["nn3d_graph"] = ops
        peaks = memory_peaks(folder)
        if peaks:
            out["gpu_memory"] = peaks
        if "gpu" not in out and os.path.exists(smi):
            out["nvidia_smi"] = open(smi).read()
    if out["duoseg"] and out["pytorch"]:
        best_torch = min(e["step_s_median"] for e in out["pytorch"].values())
        out["duoseg_over_pytorch"] = {
            tag: run["step_s_median"] / best_torch for tag, run in out["duoseg"].items()
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
