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
