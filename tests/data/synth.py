"""Tiny synthetic RELION/cryoSPARC inputs written into a test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile


def write_stack(path: Path, images: np.ndarray, pixel_size: float = 1.5) -> Path:
    """An MRC stack (.mrcs) with a correct header."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return path


def random_images(n: int, box: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, box, box)).astype(np.float32)


def optics_table(pixel_size: float = 1.5, box: int = 16, groups: tuple[int, ...] = (1,)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": list(groups),
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups],
            "rlnAmplitudeContrast": [0.1] * len(groups),
            "rlnSphericalAberration": [2.7] * len(groups),
            "rlnVoltage": [300.0] * len(groups),
            "rlnImagePixelSize": [pixel_size] * len(groups),
            "rlnImageSize": [box] * len(groups),
            "rlnImageDimensionality": [2] * len(groups),
        }
    )


def particles_table(names: list[str], seed: int = 0, optics_group: int = 1, halves: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(names)
    df = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": [f"mic{i // 3}.mrc" for i in range(n)],
            "rlnCoordinateX": rng.integers(100, 3000, n).astype(float),
            "rlnCoordinateY": rng.integers(100, 3000, n).astype(float),
            "rlnDefocusU": rng.uniform(10000, 20000, n),
            "rlnDefocusV": rng.uniform(10000, 20000, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n),
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.uniform(-5, 5, n),
            "rlnOriginYAngst": rng.uniform(-5, 5, n),
            "rlnOpticsGroup": [optics_group] * n,
            "rlnMyUnknownColumn": rng.uniform(0, 1, n),
        }
    )
    if halves:
        df["rlnRandomSubset"] = [1 + (i % 2) for i in range(n)]
    return df


def relion31_set(tmp_path: Path, n: int = 6, box: int = 16, pixel_size: float = 1.5, stack_name: str = "parts.mrcs") -> tuple[Path, np.ndarray]:
    """A valid RELION 3.1 star + stack in ``tmp_path``; returns (star path, images)."""
    images = random_images(n, box)
    write_stack(tmp_path / stack_name, images, pixel_size)
    names = [f"{i + 1:06d}@{stack_name}" for i in range(n)]
    star = tmp_path / "particles.star"
    starfile.write({"optics": optics_table(pixel_size, box), "particles": particles_table(names)}, star, overwrite=True)
    return star, images


def cryosparc_records(particles, optics, blob_path: str, sign: float | np.ndarray | None = -1.0) -> np.ndarray:
    """The ``.cs`` record array cryoSPARC would hold for a RELION particles dataset.

    float32 fields as cryoSPARC writes them. ``alignments3D/pose`` is the rotation vector of
    ``A.T`` (``A`` = RELION's matrix), ``alignments3D/shift`` the origin in pixels,
    ``blob/idx`` the stack index, ``blob/path`` = ``blob_path`` for every particle.
    ``sign``: ``blob/sign`` (a number or one per particle); None leaves the field out.
    """
    import torch

    from gmmsession.kernels.conventions import euler_relion_to_matrix
    from gmmsession.kernels.rotations import matrix_to_rotvec

    n = int(particles.sizes["particle"])
    opt = optics.sel(optics_group=particles["optics_group"].values)
    px = opt["pixel_size_angstrom"].values
    euler = np.stack([particles[v].values for v in ("rot_deg", "tilt_deg", "psi_deg")], axis=-1)
    pose = matrix_to_rotvec(euler_relion_to_matrix(torch.from_numpy(euler)).transpose(-1, -2)).numpy()
    fields = [("uid", "<u8"), ("blob/path", f"S{len(blob_path) + 1}"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
              ("blob/psize_A", "<f4")]
    fields += [("blob/sign", "<f4")] if sign is not None else []
    fields += [("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
               ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("alignments3D/split", "<u4"),
               ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4")]
    cs = np.zeros(n, dtype=fields)
    cs["uid"] = 10**12 + np.arange(n) * 7919
    cs["blob/path"] = blob_path.encode()
    cs["blob/idx"] = particles["stack_index"].values
    cs["blob/shape"] = opt["box_size"].values[:, None]
    cs["blob/psize_A"] = cs["alignments3D/psize_A"] = px
    if sign is not None:
        cs["blob/sign"] = sign
    cs["ctf/accel_kv"], cs["ctf/cs_mm"], cs["ctf/amp_contrast"] = opt["voltage_kv"].values, opt["cs_mm"].values, opt["amplitude_contrast"].values
    cs["ctf/df1_A"], cs["ctf/df2_A"] = particles["defocus_u_angstrom"].values, particles["defocus_v_angstrom"].values
    cs["ctf/df_angle_rad"] = np.deg2rad(particles["defocus_angle_deg"].values)
    cs["ctf/phase_shift_rad"] = np.deg2rad(particles["phase_shift_deg"].values)
    cs["alignments3D/split"] = particles["half"].values - 1
    cs["alignments3D/shift"] = np.stack([particles["origin_x_angstrom"].values, particles["origin_y_angstrom"].values], -1) / px[:, None]
    cs["alignments3D/pose"] = pose
    return cs


def write_cs(path: Path, records: np.ndarray) -> Path:
    """Save a record array as cryoSPARC does (``np.save`` to an open file, so no ``.npy`` suffix)."""
    with open(path, "wb") as f:
        np.save(f, records)
    return path
