#!/usr/bin/env bash
# The GPU figures of the train issue, in one device call: duoseg trains configs/la.json on the GPU
# for ITERS iterations with TF32 convolutions (the default) and ITERS/2 in plain f32 (seconds per
# step in log.jsonl), then the PyTorch anchor
# (../shared/reference/bench_torch.py, carried beside the data) times its step on the same GPU.
#
#   usage: bash xtask/gpu-la-bench.sh <carry dir> <out dir> [iters]
#
# <carry dir> is what `cargo xtask gpu-pack --data ../shared/data/la2018` makes in gpu/carry (the
# device call carries at most 64 MiB): bin/<name>.xz (the binaries of `cargo xtask gpu-build`,
# compressed), la/ (a dataset folder of 8 training and 2 test cases: enough to time steps),
# ref/bench_torch.py + ref/vnet_ref.py. Device call: carry ["gpu/carry"], command
# `bash xtask/gpu-la-bench.sh gpu/carry $OUT/la 200 && rm -rf $OUT/la`; it returns $OUT/la.tgz,
# whose la/gpu-la.json (xtask/gpu_la_summary.py) has the step times side by side.
# Before them, the op check (gpu_check: CUDA vs CPU), the op benchmark (bench_nn3d beside
# tests/reference/bench_nn3d_torch.py) and the per-phase step (bench_step) when their binaries came.
# Every step has its own time limit, so one failing step still leaves the others' results.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash xtask/gpu-la-bench.sh <carry dir> <out dir> [iters]" >&2
  exit 2
fi
carry="$(cd "$1" && pwd)"
out="$2"
iters="${3:-200}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=/opt/torch/.venv/bin/python3
[ -x "$py" ] || py=python3
mkdir -p "$out" "$root/gpu/bin"

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
# GPU memory in use, once a second, for the peak of each phase.
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 1 > "$out/gpu-memory.csv" 2>/dev/null &
smi=$!

# Unpack the binaries (Python's lzma: the machine may lack xz).
for f in "$carry"/bin/*.xz; do
  name="$(basename "$f" .xz)"
  "$py" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' "$f" "$root/gpu/bin/$name"
  chmod +x "$root/gpu/bin/$name"
done

phase() { echo "$(date +%s.%N) $1" >> "$out/phases.txt"; }

if [ -x "$root/gpu/bin/gpu_check" ]; then
  phase gpu_check
  timeout 60 bash "$root/xtask/gpu-run.sh" gpu_check --bench > "$out/gpu_check.txt" 2>&1
  echo "gpu_check rc $?" >> "$out/rc.txt"
fi

if [ -x "$root/gpu/bin/bench_nn3d" ]; then
  phase nn3d
  timeout 45 bash "$root/xtask/gpu-run.sh" bench_nn3d --device cuda --json > "$out/nn3d-rust.json" 2> "$out/nn3d-rust.err"
  echo "bench_nn3d rc $?" >> "$out/rc.txt"
  timeout 45 "$py" "$root/tests/reference/bench_nn3d_torch.py" --device cuda > "$out/nn3d-torch.json" 2> "$out/nn3d-torch.err"
  echo "bench_nn3d_torch rc $?" >> "$out/rc.txt"
fi

# One training step of both nets on random data, timed per phase (forward A, forward B, losses,
# backward, SGD), with TF32 and in plain f32.
if [ -x "$root/gpu/bin/bench_step" ]; then
  phase bench_step
  for mode in tf32 f32; do
    flag=""
    [ "$mode" = f32 ] && flag="--no-tf32"
    timeout 60 bash "$root/xtask/gpu-run.sh" bench_step --device cuda --crop 112 112 80 --iters 10 --warmup 3 $flag \
      > "$out/step-$mode.json" 2> "$out/step-$mode.err"
    echo "bench_step $mode rc $?" >> "$out/rc.txt"
  done
fi

# duoseg: ITERS iterations with TF32 convolutions (the default, as PyTorch's), then ITERS/2 in plain f32.
train() { # <tag> <iters> <time limit> [extra args]
  local tag=$1 n=$2 limit=$3
  shift 3
  local run="$root/gpu/run-$tag"
  phase "duoseg_$tag"
  timeout "$limit" bash "$root/xtask/gpu-run.sh" duoseg train --config "$root/configs/la.json" \
    --data "$carry/la" --labeled 4 --iters "$n" --device cuda:0 --out "$run" --no-progress "$@" \
    > "$out/duoseg-$tag.txt" 2>&1
  echo "duoseg train $tag rc $?" >> "$out/rc.txt"
  for f in log.jsonl config.json summary.json summary.md; do
    [ -f "$run/$f" ] && cp "$run/$f" "$out/duoseg-$tag-$f"
  done
}
if [ -x "$root/gpu/bin/duoseg" ]; then
  train tf32 "$iters" 200
  train f32 $((iters / 2)) 110 --no-tf32
fi

if [ -f "$carry/ref/bench_torch.py" ]; then
  phase pytorch
  timeout 100 "$py" "$carry/ref/bench_torch.py" --device cuda --modes default,benchmark \
    > "$out/torch.jsonl" 2> "$out/torch.err"
  echo "bench_torch rc $?" >> "$out/rc.txt"
fi
phase end
kill "$smi" 2>/dev/null
"$py" "$root/xtask/gpu_la_summary.py" "$out" > "$out/gpu-la.json" 2>> "$out/rc.txt"
# The device tool returns only a few files per call: everything also goes back as one archive.
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
cat "$out/rc.txt"
