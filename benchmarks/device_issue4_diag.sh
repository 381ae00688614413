#!/usr/bin/env bash
# Issue 4 diagnostics in one device call: focused-refinement settings and patch layouts on the
# 5,000-particle hinge (box 96, 1 Å/px, +-20 deg). Log in $OUT/device_issue4_diag.log.
set -u
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/device_issue4_diag.log") 2>&1; fi
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${T4:-280} python3 benchmarks/bench_focus_patches.py --n 5000 --box 96 --pixel-size 1.0 --hinge 20 --k 4 8 \
  --patch-patience 3 --work /tmp/focus96 --focus-align default "scoring='frc',band_average='ring'" \
  min_resolution_angstrom=12.0 n_steps=20 "learning_rate=0.01,n_steps=20" 2>&1 | grep -v "^torch"
