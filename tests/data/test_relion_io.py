"""RELION star files: every real file loads, with the values the files hold."""

from __future__ import annotations

import numpy as np
import pytest
import starfile
import xarray as xr

from gmmsession.data.io.mrc import MrcHeaderWarning
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import ParticleImageReader
from gmmsession.data.schema import PARTICLE_VARIABLES

from .synth import relion31_set

REAL_STARS = {
    "FinalRefinement-OriginalParticles-PfCRT.star": 5,
    "ap_s_c2d.star": 8915,
    "cryojax_test_starfile.star": 3,
    "empiar_10076_7.star": 7,
    "isecc_relion31_zernike_1particle.star": 1,
    "ref_it002_data.star": 9,
    "relion31.6opticsgroups.star": 139,
    "relion31.star": 5,
    "relion31.v2.star": 5,
    "relion5.star": 17,
}


@pytest.mark.parametrize("name", sorted(REAL_STARS))
def test_every_real_star_file_loads(shared_data, name):
    ps = read_relion_star(shared_data / "relion" / name)
    p = ps.particles
    assert p.sizes["particle"] == REAL_STARS[name]
    for v in PARTICLE_VARIABLES:
        assert v in p and "units" in p[v].attrs, v
    for v in ps.optics.data_vars:
        assert "units" in ps.optics[v].attrs, v
    assert set(np.unique(p["half"].values)) <= {1, 2}
    assert (p["stack_index"].values >= 0).all()
    assert np.isin(p["optics_group"].values, ps.optics["optics_group"].values).all()
    assert p.attrs["source_format"] in ("relion-3.0", "relion-3.1")
    assert len(np.unique(p["particle_key"].values)) == p.sizes["particle"]
    # Raw tables kept for export: the particle block is the file's table, unchanged.
    raw = starfile.read(shared_data / "relion" / name, always_dict=True)
    assert list(ps.source.blocks) == list(raw)


def test_relion31_values(shared_data):
    ps = read_relion_star(shared_data / "relion" / "relion31.star")
    o = ps.optics.sel(optics_group=1)
    assert float(o["pixel_size_angstrom"]) == 2.806
    assert int(o["box_size"]) == 256 and float(o["voltage_kv"]) == 300.0 and float(o["cs_mm"]) == 0.01
    raw = starfile.read(shared_data / "relion" / "relion31.star")["particles"]
    np.testing.assert_array_equal(ps.particles["origin_x_angstrom"].values, raw["rlnOriginXAngst"].to_numpy())
    np.testing.assert_array_equal(ps.particles["rot_deg"].values, raw["rlnAngleRot"].to_numpy())
    np.testing.assert_array_equal(ps.particles["stack_index"].values, np.arange(5))
    assert all(s == str(shared_data / "relion" / "relion31.mrcs") for s in ps.particles["stack_path"].values)
    # All five particles are in half 1 in this file: it still loads, and says so.
    assert ps.particles.attrs["half_source"] == "file"
    np.testing.assert_array_equal(ps.particles["half"].values, 1)
    assert ps.particles.attrs["source_format"] == "relion-3.1" and ps.particles.attrs["star_version"] == 30001


def test_relion31_duplicates_are_distinct_images(shared_data):
    """README: "particles 1 and 2 are duplicates". Their NAMES differ (and the pixels differ
    too): same micrograph coordinates, so the same particle extracted twice. Both load."""
    ps = read_relion_star(shared_data / "relion" / "relion31.star")
    names = ps.particles["image_name"].values
    assert names[0] != names[1]
    with pytest.warns(MrcHeaderWarning), ParticleImageReader(ps.particles, ps.optics) as reader:
        img = reader.read([0, 1])
    assert not np.array_equal(img[0], img[1])


def test_block_order_does_not_matter(shared_data):
    a = read_relion_star(shared_data / "relion" / "relion31.star")
    b = read_relion_star(shared_data / "relion" / "relion31.v2.star")
    for ds in (a.particles, b.particles):
        ds.attrs.pop("source_path")
    xr.testing.assert_identical(a.particles, b.particles)
    xr.testing.assert_identical(a.optics, b.optics)


def test_six_optics_groups(shared_data):
    ps = read_relion_star(shared_data / "relion" / "relion31.6opticsgroups.star")
    o = ps.optics
    assert o.sizes["optics_group"] == 6
    px = dict(zip(o["optics_group"].values.tolist(), o["pixel_size_angstrom"].values.tolist()))
    assert px == {1: 1.25, 2: 1.24, 3: 1.25, 4: 1.25, 5: 1.24, 6: 1.25}
    cs = dict(zip(o["optics_group"].values.tolist(), o["cs_mm"].values.tolist()))
    assert cs[4] == 2.6 and all(cs[g] == 2.7 for g in (1, 2, 3, 5, 6))
    assert (o["voltage_kv"].values == 200).all() and (o["box_size"].values == 196).all()
    assert o["optics_group_name"].sel(optics_group=1).item() == "opticsGroup5"
    assert np.abs(ps.particles["origin_x_angstrom"].values).max() > 30  # origins up to ±35 Å, kept in Å


def test_relion30_pixels_to_angstrom(shared_data):
    path = shared_data / "relion" / "FinalRefinement-OriginalParticles-PfCRT.star"
    ps = read_relion_star(path)
    raw = starfile.read(path)
    assert ps.particles.attrs["source_format"] == "relion-3.0"
    assert ps.optics["pixel_size_angstrom"].values.tolist() == [pytest.approx(1.035, abs=1e-12)]  # 1.035 µm / 10000 * 1e4
    np.testing.assert_allclose(ps.particles["origin_x_angstrom"].values, raw["rlnOriginX"].to_numpy() * 1.035, rtol=1e-12)
    np.testing.assert_allclose(ps.particles["origin_y_angstrom"].values, raw["rlnOriginY"].to_numpy() * 1.035, rtol=1e-12)
    np.testing.assert_array_equal(ps.particles["half"].values, raw["rlnRandomSubset"].to_numpy())
    # No rlnAmplitudeContrast: RELION's CTF default (0).
    assert ps.optics["amplitude_contrast"].values.tolist() == [0.0]


def test_empiar_star_pixel_from_detector_and_box_from_stack(shared_data):
    ps = read_relion_star(shared_data / "relion" / "empiar_10076_7.star")
    assert float(ps.optics["pixel_size_angstrom"][0]) == pytest.approx(5 / 38168 * 1e4, rel=1e-12)
    assert int(ps.optics["box_size"][0]) == 320
    assert ps.particles.attrs["pose_source"] == "none"
    assert np.isnan(ps.particles["rot_deg"].values).all()
    np.testing.assert_array_equal(ps.particles["stack_index"].values, np.arange(7))


def test_old_2d_file_keeps_zero_rot_tilt(shared_data):
    ps = read_relion_star(shared_data / "relion" / "ap_s_c2d.star")
    assert ps.particles.attrs["pose_source"] == "2d"
    assert (ps.particles["rot_deg"].values == 0).all() and (ps.particles["tilt_deg"].values == 0).all()
    assert np.isfinite(ps.particles["psi_deg"].values).all()
    # No rlnRandomSubset: deterministic balanced random split.
    assert ps.particles.attrs["half_source"] == "random split, seed 0"
    counts = np.bincount(ps.particles["half"].values)[1:]
    assert abs(int(counts[0]) - int(counts[1])) <= 1


def test_relion5_repeated_names_load_with_distinct_keys(shared_data):
    """relion5.star re-uses 1@toy_images_a.mrcs for particles on two different micrographs:
    the names repeat but the particles are distinct, so it loads (identity = name + micrograph
    + coordinates)."""
    ps = read_relion_star(shared_data / "relion" / "relion5.star")
    names = ps.particles["image_name"].values
    assert len(set(names)) < len(names)
    assert len(set(ps.particles["particle_key"].values)) == len(names)
    assert ps.particles.attrs["star_version"] == 50001


def test_stacks_root_resolution(tmp_path):
    root = tmp_path / "project"
    (root / "Extract").mkdir(parents=True)
    star_dir = tmp_path / "elsewhere"
    star_dir.mkdir()
    from .synth import optics_table, particles_table, random_images, write_stack

    write_stack(root / "Extract" / "s.mrcs", random_images(2, 16))
    star = star_dir / "p.star"
    starfile.write({"optics": optics_table(), "particles": particles_table(["1@Extract/s.mrcs", "2@Extract/s.mrcs"])}, star)
    ps = read_relion_star(star, stacks_root=root)
    assert set(ps.particles["stack_path"].values) == {str(root / "Extract" / "s.mrcs")}
    # Without stacks_root the best guess is relative to the star file (metadata still loads).
    ps2 = read_relion_star(star)
    assert set(ps2.particles["stack_path"].values) == {str(star_dir / "Extract" / "s.mrcs")}


def test_read_images_through_star(tmp_path):
    star, images = relion31_set(tmp_path, n=7)
    ps = read_relion_star(star)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        np.testing.assert_array_equal(reader.read([6, 0, 3]), images[[6, 0, 3]])


def test_loaded_set_feeds_the_bridge(shared_data, device):
    """What the readers produce is what data/bridge.py expects, on every device."""
    import torch

    from gmmsession.data.bridge import particle_tensors
    from gmmsession.kernels.conventions import euler_relion_to_matrix

    ps = read_relion_star(shared_data / "relion" / "relion31.6opticsgroups.star")
    t = particle_tensors(ps.particles, ps.optics, np.array([5, 0, 100]), device=device, dtype=torch.float64)
    assert t.rotation.device.type == device.type
    euler = np.stack([ps.particles[v].values[[5, 0, 100]] for v in ("rot_deg", "tilt_deg", "psi_deg")], -1)
    torch.testing.assert_close(t.rotation.cpu(), euler_relion_to_matrix(torch.tensor(euler)))
    groups = ps.particles["optics_group"].values[[5, 0, 100]]
    np.testing.assert_array_equal(t.pixel_size_angstrom.cpu().numpy(), ps.optics["pixel_size_angstrom"].sel(optics_group=groups).values)
