"""Benchmark: building a GMM from a map (run by hand; not a test).

::

    .venv/bin/python benchmarks/bench_gmm_build.py                    # both cases below
    .venv/bin/python benchmarks/bench_gmm_build.py --case ref_model
    .venv/bin/python benchmarks/bench_gmm_build.py --case sim128 --resolution 4 --n-iter 200
    .venv/bin/python benchmarks/bench_gmm_build.py --device cuda

Cases:

* ``ref_model``: ``../shared/data/maps/ref_model.mrc`` (β-galactosidase, 100^3, 3.54 Å voxel;
  low-pass filtered at about 45 Å, so the default target is 45 Å), N estimated.
* ``sim128``: the simulator's procedural protein (about 1,500 atoms) rendered in a box of 128
  at 1.0 Å, 1 % white noise, low-passed to the target resolution (default 4 Å), N estimated.

For each: wall time of the whole ``build_gmm`` (threshold, N estimation, K-means seeding,
Fourier-space fit), of seeding alone, time per fit step, the cropped grid, N, and the GMM-vs-map
FSC (minimum over shells up to the target) from the rendered GMM. Wall-clock numbers depend on
what else runs on the machine; the process CPU time (all threads) is printed next to them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gmmsession.algorithms.gmm_build import GmmBuildConfig, build_gmm
from gmmsession.algorithms.protein import build_protein
from gmmsession.algorithms.simulate import atom_gaussians
from gmmsession.data.io.mrc import read_map
from gmmsession.kernels.filters import lowpass_3d
from gmmsession.kernels.fourier import irfft_centered_3d
from gmmsession.kernels.fsc import fsc_3d
from gmmsession.kernels.gmm import gaussians_rfft_3d
from gmmsession.kernels.gmm_fit import max_shell_for_resolution

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def simulated_map(box: int, pixel: float, resolution: float, noise: float = 0.01) -> np.ndarray:
    protein = build_protein(seed=0)
    amp, sig = atom_gaussians(protein)
    truth = irfft_centered_3d(gaussians_rfft_3d(torch.as_tensor(protein.positions_angstrom), amp, sig, box, pixel), box)
    truth = truth / truth.max()
    gen = torch.Generator().manual_seed(0)
    return lowpass_3d(truth + noise * torch.randn(truth.shape, generator=gen, dtype=truth.dtype), pixel, resolution).float().numpy()


def run_case(name: str, vol: np.ndarray, pixel: float, resolution: float, n_iter: int, device: str) -> None:
    box = vol.shape[-1]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    gmm, report = build_gmm(vol, pixel, resolution, n_iter=n_iter, device=device, config=GmmBuildConfig())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    g = gmm.to("cpu", torch.float64)
    rendered = irfft_centered_3d(gaussians_rfft_3d(g.positions_angstrom, g.amplitudes, g.widths_angstrom, box, pixel), box)
    fsc = fsc_3d(rendered, torch.as_tensor(vol, dtype=torch.float64))[: max_shell_for_resolution(box, pixel, resolution) + 1]
    fit_s = total - report.seconds_seeding
    print(
        f"{name}: box {box}, {pixel:.2f} Å, target {resolution:g} Å -> N = {report.n_gaussians} "
        f"(K-means trials {[t[0] for t in report.estimate_trials]}), cropped grid {report.fit_box_size}^3\n"
        f"  build_gmm {total:.2f} s = seeding {report.seconds_seeding:.2f} s + fit {fit_s:.2f} s "
        f"({n_iter} steps, {1000 * fit_s / max(n_iter, 1):.1f} ms/step) on {report.device}, "
        f"{torch.get_num_threads()} torch threads; process CPU time {cpu:.2f} s\n"
        f"  GMM vs map FSC: min {float(fsc[1:].min()):.3f}, last shell {float(fsc[-1]):.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["ref_model", "sim128", "all"], default="all")
    ap.add_argument("--resolution", type=float, default=None, help="target (Å); default 45 for ref_model, 4 for sim128")
    ap.add_argument("--n-iter", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, device {args.device}")
    if args.case in ("ref_model", "all"):
        vol, px = read_map(SHARED / "maps" / "ref_model.mrc")
        run_case("ref_model.mrc", vol, px, args.resolution or 45.0, args.n_iter, args.device)
    if args.case in ("sim128", "all"):
        res = args.resolution or 4.0
        run_case("simulated box 128", simulated_map(128, 1.0, res), 1.0, res, args.n_iter, args.device)


if __name__ == "__main__":
    main()
