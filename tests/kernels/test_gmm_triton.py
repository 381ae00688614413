"""The Triton projection (kernels/gmm_triton.py) equals the torch path (values and pose gradients).

On CUDA the kernels run natively; without a GPU they run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, which must be set before Triton is imported, hence a subprocess).
CPU-only torch builds do not ship Triton: ``make test`` installs it so that CI runs the
interpreter test; elsewhere without Triton there is no Triton path, and the torch path is what runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton not installed: the Triton projection is not used without it")

# One comparison, run either in this process (CUDA) or in an interpreter subprocess (CPU).
# Float32 sums over a few hundred Gaussians in a different order: 1e-4 of the largest value
# is ~100x float32 rounding on these sizes and far below any real error (a wrong sign or
# index gives O(1) differences).
_COMPARE = textwrap.dedent(
    """
    import json, math, os, sys, torch
    from gmmsession.kernels.gmm import project_gaussians_rfft_2d
    from gmmsession.kernels.rotations import rotvec_to_matrix
    from gmmsession.kernels.gmm_triton import separable_projection_available

    def compare(device, n, g, box, pixel, max_freq, seed=0):
        gen = torch.Generator().manual_seed(seed)
        pos = ((torch.rand(g, 3, generator=gen) - 0.5) * 0.6 * box * pixel).to(device)
        amp = (torch.rand(g, generator=gen) + 0.5).to(device)
        sig = (torch.rand(g, generator=gen) * 1.5 + 1.0).to(device)
        rot0 = rotvec_to_matrix(torch.randn(n, 3, generator=gen)).to(device)
        shift0 = (torch.randn(n, 2, generator=gen) * 2).to(device)
        weight = torch.randn(n, box if max_freq is None else 2 * box, box, generator=gen).to(device)
        results = {}
        for fused in (False, True):  # torch path, then Triton path
            os.environ["GMMSESSION_NO_TRITON"] = "0" if fused else "1"
            assert separable_projection_available(pos) == fused, "Triton path not selected as intended"
            theta = torch.zeros(n, 5, device=device, requires_grad=True)
            rot = rotvec_to_matrix(theta[:, :3]) @ rot0
            proj = project_gaussians_rfft_2d(pos, amp, sig, rot, shift0 + theta[:, 3:], box, pixel, max_freq)
            w = weight[:, : proj.shape[-2], : proj.shape[-1]]
            loss = (proj.real * w).sum() + (proj.imag * w.flip(-1)).sum()
            (grad,) = torch.autograd.grad(loss, theta)
            results[fused] = (proj.detach(), grad)
        (p0, g0), (p1, g1) = results[False], results[True]
        return {
            "proj_err": float((p1 - p0).abs().max() / p0.abs().max()),
            "grad_err": float((g1 - g0).abs().max() / g0.abs().max()),
        }

    device = sys.argv[1]
    cases = [(3, 150, 32, 1.5, None), (2, 333, 48, 1.2, 1 / 4.0), (4, 64, 24, 2.0, None)]
    if device == "cuda":
        cases.append((32, 7374, 240, 0.86, 1 / 3.0))
    print(json.dumps([compare(device, *c) for c in cases]))
    """
)


def _check(results: list[dict]) -> None:
    for r in results:
        assert r["proj_err"] < 1e-4, results
        assert r["grad_err"] < 1e-4, results


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="CUDA present: the native test below covers the kernels (and Triton 3.6's interpreter cannot run loops with runtime bounds)",
)
def test_triton_projection_matches_torch_path_in_interpreter(tmp_path):
    script = tmp_path / "compare.py"
    script.write_text(_COMPARE)
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, str(script), "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _check(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the native fused kernels need one")
def test_triton_projection_matches_torch_path_on_cuda(tmp_path):
    script = tmp_path / "compare.py"
    script.write_text(_COMPARE)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # TF32 is off by default in torch, so both paths use full float32 matmuls here.
    out = subprocess.run([sys.executable, str(script), "cuda"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _check(json.loads(out.stdout.strip().splitlines()[-1]))
