"""Saving and reopening sessions: one HDF5 file (netCDF-4 groups via h5netcdf), version-stamped.

Layout of a ``.gmms`` file:

* root attributes: ``gmmsession_format`` (int), ``gmmsession_version``, ``history`` (JSON),
  ``source`` (JSON: the input tables needed for a lossless export);
* groups ``particles``, ``optics`` (xarray Datasets), ``half_maps``, ``gmm``, ``latent`` and
  ``heterogeneity`` (the last heterogeneity networks as ``torch.save`` bytes) (when present),
  ``focus_mask`` (the last focused refinement's mask), ``patches`` (the last ``patches()``: layout,
  masks, added sources, step records) with ``patches_start_<x>`` and ``patch_<i>_<x>`` (its
  starting state and each patch's result; ``<x>`` is ``particles``, ``half_maps``, ``gmm``),
  ``source_block_<i>`` / ``source_cs`` (the input tables).

Files are written to a temporary name beside the target and renamed (atomic). A file written
by a newer format raises :class:`~gmmsession.data.errors.SessionVersionError`; one written by a
different gmmsession version of the same format opens with a warning.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import h5netcdf
import numpy as np
import pandas as pd
import xarray as xr

from gmmsession._version import __version__
from gmmsession.data.errors import GmmsessionInputError, SessionVersionError
from gmmsession.data.io._atomic import atomic_path, refuse_overwrite_of_inputs
from gmmsession.data.particles import ParticleSet, SourceTables
from gmmsession.session.history import History

__all__ = ["save_session", "open_session", "session_input_paths", "FORMAT_VERSION", "SessionVersionWarning"]

FORMAT_VERSION = 1


class SessionVersionWarning(UserWarning):
    """The session file was written by another gmmsession version (same file format)."""


def save_session(session, path: str | os.PathLike) -> Path:
    """Write ``session`` to ``path`` atomically (see module docstring for the layout)."""
    path = Path(path)
    pset: ParticleSet = session._set
    refuse_overwrite_of_inputs(path, session_input_paths(pset))
    with atomic_path(path, suffix=".gmms") as tmp:
        _clean_for_netcdf(pset.particles).to_netcdf(tmp, group="particles", engine="h5netcdf", mode="w")
        _clean_for_netcdf(pset.optics).to_netcdf(tmp, group="optics", engine="h5netcdf", mode="a")
        if session.half_maps is not None:
            session.half_maps.to_dataset(name="half_maps").to_netcdf(tmp, group="half_maps", engine="h5netcdf", mode="a")
        if session.gmm is not None:
            _clean_for_netcdf(session.gmm).to_netcdf(tmp, group="gmm", engine="h5netcdf", mode="a")
        if session.latent is not None:
            _clean_for_netcdf(session.latent.to_dataset(name="latent")).to_netcdf(tmp, group="latent", engine="h5netcdf", mode="a")
        _write_heterogeneity(tmp, session)
        if session.focus_mask is not None:
            _clean_for_netcdf(session.focus_mask.to_dataset(name="focus_mask")).to_netcdf(tmp, group="focus_mask", engine="h5netcdf", mode="a")
        if session.last_patches is not None:
            for group, ds in session.last_patches._to_groups().items():
                _clean_for_netcdf(ds).to_netcdf(tmp, group=group, engine="h5netcdf", mode="a")
        with h5netcdf.File(tmp, "a") as f:
            f.attrs["gmmsession_format"] = FORMAT_VERSION
            f.attrs["gmmsession_version"] = __version__
            f.attrs["history"] = session.history.to_json()
            f.attrs["source"] = _source_meta(pset.source)
        _write_source_tables(tmp, pset.source)
    return path


def open_session(path: str | os.PathLike, *, device=None):
    """Reopen a session saved with :meth:`Session.save`."""
    from gmmsession.session.session import Session

    path = Path(path)
    if not path.exists():
        raise GmmsessionInputError(f"session file not found: {path}")
    try:
        with h5netcdf.File(path, "r") as f:
            attrs = dict(f.attrs)
            groups = set(f.groups)
    except OSError as exc:
        raise GmmsessionInputError(f"{path}: not a gmmsession session file ({exc})") from exc
    if "gmmsession_format" not in attrs:
        raise GmmsessionInputError(f"{path}: not a gmmsession session file (no gmmsession_format stamp)")
    fmt = int(attrs["gmmsession_format"])
    if fmt > FORMAT_VERSION:
        raise SessionVersionError(
            f"{path} was saved by gmmsession {attrs.get('gmmsession_version', '?')} (format {fmt}); "
            f"this gmmsession {__version__} reads formats up to {FORMAT_VERSION}: upgrade gmmsession"
        )
    if attrs.get("gmmsession_version") != __version__:
        warnings.warn(
            f"{path} was saved by gmmsession {attrs.get('gmmsession_version')}, this is {__version__}",
            SessionVersionWarning,
            stacklevel=2,
        )
    particles = _load(path, "particles")
    optics = _load(path, "optics")
    half_maps = _load(path, "half_maps")["half_maps"] if "half_maps" in groups else None
    gmm = _load(path, "gmm") if "gmm" in groups else None
    latent = _load(path, "latent")["latent"] if "latent" in groups else None
    pset = ParticleSet(particles=particles, optics=optics, source=_read_source(path, attrs["source"]))
    session = Session(pset, device=device, history=History.from_json(attrs["history"]), half_maps=half_maps, gmm=gmm, latent=latent)
    _read_focus_and_patches(session, path, groups)
    _read_heterogeneity(session, path, groups)
    return session


def _write_heterogeneity(tmp: Path, session) -> None:
    """Group ``heterogeneity``: the last ``heterogeneity()``'s networks as ``torch.save`` bytes
    (variable ``torch``, uint8; :meth:`~gmmsession.session.heterogeneity.Heterogeneity.to_bytes`)."""
    het = getattr(session, "last_heterogeneity", None)
    if het is None or not het.models:
        return
    raw = np.frombuffer(het.to_bytes(), dtype=np.uint8)
    ds = xr.Dataset({"torch": ("byte", raw)}, attrs={"content": "torch.save of the per-half heterogeneity networks"})
    ds.to_netcdf(tmp, group="heterogeneity", engine="h5netcdf", mode="a")


def _read_heterogeneity(session, path: Path, groups: set[str]) -> None:
    """``session.last_heterogeneity`` rebuilt from group ``heterogeneity`` (files without it: None)."""
    from gmmsession.session.heterogeneity import Heterogeneity

    if "heterogeneity" in groups:
        session.last_heterogeneity = Heterogeneity.from_bytes(session, _load(path, "heterogeneity")["torch"].values.tobytes())


def _read_focus_and_patches(session, path: Path, groups: set[str]) -> None:
    """``session.focus_mask`` and ``session.last_patches`` from their groups (files without them: None)."""
    from gmmsession.session.patches import Patches

    if "focus_mask" in groups:
        session.focus_mask = _load(path, "focus_mask")["focus_mask"]
    if "patches" in groups:
        names = [g for g in groups if g == "patches" or g.startswith(("patches_", "patch_"))]
        session.last_patches = Patches._from_groups(session, {g: _load(path, g) for g in names})


def _load(path: Path, group: str) -> xr.Dataset:
    with xr.open_dataset(path, group=group, engine="h5netcdf") as ds:
        return ds.load()


def _json_default(value: object) -> object:
    """numpy scalars and arrays (what netCDF attributes come back as after open) as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be saved: {value!r}")


def _clean_for_netcdf(ds: xr.Dataset) -> xr.Dataset:
    """netCDF attributes must be numbers or strings: JSON-encode anything else.

    Attributes of a reopened session come back as numpy scalars and arrays (``np.int64``,
    ``np.ndarray``); they are converted, so a session can be saved, reopened, changed and saved again.
    """
    out = ds.copy()
    attrs = {}
    for k, v in ds.attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v, default=_json_default)
    out.attrs = attrs
    return out


def session_input_paths(pset: ParticleSet) -> list[str]:
    """Every file a session reads: the star/cs file and the particle stacks (never to be overwritten)."""
    paths = [str(pset.source.path)] if pset.source.path is not None else []
    if "stack_path" in pset.particles:
        paths.extend(str(p) for p in np.unique(pset.particles["stack_path"].values.astype(str)))
    return paths


# The source tables are stored losslessly: every star block as its own group (float64, int64 and
# string columns round-trip exactly), non-loop blocks and block order as JSON, a cryoSPARC record
# array as its .npy bytes.
def _source_meta(source: SourceTables) -> str:
    blocks = []
    for name, block in source.blocks.items():
        if isinstance(block, pd.DataFrame):
            blocks.append({"name": name, "kind": "table"})
        else:
            blocks.append({"name": name, "kind": "dict", "values": {str(k): _plain(v) for k, v in dict(block).items()}})
    return json.dumps(
        {
            "path": str(source.path),
            "format": source.format,
            "particles_block": source.particles_block,
            "optics_block": source.optics_block,
            "stacks_root": None if source.stacks_root is None else str(source.stacks_root),
            "blocks": blocks,
            "has_cs": source.cs is not None,
        }
    )


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _write_source_tables(tmp: Path, source: SourceTables) -> None:
    for i, (name, block) in enumerate(source.blocks.items()):
        if isinstance(block, pd.DataFrame):
            ds = xr.Dataset.from_dataframe(block.reset_index(drop=True).rename_axis("row"))
            ds.attrs["block_name"] = name
            ds.to_netcdf(tmp, group=f"source_block_{i}", engine="h5netcdf", mode="a")
    if source.cs is not None:
        buf = io.BytesIO()
        np.save(buf, source.cs, allow_pickle=False)
        raw = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        xr.Dataset({"npy": ("byte", raw)}).to_netcdf(tmp, group="source_cs", engine="h5netcdf", mode="a")


def _read_source(path: Path, meta_json: str) -> SourceTables:
    meta = json.loads(meta_json)
    blocks: dict = {}
    for i, b in enumerate(meta["blocks"]):
        if b["kind"] == "table":
            df = _load(path, f"source_block_{i}").to_dataframe().reset_index(drop=True)
            blocks[b["name"]] = df
        else:
            blocks[b["name"]] = b["values"]
    cs = None
    if meta.get("has_cs"):
        raw = _load(path, "source_cs")["npy"].values.tobytes()
        cs = np.load(io.BytesIO(raw), allow_pickle=False)
    return SourceTables(
        path=Path(meta["path"]),
        format=meta["format"],
        blocks=blocks,
        particles_block=meta["particles_block"],
        optics_block=meta["optics_block"],
        cs=cs,
        stacks_root=None if meta["stacks_root"] is None else Path(meta["stacks_root"]),
    )
