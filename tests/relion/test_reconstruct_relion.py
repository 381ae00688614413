"""Our half maps against ``relion_reconstruct --ctf --subset 1|2`` on the same star file and stack."""

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from gmmsession.algorithms.reconstruct import ReconstructConfig, reconstruct_half_maps
from gmmsession.data.bridge import ParticleTensors
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.fsc import fsc_3d
from tests.conftest import requires_relion

BOX, PIXEL, N = 48, 2.0, 1600


def smooth_map(box: int, seed: int = 0) -> np.ndarray:
    """Gaussian blobs of sigma 1-1.6 voxels: signal out to Nyquist."""
    rng = np.random.default_rng(seed)
    c = np.arange(box) - box // 2
    vol = np.zeros((box,) * 3, np.float32)
    for _ in range(40):
        p = rng.normal(0, box / 10, 3)
        s = rng.uniform(1.0, 1.6)
        g = [np.exp(-((c - p[i]) ** 2) / (2 * s * s)) for i in range(3)]
        vol += (g[2][:, None, None] * g[1][None, :, None] * g[0][None, None, :]).astype(np.float32)
    return vol


def tables(n: int, seed: int = 1) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # Uniform rotations, converted to RELION Euler angles through our (tested) conventions.
    w, x, y, z = q.T
    mat = np.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
         2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
         2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1
    ).reshape(n, 3, 3)
    from gmmsession.kernels.conventions import matrix_to_euler_relion

    eul = matrix_to_euler_relion(torch.as_tensor(mat)).numpy()
    du = rng.uniform(6000, 20000, n)
    optics = pd.DataFrame(
        dict(
            rlnOpticsGroup=[1], rlnOpticsGroupName=["opticsGroup1"], rlnImagePixelSize=[PIXEL],
            rlnVoltage=[300.0], rlnSphericalAberration=[2.7], rlnAmplitudeContrast=[0.1],
            rlnImageSize=[BOX], rlnImageDimensionality=[2],
        )
    )
    parts = pd.DataFrame(
        dict(
            rlnAngleRot=eul[:, 0], rlnAngleTilt=eul[:, 1], rlnAnglePsi=eul[:, 2],
            rlnOriginXAngst=rng.uniform(-8, 8, n), rlnOriginYAngst=rng.uniform(-8, 8, n),
            rlnDefocusU=du, rlnDefocusV=du - rng.uniform(0, 600, n), rlnDefocusAngle=rng.uniform(0, 180, n),
            rlnOpticsGroup=np.ones(n, int), rlnRandomSubset=(np.arange(n) % 2) + 1,
        )
    )
    return {"optics": optics, "particles": parts}


def particle_tensors_from_star(optics: pd.DataFrame, parts: pd.DataFrame) -> ParticleTensors:
    """ParticleTensors straight from star tables (one optics group), independent of the data layer."""
    n = len(parts)
    o = optics.iloc[0]
    col = lambda name: torch.as_tensor(parts[name].to_numpy(np.float64, copy=True), dtype=torch.float32)  # noqa: E731
    const = lambda v: torch.full((n,), float(v))  # noqa: E731
    euler = torch.as_tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64, copy=True))
    return ParticleTensors(
        rotation=euler_relion_to_matrix(euler).float(),
        origin_angstrom=torch.stack([col("rlnOriginXAngst"), col("rlnOriginYAngst")], -1),
        defocus_u_angstrom=col("rlnDefocusU"), defocus_v_angstrom=col("rlnDefocusV"),
        defocus_angle_deg=col("rlnDefocusAngle"), phase_shift_deg=const(0.0), ctf_bfactor_angstrom2=const(0.0),
        ctf_scale=const(1.0), voltage_kv=const(o["rlnVoltage"]), cs_mm=const(o["rlnSphericalAberration"]),
        amplitude_contrast=const(o["rlnAmplitudeContrast"]), pixel_size_angstrom=const(o["rlnImagePixelSize"]),
        box_size=torch.full((n,), int(o["rlnImageSize"]), dtype=torch.int64),
    )


def relion_half_maps(work, star: str) -> torch.Tensor:
    maps = []
    for subset in (1, 2):
        out = f"{star[:-5]}_half{subset}.mrc"
        subprocess.run(
            ["relion_reconstruct", "--i", star, "--o", out, "--ctf", "--subset", str(subset)],
            cwd=work, check=True, capture_output=True,
        )
        maps.append(mrcfile.read(work / out).astype(np.float32))
    return torch.from_numpy(np.stack(maps))


def our_half_maps(work, star: str, chunk_size: int = 500) -> torch.Tensor:
    t = starfile.read(work / star)
    parts = t["particles"]
    params = particle_tensors_from_star(t["optics"], parts)
    halves = torch.as_tensor(parts["rlnRandomSubset"].to_numpy(copy=True))
    stack = parts["rlnImageName"].iloc[0].split("@")[1]
    index = parts["rlnImageName"].str.split("@").str[0].astype(int).to_numpy() - 1

    def chunks():
        with mrcfile.mmap(work / stack, mode="r") as m:
            for s in range(0, len(parts), chunk_size):
                sl = slice(s, min(len(parts), s + chunk_size))
                images = torch.from_numpy(np.asarray(m.data[index[sl]], dtype=np.float32))
                yield images, ParticleTensors(**{k: v[sl] for k, v in vars(params).items()}), halves[sl]

    return reconstruct_half_maps(chunks(), BOX, PIXEL, ReconstructConfig(chunk_size=chunk_size))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("relion_reconstruct")
    with mrcfile.new(work / "map.mrc") as m:
        m.set_data(smooth_map(BOX))
        m.voxel_size = PIXEL
    starfile.write(tables(N), work / "ang.star", overwrite=True)
    subprocess.run(
        ["relion_project", "--i", "map.mrc", "--o", "clean", "--ang", "ang.star", "--ctf"],
        cwd=work, check=True, capture_output=True,
    )
    # Noisy copy: our own seeded noise (relion_project --add_noise repeats the same noise).
    clean = mrcfile.read(work / "clean.mrcs")
    rng = np.random.default_rng(3)
    noisy = clean + rng.normal(0, 2.5 * clean.std(), clean.shape).astype(np.float32)
    with mrcfile.new(work / "noisy.mrcs") as m:
        m.set_data(noisy.astype(np.float32))
        m.voxel_size = PIXEL
    t = starfile.read(work / "clean.star")
    t["particles"]["rlnImageName"] = t["particles"]["rlnImageName"].str.replace("clean.mrcs", "noisy.mrcs")
    starfile.write(t, work / "noisy.star", overwrite=True)
    return work


def resolution_shell(fsc: torch.Tensor) -> int:
    """Last shell before the FSC first drops below 0.143."""
    below = torch.nonzero(fsc[1:] < 0.143)
    return int(below[0]) if below.numel() else fsc.shape[0] - 1


@requires_relion
@pytest.mark.relion
def test_half_maps_match_relion_high_snr(dataset):
    ours = our_half_maps(dataset, "clean.star")
    relion = relion_half_maps(dataset, "clean.star")
    fsc = fsc_3d(ours, relion)
    k = int(0.8 * BOX // 2)
    # Same insertion (trilinear, pad 2, CTF-weighted sums) and RELION's corner mask; RELION
    # normalises by an iteratively gridded weight, we by the weight itself: measured >= 0.999.
    assert float(fsc[:, : k + 1].min()) >= 0.99, fsc
    scale = float((ours * relion).sum() / (relion * relion).sum())
    assert abs(scale - 1) < 0.1, scale  # same intensity scale within a few per cent


@requires_relion
@pytest.mark.relion
def test_noisy_resolution_matches_relion(dataset):
    ours = our_half_maps(dataset, "noisy.star")
    relion = relion_half_maps(dataset, "noisy.star")
    ours_shell = resolution_shell(fsc_3d(ours[0], ours[1]))
    relion_shell = resolution_shell(fsc_3d(relion[0], relion[1]))
    # The 0.143 crossing must be well inside the box for the comparison to mean anything.
    assert 4 <= relion_shell <= BOX // 2 - 4, relion_shell
    assert abs(ours_shell - relion_shell) <= 1, (ours_shell, relion_shell)
