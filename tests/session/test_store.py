"""Saving and reopening sessions: lossless, atomic, version-stamped."""

import h5netcdf
import numpy as np
import pytest
import starfile
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError, SessionVersionError
from gmmsession.session.session import Session
from gmmsession.session.store import open_session


def test_save_open_round_trip_relion31(shared_data, tmp_path):
    s = Session.from_star(shared_data / "relion" / "relion31.star")
    path = s.save(tmp_path / "run.gmms")
    r = open_session(path)
    xr.testing.assert_identical(r.particles, s.particles)
    xr.testing.assert_identical(r.optics, s.optics)
    assert [h.name for h in r.history] == ["from_star"]  # the save record is added after writing
    assert [h.name for h in s.history] == ["from_star", "save"]
    # The source tables survive: exports from the original and the reopened session are identical.
    a = s.export_star(tmp_path / "a.star")
    b = r.export_star(tmp_path / "b.star")
    ta, tb = starfile.read(a, always_dict=True), starfile.read(b, always_dict=True)
    assert list(ta) == list(tb)
    for k in ta:
        assert ta[k].equals(tb[k]), k


def test_save_open_round_trip_relion5_unknown_columns(shared_data, tmp_path):
    s = Session.from_star(shared_data / "relion" / "relion5.star")
    r = open_session(s.save(tmp_path / "run.gmms"))
    for name, block in s._set.source.blocks.items():
        other = r._set.source.blocks[name]
        assert list(block.columns) == list(other.columns)
        assert block.equals(other), name


def test_save_open_cryosparc_keeps_record_array(shared_data, tmp_path):
    s = Session.from_cryosparc(shared_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")
    r = open_session(s.save(tmp_path / "run.gmms"))
    assert r._set.source.cs.dtype == s._set.source.cs.dtype
    assert np.array_equal(r._set.source.cs, s._set.source.cs)
    np.testing.assert_array_equal(r.particles["rot_deg"].values, s.particles["rot_deg"].values)


def test_newer_format_is_refused_with_a_clear_message(shared_data, tmp_path):
    s = Session.from_star(shared_data / "relion" / "relion31.star")
    path = s.save(tmp_path / "run.gmms")
    with h5netcdf.File(path, "a") as f:
        f.attrs["gmmsession_format"] = 99
        f.attrs["gmmsession_version"] = "9.0.0"
    with pytest.raises(SessionVersionError, match="9.0.0.*upgrade"):
        open_session(path)


def test_save_is_atomic_and_never_overwrites_inputs(shared_data, tmp_path):
    s = Session.from_star(shared_data / "relion" / "relion31.star")
    with pytest.raises(GmmsessionInputError, match="input file"):
        s.save(shared_data / "relion" / "relion31.star")
    target = tmp_path / "run.gmms"
    target.write_bytes(b"old")
    # A failure while writing leaves the old file and no temporary files.
    s._set.particles.attrs["bad"] = object()
    with pytest.raises(Exception):
        s.save(target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.gmms"]


def test_open_rejects_files_that_are_not_sessions(tmp_path):
    p = tmp_path / "x.gmms"
    p.write_text("hello")
    with pytest.raises(GmmsessionInputError, match="not a gmmsession session file"):
        open_session(p)
    with pytest.raises(GmmsessionInputError, match="not found"):
        open_session(tmp_path / "missing.gmms")
