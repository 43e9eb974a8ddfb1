# Helpers shared by the GPU machine's scripts (gpu-run.sh, gpu-bench.sh, gpu-la-bench.sh,
# gpu-sweep.sh); each sources this file.

# The Python that holds PyTorch there: $DUOSEG_GPU_PYTHON, else the PyTorch venv's, else python3.
gpu_python() {
  if [ -n "${DUOSEG_GPU_PYTHON:-}" ]; then
    echo "$DUOSEG_GPU_PYTHON"
  elif [ -x /opt/torch/.venv/bin/python3 ]; then
    echo /opt/torch/.venv/bin/python3
  else
    echo python3
  fi
}

# unpack_xz SRC DEST: the xz-compressed binary SRC unpacked to DEST and made executable, with
# Python's lzma (the machine may lack xz).
unpack_xz() {
  "$(gpu_python)" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' "$1" "$2" &&
    chmod +x "$2"
}
