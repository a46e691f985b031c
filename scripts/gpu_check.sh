#!/usr/bin/env bash
# The CUDA checks and timings in one go, for a machine with an NVIDIA GPU (no napari needed there:
# only torch, torchvision, numpy, tifffile and pytest). Run from the repository root:
#
#     bash scripts/gpu_check.sh [LOG_DIR]      # default LOG_DIR: gpu-check/
#
# 1. the CUDA tests (tests/model/test_cuda.py: sparse ROI conv == dense == float64 reference with
#    TF32 off, the head, float16 autocast, a volume on the GPU vs the CPU, training steps) plus
#    the device-selection and sparse ROI conv suites;
# 2. scripts/bench_roi_conv.py on CUDA (TF32 off; every row's dense baseline timed in the run);
# 3. scripts/bench_volume.py on CUDA (bigger subsets than on the 2-core CPU).
# Each step has its own time limit and its own log, so one failing step does not hide the others.
set -u
LOG=${1:-gpu-check}
mkdir -p "$LOG"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  nproc
} 2>&1 | tee "$LOG/machine.txt"

timeout 170 $PY -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" \
  --import-mode=importlib tests/model/test_cuda.py tests/model/test_device.py \
  tests/model/test_roi_conv_sparse.py tests/model/test_roi_conv.py 2>&1 | tail -25 \
  | tee "$LOG/tests.txt"

timeout 150 $PY scripts/bench_roi_conv.py --device cuda --dense-every-row 2>&1 \
  | tee "$LOG/bench_roi_conv.txt"

timeout 300 $PY scripts/bench_volume.py --device cuda --paper-slices 64 --tv-slices 32 --slow-repeats 3 2>&1 \
  | tee "$LOG/bench_volume.txt"
