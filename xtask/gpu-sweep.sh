#!/usr/bin/env bash
# Trains the runs of a sweep or comparison side by side on the GPU machine, in one device call.
#
#   usage: bash xtask/gpu-sweep.sh <carry dir> <out dir> [parallel runs] [budget seconds]
#
# <carry dir> holds bin/duoseg.xz (the CUDA CLI of `cargo xtask gpu-build --only duoseg`,
# xz-compressed: the call carries at most 64 MiB), data/<dataset>/ (the dataset folder the runs
# read, passed as --data) and jobs/*.tsv, each written here by
# `cargo xtask sweep|compare ... --emit-jobs FILE` (first line `# code <version>`, then one run per
# line: its folder, then its `duoseg train` arguments, tab-separated). The jobs run in file and
# line order, [parallel runs] at a time (default 12) on the one GPU: a hippocampus step alone is
# kernel-launch-bound, so runs side by side fill the GPU (measured below). A run is not started
# when too little of [budget seconds] (default 540) is left for it ($DUOSEG_GPU_MIN_RUN_S, default
# 100), and one still going near the end is stopped (it writes a checkpoint), so the call always
# returns what finished. Runs train with --resume in /tmp/gpu-sweep ($DUOSEG_GPU_SWEEP_WORK), the
# binary unpacked there too: the same command again, while the machine is still warm (about 30 s),
# skips the finished runs and continues the stopped ones.
#
# Measured (2026-12-04, H200, 16 cores): the 24 runs of the hippocampus comparison at 21 labels
# (8 methods x 3 seeds, 600 iterations each), 15 at a time, kept the GPU at 100 % and took about
# 640 s of GPU time in all (duoseg's runs, two nets and two EMA teachers, are the longest: about
# 540 s each at 15 side by side); one at a time they take 60-120 s each.
#
# It leaves <out dir>/runs.tgz: each finished run's summary.json, config.json,
# log.jsonl and code-version.txt (`<version> cuda <GPU>`), no checkpoints, under its folder;
# unpack it in the repository root and the same sweep without --emit-jobs reuses the runs and
# writes the table. <out dir>/progress.txt and failures.txt say what ran and what did not.
#
# Device call: carry ["gpu/carry-sweep"], command
# `bash xtask/gpu-sweep.sh gpu/carry-sweep $OUT 15 555` (as measured above; docs/gpu.md).
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash xtask/gpu-sweep.sh <carry dir> <out dir> [parallel runs] [budget seconds]" >&2
  exit 2
fi
carry="$(cd "$1" && pwd)"
out="$2"
par="${3:-12}"
budget="${4:-540}"
start=$(date +%s)
deadline=$((start + budget))
# a run needs about this long alone (600 hippocampus iterations on an H200 plus evaluation);
# none starts with less left
min_run_s="${DUOSEG_GPU_MIN_RUN_S:-100}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=xtask/gpu-lib.sh
. "$root/xtask/gpu-lib.sh"
work="${DUOSEG_GPU_SWEEP_WORK:-/tmp/gpu-sweep}"
mkdir -p "$out" "$work/bin"
export DUOSEG_GPU_BIN_DIR="$work/bin"

unpack_xz "$carry/bin/duoseg.xz" "$work/bin/duoseg" || { echo "cannot unpack the binary" >&2; exit 2; }
data="$(ls -d "$carry"/data/*/ | head -n 1)"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$out/gpu-load.csv" 2>/dev/null &
smi=$!
# not a job: `wait` below waits for the runs alone
disown "$smi"
cores=$(nproc)
threads=$(( cores / par ))
[ "$threads" -ge 1 ] || threads=1
export RAYON_NUM_THREADS="$threads"
echo "start $(date -u +%FT%TZ) gpu '$gpu' parallel $par budget ${budget}s threads/run $threads data $data" > "$out/progress.txt"

# One run: its folder, then its train arguments (tab-separated), the code version.
run_job() {
  local line="$1" code="$2"
  local -a f
  IFS=$'\t' read -r -a f <<< "$line"
  local rel="${f[0]}"
  local dir="$work/$rel"
  mkdir -p "$(dirname "$dir")"
  if [ -f "$dir/summary.json" ]; then
    echo "done $rel earlier" >> "$out/progress.txt"
    return
  fi
  local left=$(( deadline - $(date +%s) - 15 ))
  local t0=$(date +%s)
  if [ "$left" -lt 1 ]; then
    echo "skipped $rel: too little time left" >> "$out/progress.txt"
    return
  fi
  timeout "$left" bash "$root/xtask/gpu-run.sh" duoseg train --out "$dir" --device cuda:0 --no-progress --resume \
    --data "$data" "${f[@]:1}" > "$dir.log" 2>&1
  local rc=$?
  if [ -f "$dir/summary.json" ]; then
    echo "$code cuda $gpu" > "$dir/code-version.txt"
    echo "done $rel in $(( $(date +%s) - t0 ))s" >> "$out/progress.txt"
  else
    echo "FAILED $rel rc $rc after $(( $(date +%s) - t0 ))s" >> "$out/progress.txt"
    { echo "== $rel (rc $rc)"; tail -n 15 "$dir.log"; tail -n 1 "$dir/log.jsonl" 2>/dev/null; } >> "$out/failures.txt"
  fi
}

running=0
for jobs in "$carry"/jobs/*.tsv; do
  code="$(head -n 1 "$jobs" | sed -n 's/^# code //p')"
  while IFS= read -r line; do
    case "$line" in "#"*|"") continue ;; esac
    while [ "$running" -ge "$par" ]; do
      wait -n
      running=$((running - 1))
    done
    if [ $(( deadline - $(date +%s) )) -lt "$min_run_s" ]; then
      echo "skipped $(cut -f1 <<< "$line"): too little time left" >> "$out/progress.txt"
      continue
    fi
    run_job "$line" "$code" &
    running=$((running + 1))
    echo "started $(cut -f1 <<< "$line") at +$(( $(date +%s) - start ))s" >> "$out/progress.txt"
  done < "$jobs"
done
wait
kill "$smi" 2>/dev/null

# The finished runs' small files, no checkpoints.
stage="$work.stage"
rm -rf "$stage"
(cd "$work" && find . -name summary.json -printf '%h\n') | while read -r d; do
  mkdir -p "$stage/$d"
  for f in summary.json summary-a.json summary-b.json config.json log.jsonl code-version.txt; do
    [ -f "$work/$d/$f" ] && cp "$work/$d/$f" "$stage/$d/"
  done
done
[ -d "$stage" ] && tar czf "$out/runs.tgz" -C "$stage" .
echo "end +$(( $(date +%s) - start ))s: $(grep -c '^done' "$out/progress.txt") done, $(grep -c '^FAILED' "$out/progress.txt") failed" >> "$out/progress.txt"
cat "$out/progress.txt"
