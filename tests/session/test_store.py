"""Saving and reopening sessions: lossless, atomic, version-stamped."""

import h5netcdf
import numpy as np
import pytest
import starfile
import xarray as xr

import gmmsession as gs

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


def test_reopened_session_saves_again(tmp_path):
    """Attributes come back from netCDF as numpy scalars/arrays; saving a reopened (and changed)
    session must still work and keep them (a reopened session once failed to save: np.int64)."""
    sim = gs.simulate(tmp_path / "sim", n_particles=40, box_size=24, pixel_size_angstrom=3.0, snr=1.0, hinge_max_deg=0.0, seed=2)
    s = gs.Session.from_star(sim.particles_star, device="cpu")
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=30, n_iter=3, progress=False)  # its dataset has integer attributes (box_size)
    s.particles.attrs["example_counts"] = [1, 2, 3]  # a list attribute: JSON-encoded on save
    first = gs.open_session(s.save(tmp_path / "a.gmms"))
    first.reconstruct(progress=False)  # a change after reopening
    second = gs.open_session(first.save(tmp_path / "b.gmms"))
    assert set(second.particles.attrs) == set(first.particles.attrs)
    for k, v in first.particles.attrs.items():
        w = second.particles.attrs[k]
        assert np.array_equal(np.asarray(v), np.asarray(w)) or str(v) == str(w), (k, v, w)
    # The file holds the history up to the save (the save records itself afterwards).
    assert [r.name for r in second.history] == [r.name for r in first.history][:-1]
    assert [r.name for r in second.history][-1] == "reconstruct"
    assert int(second.gmm.attrs["box_size"]) == 24
