#!/usr/bin/env bash
# `cargo xtask bench gpu`'s device script: every GPU figure of the GPU issue in one device call,
# duoseg beside PyTorch on the same GPU, on random data (no dataset travels):
#
#   1. the op check (gpu_check: CUDA vs CPU), when its binary came;
#   2. the LA dual step, 2+2 crops of 112x112x80, every loss, SGD: duoseg's bench_step (TF32, as the
#      CLI) and ../shared/reference/bench_torch.py in each of its modes (default, cudnn.benchmark,
#      bf16 autocast), which also times sliding-window inference of a 144x144x96 volume;
#   3. the hippocampus default step (2+1 crops of 32x48x32, both EMA teachers): duoseg's method code
#      (bench_workload --workload step) and tests/reference/bench_workloads_torch.py per mode;
#   4. sliding-window inference of one LA-sized volume (144x144x96, 45 windows of 112x112x80, net A):
#      bench_workload --workload infer and bench_workloads_torch.py --workload infer per mode.
#
# Each part is its own process and phase (phases.txt), so the device memory that nvidia-smi samples
# every 100 ms (gpu-memory.csv) gives every part's peak the same way for both implementations.
# xtask/gpu_bench_summary.py turns the folder into gpu.json (also here: `cargo xtask bench gpu
# --collect DIR`).
#
#   usage: bash xtask/gpu-bench.sh <carry dir> <out dir> [iters]
#
# <carry dir> is what `cargo xtask bench gpu` packs into gpu/carry-bench: bin/<name>.xz (bench_step,
# bench_workload, gpu_check from `cargo xtask gpu-build`, compressed) and ref/ (bench_torch.py,
# vnet_ref.py). Every part has its own time limit, so one failing part leaves the others' results.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash xtask/gpu-bench.sh <carry dir> <out dir> [iters]" >&2
  exit 2
fi
carry="$(cd "$1" && pwd)"
out="$2"
iters="${3:-20}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=xtask/gpu-lib.sh
. "$root/xtask/gpu-lib.sh"
py="$(gpu_python)"
mkdir -p "$out" "$root/gpu/bin"
export DUOSEG_TORCH_REFERENCE="$carry/ref"

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 100 > "$out/gpu-memory.csv" 2>/dev/null &
smi=$!

# Unpack the binaries.
for f in "$carry"/bin/*.xz; do
  [ -e "$f" ] || continue
  name="$(basename "$f" .xz)"
  unpack_xz "$f" "$root/gpu/bin/$name"
done

phase() { echo "$(date +%s.%N) $1" >> "$out/phases.txt"; }
# part <name> <time limit> <command...>: stdout to <name>.json, stderr to <name>.err, rc to rc.txt
part() {
  local name=$1 limit=$2
  shift 2
  phase "$name"
  timeout "$limit" "$@" > "$out/$name.json" 2> "$out/$name.err"
  echo "$name rc $?" >> "$out/rc.txt"
  phase idle
  sleep 1
}
# a command, not a shell function: `timeout` in `part` runs programs only
gpurun=(bash "$root/xtask/gpu-run.sh")
has() { [ -x "$root/gpu/bin/$1" ]; }

has gpu_check && part gpu_check 90 "${gpurun[@]}" gpu_check
modes="default benchmark bf16"

# 2. the LA dual step (and, on the PyTorch side, LA inference in the same process)
has bench_step && part la_step_duoseg 120 "${gpurun[@]}" bench_step --device cuda --crop 112 112 80 --iters "$iters" --warmup 5
for mode in $modes; do
  [ -f "$carry/ref/bench_torch.py" ] &&
    part "la_torch_$mode" 150 "$py" "$carry/ref/bench_torch.py" --device cuda --modes "$mode" --iters "$iters" --warmup 5
done

# 3. the hippocampus default step
has bench_workload && part hip_step_duoseg 120 "${gpurun[@]}" bench_workload --workload step --config "$root/configs/hippocampus.json" --device cuda --iters 50 --warmup 5
for mode in $modes; do
  part "hip_step_torch_$mode" 120 "$py" "$root/tests/reference/bench_workloads_torch.py" --workload step --device cuda --mode "$mode" --iters 50 --warmup 5
done

# 4. LA-volume inference
has bench_workload && part la_infer_duoseg 90 "${gpurun[@]}" bench_workload --workload infer --config "$root/configs/la.json" --device cuda
for mode in $modes; do
  part "la_infer_torch_$mode" 90 "$py" "$root/tests/reference/bench_workloads_torch.py" --workload infer --device cuda --mode "$mode"
done

phase end
kill "$smi" 2>/dev/null
"$py" "$root/xtask/gpu_bench_summary.py" "$out" > "$out/gpu.json" 2>> "$out/rc.txt"
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
cat "$out/rc.txt"
