"""Write refined poses back to a RELION star file, losslessly.

:func:`export_star` writes the input file's own tables with only the pose columns
(``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst`` or, for a RELION 3.0 input,
``rlnOriginX/Y`` in pixels) replaced by the values in the particles dataset. Rows are matched
on particle identity (``particle_key``: the image name, see
:func:`gmmsession.data.io.relion.particle_keys`), never on order, so the dataset may be a
reordered subset. A set expanded in memory (``symmetry_operator`` present, source keys
repeated) gets one row per copy, its source row repeated; a set read from an expanded file
(keys ``...|copy<j>``, see :func:`~gmmsession.data.io.relion.particle_keys`) matches each
copy to its own row, so it may also be a subset and ``keep_unmatched`` applies. Unknown
columns, the optics table, the other blocks and the block order survive; floats are written
exactly (:func:`~gmmsession.data.io.star.write_star_blocks_lossless`).

A set read from cryoSPARC is written as a fresh RELION 3.1 star file (``data_optics`` +
``data_particles``) whose ``N@path`` names RELION can open. Those names point at the cryoSPARC
stacks themselves, which are not rewritten: particles with ``image_sign == -1`` (cryoSPARC's
``blob/sign``; every cryoSPARC-extracted particle) are stored dark, and RELION has no column
for an image's sign, so RELION would read them inverted and reconstruct an inverted map.
The star file's poses and CTF are right; the images must be inverted before RELION uses them
(for example ``relion_image_handler --i stack.mrcs --o inverted.mrcs --multiply_constant -1``,
then point ``rlnImageName`` at the inverted stacks, or re-extract in RELION). Export therefore
issues an :class:`InvertedContrastWarning` naming how many particles and stacks are
affected (``on_dark_images="raise"`` makes it an error).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io._atomic import refuse_overwrite_of_inputs
from gmmsession.data.io.relion import particle_keys
from gmmsession.data.io.star import write_star_blocks_lossless
from gmmsession.data.particles import ParticleSet, SourceTables

__all__ = ["export_star", "InvertedContrastWarning"]

class InvertedContrastWarning(UserWarning):
    """An exported RELION star file names stacks whose protein is dark (``image_sign == -1``)."""


def _dark_images_message(particles: xr.Dataset, path: Path) -> str | None:
    """What to tell the user when particles with ``image_sign == -1`` go into a RELION star file."""
    if "image_sign" not in particles:
        return None
    dark = np.asarray(particles["image_sign"].values, dtype=np.float64) < 0
    if not dark.any():
        return None
    stacks = pd.unique(np.asarray(particles["stack_path"].values, dtype=object)[dark])
    return (
        f"{path}: {int(dark.sum())} of {dark.size} particles (first {particles['image_name'].values[dark][0]}) have "
        f"image_sign -1 (cryoSPARC blob/sign): their {len(stacks)} stack(s), e.g. {stacks[0]}, store dark protein, and "
        "RELION, which has no per-image sign, would read them inverted and reconstruct an inverted map. The poses and "
        "CTF written are right; invert the stacks before using them in RELION (relion_image_handler --i stack "
        "--o inverted.mrcs --multiply_constant -1, then point rlnImageName at the inverted stacks)"
    )


_ANGLES = (("rot_deg", "rlnAngleRot"), ("tilt_deg", "rlnAngleTilt"), ("psi_deg", "rlnAnglePsi"))


def _pixel_size_per_particle(particles: xr.Dataset, optics: xr.Dataset) -> np.ndarray:
    groups = np.asarray(particles["optics_group"].values, dtype=np.int64)
    known = np.asarray(optics["optics_group"].values, dtype=np.int64)
    lookup = dict(zip(known.tolist(), np.asarray(optics["pixel_size_angstrom"].values, dtype=np.float64).tolist()))
    missing = [g for g in np.unique(groups) if int(g) not in lookup]
    if missing:
        raise GmmsessionInputError(f"optics group {missing[0]} is referenced by particles but not defined")
    return np.array([lookup[int(g)] for g in groups], dtype=np.float64)


def _check_unique(keys: np.ndarray) -> None:
    s = pd.Series(keys)
    if s.duplicated().any():
        raise GmmsessionInputError(f"the particles to export list particle {s[s.duplicated()].iloc[0]!r} more than once")


def _relion_blocks(
    particles: xr.Dataset, optics: xr.Dataset, source: SourceTables, keep_unmatched: bool
) -> dict[str, pd.DataFrame | dict]:
    blocks = {k: copy.deepcopy(v) for k, v in source.blocks.items()}
    pb = source.particles_block
    if pb is None or pb not in blocks:
        raise GmmsessionInputError(f"{source.path}: the source tables have no particle block to export into")
    df: pd.DataFrame = blocks[pb].reset_index(drop=True)
    file_keys, _ = particle_keys(df)
    keys = np.asarray(particles["particle_key"].values, dtype=object)
    # A set expanded in memory (gmmsession.algorithms.symmetry) repeats its source rows' keys;
    # a set read from an expanded file has one key (and one row) per copy and is written as usual.
    repeat_rows = "symmetry_operator" in particles and pd.Series(keys).duplicated().any()
    if not repeat_rows:
        _check_unique(keys)
    rows = pd.Index(file_keys).get_indexer(keys)
    if (rows < 0).any():
        bad = particles["image_name"].values[rows < 0][0]
        raise GmmsessionInputError(f"particle {bad} is not in the source file {source.path}; cannot export it there")
    if repeat_rows:
        # One row per copy, the source row repeated, as relion_particle_symmetry_expand writes it.
        df = df.iloc[rows].reset_index(drop=True)
        rows = np.arange(len(df))

    for var, col in _ANGLES:
        values = np.asarray(particles[var].values, dtype=np.float64)
        if col not in df.columns:
            if np.isnan(values).all():
                continue  # the file had no such angle and none was estimated
            df[col] = 0.0
        if np.isnan(values).any():
            bad = particles["image_name"].values[np.isnan(values)][0]
            raise GmmsessionInputError(f"particle {bad} has no {col} (NaN) to export")
        df[col] = df[col].astype(np.float64)
        df.loc[rows, col] = values

    origin_angstrom = {
        "X": np.asarray(particles["origin_x_angstrom"].values, dtype=np.float64),
        "Y": np.asarray(particles["origin_y_angstrom"].values, dtype=np.float64),
    }
    pixel_size = _pixel_size_per_particle(particles, optics)
    for axis, values in origin_angstrom.items():
        angst, pix = f"rlnOrigin{axis}Angst", f"rlnOrigin{axis}"
        targets = [c for c in (angst, pix) if c in df.columns]
        if not targets:
            if not np.any(values):
                continue  # the file had no origin and none was estimated
            targets = [pix if source.format == "relion-3.0" else angst]
            df[targets[0]] = 0.0
        for col in targets:
            df[col] = df[col].astype(np.float64)
            if col == angst:
                df.loc[rows, col] = values
            else:
                # Pixels: keep the file's own value where the pose is unchanged (x * p / p is
                # not always x in floating point), so an unrefined round trip is bit-exact.
                old = df[col].to_numpy()[rows]
                df.loc[rows, col] = np.where(old * pixel_size == values, old, values / pixel_size)

    if not keep_unmatched:
        df = df.iloc[np.sort(rows)].reset_index(drop=True)
    blocks[pb] = df
    return blocks


def _stack_name(stack_path: str, relative_to: Path | None, link_dir: Path | None, links: dict[str, Path]) -> str:
    p = Path(stack_path)
    if p.suffix == ".mrc" and link_dir is not None:
        # RELION reads N@file only from .mrcs stacks (.mrc is a 3D map): point at a .mrcs link.
        if stack_path not in links:
            name = p.stem + ".mrcs"
            k = 1
            while any(v.name == name for v in links.values()):
                name = f"{p.stem}_{k}.mrcs"
                k += 1
            links[stack_path] = link_dir / name
        p = links[stack_path]
    if relative_to is not None:
        return os.path.relpath(p, relative_to)
    return str(p)


def _fresh_relion31_blocks(
    particles: xr.Dataset, optics: xr.Dataset, relative_to: Path | None, link_dir: Path | None, links: dict[str, Path]
) -> dict[str, pd.DataFrame]:
    used = np.unique(np.asarray(particles["optics_group"].values, dtype=np.int64))
    opt = optics.sel(optics_group=used)
    optics_df = pd.DataFrame(
        {
            "rlnOpticsGroup": opt["optics_group"].values.astype(np.int64),
            "rlnOpticsGroupName": opt["optics_group_name"].values.astype(str),
            "rlnAmplitudeContrast": opt["amplitude_contrast"].values.astype(np.float64),
            "rlnSphericalAberration": opt["cs_mm"].values.astype(np.float64),
            "rlnVoltage": opt["voltage_kv"].values.astype(np.float64),
            "rlnImagePixelSize": opt["pixel_size_angstrom"].values.astype(np.float64),
            "rlnImageSize": opt["box_size"].values.astype(np.int64),
            "rlnImageDimensionality": np.full(len(used), 2, dtype=np.int64),
        }
    )
    names = [
        f"{int(i) + 1:06d}@{_stack_name(str(s), relative_to, link_dir, links)}"
        for i, s in zip(particles["stack_index"].values, particles["stack_path"].values)
    ]
    cols: dict[str, np.ndarray | list] = {"rlnImageName": names}
    for var, col in _ANGLES:
        values = np.asarray(particles[var].values, dtype=np.float64)
        if not np.isnan(values).all():
            if np.isnan(values).any():
                bad = particles["image_name"].values[np.isnan(values)][0]
                raise GmmsessionInputError(f"particle {bad} has no {col} (NaN) to export")
            cols[col] = values
    cols.update(
        {
            "rlnOriginXAngst": np.asarray(particles["origin_x_angstrom"].values, dtype=np.float64),
            "rlnOriginYAngst": np.asarray(particles["origin_y_angstrom"].values, dtype=np.float64),
            "rlnDefocusU": np.asarray(particles["defocus_u_angstrom"].values, dtype=np.float64),
            "rlnDefocusV": np.asarray(particles["defocus_v_angstrom"].values, dtype=np.float64),
            "rlnDefocusAngle": np.asarray(particles["defocus_angle_deg"].values, dtype=np.float64),
            "rlnPhaseShift": np.asarray(particles["phase_shift_deg"].values, dtype=np.float64),
            "rlnCtfBfactor": np.asarray(particles["ctf_bfactor_angstrom2"].values, dtype=np.float64),
            "rlnCtfScalefactor": np.asarray(particles["ctf_scale"].values, dtype=np.float64),
            "rlnOpticsGroup": np.asarray(particles["optics_group"].values, dtype=np.int64),
        }
    )
    half = np.asarray(particles["half"].values, dtype=np.int64)
    if np.isin(half, (1, 2)).all():
        cols["rlnRandomSubset"] = half
    return {"optics": optics_df, "particles": pd.DataFrame(cols)}


def export_star(
    path: str | os.PathLike,
    particle_set: ParticleSet | tuple[xr.Dataset, xr.Dataset, SourceTables],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    keep_unmatched: bool = False,
    relative_to: str | os.PathLike | None = None,
    link_mrc_stacks: bool = True,
    on_dark_images: str = "warn",
) -> Path:
    """Write the particles' poses into a star file (atomically).

    Parameters
    ----------
    path : output star file. Never one of the inputs (the source file, ``inputs``, the stacks).
    particle_set : ParticleSet or (particles, optics, source)
        ``particles`` may be a reordered subset of the source's particles.
    inputs : paths
        Further files that must not be overwritten (e.g. every input of a session).
    keep_unmatched : bool
        RELION source only. False (default): the output holds exactly the dataset's particles,
        in the source file's row order. True: source rows absent from the dataset are kept
        unchanged.
    relative_to : folder, optional
        cryoSPARC source only: write stack paths relative to this folder (the RELION project
        directory you will run RELION from); default absolute paths.
    link_mrc_stacks : bool
        cryoSPARC source only: RELION reads ``N@stack`` only from ``.mrcs`` files, so for each
        ``.mrc`` stack a symbolic link ``<output stem>_stacks/<name>.mrcs`` is made beside the
        output and named instead.
    on_dark_images : ``"warn"`` (default) or ``"raise"``
        cryoSPARC source only: what to do when particles have ``image_sign == -1`` (their
        stacks store dark protein, which RELION would read inverted; see the module notes):
        an :class:`InvertedContrastWarning`, or a :class:`GmmsessionInputError` before
        anything is written.

    Returns
    -------
    Path of the written file.

    Raises
    ------
    GmmsessionInputError
        Writing over an input file (nothing is written), a particle absent from the source,
        a particle listed twice, a NaN pose; with ``on_dark_images="raise"``, dark-protein
        particles in a cryoSPARC source.

    Warns
    -----
    InvertedContrastWarning
        cryoSPARC source with particles whose ``image_sign`` is -1 (the file is still written).
    """
    if on_dark_images not in ("warn", "raise"):
        raise ValueError(f"on_dark_images must be 'warn' or 'raise', got {on_dark_images!r}")
    if isinstance(particle_set, ParticleSet):
        particles, optics, source = particle_set.particles, particle_set.optics, particle_set.source
    else:
        particles, optics, source = particle_set
    path = Path(os.path.abspath(path))
    protected = [source.path, *inputs, *pd.unique(np.asarray(particles["stack_path"].values, dtype=object))]
    refuse_overwrite_of_inputs(path, protected)
    if particles.sizes["particle"] == 0:
        raise GmmsessionInputError(f"refusing to write {path}: there are no particles to export")

    if source.format.startswith("relion"):
        blocks = _relion_blocks(particles, optics, source, keep_unmatched)
        version = particles.attrs.get("star_version")
        if version is None and source.format != "relion-3.0":
            version = 30001
        return write_star_blocks_lossless(path, blocks, version=version)

    dark = _dark_images_message(particles, path)
    if dark is not None and on_dark_images == "raise":
        raise GmmsessionInputError(f"refusing to write {dark}")
    links: dict[str, Path] = {}
    link_dir = path.parent / f"{path.stem}_stacks" if link_mrc_stacks else None
    rel = Path(os.path.abspath(relative_to)) if relative_to is not None else None
    blocks = _fresh_relion31_blocks(particles, optics, rel, link_dir, links)
    for target, link in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.path.abspath(os.readlink(link)) == os.path.abspath(target):
                continue
            raise GmmsessionInputError(f"refusing to replace {link}: it exists and does not point at {target}")
        os.symlink(os.path.abspath(target), link)
    out = write_star_blocks_lossless(path, blocks, version=30001)
    if dark is not None:
        warnings.warn(dark, InvertedContrastWarning, stacklevel=2)
    return out
