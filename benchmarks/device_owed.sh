#!/usr/bin/env bash
# The GPU checks still owed after issues 3-5, in one call of the device tool (about 9 minutes on
# an H100; each stage has its own time limit). The whole log goes to $OUT/device_owed.log.
#   1. the CUDA tests (kernels and algorithms parametrised over devices, conf_to_pose's kernels
#      included; the Triton projection; CUDA-graph replay against eager);
#   2. the demo (`gmmsession demo`, the README's main job) with CUDA as the session's device;
#   3. issue 5: conformation -> pose with its projection refinement on CUDA, then focused
#      refinement (benchmarks/bench_heterogeneity.py --focus);
#   4. issue 4: local resolution of a 128^3 map pair on CUDA and on the CPU (16 cores);
#   5. issue 4's acceptance experiment at box 96, 1 Å/px, +-30 deg, 5,000 particles: global,
#      focused, patches K = 4, the composite with the focused result averaged in and on top
#      (benchmarks/bench_focus_patches.py);
#   6. the session tests with CUDA present (whatever time is left; modules needing ipywidgets or
#      RELION skip or fail to import there, which the log shows).
# Packages the device image lacks travel in .devpkgs/ and .whl/ (see device_issue3.sh):
#   run(command="bash benchmarks/device_owed.sh", carry=[".devpkgs", ".whl"], timeout_s=580)
# Sizes and limits can be shrunk for a dry run on the CPU, e.g.
#   SMALL=1 bash benchmarks/device_owed.sh
set -u
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/device_owed.log") 2>&1; fi
source "$(dirname "$0")/device_env.sh"
PY=${PY:-python3}
start=$(date +%s)
stage() { echo; echo "== $1 (t = $(( $(date +%s) - start )) s)"; }
if [ "${SMALL:-0}" = 1 ]; then
  HET="--n 400 --box 32 --pixel-size 2.0 --gaussians 300 --epochs 2 --fit-steps 10"
  FP="--n 400 --box 32 --pixel-size 2.4 --hinge 30 --k 4"
  LR="--box 48"; DEMO="--quick"
else
  HET="--n 10000 --box 64 --pixel-size 1.0 --gaussians 2000 --epochs 4 --fit-steps 60"
  FP="--n 5000 --box 96 --pixel-size 1.0 --hinge 30 --k 4"
  LR="--box 128"; DEMO=""
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stage "1. CUDA tests (kernels, algorithms)"
timeout ${T1:-120} $PY -m pytest -q -rs -k cuda tests/kernels tests/algorithms -p no:cacheprovider 2>&1 | tail -15

stage "2. demo on the built-in simulated dataset"
timeout ${T2:-120} $PY -m gmmsession.cli demo --out /tmp/demo_out --quiet $DEMO 2>&1 | tail -25

stage "3. issue 5: conf_to_pose with its projection refinement, then focused refinement"
timeout ${T3:-110} $PY benchmarks/bench_heterogeneity.py $HET --focus 2>&1 | grep -v "^results in"

stage "4. issue 4: local resolution, CUDA then CPU"
timeout ${T4:-40} $PY benchmarks/bench_locres.py $LR --device cuda 2>&1
timeout ${T4:-40} $PY benchmarks/bench_locres.py $LR --device cpu 2>&1

stage "5. issue 4: hinge +-30 deg, box 96 (global, focused, patches K = 4, merged)"
timeout ${T5:-200} $PY benchmarks/bench_focus_patches.py $FP --work /tmp/focus96_30 2>&1 | grep -v "^torch"

stage "6. session tests with CUDA present"
left=$(( ${TOTAL:-560} - ($(date +%s) - start) ))
if [ $left -gt 30 ]; then
  timeout $left $PY -m pytest -q -rs tests/session -p no:cacheprovider -x --ignore-glob='*widget*' 2>&1 | tail -20
else
  echo "skipped: only $left s left"
fi
stage "done"
