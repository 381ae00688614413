#!/usr/bin/env bash
# The GPU checks of issues 3-5 in one call of the device tool (run from the repository root on the
# GPU machine; about 8 minutes on an H100/H200). The whole log goes to $OUT/device_issue45.log.
#   1. the CUDA tests (kernels and algorithms parametrised over devices, the Triton projection,
#      CUDA-graph replay against eager);
#   2. issue 4's acceptance experiment: hinge dataset, 5,000 particles, box 96, 1 Å/px, +-20 deg;
#      global, focused (default and a larger learning rate), patches K = 4
#      (benchmarks/bench_focus_patches.py);
#   3. issue 5's benchmark: training time per epoch per 10,000 particles and peak memory at 2,000
#      and 8,000 Gaussians, PC1-vs-hinge correlation, conf_to_pose particles/s and pose error
#      (benchmarks/bench_heterogeneity.py).
# Packages the device image lacks travel in .devpkgs/ and .whl/ (see device_issue3.sh), e.g.
#   run(command="bash benchmarks/device_issue45.sh", carry=[".devpkgs", ".whl"], timeout_s=590)
set -u
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/device_issue45.log") 2>&1; fi
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "${TESTS:-1}" = 1 ]; then
  echo "== CUDA tests"
  timeout 120 python3 -m pytest -q -rs -k "cuda" tests/kernels tests/algorithms -p no:cacheprovider 2>&1 | tail -25
fi
echo "== issue 4: focused and patch refinement on the hinge (5,000 particles, box 96, 1 Å/px)"
timeout ${T4:-200} python3 benchmarks/bench_focus_patches.py --n 5000 --box 96 --pixel-size 1.0 --hinge 20 --k 4 8 \
  --work /tmp/focus96 2>&1 | grep -v "^torch"
echo "== issue 4: global and focused refinement with more particles (15,000)"
timeout ${T4B:-130} python3 benchmarks/bench_focus_patches.py --n 15000 --box 96 --pixel-size 1.0 --hinge 20 \
  --work /tmp/focus96_15k --stages global,focus 2>&1 | grep -v "^torch"
echo "== issue 5: heterogeneity training and conf_to_pose (10,000 particles, box 64, 1 Å/px)"
timeout ${T5:-110} python3 benchmarks/bench_heterogeneity.py --n 10000 --box 64 --pixel-size 1.0 --gaussians ${GAUSS:-2000 8000} \
  --epochs ${EPOCHS:-4} --fit-steps 60 ${HETFOCUS:---focus} 2>&1
