#!/usr/bin/env bash
# Issue 3's GPU checks in one call of the device tool (run from the repository root on the GPU
# machine; about 3 minutes on an H100). Prints to stdout:
#   1. versions, the CUDA tests (kernels and algorithms parametrised over devices, and the
#      Triton projection against the torch path);
#   2. alignment speed and peak memory at the paper's GPCR scale (7,374 Gaussians, box 240,
#      0.86 Å/px, 3 Å) with the defaults (Triton path, TF32, CUDA graphs) and without graphs;
#      then a smaller problem (box 128, 2,000 Gaussians) with and without graphs;
#   3. the 5,000-particle acceptance experiment (ACCEPT=0 skips it);
#   4. the torch path (GMMSESSION_NO_TRITON=1) and fp32 at the GPCR scale on the same card, and
#      a CUDA profile of one batch of 256.
#
# The device image has torch/numpy/xarray/h5py/sklearn but not mrcfile/starfile/h5netcdf/gemmi:
# carry them in `.devpkgs/` (pure-Python packages, `pip install --target .devpkgs ...`) and a
# gemmi wheel in `.whl/`, both ignored through .git/info/exclude, e.g.
#   run(command="bash benchmarks/device_issue3.sh", carry=[".devpkgs", ".whl"], timeout_s=500)
set -u
# The device tool returns only the last 12,000 characters of output: keep the whole log in $OUT.
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/device_issue3.log") 2>&1; fi
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 100 python3 -m pytest -q -k "cuda" tests/kernels tests/algorithms -p no:cacheprovider 2>&1 | tail -15

GPCR="--device cuda --boxes 240 --gaussians 7374 --pixel 0.86 --resolution 3.0 --n 2048"
echo "== Triton path, TF32, CUDA graphs (defaults)"; timeout 90 python3 benchmarks/bench_align.py $GPCR --batch 16 64 256 2>&1 | grep -v "^torch"
echo "== Triton path, TF32, no graphs"; timeout 60 python3 benchmarks/bench_align.py $GPCR --batch 16 64 256 --no-graphs 2>&1 | grep -v "^torch"
echo "== smaller problem (box 128, 2,000 Gaussians, 1.5 Å/px, 4 Å), graphs, then none"
timeout 40 python3 benchmarks/bench_align.py --device cuda --boxes 128 --gaussians 2000 --n 4096 --batch 64 256 2>&1 | grep -v "^torch"
timeout 40 python3 benchmarks/bench_align.py --device cuda --boxes 128 --gaussians 2000 --n 4096 --batch 64 256 --no-graphs 2>&1 | grep -v "^torch"

if [ "${ACCEPT:-1}" = 1 ]; then
  echo "== acceptance: 5,000 particles, SNR 0.2, 3 deg / 1 px start"
  timeout 150 python3 benchmarks/bench_refine_global.py --n 5000 --snr 0.2 --scoring ctf_exact --band-average pooled 2>&1 | tail -8
fi
echo "== torch path, TF32, no graphs"; GMMSESSION_NO_TRITON=1 timeout 60 python3 benchmarks/bench_align.py $GPCR --batch 64 256 --no-graphs 2>&1 | grep -v "^torch"
echo "== Triton path, fp32"; timeout 60 python3 benchmarks/bench_align.py $GPCR --batch 64 256 --no-tf32 2>&1 | grep -v "^torch"
echo "== profile, batch 256"; timeout 60 python3 benchmarks/profile_align_gpu.py 256 2>&1 | head -45
