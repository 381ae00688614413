"""cryoSPARC ``.cs`` particle files -> :class:`~gmmsession.data.particles.ParticleSet`.

A ``.cs`` file is a numpy structured array (``np.load``). Conventions, checked against
pyem's ``metadata/cryosparc2.py`` (csparc2star) and with worked examples in the tests:

* ``alignments3D/pose`` is a rotation vector (axis * angle, radians; norms above pi occur).
  With ``R`` its right-handed Rodrigues matrix (:func:`~gmmsession.kernels.rotations.rotvec_to_matrix`),
  RELION's matrix is ``A = R.T`` (pyem's ``expmap`` builds the transpose directly and feeds it
  to its RELION-convention ``rot2euler``; cryoDRGN's parser also transposes). Example: pose
  ``(0, 0, t)`` is rot + psi = t, tilt 0; pose ``(0, t, 0)`` is tilt = t.
* ``alignments3D/shift`` is in pixels (of ``alignments3D/psize_A``) with the sign of
  ``rlnOriginX/Y`` (pyem copies it unchanged into ``rlnOriginX/Y``); here it is converted to
  Å. ``alignments3D/split`` 0/1 -> half 1/2.
* CTF: ``ctf/df1_A``, ``ctf/df2_A`` (Å), ``ctf/df_angle_rad`` and ``ctf/phase_shift_rad``
  (radians -> degrees), ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``,
  ``ctf/bfactor`` (Å², 0 if absent), ``ctf/scale`` (1 if absent).
* Images: ``blob/path`` (relative to the cryoSPARC project directory; a leading ``>``,
  cryoSPARC's mark for imported files, is dropped), ``blob/idx`` 0-based,
  ``blob/psize_A``, ``blob/shape``. Relative paths are looked up under ``stacks_root`` (the
  project directory) first, then the ``.cs`` file's folder. ``image_name`` is built as
  RELION would write it, ``NNNNNN@path`` with N = idx + 1; ``particle_key`` is the ``uid``.
* Contrast: ``blob/sign`` (float, +1 or -1 per particle) is the factor cryoSPARC multiplies
  the stored image by before using it. Particles extracted by cryoSPARC keep the
  micrograph's contrast (protein dark) and carry ``-1``; so do the real files in the tests
  (``../shared/data/cryosparc/``; the 7 EMPIAR-10076 images, which ``empiar_10076_7.cs``
  imports with sign -1, are dark: low-pass filtered, their centres are darker than their
  edges). gmmsession works in RELION's convention (protein bright, ``CTF(0) = +Q0``,
  :mod:`gmmsession.kernels.conventions`), so the sign is kept as the per-particle variable
  ``image_sign`` (float32, +1 where the field is absent) and
  :class:`~gmmsession.data.io.stack.ParticleImageReader` multiplies each image by it. Any
  other value (0, NaN, 0.5) is refused, naming the particle.
* Optics groups: one per distinct (``ctf/exp_group_id``, pixel size, box, voltage, Cs,
  amplitude contrast), numbered 1.. in order of first appearance.
* Files without ``alignments3D`` (2D classification, CTF-only imports) load with NaN
  angles and zero origins (``attrs["pose_source"] = "none"``): 2D class alignments describe
  the class averages, not a 3D pose. Without ``alignments3D/split`` the halves are split at
  random with ``split_seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.stack import resolve_stack_path, stack_shape
from gmmsession.data.particles import (
    ParticleSet,
    SourceTables,
    check_unique_keys,
    make_optics_dataset,
    make_particles_dataset,
    split_random_halves,
)
from gmmsession.data.schema import UNITS
from gmmsession.kernels.conventions import matrix_to_euler_relion
from gmmsession.kernels.rotations import rotvec_to_matrix

__all__ = ["read_cryosparc", "cryosparc_pose_to_euler_relion"]


def cryosparc_pose_to_euler_relion(pose_rotvec: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` rotation vectors (radians) to RELION Euler angles.

    Parameters
    ----------
    pose_rotvec : (..., 3) array, radians (any norm).

    Returns
    -------
    (..., 3) float64 array ``rot, tilt, psi`` in degrees (RELION's ``Euler_matrix2angles``
    ranges), such that RELION's matrix ``A`` is the transpose of the Rodrigues matrix of
    the pose.
    """
    pose = np.asarray(pose_rotvec, dtype=np.float64)
    if pose.shape[-1:] != (3,):
        raise ValueError(f"pose_rotvec must have shape (..., 3), got {pose.shape}")
    rodrigues = rotvec_to_matrix(torch.from_numpy(pose))
    return matrix_to_euler_relion(rodrigues.transpose(-1, -2)).numpy()


def _field(cs: np.ndarray, name: str, path: Path) -> np.ndarray:
    if name not in cs.dtype.names:
        raise GmmsessionInputError(f"{path}: required field {name} is missing from the cryoSPARC file")
    return cs[name]


def _optional(cs: np.ndarray, name: str, default: float) -> np.ndarray:
    if name in cs.dtype.names:
        return np.asarray(cs[name], dtype=np.float64)
    return np.full(len(cs), default, dtype=np.float64)


def _image_sign(cs: np.ndarray, path: Path, image_name: np.ndarray) -> np.ndarray:
    """``blob/sign`` as float32 +1/-1 per particle (+1 if the field is absent); anything else raises."""
    if "blob/sign" not in cs.dtype.names:
        return np.ones(len(cs), dtype=np.float32)
    raw = np.asarray(cs["blob/sign"])
    if raw.shape != (len(cs),):
        raise GmmsessionInputError(f"{path}: field blob/sign must hold one number per particle, got shape {raw.shape}")
    sign = raw.astype(np.float64)
    bad = ~np.isin(sign, (1.0, -1.0))  # NaN is not in the set
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        uid = f"uid {cs['uid'][row]}, " if "uid" in cs.dtype.names else ""
        raise GmmsessionInputError(
            f"{path}: field blob/sign must be +1 or -1 (the image contrast); particle {image_name[row]} "
            f"({uid}row {row}, 0-based) has {float(raw[row])!r}" + (f" ({int(bad.sum())} such particles)" if bad.sum() > 1 else "")
        )
    return sign.astype(np.float32)


def _f32_decimal(value: float) -> float:
    """The shortest decimal that a float32 field holds (2.7 rather than 2.700000047683716)."""
    return float(str(np.float32(value)))


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_cryosparc(
    path: str | os.PathLike, stacks_root: str | os.PathLike | None = None, *, split_seed: int = 0
) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` file.

    Parameters
    ----------
    path : ``.cs`` file.
    stacks_root : folder, optional
        The cryoSPARC project directory, where ``blob/path`` starts.
    split_seed : int
        Seed for the random half-set split used when there is no ``alignments3D/split``.

    Returns
    -------
    ParticleSet
        ``source.cs`` keeps the whole record array; ``source.format == "cryosparc"``.
        ``particles`` has, besides the schema's variables, ``image_sign`` (float32 +1/-1,
        from ``blob/sign``), which the image reader applies.

    Raises
    ------
    GmmsessionInputError
        Unreadable file, missing required field (named), no pixel size, bad split values,
        a ``blob/sign`` other than +1/-1 (naming the particle's uid and row).
    """
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise GmmsessionInputError(f"cryoSPARC file not found: {path}")
    try:
        cs = np.load(path, allow_pickle=False)
    except Exception as exc:  # np.load raises ValueError/OSError/EOFError variants
        raise GmmsessionInputError(f"{path}: not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None or cs.ndim != 1:
        raise GmmsessionInputError(f"{path}: not a cryoSPARC .cs file (expected a 1D numpy structured array)")
    n = len(cs)
    if n == 0:
        raise GmmsessionInputError(f"{path}: the file holds no particles")

    blob_path = np.array([p[1:] if p.startswith(">") else p for p in _decode(_field(cs, "blob/path", path))], dtype=object)
    blob_idx = np.asarray(_field(cs, "blob/idx", path), dtype=np.int64)
    image_name = np.array([f"{i + 1:06d}@{p}" for i, p in zip(blob_idx, blob_path)], dtype=object)
    keys = np.array([str(u) for u in cs["uid"]], dtype=object) if "uid" in cs.dtype.names else image_name
    check_unique_keys(keys, image_name, path, "uid" if "uid" in cs.dtype.names else "image name")
    search = ([Path(stacks_root)] if stacks_root is not None else []) + [path.parent]
    resolved = {p: str(resolve_stack_path(p, search)) for p in pd.unique(blob_path)}
    stack_path = np.array([resolved[p] for p in blob_path], dtype=object)

    if "blob/psize_A" in cs.dtype.names:
        px = np.asarray(cs["blob/psize_A"], dtype=np.float64)
    elif "alignments3D/psize_A" in cs.dtype.names:
        px = np.asarray(cs["alignments3D/psize_A"], dtype=np.float64)
    else:
        raise GmmsessionInputError(f"{path}: no pixel size anywhere (no blob/psize_A or alignments3D/psize_A field)")
    decimal_px = {v: _f32_decimal(v) for v in np.unique(px).tolist()}
    px = np.array([decimal_px[v] for v in px.tolist()], dtype=np.float64)
    if not np.all(px > 0):
        raise GmmsessionInputError(f"{path}: particle {image_name[~(px > 0)][0]} has pixel size {px[~(px > 0)][0]} (blob/psize_A)")
    if "blob/shape" in cs.dtype.names:
        box = np.asarray(cs["blob/shape"], dtype=np.int64).reshape(n, -1)[:, -1]
    else:
        box_of = {p: (stack_shape(p) or (0, 0, 0))[-1] for p in pd.unique(stack_path)}
        box = np.array([box_of[p] for p in stack_path], dtype=np.int64)

    defocus_u = np.asarray(_field(cs, "ctf/df1_A", path), dtype=np.float64)
    defocus_v = _optional(cs, "ctf/df2_A", np.nan)
    defocus_v = np.where(np.isnan(defocus_v), defocus_u, defocus_v)
    voltage = np.asarray(_field(cs, "ctf/accel_kv", path), dtype=np.float64)
    cs_mm = np.asarray(_field(cs, "ctf/cs_mm", path), dtype=np.float64)
    q0 = _optional(cs, "ctf/amp_contrast", 0.0)
    exp_group = _optional(cs, "ctf/exp_group_id", 0.0)

    combos = list(zip(exp_group, px, box, voltage, cs_mm, q0))
    numbering: dict = {}
    for k in combos:
        numbering.setdefault(k, len(numbering) + 1)
    optics_group = np.array([numbering[k] for k in combos], dtype=np.int64)
    optics_table = pd.DataFrame(
        [
            {
                "optics_group": g,
                "optics_group_name": f"opticsGroup{g}",
                "pixel_size_angstrom": _f32_decimal(k[1]),
                "box_size": int(k[2]),
                "voltage_kv": _f32_decimal(k[3]),
                "cs_mm": _f32_decimal(k[4]),
                "amplitude_contrast": _f32_decimal(k[5]),
            }
            for k, g in numbering.items()
        ]
    )

    attrs: dict = {"source_path": str(path), "source_format": "cryosparc"}
    if "alignments3D/pose" in cs.dtype.names:
        euler = cryosparc_pose_to_euler_relion(np.asarray(cs["alignments3D/pose"], dtype=np.float64))
        shift_px = np.asarray(_field(cs, "alignments3D/shift", path), dtype=np.float64).reshape(n, 2)
        align_px = np.asarray(cs["alignments3D/psize_A"], dtype=np.float64) if "alignments3D/psize_A" in cs.dtype.names else px
        decimal = {v: _f32_decimal(v) for v in np.unique(align_px).tolist()}
        align_px = np.array([decimal[v] for v in align_px.tolist()], dtype=np.float64)
        origin = shift_px * align_px[:, None]
        attrs["pose_source"] = "3d"
    else:
        euler = np.full((n, 3), np.nan)
        origin = np.zeros((n, 2))
        attrs["pose_source"] = "none"

    if "alignments3D/split" in cs.dtype.names:
        split = np.asarray(cs["alignments3D/split"], dtype=np.int64)
        bad = ~np.isin(split, (0, 1))
        if bad.any():
            raise GmmsessionInputError(
                f"{path}: field alignments3D/split must be 0 or 1; particle {image_name[bad][0]} has {split[bad][0]}"
            )
        half = split + 1
        attrs["half_source"] = "file"
    else:
        half = np.zeros(n, dtype=np.int64)

    columns = {
        "rot_deg": euler[:, 0],
        "tilt_deg": euler[:, 1],
        "psi_deg": euler[:, 2],
        "origin_x_angstrom": origin[:, 0],
        "origin_y_angstrom": origin[:, 1],
        "defocus_u_angstrom": defocus_u,
        "defocus_v_angstrom": defocus_v,
        "defocus_angle_deg": np.rad2deg(_optional(cs, "ctf/df_angle_rad", 0.0)),
        "phase_shift_deg": np.rad2deg(_optional(cs, "ctf/phase_shift_rad", 0.0)),
        "ctf_bfactor_angstrom2": _optional(cs, "ctf/bfactor", 0.0),
        "ctf_scale": _optional(cs, "ctf/scale", 1.0),
        "optics_group": optics_group,
        "half": half,
        "stack_path": stack_path,
        "stack_index": blob_idx,
    }
    particles = make_particles_dataset(columns, image_name, attrs, particle_key=keys)
    particles["image_sign"] = xr.Variable(
        "particle", _image_sign(cs, path, image_name), attrs={"units": UNITS["image_sign"], "source_field": "blob/sign"}
    )
    if "alignments3D/split" not in cs.dtype.names:
        particles = split_random_halves(particles, split_seed)
    source = SourceTables(
        path=path,
        format="cryosparc",
        cs=cs,
        stacks_root=Path(os.path.abspath(stacks_root)) if stacks_root is not None else None,
    )
    return ParticleSet(particles=particles, optics=make_optics_dataset(optics_table), source=source)
