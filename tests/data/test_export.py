"""export_star: lossless round trips, pose-only updates matched by identity, cryoSPARC -> RELION
3.1, and RELION itself reading the output."""

from __future__ import annotations

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.cryosparc import read_cryosparc
from gmmsession.data.io.export import InvertedContrastWarning, export_star
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.schema import PARTICLE_VARIABLES
from tests.conftest import requires_relion

from .synth import optics_table, particles_table, random_images, write_stack

from .test_relion_io import REAL_STARS

POSE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY"]


@pytest.mark.parametrize("name", sorted(REAL_STARS))
def test_round_trip_is_lossless(shared_data, tmp_path, name):
    src = shared_data / "relion" / name
    ps = read_relion_star(src)
    out = export_star(tmp_path / name, ps)
    a, b = starfile.read(src, always_dict=True), starfile.read(out, always_dict=True)
    assert list(a) == list(b)  # block names and order
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k], check_exact=True)  # every column, every value
    again = read_relion_star(out)
    for v in PARTICLE_VARIABLES:
        if v != "stack_path":  # resolved against the new folder
            np.testing.assert_array_equal(ps.particles[v].values, again.particles[v].values, err_msg=v)


def test_reordered_subset_updates_only_poses(shared_data, tmp_path):
    src = shared_data / "relion" / "relion31.6opticsgroups.star"
    ps = read_relion_star(src)
    pick = [50, 3, 10]
    sub = ps.particles.isel(particle=pick).copy(deep=True)
    new = {"rot_deg": [10.5, -20.25, 30.125], "tilt_deg": [1.0, 2.0, 3.0], "psi_deg": [-1.5, 0.0, 179.0],
           "origin_x_angstrom": [1.25, -2.5, 3.75], "origin_y_angstrom": [0.1, 0.2, 0.3]}
    for k, v in new.items():
        sub[k].values[:] = v
    out = export_star(tmp_path / "sub.star", (sub, ps.optics, ps.source))
    raw = starfile.read(src)
    got = starfile.read(out)
    pd.testing.assert_frame_equal(got["optics"], raw["optics"], check_exact=True)
    rows = raw["particles"].iloc[sorted(pick)].reset_index(drop=True)  # file order, not dataset order
    p = got["particles"]
    assert p["rlnImageName"].tolist() == rows["rlnImageName"].tolist()
    others = [c for c in rows.columns if c not in POSE_COLUMNS]
    pd.testing.assert_frame_equal(p[others], rows[others], check_exact=True)
    by_name = p.set_index("rlnImageName")
    for j, i in enumerate(pick):
        name = ps.particles["image_name"].values[i]
        assert by_name.loc[name, "rlnAngleRot"] == new["rot_deg"][j]
        assert by_name.loc[name, "rlnAngleTilt"] == new["tilt_deg"][j]
        assert by_name.loc[name, "rlnAnglePsi"] == new["psi_deg"][j]
        assert by_name.loc[name, "rlnOriginXAngst"] == new["origin_x_angstrom"][j]
        assert by_name.loc[name, "rlnOriginYAngst"] == new["origin_y_angstrom"][j]


def test_keep_unmatched(shared_data, tmp_path):
    src = shared_data / "relion" / "relion31.star"
    ps = read_relion_star(src)
    sub = ps.particles.isel(particle=[3]).copy(deep=True)
    sub["rot_deg"].values[:] = 42.0
    out = export_star(tmp_path / "o.star", (sub, ps.optics, ps.source), keep_unmatched=True)
    raw, got = starfile.read(src)["particles"], starfile.read(out)["particles"]
    expected = raw.copy()
    expected.loc[3, "rlnAngleRot"] = 42.0
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_relion30_origins_written_in_pixels(shared_data, tmp_path):
    src = shared_data / "relion" / "FinalRefinement-OriginalParticles-PfCRT.star"
    ps = read_relion_star(src)
    p = ps.particles.copy(deep=True)
    p["origin_x_angstrom"].values[0] = 2.07  # 2 pixels of 1.035 Å
    out = export_star(tmp_path / "o.star", (p, ps.optics, ps.source))
    got = starfile.read(out)
    assert "rlnOriginXAngst" not in got.columns and "data_optics" not in out.read_text()
    assert got["rlnOriginX"][0] == pytest.approx(2.0, rel=1e-15)
    raw = starfile.read(src)
    pd.testing.assert_series_equal(got["rlnOriginX"][1:], raw["rlnOriginX"][1:], check_exact=True)


def test_poses_added_to_a_file_without_them(shared_data, tmp_path):
    ps = read_relion_star(shared_data / "relion" / "empiar_10076_7.star")
    p = ps.particles.copy(deep=True)
    for v in ("rot_deg", "tilt_deg", "psi_deg"):
        p[v].values[:] = np.arange(7) * 10.0
    p["origin_x_angstrom"].values[:] = 1.31
    got = starfile.read(export_star(tmp_path / "o.star", (p, ps.optics, ps.source)))
    np.testing.assert_array_equal(got["rlnAngleTilt"].to_numpy(), np.arange(7) * 10.0)
    np.testing.assert_allclose(got["rlnOriginX"].to_numpy(), 1.31 / (5 / 38168 * 1e4), rtol=1e-12)
    assert "rlnOriginY" not in got.columns  # still all zero: nothing to add


def test_particle_not_in_source(shared_data, tmp_path):
    a = read_relion_star(shared_data / "relion" / "relion31.star")
    b = read_relion_star(shared_data / "relion" / "relion31.6opticsgroups.star")
    with pytest.raises(GmmsessionInputError, match="not in the source file"):
        export_star(tmp_path / "o.star", (b.particles, b.optics, a.source))
    assert not (tmp_path / "o.star").exists()


def test_cryosparc_exports_fresh_relion31(shared_data, tmp_path):
    ps = read_cryosparc(shared_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs", stacks_root=tmp_path / "project")
    # Every particle has blob/sign -1 (dark stacks): RELION would read them inverted, so export warns.
    with pytest.warns(InvertedContrastWarning, match="2019 of 2019 particles"):
        out = export_star(tmp_path / "cs.star", ps)
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    # The stacks are .mrc: RELION needs N@x.mrcs, so links to them are named.
    assert blocks["particles"]["rlnImageName"][0] == f"000001@{tmp_path / 'cs_stacks'}/20150917_05196_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrcs"
    back = read_relion_star(out)
    for v in PARTICLE_VARIABLES:
        if v not in ("stack_path",):
            np.testing.assert_array_equal(back.particles[v].values, ps.particles[v].values, err_msg=v)
    for v in ps.optics.data_vars:
        np.testing.assert_array_equal(back.optics[v].values, ps.optics[v].values, err_msg=v)


def _tiny_relion_project(tmp_path, n=12, box=24):
    images = random_images(n, box, seed=3)
    write_stack(tmp_path / "parts.mrcs", images, pixel_size=2.0)
    names = [f"{i + 1:06d}@parts.mrcs" for i in range(n)]
    star = tmp_path / "in.star"
    starfile.write({"optics": optics_table(pixel_size=2.0, box=box), "particles": particles_table(names)}, star)
    return star


def _tiny_cs(tmp_path, n=12, box=24):
    images = random_images(n, box, seed=4)
    with mrcfile.new(tmp_path / "parts.mrc") as mrc:  # cryoSPARC writes .mrc stacks
        mrc.set_data(images)
        mrc.voxel_size = 2.0
    rng = np.random.default_rng(0)
    dtype = [("uid", "<u8"), ("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
             ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
             ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("alignments3D/split", "<u4"),
             ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4")]
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = rng.integers(0, 2**62, n)
    cs["blob/path"] = b">parts.mrc"
    cs["blob/idx"] = np.arange(n)
    cs["blob/shape"] = box
    cs["blob/psize_A"] = cs["alignments3D/psize_A"] = 2.0
    cs["ctf/accel_kv"], cs["ctf/cs_mm"], cs["ctf/amp_contrast"] = 300, 2.7, 0.1
    cs["ctf/df1_A"], cs["ctf/df2_A"] = rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n)
    cs["alignments3D/split"] = np.arange(n) % 2
    cs["alignments3D/shift"] = rng.uniform(-2, 2, (n, 2))
    cs["alignments3D/pose"] = rng.uniform(-4, 4, (n, 3))
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, cs)
    return tmp_path / "p.cs"


def _relion(args, cwd):
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


@requires_relion
@pytest.mark.relion
@pytest.mark.parametrize("name", ["relion31.star", "relion31.6opticsgroups.star", "FinalRefinement-OriginalParticles-PfCRT.star", "relion5.star"])
def test_relion_star_handler_reads_export(shared_data, tmp_path, name):
    ps = read_relion_star(shared_data / "relion" / name)
    export_star(tmp_path / "o.star", ps)
    out = _relion(["relion_star_handler", "--i", "o.star", "--o", "h.star", "--select", "rlnDefocusU", "--minval", "0"], tmp_path)
    assert f"with {REAL_STARS[name]} item(s)" in out


@requires_relion
@pytest.mark.relion
@pytest.mark.parametrize("source", ["relion", "cryosparc"])
def test_relion_reconstruct_reads_export(tmp_path, source):
    if source == "relion":
        ps = read_relion_star(_tiny_relion_project(tmp_path))
    else:
        ps = read_cryosparc(_tiny_cs(tmp_path), stacks_root=tmp_path)
    p = ps.particles.copy(deep=True)
    p["rot_deg"].values[:] += 1.0
    export_star(tmp_path / "out.star", (p, ps.optics, ps.source))
    _relion(["relion_reconstruct", "--i", "out.star", "--o", "half1.mrc", "--subset", "1", "--ctf"], tmp_path)
    with mrcfile.open(tmp_path / "half1.mrc") as mrc:
        vol = np.asarray(mrc.data)
        assert vol.shape == (24, 24, 24) and np.isfinite(vol).all() and np.abs(vol).max() > 0
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)


def test_written_file_has_normal_permissions(shared_data, tmp_path):
    """The atomic write goes through mkstemp (0600); the result must be readable like any file."""
    import os

    out = export_star(tmp_path / "o.star", read_relion_star(shared_data / "relion" / "relion31.star"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
