"""Reconstruction throughput on a GPU (run by hand where CUDA is present; prints numbers).

Images are made on the device with the voxel forward model (CTF, random poses and shifts,
white noise) and fed to ``reconstruct_half_maps`` in chunks already on the GPU, so the number is
the reconstruction's own throughput (no disk). Usage:

    python benchmarks/bench_reconstruct_gpu.py [--n 20000] [--box 128] [--chunk 2000]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gmmsession.algorithms.reconstruct import ReconstructConfig, reconstruct_half_maps
from gmmsession.data.bridge import ParticleTensors
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import rfft_frequencies_2d
from gmmsession.kernels.fsc import fsc_3d
from gmmsession.kernels.projection import project_volume


def smooth_map(box: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    c = (torch.arange(box) - box // 2).float()
    vol = torch.zeros(box, box, box)
    for _ in range(40):
        p = (torch.rand(3, generator=g) - 0.5) * box * 0.5
        s = 1.5 + 3 * torch.rand(1, generator=g)
        vol += torch.exp(-((c[:, None, None] - p[2]) ** 2 + (c[None, :, None] - p[1]) ** 2 + (c[None, None, :] - p[0]) ** 2) / (2 * s**2))
    return vol.to(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    args = ap.parse_args()
    dev = torch.device("cuda")
    box, px, n = args.box, args.pixel_size, args.n
    vol = smooth_map(box, dev)
    g = torch.Generator(device="cpu").manual_seed(1)
    chunks = []
    freqs = rfft_frequencies_2d(box, px, device=dev)
    for start in range(0, n, args.chunk):
        m = min(args.chunk, n - start)
        euler = torch.rand(m, 3, generator=g) * torch.tensor([360.0, 180.0, 360.0])
        euler[:, 1] = torch.rad2deg(torch.acos(1 - 2 * torch.rand(m, generator=g)))
        rot = euler_relion_to_matrix(euler.double()).float().to(dev)
        origin = ((torch.rand(m, 2, generator=g) - 0.5) * 6 * px).to(dev)
        du = (8000 + 12000 * torch.rand(m, generator=g)).to(dev)
        params = ParticleTensors(
            rotation=rot, origin_angstrom=origin, defocus_u_angstrom=du, defocus_v_angstrom=du + 200,
            defocus_angle_deg=torch.zeros(m, device=dev), phase_shift_deg=torch.zeros(m, device=dev),
            ctf_bfactor_angstrom2=torch.zeros(m, device=dev), ctf_scale=torch.ones(m, device=dev),
            voltage_kv=torch.full((m,), 300.0, device=dev), cs_mm=torch.full((m,), 2.7, device=dev),
            amplitude_contrast=torch.full((m,), 0.1, device=dev), pixel_size_angstrom=torch.full((m,), px, device=dev),
            box_size=torch.full((m,), box, device=dev, dtype=torch.int64),
        )
        ctf = ctf_2d(freqs, **params.ctf_kwargs())
        imgs = project_volume(vol, rot, origin, px, ctf=ctf)
        imgs = imgs + imgs.std() * 3 * torch.randn(imgs.shape, device=dev)
        halves = (torch.arange(start, start + m, device=dev) % 2) + 1
        chunks.append((imgs, params, halves))
    torch.cuda.synchronize()
    config = ReconstructConfig(device="cuda")
    reconstruct_half_maps(chunks[:1], box, px, config)  # warm-up (kernels, plans)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    maps = reconstruct_half_maps(chunks, box, px, config)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    fsc = fsc_3d(maps[0], maps[1])
    print(f"{torch.cuda.get_device_name()}: {n} particles, box {box}: {dt:.2f} s, {n / dt:.0f} particles/s; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (images of all chunks held: "
          f"{n * box * box * 4 / 2**30:.2f} GiB); half-map FSC at 0.8 Nyquist {float(fsc[int(0.4 * box)]):.3f}")


if __name__ == "__main__":
    main()
