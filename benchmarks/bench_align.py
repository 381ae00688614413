"""Benchmark: per-particle GMM pose refinement on the CPU (run by hand; not a test).

::

    .venv/bin/python benchmarks/bench_align.py                       # box 64/128 x 2,000/8,000 Gaussians
    .venv/bin/python benchmarks/bench_align.py --boxes 64 --gaussians 2000 --n 32   # quick

For each box and GMM size it makes a random GMM inside the particle sphere, CTF-modulated
clean images of it at random poses, starts 3 degrees / 1 pixel away, and times
:func:`gmmsession.algorithms.align.refine_poses` (default :class:`AlignConfig`: 10 Adam steps,
batch 16, scored to ``--resolution`` Å, so images are Fourier-cropped to the box whose Nyquist
reaches it). It prints particles/s and the achieved FLOP rate of projection + FRC + gradient
divided by this machine's fp32 matrix-multiply rate measured in the same run
(``torch.mm`` of 2048 x 2048 matrices).

FLOPs counted: the projection's one real batched block matmul ``(n, 2K, G) @ (n, G, 2K)``
(``K = crop // 2 + 1``), ``2 n (2K)^2 G`` forward, and its two backward matmuls (gradients of
both factors), ``2x`` that: ``3 * 2 n (2K)^2 G`` per Adam step, plus one forward for the final
score. Element-wise work (factor trigonometry, FRC ring sums, Adam) is not counted: the ratio
says how close the whole step is to matmul-bound.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from gmmsession.algorithms.align import AlignConfig, refine_poses
from gmmsession.data.bridge import ParticleTensors
from gmmsession.data.chunks import ParticleChunk
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import irfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.gmm import fourier_crop_box_size, project_gaussians_rfft_2d
from gmmsession.kernels.rotations import quaternion_to_matrix, rotvec_to_matrix


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate_gflops(size: int = 2048, repeats: int = 5, device: torch.device = torch.device("cpu")) -> float:
    """fp32 ``torch.mm`` rate (GFLOP/s); on CUDA TF32 is left off (torch's default), i.e. true fp32."""
    if device.type == "cuda":
        size = 8192
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def make_case(box: int, pixel: float, n_gaussians: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    radius = 0.35 * box * pixel
    direction = torch.nn.functional.normalize(torch.randn(n_gaussians, 3, generator=gen), dim=-1)
    pos = direction * radius * torch.rand(n_gaussians, 1, generator=gen) ** (1 / 3)
    amp = 0.5 + torch.rand(n_gaussians, generator=gen)
    sig = 1.0 + 0.5 * torch.rand(n_gaussians, generator=gen)
    rot = quaternion_to_matrix(torch.randn(n, 4, generator=gen))
    origin = (torch.rand(n, 2, generator=gen) * 4 - 2) * pixel
    dfu = 10000 + 10000 * torch.rand(n, generator=gen)
    z = torch.zeros(n)
    freqs = rfft_frequencies_2d(box, pixel)
    images = []
    for s in range(0, n, 16):
        sl = slice(s, s + 16)
        spec = project_gaussians_rfft_2d(pos, amp, sig, rot[sl], -origin[sl], box, pixel)
        images.append(irfft_centered_2d(spec * ctf_2d(freqs, dfu[sl], dfu[sl] - 200, z[sl], 300.0, 2.7, 0.1), box))
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    start = rotvec_to_matrix(axis * math.radians(3.0)) @ rot
    params = ParticleTensors(
        rotation=start, origin_angstrom=origin + pixel * torch.nn.functional.normalize(torch.randn(n, 2, generator=gen), dim=-1),
        defocus_u_angstrom=dfu, defocus_v_angstrom=dfu - 200, defocus_angle_deg=z, phase_shift_deg=z,
        ctf_bfactor_angstrom2=z, ctf_scale=z + 1, voltage_kv=z + 300, cs_mm=z + 2.7, amplitude_contrast=z + 0.1,
        pixel_size_angstrom=z + pixel, box_size=torch.full((n,), box),
    )
    chunk = ParticleChunk(positions=np.arange(n), images=torch.cat(images), params=params, halves=torch.ones(n, dtype=torch.int64))
    return chunk, (pos, amp, sig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--pixel", type=float, default=1.5)
    parser.add_argument("--resolution", type=float, default=4.0, help="max resolution scored (Å)")
    parser.add_argument("--n", type=int, default=64, help="particles per configuration")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (matmul rate measured on the same device)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="AlignConfig(tf32=False): true fp32 matmuls on CUDA")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="AlignConfig(cuda_graphs=False): eager CUDA launches")
    args = parser.parse_args()
    dev = torch.device(args.device)

    rate = matmul_rate_gflops(device=dev)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}; fp32 torch.mm rate: {rate:.1f} GFLOP/s")
    for box, g, batch in [(b, g, bs) for b in args.boxes for g in args.gaussians for bs in args.batch]:
        config = AlignConfig(max_resolution_angstrom=args.resolution, batch_size=batch, tf32=args.tf32, cuda_graphs=args.graphs)
        crop = fourier_crop_box_size(box, args.pixel, 1.0 / args.resolution)
        k = crop // 2 + 1
        if True:
            chunk, gmm = make_case(box, args.pixel, g, args.n)
            chunk = ParticleChunk(chunk.positions, chunk.images.to(dev), ParticleTensors(**{f: v.to(dev) for f, v in vars(chunk.params).items()}), chunk.halves.to(dev))
            gmm = tuple(t.to(dev) for t in gmm)
            refine_poses([ParticleChunk(chunk.positions[:batch], chunk.images[:batch],
                                        ParticleTensors(**{f: v[:batch] for f, v in vars(chunk.params).items()}),
                                        chunk.halves[:batch])], {1: gmm}, config)  # warm-up
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            _sync(dev)
            t = time.perf_counter()
            up = refine_poses([chunk], {1: gmm}, config)
            _sync(dev)
            dt = time.perf_counter() - t
            mem = f", peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB" if dev.type == "cuda" else ""
            flops = args.n * (3 * config.n_steps + 1) * 2 * (2 * k) ** 2 * g
            achieved = flops / dt / 1e9
            print(
                f"batch {batch}: box {box:4d} (crop {crop} for {args.resolution} Å at {args.pixel} Å/px), G {g:5d}: "
                f"{args.n / dt:7.1f} particles/s, {achieved:6.1f} GFLOP/s = {100 * achieved / rate:5.1f} % of torch.mm; "
                f"median angle change {float(up.angle_change_deg.median()):.2f} deg, "
                f"score {float(up.initial_score.mean()):.3f} -> {float(up.score.mean()):.3f}{mem}",
                flush=True,
            )


if __name__ == "__main__":
    main()
