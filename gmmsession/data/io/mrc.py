"""MRC maps and stacks through mrcfile: read with header checks, write atomically.

Voxel origin convention: gmmsession arrays are ``[z, y, x]`` with the coordinate origin at
voxel ``box // 2``. Written maps carry ``origin = 0`` and ``nxstart = 0`` (RELION style), so a
map opens centred in RELION and ChimeraX alike; ``voxel_size`` is the pixel size in Å.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io._atomic import atomic_path

__all__ = ["read_map", "write_map", "MrcHeaderWarning"]


class MrcHeaderWarning(UserWarning):
    """An MRC header is missing or contradicts the metadata; the metadata was used."""


def read_map(path: str | os.PathLike, pixel_size_angstrom: float | None = None) -> tuple[np.ndarray, float]:
    """Read a 3D map.

    Parameters
    ----------
    path : MRC file.
    pixel_size_angstrom : float, optional
        Overrides the header voxel size (with a :class:`MrcHeaderWarning` if they differ).

    Returns
    -------
    (data, pixel_size_angstrom) with ``data`` a float32 ``(z, y, x)`` array.
    """
    path = Path(path)
    if not path.exists():
        raise GmmsessionInputError(f"map file not found: {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise GmmsessionInputError(f"{path}: not a readable MRC file (no data block)")
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                header_px = float(mrc.voxel_size.x)
    except GmmsessionInputError:
        raise
    except Exception as exc:  # mrcfile raises ValueError/EOFError/OSError variants on corrupt files
        raise GmmsessionInputError(f"{path}: corrupt or unreadable MRC file ({exc})") from exc
    if caught:
        warnings.warn(f"{path}: MRC header problems ({caught[0].message}); read permissively", MrcHeaderWarning, stacklevel=2)
    if data.ndim != 3:
        raise GmmsessionInputError(f"{path}: expected a 3D map, got shape {data.shape}")
    if pixel_size_angstrom is None:
        if header_px <= 0:
            raise GmmsessionInputError(f"{path}: header pixel size is {header_px}; give pixel_size_angstrom")
        return data, header_px
    if header_px > 0 and abs(header_px - pixel_size_angstrom) > 1e-3 * pixel_size_angstrom:
        warnings.warn(
            f"{path}: header pixel size {header_px:g} Å differs from the given {pixel_size_angstrom:g} Å; using the given one",
            MrcHeaderWarning,
            stacklevel=2,
        )
    return data, float(pixel_size_angstrom)


def write_map(path: str | os.PathLike, data: np.ndarray, pixel_size_angstrom: float) -> Path:
    """Write a map or stack atomically with the right voxel size (origin 0, centred at ``box // 2``).

    Parameters
    ----------
    path : target file (``.mrc`` map or ``.mrcs`` stack).
    data : ``(z, y, x)`` map or ``(n, y, x)`` stack; written as float32.
    pixel_size_angstrom : voxel size in Å (> 0).
    """
    if pixel_size_angstrom <= 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    arr = np.ascontiguousarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"data must be 2D or 3D, got shape {arr.shape}")
    path = Path(path)
    with atomic_path(path, suffix=".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 3 and path.suffix == ".mrcs":
                mrc.set_image_stack()
            mrc.voxel_size = pixel_size_angstrom
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()
    return path
