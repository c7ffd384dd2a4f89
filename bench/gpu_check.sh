#!/usr/bin/env bash
# The device check in one command, for a lent GPU machine (no TensorFlow, no network): run from the checkout's
# root with the Keras wheels in .whl/ (../shared/gpu/RECIPE.md says which). Logs go to $OUT (or ./gpu-logs).
# Each step has its own time limit, so one hang cannot eat the lease; the whole fits in about 9 minutes.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax JAX_PLATFORMS=cpu FASTDECOMP_CACHE_DIR=$PWD/.fdc \
       PYTHONUNBUFFERED=1 FASTDECOMP_TUNE=off
{ nvidia-smi -L; python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__)"; } \
  2>&1 | tee "$out/log"
step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2
  shift 2
  echo "### $name (limit ${limit}s)" | tee -a "$out/log"
  timeout "$limit" "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" | tee -a "$out/log"
}
step 150 tests python3 bench/gpu_check.py --steps tests
step 60 kernel python3 bench/gpu_check.py --steps kernel
step 110 engine python3 bench/gpu_check.py --steps engine
step 150 decompose python3 bench/gpu_check.py --steps decompose
step 60 ncu ncu --clock-control none -k regex:conv2d_forward --launch-skip 20 --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section LaunchStats python3 bench/gpu_check.py --steps profile
step 60 memcheck compute-sanitizer --tool memcheck python3 -m pytest -m gpu --gpu -q -o addopts= \
  -p no:cacheprovider tests/test_gpu_kernels.py -k "conv2d_forward and cuda"
