#!/usr/bin/env bash
# Issue 3's GPU checks in one call of the device tool (run from the repository root on the GPU
# machine; about 8 minutes on an H100/H200). Logs go to $OUT (or ./device_out).
#
# The device image has torch/numpy/xarray/h5py/sklearn but not mrcfile/starfile/h5netcdf/gemmi:
# carry them in `.devpkgs/` (pure-Python packages, `pip install --target .devpkgs ...`) and a
# gemmi wheel in `.whl/`, both ignored through .git/info/exclude, e.g.
#   run(command="bash benchmarks/device_issue3.sh", carry=[".devpkgs", ".whl"], timeout_s=600)
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/.devpkgs:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

# 1. The CUDA half of the test suite (tests parametrised over devices run on cpu and cuda).
timeout 110 python3 -m pytest -q -x -k "cuda" tests/kernels tests/algorithms -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests_cuda.txt"

# 2. Kernel speed and memory at the paper's GPCR scale (7,374 Gaussians, box 240, 0.86 Å/px, 3 Å),
#    batch 16 and 64; then the CPU benchmark's sizes on the GPU.
timeout 110 python3 benchmarks/bench_align.py --device cuda --boxes 240 --gaussians 7374 --pixel 0.86 --resolution 3.0 \
  --batch 16 64 256 --n 2048 2>&1 | tee "$OUT/bench_align_gpcr.txt"
timeout 45 python3 benchmarks/bench_align.py --device cuda --n 1024 --batch 16 64 2>&1 | tee "$OUT/bench_align_small.txt"

# 3. Acceptance experiment: 5,000 particles, SNR 0.2, 3 deg / 1 px start (default scoring).
timeout 200 python3 benchmarks/bench_refine_global.py --n 5000 --snr 0.2 --scoring ctf_exact --band-average pooled \
  2>&1 | tee "$OUT/refine_global.txt"
