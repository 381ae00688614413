"""RELION particle star files (1.x to 5.0) -> :class:`~gmmsession.data.particles.ParticleSet`.

All parsing goes through the ``starfile`` package; this module only interprets the columns.

Decisions
---------
* **Format.** A block holding ``rlnImageName`` is the particles block; a block with
  ``rlnOpticsGroup`` and no ``rlnImageName`` is the optics block (block order and names do
  not matter; ``data_images`` and the unnamed ``data_`` of old files work). With an optics
  block the file is ``"relion-3.1"`` (also RELION 4/5; ``attrs["star_version"]`` keeps the
  ``# version`` number when present), otherwise ``"relion-3.0"``.
* **Pixel size.** 3.1: ``rlnImagePixelSize`` of the optics group (else ``rlnPixelSize``, else
  ``rlnDetectorPixelSize`` [µm] / ``rlnMagnification`` * 1e4). 3.0: the same columns per
  particle. None of them -> :class:`GmmsessionInputError`.
* **Optics of 3.0 files.** One optics group per distinct (pixel size, voltage, Cs, amplitude
  contrast), numbered 1.. in order of first appearance. The box size comes from the stack
  header of the group's first particle (0 when the stack is not there: metadata-only).
* **Defaults** follow RELION's ``CTF::read``: ``rlnDefocusV`` = ``rlnDefocusU``,
  ``rlnDefocusAngle`` = 0, ``rlnAmplitudeContrast`` = 0, ``rlnPhaseShift`` = 0,
  ``rlnCtfBfactor`` = 0, ``rlnCtfScalefactor`` = 1, origins 0. ``rlnImageName``,
  ``rlnDefocusU``, ``rlnVoltage`` and ``rlnSphericalAberration`` are required.
* **Poses.** Absent angle columns are NaN. 2D classification files (rot = tilt = 0 in every
  row) keep those zeros, as RELION itself would use them, and get
  ``attrs["pose_source"] = "2d"``; files with real 3D angles get ``"3d"``.
* **Half sets.** ``rlnRandomSubset`` 1/2 -> ``half``; other values are an error naming the
  column. Without the column, :func:`~gmmsession.data.particles.split_random_halves` with
  ``split_seed`` assigns them (``attrs["half_source"]`` says so). An empty half set does
  not stop reading (:func:`~gmmsession.data.particles.check_half_sets` is for callers that
  need both halves).
* **Image names.** ``N@path``: N is 1-based, ``stack_index`` = N - 1; a name without ``@``
  is image 0 of a single-image file. A relative path is looked up under ``stacks_root``
  (RELION project directory) first when given, then the star file's folder; if neither
  exists the first candidate is kept (images are checked only when read). Repeated image
  names only break identity when the rows are also the same particle: a particle's
  identity (coordinate ``particle_key``, what export matches on) is its image name, and for
  a repeated name also its ``rlnMicrographName`` and ``rlnCoordinateX/Y``
  (:func:`particle_keys`). The real ``relion5.star`` re-uses ``1@toy_images_a.mrcs`` for
  particles of two micrographs: it loads. Rows that agree on all of these (or repeat a
  name with none of these columns) are the copies of a symmetry-expanded particle (next
  point) or else an error naming the duplicate. In the real ``relion31.star`` the
  "duplicate" particles 1 and 2 have different names (``000001@`` and ``000002@``; same
  micrograph coordinates, similar but not identical pixels) and load.
* **Symmetry-expanded files.** ``relion_particle_symmetry_expand --sym G`` (RELION 3.1; 4
  and 5 do the same) writes, for each input row in turn, the row itself (identity operator)
  followed by one copy per further operator of ``G``, each a verbatim copy of the row with
  only ``rlnAngleRot/Tilt/Psi`` replaced (checked against the installed program in
  ``tests/relion/test_expanded_star_relion.py``); ``--helix`` instead changes ``rlnAngleRot``
  and ``rlnOriginX/Y(Angst)`` and does not start with the identity. The usual next steps are
  focused 3D classification without alignment of the expanded set (``relion_refine
  --skip_align`` with a mask) and the selection of one class (``relion_star_handler --select
  rlnClassNumber``): the copies then differ in the columns classification writes per row
  (``rlnClassNumber``, ``rlnLogLikeliContribution``, ``rlnMaxValueProbDistribution``,
  ``rlnNrOfSignificantSamples``, ``rlnNormCorrection``, ...), and each particle keeps only the
  copies that fell in the class: any number from 1 to the group's order. So
  :func:`symmetry_expansion` accepts rows that repeat the identity key as the copies of one
  particle when

  - the copies agree on every column of :data:`PER_IMAGE_COLUMNS`: what describes the image
    itself (image name, original image name, micrograph, coordinates, optics group, CTF and
    defocus, RELION 3.0 per-particle optics). One image has one value of these; copies that
    differ there are rows of different origin with the same name (the duplicate error,
    naming the column). This is a list of per-image columns, not a list of per-copy ones,
    because the per-copy columns are open-ended: every RELION job run on the expanded set
    adds its own (scores, class numbers, priors, helical track data, and whatever a newer
    RELION or a user script writes), gmmsession interprets none of them, and export writes
    each row's own values back, so a difference there cannot corrupt anything. A list of
    per-copy columns would refuse every file carrying a column it does not know;
  - the copies are in one half set (``rlnRandomSubset``), else an error of its own naming the
    file, image and rows: copies of one particle in both halves would break the
    gold-standard separation;
  - no two copies have the same pose (all of :data:`EXPANSION_COLUMNS`: angles and origins):
    identical poses are the same particle listed twice, the duplicate error.

  Groups need not have the same size, and particles listed once may sit among them. The
  price: a file that lists a particle twice with different poses and equal per-image columns
  (two refinements of the same particles joined with ``relion_star_handler --combine``, say)
  loads as an expansion too; nothing in the file tells the two apart. Rows need not be
  consecutive (a stable sort keeps the copies' order). The set carries the variables of
  :func:`gmmsession.algorithms.symmetry.expand_symmetry`: ``symmetry_source_particle`` is
  the particle's number in order of first appearance (its position in the unexpanded file
  for a full expansion), ``symmetry_operator`` is the row's order among its particle's rows
  (0, 1, ...). For RELION's full expansion that is the operator's number in RELION's list (0 =
  identity; RELION's order is ours for the cyclic groups, not for D, T, O, I); after a
  selection it is only an order: which operators a particle kept is not in the file. Nothing
  in gmmsession uses it as an operator number (the session and export only test that the
  variable exists). ``particle_key`` gains ``|copy<j>`` so that export matches each copy to
  its own row (:func:`particle_keys`), which writes every other column of the row back as it
  was. The point group is not in the file: ``attrs["symmetry_expanded"]`` is the description
  ``"unknown (k copies per particle in <file name>; symmetry_operator is each copy's order
  ...)"`` (``"1 to k copies"`` when the numbers differ), never a group name, and the
  session's symmetry stays what :meth:`~gmmsession.session.session.Session.from_star` is
  given (C1 for such a file: the copies already carry the symmetry). Without
  ``rlnRandomSubset`` the random split is drawn per source particle, so the copies share a
  half set. A file in which every particle kept a single copy has no repeats and loads as a
  plain set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.stack import resolve_stack_path, stack_shape
from gmmsession.data.particles import (
    ParticleSet,
    SourceTables,
    check_optics_groups,
    check_unique_keys,
    duplicate_particle_error,
    make_optics_dataset,
    make_particles_dataset,
    split_random_halves,
)

__all__ = ["read_relion_star", "read_star_blocks", "parse_image_names", "particle_keys", "symmetry_expansion"]

_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)", re.MULTILINE)


def read_star_blocks(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """Every data block of a star file (name -> table), in file order, via ``starfile``.

    Raises
    ------
    GmmsessionInputError
        If the file does not exist or ``starfile`` cannot parse it.
    """
    path = Path(path)
    if not path.is_file():
        raise GmmsessionInputError(f"star file not found: {path}")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted errors on malformed files
        raise GmmsessionInputError(f"{path}: not a readable star file ({type(exc).__name__}: {exc})") from exc
    if not blocks:
        raise GmmsessionInputError(f"{path}: no data blocks found")
    return dict(blocks)


def parse_image_names(names: np.ndarray, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Split RELION ``N@stack`` image names into (stack strings, 0-based indices).

    Parameters
    ----------
    names : (n,) array of str
    path : the star file (for error messages)

    Returns
    -------
    stacks : (n,) object array of str (as written in the file)
    index : (n,) int64 array, ``N - 1`` (0 for names without ``@``)
    """
    s = pd.Series(np.asarray(names, dtype=object)).astype(str)
    has_at = s.str.contains("@", regex=False)
    parts = s.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    stacks = np.where(has_at, parts[1], s).astype(object)
    number = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce")
    bad = number.isna() | (number < 1) | (number != np.floor(number))
    if bad.any():
        first = s[bad].iloc[0]
        raise GmmsessionInputError(
            f"{path}: image name {first!r} is not of the form N@stack with N a 1-based image number (column rlnImageName)"
        )
    empty = pd.Series(stacks).astype(str).str.len() == 0
    if empty.any():
        raise GmmsessionInputError(f"{path}: image name {s[empty.to_numpy()].iloc[0]!r} has no stack path (column rlnImageName)")
    return stacks, number.to_numpy().astype(np.int64) - 1


_KEY_COLUMNS = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY")

#: The pose columns: the Euler angles (point-group expansion, ``--sym``) and the origins (helical
#: expansion, ``--helix``). The copies of an expanded particle differ here; two copies with the
#: same values in all of these are the same particle listed twice.
EXPANSION_COLUMNS = (
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst",
)

#: The columns that describe the image itself, so the copies of one particle must agree on them
#: (:func:`symmetry_expansion`): its identity, its optics and CTF (every per-particle column the
#: reader interprets, RELION 3.0 per-particle optics included) and, checked on its own,
#: ``rlnRandomSubset``. Every other column may differ between copies (module docstring).
PER_IMAGE_COLUMNS = (
    "rlnImageName", "rlnImageOriginalName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
    "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
    "rlnCtfScalefactor", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
    "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification",
)

def _identity_keys(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The image name, and for a repeated name also micrograph and coordinates (before copies)."""
    names = df["rlnImageName"].astype(str).to_numpy(dtype=object)
    repeated = pd.Series(names).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return names, "image name"
    present = [c for c in _KEY_COLUMNS if c in df.columns]
    keys = names.copy()
    if present:
        sub = df.loc[repeated, present].astype(str)
        extra = sub[present[0]]
        for column in present[1:]:
            extra = extra + "|" + sub[column]
        keys[repeated] = names[repeated] + "|" + extra.to_numpy(dtype=object)
    what = "image name" + (f" and {', '.join(present)}" if present else " (no rlnMicrographName/rlnCoordinateX/Y to tell them apart)")
    return keys, what


def particle_keys(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Identity key of each row of a RELION particle table.

    The key is the image name. Where an image name repeats (real files do this, e.g.
    ``relion5.star`` re-uses ``1@toy_images_a.mrcs`` for particles of two micrographs), the
    repeated rows' keys also carry ``rlnMicrographName`` and ``rlnCoordinateX/Y``. Where even
    that repeats (the copies of a symmetry-expanded file, see :func:`symmetry_expansion`), the
    key ends in ``|copy<j>``, ``j`` = 0, 1, ... the row's order among the rows that share it.
    The keys are therefore always unique; whether repeats are a valid expansion is checked by
    :func:`symmetry_expansion` (the reader), not here.

    Returns
    -------
    keys : (n,) object array of str
    what : description of the key for error messages
    """
    keys, what = _identity_keys(df)
    s = pd.Series(keys)
    repeated = s.duplicated(keep=False).to_numpy()
    if repeated.any():
        copy = s.groupby(s, sort=False).cumcount().to_numpy()
        keys = keys.copy()
        keys[repeated] = keys[repeated] + "|copy" + copy[repeated].astype(str).astype(object)
        what += ", and the copy number of a symmetry-expanded particle"
    return keys, what


def symmetry_expansion(df: pd.DataFrame, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Recognise a symmetry-expanded table (``relion_particle_symmetry_expand``; the module docstring).

    Rows that share the identity key (:func:`particle_keys` before the copy number) are the
    copies of one particle. They are accepted as a symmetry expansion if the copies agree on
    every column of :data:`PER_IMAGE_COLUMNS` present (the image, its optics and CTF) and on
    ``rlnRandomSubset`` (one half set per particle), and no two copies of a particle have the
    same pose (:data:`EXPANSION_COLUMNS`). Groups may have different sizes, 1 included (a
    subset selected after classifying the expanded set), and the copies may differ in any
    other column (class number, scores, priors: values RELION writes per row).

    Parameters
    ----------
    df : the particle table (one row per particle image, file order).
    path : the star file, for messages.

    Returns
    -------
    None when no identity key repeats; else ``(source, copy, sizes)``: ``source`` (n,) int64,
    the particle's number in order of first appearance (0 .. m - 1; the position of the
    particle in the unexpanded file when the file is RELION's full expansion); ``copy`` (n,)
    int64, the row's order among its particle's rows (0 .. size - 1; in a full expansion by
    RELION, 0 is the identity and ``copy`` the operator's number in RELION's list, in a
    selected subset only an order); ``sizes`` (m,) int64, each particle's number of rows.

    Raises
    ------
    GmmsessionInputError
        Naming the file, the image name and the rows (1-based) of the first offending particle:
        copies that differ in a per-image column (the duplicate error, naming the column),
        copies in different half sets, or two copies with the same pose (the same particle
        listed twice).
    """
    keys, what = _identity_keys(df)
    codes, uniques = pd.factorize(pd.Series(keys))
    n, n_groups = len(codes), len(uniques)
    if n_groups == n:
        return None
    codes = codes.astype(np.int64)
    names = df["rlnImageName"].astype(str).to_numpy(dtype=object)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    first_row = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(first_row, codes, np.arange(n, dtype=np.int64))

    def rows_of(g: int) -> np.ndarray:
        return np.flatnonzero(codes == g)

    def fail(g: int, reason: str) -> GmmsessionInputError:
        rows = rows_of(g)
        return duplicate_particle_error(path, names[rows[0]], rows, what, reason)

    def first_mismatch(column: str) -> int | None:
        """The first particle (in order of appearance) whose rows differ in ``column``."""
        v = df[column].to_numpy()
        ref = v[first_row[codes]]
        missing, ref_missing = pd.isna(v), pd.isna(ref)
        same = np.where(missing | ref_missing, missing & ref_missing, v == ref)
        bad = codes[~same.astype(bool)]
        return None if len(bad) == 0 else int(bad.min())

    # Per-image columns first: rows that differ there are no expansion at all (the duplicate
    # error), whatever their half sets.
    for column in PER_IMAGE_COLUMNS:
        if column not in df.columns:
            continue
        g = first_mismatch(column)
        if g is not None:
            a, b = pd.unique(df[column].to_numpy()[rows_of(g)])[:2]
            raise fail(
                g,
                f"not a symmetry expansion: the rows differ in column {column} ({a!r} vs {b!r}), a property of the "
                "image itself; the copies of a symmetry-expanded particle differ only in pose and per-copy columns "
                "(class, scores, priors)",
            )
    if "rlnRandomSubset" in df.columns:
        g = first_mismatch("rlnRandomSubset")
        if g is not None:
            rows = rows_of(g)
            subsets = df["rlnRandomSubset"].to_numpy()[rows]
            raise GmmsessionInputError(
                f"{path}: image {names[rows[0]]!r} is listed in rows {', '.join(str(r + 1) for r in rows)} as copies of "
                f"one symmetry-expanded particle, but in different half sets (rlnRandomSubset {', '.join(map(str, subsets))}): "
                "the copies of a particle must stay in one half set, or the gold-standard separation of the halves is broken"
            )
    pose = [c for c in EXPANSION_COLUMNS if c in df.columns]
    same_pose = pd.DataFrame({"group": codes, **{c: df[c].to_numpy() for c in pose}}).duplicated().to_numpy()
    if same_pose.any():
        raise fail(
            int(codes[np.flatnonzero(same_pose)[0]]),
            f"two copies have the same pose ({', '.join(pose) or 'no pose columns'}), so this is not a symmetry expansion",
        )
    copy = pd.Series(codes).groupby(codes, sort=False).cumcount().to_numpy().astype(np.int64)
    return codes, copy, sizes


def _expansion_description(sizes: np.ndarray, file_name: str) -> str:
    """``attrs["symmetry_expanded"]`` of a set read from an expanded file (``sizes``: rows per particle)."""
    lo, hi = int(np.min(sizes)), int(np.max(sizes))
    count = f"{lo}" if lo == hi else f"{lo} to {hi}"
    return (
        f"unknown ({count} copies per particle in {file_name}; symmetry_operator is each copy's order among its "
        "particle's rows, not a known operator number)"
    )


def _find_blocks(blocks: dict, path: Path) -> tuple[str, str | None]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    particle_blocks = [k for k, v in tables.items() if "rlnImageName" in v.columns]
    if not particle_blocks:
        cols = {k: list(v.columns)[:6] for k, v in tables.items()}
        raise GmmsessionInputError(f"{path}: no particle table: no block has the column rlnImageName (blocks: {cols})")
    pb = "particles" if "particles" in particle_blocks else particle_blocks[0]
    optics_blocks = [
        k for k, v in tables.items() if k != pb and "rlnOpticsGroup" in v.columns and "rlnImageName" not in v.columns
    ]
    ob = None
    if optics_blocks:
        ob = "optics" if "optics" in optics_blocks else optics_blocks[0]
    return pb, ob


def _require(df: pd.DataFrame, column: str, path: Path, block: str) -> np.ndarray:
    if column not in df.columns:
        raise GmmsessionInputError(f"{path}: required column {column} is missing from block data_{block}")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise GmmsessionInputError(f"{path}: column {column} of block data_{block} has a missing or non-numeric value in row {row + 1}")
    return values


def _optional(df: pd.DataFrame, column: str, default: float | np.ndarray) -> np.ndarray:
    if column in df.columns:
        return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    return np.broadcast_to(np.asarray(default, dtype=np.float64), (len(df),)).copy()


def _pixel_size(df: pd.DataFrame) -> np.ndarray | None:
    """Pixel size (Å) per row from the columns RELION has used over the versions, or None."""
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in df.columns:
            return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    if "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        det_um = pd.to_numeric(df["rlnDetectorPixelSize"], errors="coerce").to_numpy(dtype=np.float64)
        mag = pd.to_numeric(df["rlnMagnification"], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return det_um / mag * 1e4
    return None


def _box_from_stack(stack_path: str) -> int:
    shape = stack_shape(stack_path)
    return 0 if shape is None else int(shape[-1])


def read_relion_star(
    path: str | os.PathLike, stacks_root: str | os.PathLike | None = None, *, split_seed: int = 0
) -> ParticleSet:
    """Read a RELION particle star file (1.x, 3.0, 3.1, 4, 5).

    Parameters
    ----------
    path : star file.
    stacks_root : folder, optional
        Where relative stack paths in ``rlnImageName`` start (the RELION project
        directory); tried before the star file's own folder.
    split_seed : int
        Seed for the random half-set split used when the file has no ``rlnRandomSubset``.

    Returns
    -------
    ParticleSet
        ``particles`` in file order (dims ``particle``), ``optics`` (dims ``optics_group``),
        ``source`` with every block of the file. See the module docstring for the decisions.

    Raises
    ------
    GmmsessionInputError
        Naming the file and the column/particle/group at fault: missing required column,
        no pixel size, undefined optics group, bad ``rlnRandomSubset`` values, duplicate or
        malformed image names.
    """
    path = Path(os.path.abspath(path))
    blocks = read_star_blocks(path)
    pb, ob = _find_blocks(blocks, path)
    df: pd.DataFrame = blocks[pb]
    n = len(df)
    if n == 0:
        raise GmmsessionInputError(f"{path}: the particle table data_{pb} has no rows")

    image_name = df["rlnImageName"].astype(str).to_numpy(dtype=object)
    expansion = symmetry_expansion(df, path)
    keys, what = particle_keys(df)
    check_unique_keys(keys, image_name, path, what)  # unique by construction; kept as a guard
    stacks, stack_index = parse_image_names(image_name, path)
    search = ([Path(stacks_root)] if stacks_root is not None else []) + [path.parent]
    resolved = {s: str(resolve_stack_path(s, search)) for s in pd.unique(stacks)}
    stack_path = np.array([resolved[s] for s in stacks], dtype=object)

    defocus_u = _require(df, "rlnDefocusU", path, pb)
    defocus_v = _optional(df, "rlnDefocusV", defocus_u)
    defocus_angle = _optional(df, "rlnDefocusAngle", 0.0)
    phase_shift = _optional(df, "rlnPhaseShift", 0.0)
    bfactor = _optional(df, "rlnCtfBfactor", 0.0)
    scale = _optional(df, "rlnCtfScalefactor", 1.0)

    with open(path, encoding="utf-8", errors="replace") as f:
        version_match = _VERSION_RE.search(f.read(4096))
    attrs: dict = {"source_path": str(path)}
    if version_match:
        attrs["star_version"] = int(version_match.group(1))

    if ob is not None:
        fmt = "relion-3.1"
        opt: pd.DataFrame = blocks[ob]
        groups_defined = pd.to_numeric(opt["rlnOpticsGroup"], errors="coerce")
        if groups_defined.isna().any():
            raise GmmsessionInputError(f"{path}: column rlnOpticsGroup of block data_{ob} has non-integer values")
        groups_defined = groups_defined.to_numpy().astype(np.int64)
        if len(np.unique(groups_defined)) != len(groups_defined):
            raise GmmsessionInputError(f"{path}: an optics group is defined twice in block data_{ob} (column rlnOpticsGroup)")
        px = _pixel_size(opt)
        if px is None:
            px = _pixel_size(df)
            if px is None:
                raise GmmsessionInputError(
                    f"{path}: no pixel size anywhere (no rlnImagePixelSize in data_{ob}, no rlnPixelSize or "
                    "rlnDetectorPixelSize + rlnMagnification)"
                )
            raise GmmsessionInputError(
                f"{path}: the optics block data_{ob} has no rlnImagePixelSize; per-particle pixel sizes in a "
                "RELION 3.1 file are not supported"
            )
        if "rlnOpticsGroup" in df.columns:
            optics_group = pd.to_numeric(df["rlnOpticsGroup"], errors="coerce")
            if optics_group.isna().any():
                raise GmmsessionInputError(f"{path}: column rlnOpticsGroup of block data_{pb} has non-integer values")
            optics_group = optics_group.to_numpy().astype(np.int64)
        elif len(opt) == 1:
            optics_group = np.full(n, groups_defined[0], dtype=np.int64)
        else:
            raise GmmsessionInputError(
                f"{path}: required column rlnOpticsGroup is missing from block data_{pb} ({len(opt)} optics groups)"
            )
        if "rlnImageSize" in opt.columns:
            box = pd.to_numeric(opt["rlnImageSize"], errors="coerce").fillna(0).to_numpy().astype(np.int64)
        else:
            box = np.array(
                [_box_from_stack(stack_path[optics_group == g][0]) if (optics_group == g).any() else 0 for g in groups_defined],
                dtype=np.int64,
            )
        optics_table = pd.DataFrame(
            {
                "optics_group": groups_defined,
                "optics_group_name": opt["rlnOpticsGroupName"].astype(str).to_numpy()
                if "rlnOpticsGroupName" in opt.columns
                else [f"opticsGroup{g}" for g in groups_defined],
                "pixel_size_angstrom": px,
                "box_size": box,
                "voltage_kv": _require(opt, "rlnVoltage", path, ob),
                "cs_mm": _require(opt, "rlnSphericalAberration", path, ob),
                "amplitude_contrast": _optional(opt, "rlnAmplitudeContrast", 0.0),
            }
        )
        bad_px = ~(optics_table["pixel_size_angstrom"] > 0)
        if bad_px.any():
            g = int(optics_table["optics_group"][bad_px].iloc[0])
            raise GmmsessionInputError(f"{path}: optics group {g} has no valid pixel size (rlnImagePixelSize)")
        pos = np.searchsorted(np.sort(groups_defined), optics_group)
        px_particle = np.full(n, np.nan)
        okay = np.isin(optics_group, groups_defined)
        sorted_px = optics_table.sort_values("optics_group")["pixel_size_angstrom"].to_numpy()
        px_particle[okay] = sorted_px[np.clip(pos[okay], 0, len(sorted_px) - 1)]
    else:
        fmt = "relion-3.0"
        px_particle = _pixel_size(df)
        if px_particle is None:
            raise GmmsessionInputError(
                f"{path}: no pixel size anywhere (no optics block, and no rlnImagePixelSize, rlnPixelSize or "
                "rlnDetectorPixelSize + rlnMagnification column)"
            )
        bad = ~(px_particle > 0) | ~np.isfinite(px_particle)
        if bad.any():
            raise GmmsessionInputError(f"{path}: particle {image_name[bad][0]} has no valid pixel size")
        voltage = _require(df, "rlnVoltage", path, pb)
        cs = _require(df, "rlnSphericalAberration", path, pb)
        q0 = _optional(df, "rlnAmplitudeContrast", 0.0)
        combos = pd.DataFrame({"px": px_particle, "kv": voltage, "cs": cs, "q0": q0})
        combo_keys = list(zip(combos.px, combos.kv, combos.cs, combos.q0))
        numbering: dict = {}
        for k in combo_keys:
            numbering.setdefault(k, len(numbering) + 1)
        optics_group = np.array([numbering[k] for k in combo_keys], dtype=np.int64)
        rows = []
        for k, g in numbering.items():
            first_stack = stack_path[optics_group == g][0]
            rows.append(
                {
                    "optics_group": g,
                    "optics_group_name": f"opticsGroup{g}",
                    "pixel_size_angstrom": k[0],
                    "box_size": _box_from_stack(first_stack),
                    "voltage_kv": k[1],
                    "cs_mm": k[2],
                    "amplitude_contrast": k[3],
                }
            )
        optics_table = pd.DataFrame(rows)

    origin = {}
    for axis in ("X", "Y"):
        if f"rlnOrigin{axis}Angst" in df.columns:
            origin[axis] = _optional(df, f"rlnOrigin{axis}Angst", 0.0)
        elif f"rlnOrigin{axis}" in df.columns:
            origin[axis] = _optional(df, f"rlnOrigin{axis}", 0.0) * px_particle
        else:
            origin[axis] = np.zeros(n)

    angles = {c: _optional(df, c, np.nan) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")}
    if {"rlnAngleRot", "rlnAngleTilt"} <= set(df.columns):
        flat = np.all(angles["rlnAngleRot"] == 0) and np.all(angles["rlnAngleTilt"] == 0)
        attrs["pose_source"] = "2d" if flat else "3d"
    else:
        attrs["pose_source"] = "2d" if "rlnAnglePsi" in df.columns else "none"

    if "rlnRandomSubset" in df.columns:
        subset = pd.to_numeric(df["rlnRandomSubset"], errors="coerce").to_numpy()
        bad = ~np.isin(subset, (1, 2))
        if bad.any():
            raise GmmsessionInputError(
                f"{path}: column rlnRandomSubset must be 1 or 2; particle {image_name[bad][0]} has {df['rlnRandomSubset'].to_numpy()[bad][0]}"
            )
        half = subset.astype(np.int64)
        attrs["half_source"] = "file"
    else:
        half = np.zeros(n, dtype=np.int64)

    attrs["source_format"] = fmt
    if expansion is not None:
        attrs["symmetry_expanded"] = _expansion_description(expansion[2], path.name)
    columns = {
        "rot_deg": angles["rlnAngleRot"],
        "tilt_deg": angles["rlnAngleTilt"],
        "psi_deg": angles["rlnAnglePsi"],
        "origin_x_angstrom": origin["X"],
        "origin_y_angstrom": origin["Y"],
        "defocus_u_angstrom": defocus_u,
        "defocus_v_angstrom": defocus_v,
        "defocus_angle_deg": defocus_angle,
        "phase_shift_deg": phase_shift,
        "ctf_bfactor_angstrom2": bfactor,
        "ctf_scale": scale,
        "optics_group": optics_group,
        "half": half,
        "stack_path": stack_path,
        "stack_index": stack_index,
    }
    particles = make_particles_dataset(columns, image_name, attrs, particle_key=keys)
    if expansion is not None:
        source_particle, copy, _ = expansion
        particles["symmetry_source_particle"] = xr.Variable(
            "particle", source_particle,
            attrs={"units": "1", "long_name": "number of the source particle in order of first appearance in the file"},
        )
        particles["symmetry_operator"] = xr.Variable(
            "particle", copy,
            attrs={"units": "1", "long_name": "copy's order among its particle's rows in the file (not an operator number)"},
        )
    if "rlnRandomSubset" not in df.columns:
        particles = split_random_halves(particles, split_seed, groups=None if expansion is None else expansion[0])
    optics = make_optics_dataset(optics_table)
    check_optics_groups(particles, optics, path)
    source = SourceTables(
        path=path,
        format=fmt,
        blocks=blocks,
        particles_block=pb,
        optics_block=ob,
        stacks_root=Path(os.path.abspath(stacks_root)) if stacks_root is not None else None,
    )
    return ParticleSet(particles=particles, optics=optics, source=source)
