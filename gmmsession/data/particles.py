"""The particle data model: particles + optics as xarray, plus the raw tables export needs.

A :class:`ParticleSet` is what the readers (:func:`gmmsession.data.io.relion.read_relion_star`,
:func:`gmmsession.data.io.cryosparc.read_cryosparc`) return. ``particles`` and ``optics``
follow :mod:`gmmsession.data.schema`; ``source`` keeps the input file's own tables untouched
so that :func:`gmmsession.data.io.export.export_star` can write them back with only the pose
columns changed.

Attributes of ``particles``
---------------------------
``source_path`` (str)
    Absolute path of the file the particles came from.
``source_format`` (str)
    ``"relion-3.0"`` (no optics block, origins in pixels), ``"relion-3.1"`` (optics block,
    origins in Å; also RELION 4 and 5 files) or ``"cryosparc"``.
``half_source`` (str)
    ``"file"`` when the half sets come from the file (``rlnRandomSubset``,
    ``alignments3D/split``), ``"random split, seed N"`` when :func:`split_random_halves`
    made them.
``pose_source`` (str)
    ``"3d"`` (full Euler angles from the file), ``"2d"`` (the file only has in-plane
    angles; rot = tilt = 0 as in the file, or NaN where the columns are absent) or ``"none"``
    (no angles: NaN).
``symmetry_expanded`` (str, only on symmetry-expanded sets)
    The point group of :func:`gmmsession.algorithms.symmetry.expand_symmetry` (e.g. ``"C3"``),
    or, for a set read from a file that ``relion_particle_symmetry_expand`` wrote (possibly
    classified and a subset selected afterwards), ``"unknown (k copies per particle in <file
    name>; symmetry_operator is each copy's order ...)"``, with ``"1 to k copies"`` when
    particles kept different numbers of copies: the file does not name the group, so this is a
    description, never a group name to pass on. Such sets also carry the variables
    ``symmetry_source_particle`` and ``symmetry_operator``; in a set read from a file,
    ``symmetry_operator`` is the copy's order among its particle's rows, not an index into the
    group's operators (see :mod:`gmmsession.data.io.relion`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.schema import OPTICS_VARIABLES, PARTICLE_VARIABLES, UNITS

__all__ = [
    "ParticleSet",
    "SourceTables",
    "make_particles_dataset",
    "make_optics_dataset",
    "split_random_halves",
    "check_half_sets",
    "check_unique_keys",
    "duplicate_particle_error",
    "check_optics_groups",
    "check_one_grid",
]

_PARTICLE_UNITS = {
    **{k: UNITS[k] for k in PARTICLE_VARIABLES if k in UNITS},
    "optics_group": "1",
    "half": "1",
    "stack_path": "path",
    "stack_index": "1",
}
_OPTICS_UNITS = {**{k: UNITS[k] for k in OPTICS_VARIABLES if k in UNITS}, "optics_group_name": "1"}


@dataclass
class SourceTables:
    """The input file's raw tables, kept so that export is lossless.

    Attributes
    ----------
    path : Path
        The input file (absolute).
    format : str
        ``"relion-3.0"``, ``"relion-3.1"`` or ``"cryosparc"``.
    blocks : dict[str, pandas.DataFrame | dict]
        RELION: every data block as read by ``starfile`` (name -> table), in file order; the
        unnamed ``data_`` block has the name ``""``. Empty for cryoSPARC.
    particles_block : str or None
        Name of the block holding ``rlnImageName`` (RELION).
    optics_block : str or None
        Name of the optics block (RELION 3.1+), None for 3.0 files.
    cs : numpy structured array or None
        cryoSPARC: the whole ``.cs`` record array.
    stacks_root : Path or None
        The ``stacks_root`` the reader was given (cryoSPARC project directory).
    """

    path: Path
    format: str
    blocks: dict[str, Any] = field(default_factory=dict)
    particles_block: str | None = None
    optics_block: str | None = None
    cs: np.ndarray | None = None
    stacks_root: Path | None = None


@dataclass
class ParticleSet:
    """Particles, optics groups and the raw source tables of one input file.

    Attributes
    ----------
    particles : xarray.Dataset
        Dimension ``particle`` in the input file's order (schema in :mod:`gmmsession.data.schema`).
    optics : xarray.Dataset
        Dimension ``optics_group`` (coordinate = RELION group number).
    source : SourceTables
        What :func:`gmmsession.data.io.export.export_star` needs to write the input back.
    """

    particles: xr.Dataset
    optics: xr.Dataset
    source: SourceTables

    def __len__(self) -> int:
        return int(self.particles.sizes["particle"])

    def __repr__(self) -> str:
        return (
            f"ParticleSet({len(self)} particles, {self.optics.sizes['optics_group']} optics group(s), "
            f"{self.particles.attrs.get('source_format', '?')} from {self.particles.attrs.get('source_path', '?')})"
        )


def make_particles_dataset(
    columns: dict[str, np.ndarray], image_name: np.ndarray, attrs: dict[str, Any], particle_key: np.ndarray | None = None
) -> xr.Dataset:
    """Build the ``particles`` dataset from per-particle arrays, with ``units`` attributes.

    Parameters
    ----------
    columns : dict
        Every name of :data:`gmmsession.data.schema.PARTICLE_VARIABLES` -> (n,) array.
    image_name : (n,) array of str
        Particle identity (``N@path`` for RELION, the same form built for cryoSPARC).
    attrs : dict
        Dataset attributes (``source_path``, ``source_format``, ``half_source``, ...).
    particle_key : (n,) array of str, optional
        Unique identity of each particle in its source file (coordinate ``particle_key``);
        defaults to ``image_name``. Export matches rows on it.
    """
    n = len(image_name)
    missing = [k for k in PARTICLE_VARIABLES if k not in columns]
    if missing:
        raise ValueError(f"particle variables missing: {missing}")
    data_vars = {}
    for name in PARTICLE_VARIABLES:
        values = np.asarray(columns[name])
        if values.shape != (n,):
            raise ValueError(f"particle variable {name} has shape {values.shape}, expected ({n},)")
        if name in ("optics_group", "half", "stack_index"):
            values = values.astype(np.int64)
        elif name == "stack_path":
            values = values.astype(object)
        else:
            values = values.astype(np.float64)
        data_vars[name] = xr.Variable("particle", values, attrs={"units": _PARTICLE_UNITS[name]})
    ds = xr.Dataset(
        data_vars,
        coords={
            "particle": ("particle", np.arange(n, dtype=np.int64)),
            "image_name": ("particle", np.asarray(image_name, dtype=object)),
            "particle_key": ("particle", np.asarray(image_name if particle_key is None else particle_key, dtype=object)),
        },
        attrs=dict(attrs),
    )
    return ds


def make_optics_dataset(table: pd.DataFrame) -> xr.Dataset:
    """Build the ``optics`` dataset from a table with column ``optics_group`` and the optics variables."""
    missing = [k for k in ("optics_group",) + OPTICS_VARIABLES if k not in table.columns]
    if missing:
        raise ValueError(f"optics variables missing: {missing}")
    table = table.sort_values("optics_group")
    data_vars = {}
    for name in OPTICS_VARIABLES:
        values = table[name].to_numpy()
        if name == "optics_group_name":
            values = values.astype(str).astype(object)
        elif name == "box_size":
            values = values.astype(np.int64)
        else:
            values = values.astype(np.float64)
        data_vars[name] = xr.Variable("optics_group", values, attrs={"units": _OPTICS_UNITS[name]})
    return xr.Dataset(
        data_vars, coords={"optics_group": ("optics_group", table["optics_group"].to_numpy().astype(np.int64))}
    )


def split_random_halves(particles: xr.Dataset, seed: int, groups: np.ndarray | None = None) -> xr.Dataset:
    """Assign half sets 1/2 by a seeded random permutation (balanced: sizes differ by at most 1).

    Parameters
    ----------
    particles : xarray.Dataset
        Any particles dataset; its ``half`` is replaced.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed and particle count always give
        the same split.
    groups : (n,) array, optional
        Particles with equal values share a half set (the copies of one particle in a
        symmetry-expanded set): the permutation is over the groups, in order of first
        appearance, and the numbers of groups are balanced (groups of different sizes, as in
        a subset selected after expansion, can leave the halves with row counts that differ
        by more than 1). Default: every particle is its own group (the same split as without
        ``groups``).

    Returns
    -------
    A copy with ``half`` set and ``attrs["half_source"] = "random split, seed N"`` (with
    ``groups``: ``"random split, seed N, per source particle"``).
    """
    n = int(particles.sizes["particle"])
    if groups is None:
        codes, m = np.arange(n), n
    else:
        if np.shape(groups) != (n,):
            raise ValueError(f"groups has shape {np.shape(groups)}, expected ({n},)")
        codes, uniques = pd.factorize(pd.Series(np.asarray(groups)))
        m = len(uniques)
    order = np.random.default_rng(seed).permutation(m)
    half_of_group = np.empty(m, dtype=np.int64)
    half_of_group[order[: (m + 1) // 2]] = 1
    half_of_group[order[(m + 1) // 2 :]] = 2
    out = particles.copy()
    out["half"] = xr.Variable("particle", half_of_group[codes], attrs={"units": "1"})
    out.attrs["half_source"] = f"random split, seed {int(seed)}" + ("" if groups is None else ", per source particle")
    return out


def check_half_sets(particles: xr.Dataset, path: str | os.PathLike | None = None) -> None:
    """Raise if a half set is empty or a ``half`` value is not 1 or 2.

    Readers do not call this (a metadata file whose particles are all in one half still
    loads); call it before anything that needs both halves (reconstruction, FSC).

    Raises
    ------
    GmmsessionInputError
        Naming the file (``path`` or ``attrs["source_path"]``) and the empty half.
    """
    where = path if path is not None else particles.attrs.get("source_path", "<particles>")
    half = np.asarray(particles["half"].values)
    bad = ~np.isin(half, (1, 2))
    if bad.any():
        raise GmmsessionInputError(
            f"{where}: half set values must be 1 or 2; particle {particles['image_name'].values[bad][0]} has {half[bad][0]}"
        )
    for h in (1, 2):
        if not (half == h).any():
            raise GmmsessionInputError(
                f"{where}: half set {h} is empty ({len(half)} particles, all in half {3 - h}); "
                "gold-standard refinement needs both halves (remove the half-set column to split randomly)"
            )


def duplicate_particle_error(
    path: str | os.PathLike, image_name: str, rows: np.ndarray, what: str, reason: str = ""
) -> GmmsessionInputError:
    """The error for a particle listed more than once (``rows`` 0-based; the message counts from 1)."""
    return GmmsessionInputError(
        f"{path}: duplicate image name {image_name!r} in rows {', '.join(str(int(r) + 1) for r in rows)} "
        f"with the same {what}: the same particle is listed twice, so particles cannot be told apart"
        + (f" ({reason})" if reason else "")
    )


def check_unique_keys(keys: np.ndarray, image_name: np.ndarray, path: str | os.PathLike, what: str) -> None:
    """Raise if a particle identity key repeats (the same particle listed twice).

    Parameters
    ----------
    keys : (n,) identity keys (see ``particle_key``).
    image_name : (n,) image names, for the message.
    path : the input file, for the message.
    what : how the key was built, for the message (e.g. "image name").
    """
    s = pd.Series(np.asarray(keys, dtype=object))
    dup = s[s.duplicated()]
    if len(dup):
        rows = np.flatnonzero(s.to_numpy() == dup.iloc[0])
        raise duplicate_particle_error(path, image_name[rows[0]], rows, what)


def check_optics_groups(particles: xr.Dataset, optics: xr.Dataset, path: str | os.PathLike) -> None:
    """Raise if a particle references an optics group that the optics table does not define."""
    used = np.unique(particles["optics_group"].values)
    known = set(optics["optics_group"].values.tolist())
    undefined = [int(g) for g in used if int(g) not in known]
    if undefined:
        g = undefined[0]
        first = particles["image_name"].values[particles["optics_group"].values == g][0]
        raise GmmsessionInputError(
            f"{path}: optics group {g} is referenced by particle {first} but not defined in the optics table "
            f"(defined: {sorted(known)})"
        )


def check_one_grid(particles: xr.Dataset, optics: xr.Dataset, path: str | os.PathLike | None = None) -> None:
    """Raise if the optics groups that hold particles differ in box.

    Images of different boxes cannot be processed together at all, so a session refuses them
    when it opens. Pixel sizes may differ: reconstruction, refinement and the heterogeneity
    networks take each particle at its own pixel size. A box of 0 (not in the file) is not
    compared.
    """
    where = path if path is not None else particles.attrs.get("source_path", "<particles>")
    used = set(np.unique(particles["optics_group"].values).tolist())
    groups = [int(g) for g in optics["optics_group"].values if int(g) in used]
    if len(groups) < 2:
        return
    o = optics.sel(optics_group=groups)
    px = np.asarray(o["pixel_size_angstrom"].values, dtype=np.float64)
    box = np.asarray(o["box_size"].values, dtype=np.int64)
    known = box > 0
    box_bad = known & known[0] & (box != box[0])
    if not box_bad.any():
        return
    j = int(np.flatnonzero(box_bad)[0])
    raise GmmsessionInputError(
        f"{where}: optics groups {groups[0]} ({px[0]:g} Å/px, box {box[0]}) and {groups[j]} ({px[j]:g} Å/px, box {box[j]}) "
        "differ; gmmsession processes all particles in one box: re-extract them to one box (and pixel size) first, "
        "or split the star file by optics group"
    )


def check_poses(particles: xr.Dataset, path: str | os.PathLike | None = None) -> None:
    """Raise if any particle lacks a 3D pose (NaN Euler angles or origins), naming the first one.

    Call it before reconstruction or refinement, so that no image is read in vain.
    """
    where = path if path is not None else particles.attrs.get("source_path", "<particles>")
    names = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_angstrom", "origin_y_angstrom")
    values = np.stack([np.asarray(particles[n].values, dtype=np.float64) for n in names], axis=-1)
    bad = ~np.isfinite(values).all(axis=-1)
    if bad.any():
        first = particles["image_name"].values[bad][0]
        raise GmmsessionInputError(
            f"{where}: {int(bad.sum())} particle(s) have no 3D pose (rlnAngleRot/Tilt/Psi or origins missing), "
            f"first {first}; a 3D refinement's particles are needed"
        )
