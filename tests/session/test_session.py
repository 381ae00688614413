"""The Session as a user drives it, on a small simulated dataset."""

import numpy as np
import pytest
import starfile
import xarray as xr

import gmmsession as gs
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.mrc import write_map
from gmmsession.data.io.stack import NonFiniteImageError


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    # Small and clean enough that the FSC crosses 0.143 well inside Nyquist yet runs in seconds.
    return gs.simulate(tmp_path_factory.mktemp("sim") / "data", n_particles=600, box_size=32, pixel_size_angstrom=3.0, snr=0.05, seed=3)


@pytest.fixture(scope="module")
def reconstructed(sim):
    s = gs.Session.from_star(sim.particles_star)
    s.reconstruct(progress=False, chunk_size=250)
    return s


def test_from_star_summary_and_particles(sim):
    s = gs.Session.from_star(sim.particles_star)
    assert s.particles.sizes["particle"] == 600
    assert list(s.particles["particle"].values[:3]) == [0, 1, 2]
    assert s.particles["origin_x_angstrom"].attrs["units"] == "Å"
    text = repr(s)
    assert "particles: 600" in text and "pixel size (Å): 3.0" in text and "box (px): 32" in text
    html = s._repr_html_()
    assert "<table" in html and "gmmsession.Session" in html
    assert s.history[0].name == "from_star" and s.history[0].metrics["half_source"] == "file"
    # The stored poses are the simulator's truth.
    np.testing.assert_allclose(np.stack([s.particles[v].values for v in ("rot_deg", "tilt_deg", "psi_deg")], -1), sim.euler_deg, atol=1e-4)


def test_reconstruct_gives_labelled_half_maps_and_history(reconstructed, sim):
    s = reconstructed
    hm = s.half_maps
    assert hm.dims == ("half", "z", "y", "x") and list(hm["half"].values) == [1, 2]
    assert hm["x"].values[16] == 0.0 and hm["x"].values[1] - hm["x"].values[0] == pytest.approx(3.0)
    rec = s.history.last("reconstruct")
    assert rec.metrics["n_particles"] == 600 and rec.duration_s > 0 and "torch" in rec.versions
    assert len(rec.curves["fsc"]) == 17
    # Each half, low-passed to 12 Å, matches the truth map; the halves are independent (not identical).
    import torch

    from gmmsession.data.io.mrc import read_map
    from gmmsession.kernels.filters import lowpass_3d

    truth, _ = read_map(sim.truth_map)
    t = lowpass_3d(torch.as_tensor(truth), 3.0, 12.0).numpy().ravel()
    for h in (1, 2):
        m = lowpass_3d(torch.as_tensor(hm.sel(half=h).values), 3.0, 12.0).numpy().ravel()
        assert np.corrcoef(m, t)[0, 1] > 0.9  # low-pass signal dominates the noise of 300 particles
    assert not np.allclose(hm.sel(half=1).values, hm.sel(half=2).values)


def test_fsc_unmasked_and_masked(reconstructed, sim, tmp_path):
    s = reconstructed
    fsc = s.fsc()
    assert fsc.dims == ("shell",) and fsc.sizes["shell"] == 17
    assert np.isinf(fsc["resolution_angstrom"].values[0]) and fsc["resolution_angstrom"].values[16] == pytest.approx(6.0)
    res = fsc.attrs["resolution_angstrom"]
    assert 6.0 < res < 20.0  # SNR 0.05 with 300 particles per half: a crossing inside Nyquist
    masked = s.fsc(mask=sim.mask)
    assert masked.attrs["masked"] in (0, 1) and "fsc_randomized" in masked.coords
    # A mask can be an array on the map grid; the same mask gives the same curve.
    from gmmsession.data.io.mrc import read_map

    arr, _ = read_map(sim.mask)
    xr.testing.assert_allclose(s.fsc(mask=arr), masked)
    with pytest.raises(GmmsessionInputError, match="shape"):
        s.fsc(mask=np.ones((8, 8, 8)))
    bad = tmp_path / "bad.mrc"
    write_map(bad, 2 * arr, 3.0)
    with pytest.raises(GmmsessionInputError, match=r"\[0, 1\]"):
        s.fsc(mask=bad)


def test_export_star_keeps_columns_and_refuses_input(reconstructed, sim, tmp_path):
    s = reconstructed
    out = s.export_star(tmp_path / "out.star")
    a = starfile.read(sim.particles_star, always_dict=True)
    b = starfile.read(out, always_dict=True)
    assert list(a) == list(b)
    for k in a:
        assert list(a[k].columns) == list(b[k].columns)
    with pytest.raises(GmmsessionInputError, match="input file"):
        s.export_star(sim.particles_star)
    with pytest.raises(GmmsessionInputError, match="input file"):
        s.export_star(sim.stack)


def test_save_and_open_with_half_maps(reconstructed, tmp_path):
    s = reconstructed
    r = gs.open_session(s.save(tmp_path / "run.gmms"))
    xr.testing.assert_identical(r.half_maps, s.half_maps)
    xr.testing.assert_allclose(r.fsc(), s.fsc())
    assert "reconstruct" in [h.name for h in r.history]


def test_no_half_set_column_splits_with_seed_and_records_it(sim, tmp_path):
    blocks = starfile.read(sim.particles_star, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnRandomSubset"])
    star = tmp_path / "nohalf.star"
    starfile.write(blocks, star)
    (tmp_path / sim.stack.name).symlink_to(sim.stack)
    a = gs.Session.from_star(star, seed=5)
    b = gs.Session.from_star(star, seed=5)
    c = gs.Session.from_star(star, seed=6)
    assert np.array_equal(a.particles["half"].values, b.particles["half"].values)
    assert not np.array_equal(a.particles["half"].values, c.particles["half"].values)
    assert abs(int((a.particles["half"] == 1).sum()) - 300) <= 1
    assert a.history[0].metrics["half_source"] == "random split, seed 5"


def test_empty_half_set_is_refused_before_any_work(sim, tmp_path):
    blocks = starfile.read(sim.particles_star, always_dict=True)
    blocks["particles"]["rlnRandomSubset"] = 1
    star = tmp_path / "onehalf.star"
    starfile.write(blocks, star)
    (tmp_path / sim.stack.name).symlink_to(sim.stack)
    s = gs.Session.from_star(star)
    with pytest.raises(GmmsessionInputError, match="half set 2 is empty"):
        s.reconstruct(progress=False)
    assert s.half_maps is None


def test_nonfinite_images_are_reported_or_dropped(sim, tmp_path):
    import mrcfile

    stack = tmp_path / sim.stack.name
    with mrcfile.open(sim.stack, permissive=True) as m:
        data = m.data.copy()
    data[7, 3, 3] = np.nan
    data[11, 0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile warns when it writes NaN header stats
        with mrcfile.new(stack) as m:
            m.set_data(data)
            m.voxel_size = 3.0
    star = tmp_path / "p.star"
    star.write_text(sim.particles_star.read_text())
    s = gs.Session.from_star(star)
    with pytest.raises(NonFiniteImageError, match="000008@"):
        s.reconstruct(progress=False)
    step = s.check_images(drop_nonfinite=True)
    assert step.metrics["n_nonfinite"] == 2 and s.particles.sizes["particle"] == 598
    assert step.curves["dropped_image_names"] == [f"000008@{stack.name}", f"000012@{stack.name}"]
    s.reconstruct(progress=False)
    assert np.isfinite(s.half_maps.values).all()


def test_cryosparc_session_without_poses_fails_clearly(shared_data):
    s = gs.Session.from_cryosparc(shared_data / "cryosparc" / "empiar_10076_7.cs", stacks_root=shared_data / "relion")
    assert s.particles.sizes["particle"] == 7
    with pytest.raises(GmmsessionInputError, match="(pose|half)"):
        s.reconstruct(progress=False)


def test_build_gmm_per_half_saved_and_reopened(reconstructed, tmp_path):
    s = reconstructed
    step = s.build_gmm(n_gaussians=150, n_iter=15, progress=False)
    g = s.gmm
    assert g.sizes["half"] == 2 and g.sizes["gaussian"] == 150
    assert g["width_angstrom"].attrs["units"] == "Å" and g.attrs["resolution_angstrom"] == pytest.approx(s.fsc().attrs["resolution_angstrom"])
    # Gold standard: each half's GMM comes from its own map and seed, never a copy of the other's.
    assert not np.allclose(g["position_angstrom"].sel(half=1).values, g["position_angstrom"].sel(half=2).values)
    assert step.name == "build_gmm" and step.params["n_gaussians"] == 150 and len(step.curves["half1_gmm_fsc"]) > 1
    r = gs.open_session(s.save(tmp_path / "run.gmms"))
    xr.testing.assert_identical(r.gmm, s.gmm)
