"""Benchmark: local-resolution map of a 128^3 half-map pair (run by hand; not a test).

::

    .venv/bin/python benchmarks/bench_locres.py                       # CPU, box 128, 1 Å/px, 25 Å sampling
    .venv/bin/python benchmarks/bench_locres.py --device cuda         # GPU when there is one
    .venv/bin/python benchmarks/bench_locres.py --full-box --relion   # also RELION-sized (box^3) window FFTs and relion_postprocess --locres

Makes two half maps (300 Gaussian blobs in a 45 Å-radius ball, blurred by B = 50 Å^2, plus
independent noise per half, 5x stronger for x > 0) and a soft threshold mask, then times
:func:`gmmsession.algorithms.final_map.local_resolution` (windowed FSC with phase-randomisation
correction, RELION defaults: radius = sampling / 2, edge = sampling) after one warm-up call.
Prints seconds, the number of windows, the crop size, and the median local resolution in the
mask. ``--relion`` times ``relion_postprocess --locres`` on the same maps (all windows in its
sphere, full-box FFTs, single thread).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmmsession.algorithms.final_map import local_resolution  # noqa: E402
from gmmsession.kernels.filters import apply_bfactor_3d, lowpass_3d  # noqa: E402
from gmmsession.kernels.masks import threshold_mask_3d  # noqa: E402


def make_half_maps(box: int, pixel: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = (torch.arange(box, dtype=torch.float32) - box // 2) * pixel
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box)
    radius = min(45.0, 0.35 * box * pixel)
    pos = torch.randn(300, 3, generator=g)
    pos = pos / pos.norm(dim=1, keepdim=True) * radius * torch.rand(300, 1, generator=g) ** (1 / 3)
    for p in pos:
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 1.5**2))
    vol = apply_bfactor_3d(vol, pixel, 50.0)
    sigma = torch.where(x > 0, 0.05, 0.01)
    h1 = vol + sigma * torch.randn(vol.shape, generator=g)
    h2 = vol + sigma * torch.randn(vol.shape, generator=g)
    mask = threshold_mask_3d(lowpass_3d((h1 + h2) / 2, pixel, 15.0), 0.05, extend_px=3.0, soft_edge_px=6.0)
    return h1, h2, mask


def time_ours(h1, h2, mask, pixel, sampling, device, crop, batch, repeats):
    h1, h2, mask = h1.to(device), h2.to(device), mask.to(device)

    def once():
        out = local_resolution(h1, h2, pixel, mask, sampling, crop_size=crop, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    once()  # warm-up (FFT plans, CUDA context)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = once()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel", type=float, default=1.0, help="Å/px")
    ap.add_argument("--sampling", type=float, default=25.0, help="window spacing, Å (RELION --locres_sampling)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-box", action="store_true", help="also time crop_size=box (RELION's full-box FFT per window)")
    ap.add_argument("--relion", action="store_true", help="also time relion_postprocess --locres on the same maps")
    args = ap.parse_args()

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} CPU threads"))
    h1, h2, mask = make_half_maps(args.box, args.pixel)
    crops = [None] + ([args.box] if args.full_box else [])
    for crop in crops:
        seconds, out = time_ours(h1, h2, mask, args.pixel, args.sampling, device, crop, args.batch, args.repeats)
        inside = mask.numpy() >= 0.5
        print(f"gmmsession box {args.box}^3, {args.pixel} Å/px, sampling {args.sampling} Å: {seconds:.3f} s, "
              f"{out.n_windows} windows, crop {out.crop_size}^3, median {np.nanmedian(out.resolution_map[inside]):.2f} Å "
              f"({seconds / max(out.n_windows, 1) * 1e3:.1f} ms/window)")

    if args.relion:
        if shutil.which("relion_postprocess") is None:
            print("relion_postprocess not installed")
            return
        from gmmsession.data.io.mrc import write_map

        with tempfile.TemporaryDirectory() as tmp:
            for name, vol in (("half1.mrc", h1), ("half2.mrc", h2), ("mask.mrc", mask)):
                write_map(Path(tmp) / name, vol.numpy(), args.pixel)
            cmd = ["relion_postprocess", "--locres", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
                   "--angpix", str(args.pixel), "--locres_sampling", str(args.sampling), "--o", "out/relion"]
            (Path(tmp) / "out").mkdir()  # RELION writes <folder of --o>/histogram.pdf
            t0 = time.perf_counter()
            run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            n = [line for line in run.stdout.splitlines() if "sampling points" in line]
            print(f"relion_postprocess --locres: {seconds:.3f} s (rc {run.returncode}; {n[0].strip() if n else ''})")


if __name__ == "__main__":
    main()
