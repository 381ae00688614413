"""Benchmark: half-map reconstruction, gmmsession vs ``relion_reconstruct`` (run by hand; not a test).

Speed (default)::

    .venv/bin/python benchmarks/bench_reconstruct.py speed --n 20000 --box 128 --workdir /tmp/bench_rec

makes a synthetic smooth map, a RELION 3.1 star file (random poses, shifts, defocus, half sets),
a CTF-modulated stack with ``relion_project --ctf`` plus white noise (added here, seeded),
then times (a) gmmsession reconstructing both half maps from the stack on disk (memory-mapped,
read in chunks) and (b) ``relion_reconstruct --ctf --subset 1`` and ``--subset 2`` on the same
star + stack (serial: RELION 3.1's ``relion_reconstruct`` has no ``--j``) and, for two cores,
``mpirun -n 2 relion_reconstruct_mpi``. Prints particles/s, the ratio, the FSC between our
half maps and RELION's, and each program's half-map 0.143 resolution.

Memory::

    .venv/bin/python benchmarks/bench_reconstruct.py memory --n 100000 --box 64 --workdir /tmp/bench_mem

reconstructs from a 100,000-particle stack on disk and prints the peak RSS of this process
(``resource.getrusage``; the stack is read through ``mrcfile.mmap`` in chunks, so the number
stays flat whatever the count).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from gmmsession.algorithms.reconstruct import ReconstructConfig, reconstruct_half_maps
from gmmsession.data.bridge import ParticleTensors
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.fsc import fsc_3d


def smooth_map(box: int, n_blobs: int = 60, seed: int = 0) -> np.ndarray:
    """A random sum of Gaussian blobs (sigma 1-2.5 voxels) inside the central half of the box."""
    rng = np.random.default_rng(seed)
    c = np.arange(box) - box // 2
    vol = np.zeros((box,) * 3, np.float32)
    for _ in range(n_blobs):
        p = rng.normal(0, box / 10, 3)
        s = rng.uniform(1.0, 2.5)
        gz = np.exp(-((c - p[2]) ** 2) / (2 * s * s))
        gy = np.exp(-((c - p[1]) ** 2) / (2 * s * s))
        gx = np.exp(-((c - p[0]) ** 2) / (2 * s * s))
        vol += (gz[:, None, None] * gy[None, :, None] * gx[None, None, :]).astype(np.float32)
    return vol


def random_particles(n: int, box: int, pixel_size: float, seed: int = 1) -> dict[str, pd.DataFrame]:
    """RELION 3.1 optics + particles tables: uniform random poses, shifts up to +-5 px, defocus 0.8-2 um."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    from scipy.spatial.transform import Rotation

    # ZYZ intrinsic Euler angles of a uniform rotation; any angle triple is a valid pose here.
    eul = Rotation.from_quat(q).as_euler("ZYZ", degrees=True)
    optics = pd.DataFrame(
        dict(
            rlnOpticsGroup=[1],
            rlnOpticsGroupName=["opticsGroup1"],
            rlnImagePixelSize=[pixel_size],
            rlnVoltage=[300.0],
            rlnSphericalAberration=[2.7],
            rlnAmplitudeContrast=[0.1],
            rlnImageSize=[box],
            rlnImageDimensionality=[2],
        )
    )
    du = rng.uniform(8000, 20000, n)
    parts = pd.DataFrame(
        dict(
            rlnAngleRot=eul[:, 0],
            rlnAngleTilt=eul[:, 1],
            rlnAnglePsi=eul[:, 2],
            rlnOriginXAngst=rng.uniform(-5, 5, n) * pixel_size,
            rlnOriginYAngst=rng.uniform(-5, 5, n) * pixel_size,
            rlnDefocusU=du,
            rlnDefocusV=du - rng.uniform(0, 500, n),
            rlnDefocusAngle=rng.uniform(0, 180, n),
            rlnOpticsGroup=np.ones(n, int),
            rlnRandomSubset=(np.arange(n) % 2) + 1,
        )
    )
    return {"optics": optics, "particles": parts}


def params_from_tables(optics: pd.DataFrame, parts: pd.DataFrame) -> ParticleTensors:
    """ParticleTensors straight from star tables (one optics group), without the data layer."""
    n = len(parts)
    o = optics.iloc[0]

    def col(name: str, default: float = 0.0) -> torch.Tensor:
        v = parts[name].to_numpy(np.float64, copy=True) if name in parts else np.full(n, default)
        return torch.as_tensor(v, dtype=torch.float32)

    def const(v: float) -> torch.Tensor:
        return torch.full((n,), float(v), dtype=torch.float32)

    euler = torch.as_tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64, copy=True))
    return ParticleTensors(
        rotation=euler_relion_to_matrix(euler).float(),
        origin_angstrom=torch.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], -1),
        defocus_u_angstrom=col("rlnDefocusU"),
        defocus_v_angstrom=col("rlnDefocusV"),
        defocus_angle_deg=col("rlnDefocusAngle"),
        phase_shift_deg=col("rlnPhaseShift"),
        ctf_bfactor_angstrom2=col("rlnCtfBfactor"),
        ctf_scale=col("rlnCtfScalefactor", 1.0),
        voltage_kv=const(o["rlnVoltage"]),
        cs_mm=const(o["rlnSphericalAberration"]),
        amplitude_contrast=const(o["rlnAmplitudeContrast"]),
        pixel_size_angstrom=const(o["rlnImagePixelSize"]),
        box_size=torch.full((n,), int(o["rlnImageSize"]), dtype=torch.int64),
    )


def make_dataset(workdir: Path, n: int, box: int, pixel_size: float, noise_sigma: float) -> Path:
    """Map + star + ``relion_project --ctf`` stack with seeded white noise; returns the particles star path."""
    workdir.mkdir(parents=True, exist_ok=True)
    star = workdir / "particles.star"
    if star.exists():
        return star
    with mrcfile.new(workdir / "map.mrc", overwrite=True) as m:
        m.set_data(smooth_map(box))
        m.voxel_size = pixel_size
    starfile.write(random_particles(n, box, pixel_size), workdir / "ang.star", overwrite=True)
    subprocess.run(
        ["relion_project", "--i", "map.mrc", "--o", "proj", "--ang", "ang.star", "--ctf"],
        cwd=workdir, check=True, capture_output=True,
    )
    rng = np.random.default_rng(7)
    with mrcfile.mmap(workdir / "proj.mrcs", mode="r+") as m:
        for start in range(0, n, 2000):
            block = m.data[start : start + 2000]
            block += rng.normal(0, noise_sigma, block.shape).astype(np.float32)
    os.replace(workdir / "proj.star", star)
    return star


def chunks_from_stack(star: Path, chunk_size: int):
    """Yield (images, params, halves) chunks reading the stack through ``mrcfile.mmap``."""
    tables = starfile.read(star)
    optics, parts = tables["optics"], tables["particles"]
    names = parts["rlnImageName"].str.split("@", expand=True)
    index = names[0].astype(int).to_numpy() - 1
    stack = star.parent / names[1].iloc[0]
    if not (np.diff(index) == 1).all():
        raise ValueError("benchmark expects one stack in order")
    params = params_from_tables(optics, parts)
    halves = torch.as_tensor(parts["rlnRandomSubset"].to_numpy(copy=True), dtype=torch.int64)
    for start in range(0, len(parts), chunk_size):
        sl = slice(start, min(len(parts), start + chunk_size))
        # Map the stack per chunk: touched pages of a long-lived mapping count in the RSS.
        with mrcfile.mmap(stack, mode="r", permissive=True) as m:
            images = torch.from_numpy(np.array(m.data[index[sl.start] : index[sl.stop - 1] + 1], dtype=np.float32))
        sub = ParticleTensors(**{k: v[sl] for k, v in vars(params).items()})
        yield images, sub, halves[sl]


def resolution_0143(fsc: torch.Tensor, box: int, pixel_size: float) -> float:
    """First shell where the FSC drops below 0.143, as a resolution in Å."""
    below = torch.nonzero(fsc[1:] < 0.143)
    shell = int(below[0]) + 1 if below.numel() else fsc.shape[0] - 1
    return box * pixel_size / shell


def run_ours(star: Path, box: int, pixel_size: float, chunk_size: int) -> tuple[torch.Tensor, float, float]:
    # Two half-set threads on two cores; no intra-op threads on top (see ReconstructConfig).
    config = ReconstructConfig(chunk_size=chunk_size, parallel_halves=True, torch_threads=1)
    t0, c0 = time.perf_counter(), time.process_time()
    maps = reconstruct_half_maps(chunks_from_stack(star, chunk_size), box, pixel_size, config)
    return maps, time.perf_counter() - t0, time.process_time() - c0


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_relion(star: Path, mpi: bool) -> tuple[list[np.ndarray], float, float]:
    """RELION's two half maps, wall seconds and CPU seconds (user + sys of the child processes)."""
    out = []
    c0 = _children_cpu_s()
    t0 = time.perf_counter()
    for subset in (1, 2):
        name = f"relion_{'mpi' if mpi else 'serial'}_half{subset}.mrc"
        cmd = ["relion_reconstruct", "--i", star.name, "--o", name, "--ctf", "--subset", str(subset)]
        if mpi:
            cmd = ["mpirun", "-n", "2", "--allow-run-as-root", "--oversubscribe", "relion_reconstruct_mpi"] + cmd[1:]
        subprocess.run(cmd, cwd=star.parent, check=True, capture_output=True)
        out.append(mrcfile.read(star.parent / name).copy())
    return out, time.perf_counter() - t0, _children_cpu_s() - c0


def speed(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    star = make_dataset(workdir, args.n, args.box, args.pixel_size, args.noise_sigma)
    n = args.n
    maps, wall, cpu = run_ours(star, args.box, args.pixel_size, args.chunk_size)
    print(f"gmmsession: {n} particles, box {args.box}: {wall:.1f} s wall ({cpu:.1f} s CPU), {n / wall:.0f} particles/s")
    ours_res = resolution_0143(fsc_3d(maps[0], maps[1]), args.box, args.pixel_size)
    results = {}
    for mpi in ([False, True] if args.mpi else [False]):
        rel, t, rel_cpu = run_relion(star, mpi)
        label = "relion_reconstruct_mpi -n 2" if mpi else "relion_reconstruct (serial)"
        print(f"{label}: {t:.1f} s wall ({rel_cpu:.1f} s CPU), {n / t:.0f} particles/s; "
              f"gmmsession is {t / wall:.2f}x faster (wall), {rel_cpu / cpu:.2f}x less CPU")
        results[label] = rel
    for label, rel in results.items():
        r = torch.as_tensor(np.stack(rel))
        f = fsc_3d(maps, r)
        k = int(0.8 * (args.box // 2))
        print(f"FSC(ours, {label}) per half: min over shells <= 0.8 Nyquist = "
              f"{float(f[0, :k + 1].min()):.4f} / {float(f[1, :k + 1].min()):.4f}")
        rel_res = resolution_0143(fsc_3d(r[0], r[1]), args.box, args.pixel_size)
        print(f"half-map FSC=0.143 resolution: ours {ours_res:.2f} A, {label} {rel_res:.2f} A")
    print(f"peak RSS of this process (incl. RELION children not counted): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def memory(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    make_dataset(workdir, args.n, args.box, args.pixel_size, args.noise_sigma)
    # Measure in a fresh process, so that making the data set does not count.
    subprocess.run(
        [sys.executable, __file__, "memory-run", "--n", str(args.n), "--box", str(args.box),
         "--pixel-size", str(args.pixel_size), "--chunk-size", str(args.chunk_size), "--workdir", str(workdir)],
        check=True,
    )


def memory_run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    star = workdir / "particles.star"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    maps, wall, cpu = run_ours(star, args.box, args.pixel_size, args.chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"gmmsession: {args.n} particles, box {args.box}: {wall:.1f} s wall, {args.n / wall:.0f} particles/s")
    print(f"peak RSS: {peak:.0f} MiB (before reconstruction: {before:.0f} MiB); stack on disk: "
          f"{(workdir / 'proj.mrcs').stat().st_size / 2**30:.2f} GiB")
    assert torch.isfinite(maps).all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["speed", "memory", "memory-run"])
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--box", type=int, default=None)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--noise-sigma", type=float, default=None, help="white noise std (default: about 1/3 of the mean signal std)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--no-mpi", dest="mpi", action="store_false", help="skip the mpirun -n 2 RELION run")
    args = parser.parse_args(argv)
    if shutil.which("relion_project") is None:
        sys.exit("relion_project is needed to make the data set")
    if args.mode == "speed":
        args.n = args.n or 20000
        args.box = args.box or 128
    else:
        args.n = args.n or 100000
        args.box = args.box or 64
    args.workdir = args.workdir or f"/tmp/bench_reconstruct_{args.mode.split('-')[0]}_{args.n}_{args.box}"
    args.noise_sigma = args.noise_sigma if args.noise_sigma is not None else 3.0
    {"speed": speed, "memory": memory, "memory-run": memory_run}[args.mode](args)


if __name__ == "__main__":
    main()
