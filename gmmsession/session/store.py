"""Saving and reopening sessions: one HDF5 file (netCDF-4 groups via h5netcdf), version-stamped.

Layout of a ``.gmms`` file:

* root attributes: ``gmmsession_format`` (int), ``gmmsession_version``, ``history`` (JSON),
  ``source`` (JSON: the input tables needed for a lossless export);
* groups ``particles``, ``optics`` (xarray Datasets) and ``half_maps`` (when present).

Files are written to a temporary name beside the target and renamed (atomic). A file written
by a newer format raises :class:`~gmmsession.data.errors.SessionVersionError`; one written by a
different gmmsession version of the same format opens with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import h5netcdf
import xarray as xr

from gmmsession import __version__
from gmmsession.data.errors import GmmsessionInputError, SessionVersionError
from gmmsession.data.io._atomic import atomic_path, refuse_overwrite_of_inputs
from gmmsession.data.particles import ParticleSet, source_from_json, source_to_json
from gmmsession.session.history import History

__all__ = ["save_session", "open_session", "FORMAT_VERSION", "SessionVersionWarning"]

FORMAT_VERSION = 1


class SessionVersionWarning(UserWarning):
    """The session file was written by another gmmsession version (same file format)."""


def save_session(session, path: str | os.PathLike) -> Path:
    """Write ``session`` to ``path`` atomically (see module docstring for the layout)."""
    path = Path(path)
    pset: ParticleSet = session._set
    refuse_overwrite_of_inputs(path, pset.input_paths())
    with atomic_path(path, suffix=".gmms") as tmp:
        _clean_for_netcdf(pset.particles).to_netcdf(tmp, group="particles", engine="h5netcdf", mode="w")
        _clean_for_netcdf(pset.optics).to_netcdf(tmp, group="optics", engine="h5netcdf", mode="a")
        if session.half_maps is not None:
            session.half_maps.to_dataset(name="half_maps").to_netcdf(tmp, group="half_maps", engine="h5netcdf", mode="a")
        with h5netcdf.File(tmp, "a") as f:
            f.attrs["gmmsession_format"] = FORMAT_VERSION
            f.attrs["gmmsession_version"] = __version__
            f.attrs["history"] = session.history.to_json()
            f.attrs["source"] = source_to_json(pset.source)
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
    pset = ParticleSet(particles=particles, optics=optics, source=source_from_json(attrs["source"]))
    return Session(pset, device=device, history=History.from_json(attrs["history"]), half_maps=half_maps)


def _load(path: Path, group: str) -> xr.Dataset:
    with xr.open_dataset(path, group=group, engine="h5netcdf") as ds:
        return ds.load()


def _clean_for_netcdf(ds: xr.Dataset) -> xr.Dataset:
    """netCDF attributes must be numbers or strings: JSON-encode anything else."""
    out = ds.copy()
    out.attrs = {k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in ds.attrs.items()}
    return out
