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

__all__ = ["read_map", "read_map_with_origin", "write_map", "MrcHeaderWarning", "header_problems"]


class MrcHeaderWarning(UserWarning):
    """An MRC header is missing or contradicts the metadata; the metadata was used."""


def header_problems(caught: list[warnings.WarningMessage]) -> list[str]:
    """Messages of the header problems among warnings recorded while mrcfile opened a file.

    mrcfile reports a permissive read's header problems as ``RuntimeWarning``; any other
    warning (e.g. a library deprecation) is not about the file and is re-issued unchanged.
    """
    problems = []
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            problems.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return problems


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
    problems = header_problems(caught)
    if problems:
        warnings.warn(f"{path}: MRC header problems ({problems[0]}); read permissively", MrcHeaderWarning, stacklevel=2)
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


def read_map_with_origin(
    path: str | os.PathLike, pixel_size_angstrom: float | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Read a 3D map and the model-frame position of its first voxel (for overlaying atomic models).

    Parameters
    ----------
    path, pixel_size_angstrom : as :func:`read_map`.

    Returns
    -------
    (data, pixel_size_angstrom, origin_angstrom): ``data`` and the pixel size as :func:`read_map`;
    ``origin_angstrom`` (3,) float64 ``(x, y, z)``: the coordinates (Å) that atomic models
    (PDB/mmCIF) overlaid on this map give to voxel index ``(0, 0, 0)``. Voxel ``(i, j, k)``
    (``x, y, z`` indices) sits at ``origin + (i, j, k) * pixel``. As ChimeraX reads headers: the
    MRC-2000 ``origin`` field when it is non-zero, else ``(nxstart, nystart, nzstart) * pixel``.
    Only the standard axis order (``mapc, mapr, maps = 1, 2, 3``, which :func:`read_map`
    assumes too) is supported.
    """
    data, px = read_map(path, pixel_size_angstrom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header problems were reported by read_map
        with mrcfile.open(Path(path), mode="r", permissive=True, header_only=True) as mrc:
            h = mrc.header
            origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)], dtype=np.float64)
            start = np.array([int(h.nxstart), int(h.nystart), int(h.nzstart)], dtype=np.float64)
            axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if axes != (1, 2, 3):
        raise GmmsessionInputError(f"{path}: axis order (mapc, mapr, maps) = {axes} is not supported (expected 1, 2, 3)")
    if not np.all(np.isfinite(origin)) or not np.any(origin != 0):
        origin = start * px
    return data, px, origin


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
