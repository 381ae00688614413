"""cryoSPARC .cs files: conventions (pose = rotation vector, A = R.T; shifts in pixels) and
agreement with the matching RELION star file."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from gmmsession.data.io.cryosparc import cryosparc_pose_to_euler_relion, read_cryosparc
from gmmsession.data.io.mrc import MrcHeaderWarning
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import ParticleImageReader
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix


def test_pose_worked_examples():
    """pose = (0, 0, t): a right-handed rotation by t about z; its transpose is RELION's
    Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]], i.e. rot + psi = t at tilt 0 (RELION puts it
    all in psi). pose = (0, t, 0): RELION's Ry(t), tilt = t."""
    t = 0.5
    e = cryosparc_pose_to_euler_relion(np.array([[0, 0, t], [0, t, 0]]))
    np.testing.assert_allclose(e[0], [0, 0, math.degrees(t)], atol=1e-9)
    np.testing.assert_allclose(e[1], [0, math.degrees(t), 0], atol=1e-9)
    # A point on the x axis, rotated by pose (0, 0, t) in the cryoSPARC sense, lands at
    # (cos t, sin t); RELION's A moves it to (cos t, -sin t) (A = R.T).
    a = euler_relion_to_matrix(torch.tensor(e[0], dtype=torch.float64))
    np.testing.assert_allclose((a @ torch.tensor([1.0, 0, 0], dtype=torch.float64)).numpy(), [math.cos(t), -math.sin(t), 0], atol=1e-12)


def test_real_3d_refinement(shared_data):
    path = shared_data / "cryosparc" / "cryosparc_P12_J24_001_particles.cs"
    cs = np.load(path)
    ps = read_cryosparc(path)
    p = ps.particles
    assert p.sizes["particle"] == 2019
    assert float(ps.optics["pixel_size_angstrom"][0]) == 2.95 and int(ps.optics["box_size"][0]) == 180
    assert p.attrs["half_source"] == "file" and p.attrs["pose_source"] == "3d"
    np.testing.assert_array_equal(p["half"].values, cs["alignments3D/split"].astype(int) + 1)
    assert set(np.unique(p["half"].values)) == {1, 2}
    # Norms above pi occur and are handled (same rotation as the reduced vector).
    pose = cs["alignments3D/pose"].astype(np.float64)
    assert (np.linalg.norm(pose, axis=1) > math.pi).any()
    a = euler_relion_to_matrix(torch.tensor(np.stack([p["rot_deg"], p["tilt_deg"], p["psi_deg"]], -1)))
    r_t = rotvec_to_matrix(torch.tensor(pose)).transpose(-1, -2)
    assert geodesic_angle_deg(a, r_t).max().item() < 1e-5
    # Shifts: pixels, same sign as rlnOriginX/Y (pyem csparc2star), converted to Å.
    shift = cs["alignments3D/shift"].astype(np.float64)
    np.testing.assert_allclose(p["origin_x_angstrom"].values, shift[:, 0] * 2.95, rtol=1e-12)
    np.testing.assert_allclose(p["origin_y_angstrom"].values, shift[:, 1] * 2.95, rtol=1e-12)
    np.testing.assert_allclose(p["defocus_angle_deg"].values, np.rad2deg(cs["ctf/df_angle_rad"].astype(np.float64)))
    np.testing.assert_array_equal(p["stack_index"].values, cs["blob/idx"])
    assert len(np.unique(p["particle_key"].values)) == 2019


def test_2d_only_file_has_nan_poses(shared_data):
    ps = read_cryosparc(shared_data / "cryosparc" / "cryosparc_J2_particles_exported.cs")
    p = ps.particles
    assert p.sizes["particle"] == 22
    assert np.isnan(p["rot_deg"].values).all() and np.isnan(p["psi_deg"].values).all()
    assert p.attrs["pose_source"] == "none"
    # The file holds float32 1.3450001 (not 1.345): kept as the shortest float32 decimal.
    assert float(ps.optics["pixel_size_angstrom"][0]) == pytest.approx(1.345, rel=1e-6) and int(ps.optics["box_size"][0]) == 300
    # cryoSPARC's ">" mark for imported files is not part of the path.
    assert not any(">" in s for s in p["stack_path"].values)
    assert p.attrs["half_source"].startswith("random split")


def test_empiar_cs_matches_star(shared_data):
    """empiar_10076_7.cs describes the same 7 particles as empiar_10076_7.star: blob/idx is
    0-based (idx 0 = 1@), and the CTF agrees to the float32 precision of the .cs file. The
    .cs file has blob/sign -1, so its images are the star file's negated (see
    test_cryosparc_sign)."""
    star = read_relion_star(shared_data / "relion" / "empiar_10076_7.star")
    cs = read_cryosparc(shared_data / "cryosparc" / "empiar_10076_7.cs", stacks_root=shared_data / "relion")
    a, b = star.particles, cs.particles
    np.testing.assert_array_equal(a["stack_index"].values, b["stack_index"].values)
    np.testing.assert_array_equal(a["stack_path"].values, b["stack_path"].values)
    # float32 in the .cs: relative precision 6e-8, and the cs values were rounded (1e-6 rel).
    for v in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg"):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=2e-6, err_msg=v)
    for v in ("pixel_size_angstrom", "voltage_kv", "cs_mm", "amplitude_contrast"):
        np.testing.assert_allclose(star.optics[v].values, cs.optics[v].values, rtol=2e-6, err_msg=v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MrcHeaderWarning)  # header pixel size 0 (tested in test_stack)
        with ParticleImageReader(a, star.optics) as r1, ParticleImageReader(b, cs.optics) as r2:
            img_star, img_cs = r1.read(), r2.read()
    assert img_star.shape == (7, 320, 320)
    np.testing.assert_array_equal(img_star, -img_cs)
    assert not np.array_equal(img_star[0], img_star[1])


def test_cs_field_missing(tmp_path, shared_data):
    cs = np.load(shared_data / "cryosparc" / "empiar_10076_7.cs")
    names = [n for n in cs.dtype.names if n != "ctf/df1_A"]
    out = tmp_path / "bad.cs"
    with open(out, "wb") as f:
        np.save(f, cs[names])
    from gmmsession.data.errors import GmmsessionInputError

    with pytest.raises(GmmsessionInputError, match="ctf/df1_A"):
        read_cryosparc(out)
