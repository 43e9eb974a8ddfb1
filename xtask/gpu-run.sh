#!/usr/bin/env bash
# Runs a CUDA binary built by `cargo xtask gpu-build` on the GPU machine (no Rust toolchain needed).
#
#   usage: bash xtask/gpu-run.sh <binary in gpu/bin> [args...]
#   e.g.   bash xtask/gpu-run.sh gpu_check
#
# The binary needs the driver's libcuda.so.1 (/usr/local/nvidia/lib64) and the CUDA 13 libraries
# (cuBLAS, cuRAND, cudart, cuDNN 9) that the PyTorch cu130 venv ships in
# site-packages/nvidia/{cu13,cudnn}/lib. This script finds those folders with the venv's python
# ($DUOSEG_GPU_PYTHON, else /opt/torch/.venv/bin/python3, else python3) and sets LD_LIBRARY_PATH.
# With the device tool: carry ["gpu/bin/<binary>"], command "bash xtask/gpu-run.sh <binary> ...".
# $DUOSEG_GPU_BIN_DIR, when set, is the folder of the binaries instead of gpu/bin.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: bash xtask/gpu-run.sh <binary in gpu/bin> [args...]" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${DUOSEG_GPU_BIN_DIR:-$root/gpu/bin}/$1"
shift
if [ ! -x "$bin" ]; then
  echo "gpu-run: $bin not found or not executable (build it with cargo xtask gpu-build and carry it)" >&2
  exit 2
fi

# shellcheck source=xtask/gpu-lib.sh
. "$root/xtask/gpu-lib.sh"
py="$(gpu_python)"
nvidia_dir="$("$py" - <<'EOF'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
for p in nvidia.__path__:
    if os.path.isdir(os.path.join(p, "cu13", "lib")):
        print(p)
        break
EOF
)"
if [ -z "$nvidia_dir" ]; then
  for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia; do
    if [ -d "$d/cu13/lib" ]; then nvidia_dir="$d"; break; fi
  done
fi
if [ -z "$nvidia_dir" ]; then
  echo "gpu-run: no site-packages/nvidia/cu13/lib found with $py or under /opt/torch/.venv" >&2
  exit 2
fi
libs="$nvidia_dir/cu13/lib:$nvidia_dir/cudnn/lib:/usr/local/nvidia/lib64"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu-run: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
exec "$bin" "$@"
