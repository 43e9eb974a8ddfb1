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
#
# Environment:
#   DUOSEG_GPU_APIS   cuDNN convolution APIs to compare, comma-separated (legacy, graph; default
#                     legacy). The op check, the op benchmark and bench_step (TF32; also f32 under
#                     legacy) run per API; files of an API other than legacy end in -<api>.
#   DUOSEG_GPU_POOL_AB=1  bench_step also runs with the CUDA memory pool releasing freed memory
#                     (step-tf32-release*.json), against the default that keeps it.
#   DUOSEG_GPU_TRAIN  training runs, comma-separated <precision>:<api> (default
#                     tf32:legacy,f32:legacy: ITERS iterations in TF32, ITERS/2 in plain f32), or
#                     none. A run under an API other than legacy starts only when its op check passed.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash xtask/gpu-la-bench.sh <carry dir> <out dir> [iters]" >&2
  exit 2
fi
carry="$(cd "$1" && pwd)"
out="$2"
iters="${3:-200}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=xtask/gpu-lib.sh
. "$root/xtask/gpu-lib.sh"
py="$(gpu_python)"
mkdir -p "$out" "$root/gpu/bin"

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
# GPU memory in use, once a second, for the peak of each phase.
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 1 > "$out/gpu-memory.csv" 2>/dev/null &
smi=$!

# Unpack the binaries.
for f in "$carry"/bin/*.xz; do
  name="$(basename "$f" .xz)"
  unpack_xz "$f" "$root/gpu/bin/$name"
done

phase() { echo "$(date +%s.%N) $1" >> "$out/phases.txt"; }

apis="${DUOSEG_GPU_APIS:-legacy}"
train_runs="${DUOSEG_GPU_TRAIN:-tf32:legacy,f32:legacy}"
suffix() { [ "$1" = legacy ] || echo "-$1"; }

for api in ${apis//,/ }; do
  sfx="$(suffix "$api")"
  export DUOSEG_CUDNN_API="$api"
  if [ -x "$root/gpu/bin/gpu_check" ]; then
    phase "gpu_check$sfx"
    DUOSEG_CUDNN_LOG=1 timeout 90 bash "$root/xtask/gpu-run.sh" gpu_check --bench > "$out/gpu_check$sfx.txt" 2> "$out/cudnn-log$sfx.txt"
    echo "gpu_check$sfx rc $?" >> "$out/rc.txt"
  fi
  if [ -x "$root/gpu/bin/bench_nn3d" ]; then
    phase "nn3d$sfx"
    timeout 45 bash "$root/xtask/gpu-run.sh" bench_nn3d --device cuda --json > "$out/nn3d-rust$sfx.json" 2> "$out/nn3d-rust$sfx.err"
    echo "bench_nn3d$sfx rc $?" >> "$out/rc.txt"
  fi
  # One training step of both nets on random data, timed per phase (forward A, forward B, losses,
  # backward, SGD), with TF32 (and, under the legacy API, in plain f32).
  if [ -x "$root/gpu/bin/bench_step" ]; then
    phase "bench_step$sfx"
    modes=tf32
    [ "$api" = legacy ] && modes="tf32 f32"
    [ "${DUOSEG_GPU_POOL_AB:-0}" = 1 ] && modes="$modes tf32-release"
    for mode in $modes; do
      flag=""
      [ "$mode" = f32 ] && flag="--no-tf32"
      [ "$mode" = tf32-release ] && flag="--release-gpu-memory"
      timeout 60 bash "$root/xtask/gpu-run.sh" bench_step --device cuda --crop 112 112 80 --iters 10 --warmup 3 $flag \
        > "$out/step-$mode$sfx.json" 2> "$out/step-$mode$sfx.err"
      echo "bench_step $mode$sfx rc $?" >> "$out/rc.txt"
    done
  fi
done
unset DUOSEG_CUDNN_API
if [ -x "$root/gpu/bin/bench_nn3d" ]; then
  phase nn3d_torch
  timeout 45 "$py" "$root/tests/reference/bench_nn3d_torch.py" --device cuda > "$out/nn3d-torch.json" 2> "$out/nn3d-torch.err"
  echo "bench_nn3d_torch rc $?" >> "$out/rc.txt"
fi

# duoseg training runs: TF32 convolutions (the default, as PyTorch's) for ITERS iterations, plain f32
# for ITERS/2.
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
  for run in ${train_runs//,/ }; do
    [ "$run" = none ] && continue
    mode="${run%%:*}"
    api="${run#*:}"
    sfx="$(suffix "$api")"
    if [ -n "$sfx" ] && ! grep -qx "gpu_check$sfx rc 0" "$out/rc.txt"; then
      echo "duoseg train $mode$sfx skipped: gpu_check$sfx did not pass" >> "$out/rc.txt"
      continue
    fi
    case "$mode" in
      tf32) DUOSEG_CUDNN_API="$api" train "tf32$sfx" "$iters" 200 ;;
      f32) DUOSEG_CUDNN_API="$api" train "f32$sfx" $((iters / 2)) 110 --no-tf32 ;;
      *) echo "unknown training run $run" >> "$out/rc.txt" ;;
    esac
  done
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
