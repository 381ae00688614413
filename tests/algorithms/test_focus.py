"""Focused refinement: the width mask on the reference, and ``Session.focus(mask).refine()``."""

import numpy as np
import pytest
import torch

import gmmsession as gs
from gmmsession.algorithms.align import AlignConfig
from gmmsession.algorithms.refine import focused_reference
from gmmsession.algorithms.simulate import perturb_star_poses
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.gmm import GmmTensors
from gmmsession.kernels.masks import soft_sphere_mask_3d


def test_focused_reference_widens_only_outside():
    box, px = 24, 2.0
    mask = soft_sphere_mask_3d(box, 4.0, 2.0)  # radius 4 px = 8 Å, edge to 12 Å
    pos = torch.tensor([[0.0, 0.0, 0.0], [2.0, -2.0, 0.0], [0.0, 0.0, 20.0], [10.0, 0.0, 0.0]])
    g = GmmTensors(pos, torch.ones(4), torch.full((4,), 2.0))
    out = focused_reference(g, mask, px)
    assert torch.equal(out.positions_angstrom, g.positions_angstrom)
    assert torch.allclose(out.widths_angstrom[:2], torch.tensor([2.0, 2.0]))  # inside: unchanged
    assert torch.allclose(out.widths_angstrom[2], torch.tensor(8.0))  # outside: sigma / 0.25
    assert 2.0 < float(out.widths_angstrom[3]) < 8.0  # on the soft edge: in between
    assert focused_reference(g, None, px) is g
    # Each Gaussian keeps its integrated density (peak x sigma^3): inside untouched, outside 4^3 lower peak.
    assert torch.allclose(out.amplitudes[:2], g.amplitudes[:2])
    assert torch.allclose(out.amplitudes[2], torch.tensor(1.0 / 64))
    mass = lambda t: t.amplitudes * t.widths_angstrom**3  # noqa: E731
    assert torch.allclose(mass(out), mass(g))
    # keep_mass=False: the peak amplitudes stay (the paper's rule read literally), same widths.
    peak = focused_reference(g, mask, px, keep_mass=False)
    assert torch.equal(peak.amplitudes, g.amplitudes) and torch.equal(peak.widths_angstrom, out.widths_angstrom)


@pytest.fixture(scope="module")
def hinge_session(tmp_path_factory):
    d = tmp_path_factory.mktemp("focus")
    sim = gs.simulate(d / "data", n_particles=240, box_size=32, pixel_size_angstrom=3.0, snr=1.0, hinge_max_deg=8.0, seed=5)
    star = perturb_star_poses(sim.particles_star, d / "data" / "perturbed.star", angle_deg=3.0, shift_angstrom=3.0, seed=2)
    s = gs.Session.from_star(star)
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=200, n_iter=30, progress=False)
    return sim, s, d


def test_session_focus_refine_records_both_fscs(hinge_session):
    sim, s0, d = hinge_session
    s = gs.open_session(s0.save(d / "before_focus.gmms"))
    domain = sim.domain_masks[1]
    focus = s.focus(domain)
    assert focus.mask.shape == s.half_maps.shape[1:] and focus.source == str(domain)
    step = focus.refine(n_iter=1, solvent_mask=sim.mask, gmm_fit_steps=10, chunk_size=120, progress=False)
    assert step.name == "refine_focus"
    for key in ("focus_resolution_angstrom", "start_focus_resolution_angstrom", "resolution_angstrom"):
        assert np.isfinite(step.metrics[key])
    assert {"fsc_focus_start", "fsc_focus", "fsc_focus_iteration_1", "fsc_iteration_1"} <= set(step.curves)
    it = [r for r in s.history if r.name == "refine_focus_iteration"]
    assert len(it) == 1 and "focus_resolution_angstrom" in it[0].metrics
    # The session only moved if the focus-region FSC improved.
    if step.metrics["accepted_iteration"]:
        assert float(np.sum(s.fsc(mask=focus.mask.values).values[1:])) > float(np.sum(s0.fsc(mask=focus.mask.values).values[1:]))
    else:
        assert np.array_equal(s.particles["rot_deg"].values, s0.particles["rot_deg"].values)


@pytest.mark.parametrize("patience, iterations", [(None, 3), (1, 1)])
def test_focused_and_patch_refinement_run_every_iteration_by_default(hinge_session, monkeypatch, patience, iterations):
    """The paper runs 3 focused iterations (per patch too); a first iteration that scores below
    the start no longer ends the run (patience None), while an int patience still stops early.
    The FSC quality is made to fall every iteration, so only the stopping rule decides."""
    import itertools

    import gmmsession.algorithms.refine as refine

    sim, s0, d = hinge_session
    falling = itertools.count()
    monkeypatch.setattr(refine, "fsc_quality", lambda fsc: -float(next(falling)))
    s = gs.open_session(s0.save(d / f"before_patience_{patience}.gmms"))
    kw = dict(n_iter=3, gmm_fit_steps=2, chunk_size=240, progress=False, align=AlignConfig(n_steps=1))
    if patience is not None:
        kw["patience"] = patience
    s.focus(sim.domain_masks[1]).refine(**kw)
    assert sum(r.name == "refine_focus_iteration" for r in s.history) == iterations
    p = s.patches(k=2, mask=sim.mask)
    (step,) = p.refine(patches=[0], **kw)
    assert len(step.curves["iteration_improved"]) == iterations
    assert step.metrics["accepted_iteration"] == 0  # none improved: the start is kept


def test_focus_mask_from_gaussians_and_bad_masks(hinge_session):
    sim, s, d = hinge_session
    n = int(s.gmm.sizes["gaussian"])
    pos = s.gmm["position_angstrom"].sel(half=1).values
    selected = pos[:, 0] > np.nanmedian(pos[:, 0])  # the Gaussians on the +x side
    f = s.focus(selected)
    m = f.mask.values
    assert f.source == "gaussians" and 0.0 <= m.min() and m.max() == pytest.approx(1.0)
    # The mask covers the +x side of the box far more than the -x side.
    c = s.box_size // 2
    assert m[:, :, c + 2 :].sum() > 3 * m[:, :, : c - 2].sum()
    with pytest.raises(GmmsessionInputError, match="Gaussians"):
        s.focus(np.ones(n + 1, dtype=bool))
    with pytest.raises(GmmsessionInputError, match="selects no Gaussian"):
        s.focus(np.zeros(n, dtype=bool))
    with pytest.raises(GmmsessionInputError, match="shape"):
        s.focus(np.ones((4, 4, 4), dtype=np.float32))


def test_one_patch_is_global_refinement(hinge_session):
    """K = 1: the patch mask covers every Gaussian, so patch refinement is global refinement."""
    sim, s0, d = hinge_session
    a = gs.open_session(s0.save(d / "k1_a.gmms"))
    b = gs.open_session(s0.save(d / "k1_b.gmms"))
    kw = dict(gmm_fit_steps=10, chunk_size=120, progress=False)
    ga = a.refine_global(n_iter=1, mask=sim.mask, **kw)
    p = b.patches(k=1)
    (step,) = p.refine(n_iter=1, solvent_mask=sim.mask, **kw)
    assert step.params["global"] is True
    r = p.results[0]
    for v in ("rot_deg", "tilt_deg", "psi_deg", "origin_x_angstrom", "origin_y_angstrom"):
        np.testing.assert_array_equal(r.particles[v].values, a.particles[v].values)
    np.testing.assert_array_equal(r.half_maps.values, a.half_maps.values)
    assert step.metrics["resolution_angstrom"] == ga.metrics["resolution_angstrom"]
    # The session is back at the start until composite(); then the (single) patch's map inside its mask.
    np.testing.assert_array_equal(b.half_maps.values, s0.half_maps.values)
    comp = p.composite(solvent_mask=sim.mask)
    assert comp.name == "patch_composite"
    inside = p.masks.values[0] > 0
    np.testing.assert_allclose(b.half_maps.values[:, inside], r.half_maps.values[:, inside], rtol=1e-5, atol=1e-6)


def test_two_patches_refine_composite_and_export(hinge_session):
    sim, s0, d = hinge_session
    s = gs.open_session(s0.save(d / "k2.gmms"))
    p = s.patches(k=2, seed=1)
    assert p.masks.shape == (2, *s.half_maps.shape[1:]) and len(p.layout.radii_angstrom) == 2
    steps = p.refine(n_iter=1, solvent_mask=sim.mask, gmm_fit_steps=10, chunk_size=120, progress=False)
    assert [st.params["patch"] for st in steps] == [0, 1] and all(st.params["global"] is False for st in steps)
    assert all("focus_resolution_angstrom" in st.metrics for st in steps)
    with pytest.raises(ValueError, match="out of range"):
        p.refine(patches=[2])
    html = p._repr_html_()
    assert "Patches (k=2)" in html and "resolution_angstrom" in html
    from gmmsession.viz import patches_figure

    fig = patches_figure(p)
    assert [t.name for t in fig.data if t.name] == ["patch 0", "patch 1"]
    assert sum(len(t.x) for t in fig.data if t.name) == len(p.points_angstrom)
    assert "focus iteration 1" in steps[0]._repr_html_()  # the step shows the focus-region FSC too
    p.composite(solvent_mask=sim.mask)
    want = (p.masks.values[:, None] * np.stack([p.results[i].half_maps.values for i in (0, 1)])).sum(0)
    weight = p.masks.values.sum(0)
    covered = weight > 0
    np.testing.assert_allclose(s.half_maps.values[:, covered], (want / np.where(covered, weight, 1))[:, covered], rtol=1e-4, atol=1e-6)
    out = p.export_star(0, d / "patch0.star")
    back = gs.Session.from_star(out)
    np.testing.assert_allclose(np.sort(back.particles["rot_deg"].values), np.sort(p.results[0].particles["rot_deg"].values), atol=1e-4)
    with pytest.raises(KeyError, match="not been refined"):
        p.export_star(5, d / "x.star")


def test_local_resolution_final_map_and_patch_summary(hinge_session, tmp_path):
    from gmmsession.data.io.mrc import read_map

    sim, s, d = hinge_session
    lr = s.local_resolution(mask=sim.mask, sampling_angstrom=15.0)
    assert lr.shape == s.half_maps.shape[1:] and lr.attrs["n_windows"] > 0
    inside = read_map(sim.mask)[0] >= 0.5
    vals = lr.values[inside & np.isfinite(lr.values)]
    assert vals.size and np.all(vals >= 2 * s.pixel_size_angstrom - 1e-6)  # never finer than Nyquist
    assert s.history.last().name == "local_resolution"
    p = s.patches(k=2)
    table = p.resolution_summary(lr)
    assert list(table.index) == [0, 1] and np.all(np.isfinite(table["median_angstrom"]))
    out = tmp_path / "final.mrc"
    fm = s.final_map(out, mask=sim.mask, local_resolution=lr)
    on_disk, _ = read_map(out)
    np.testing.assert_allclose(on_disk, fm.values, rtol=1e-6)
    # At 10.7 Å the Guinier range (10 Å to the resolution) is empty here, so the auto B-factor is 0, never positive.
    assert np.isfinite(fm.values).all() and fm.attrs["method"] == "auto_bfactor" and fm.attrs["bfactor_angstrom2"] <= 0


def test_focused_alignment_follows_the_moving_domain(tmp_path):
    """Noise-free hinge particles (|hinge| >= 6 degrees) aligned from their true pose ``A`` against the
    exact atoms, focused on the moving domain: the poses move towards that domain's pose ``A R_hinge``.
    With the widened Gaussians keeping their peak amplitudes instead (64x their mass), they do not."""
    import dataclasses
    import json

    from gmmsession.algorithms.align import AlignConfig, refine_poses_chunk
    from gmmsession.data.chunks import iter_particle_chunks
    from gmmsession.data.io.mrc import read_map
    from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix

    px = 2.0
    sim = gs.simulate(tmp_path / "d", n_particles=48, box_size=40, pixel_size_angstrom=px, snr=float("inf"), hinge_max_deg=12.0, seed=3)
    params = json.loads(sim.parameters_json.read_text())
    z = np.load(sim.truth_npz)
    atoms = GmmTensors(*(torch.tensor(z[k], dtype=torch.float32) for k in ("atom_positions_angstrom", "atom_amplitudes", "atom_sigmas_angstrom")))
    mask = torch.as_tensor(read_map(sim.domain_masks[params["moving_domain"] - 1])[0])
    s = gs.Session.from_star(sim.particles_star)
    sel = np.nonzero(np.abs(sim.hinge_angle_deg) >= 6.0)[0]
    assert len(sel) >= 10
    chunk = next(iter_particle_chunks(s.particles, s.optics, chunk_size=len(sel), positions=sel))
    axis = torch.tensor(params["hinge_axis"], dtype=torch.float64)
    hinge = torch.as_tensor(sim.hinge_angle_deg[sel])
    domain_pose = torch.as_tensor(sim.rotations[sel]) @ rotvec_to_matrix(axis[None] * torch.deg2rad(hinge)[:, None])

    def error_after(keep_mass: bool, passes: int = 2) -> float:
        ref = focused_reference(atoms, mask, px, keep_mass=keep_mass)
        params_ = chunk.params
        for _ in range(passes):
            up = refine_poses_chunk(chunk.images, params_, ref.positions_angstrom, ref.amplitudes, ref.widths_angstrom, px,
                                    AlignConfig(max_resolution_angstrom=5.0))
            params_ = dataclasses.replace(params_, rotation=up.rotation, origin_angstrom=up.origin_angstrom)
        return float(geodesic_angle_deg(domain_pose, params_.rotation.double()).mean())

    start = float(hinge.abs().mean())  # the true pose A is |hinge| from the domain's pose
    kept, peak = error_after(True), error_after(False)
    # Measured: start 9.1, kept 3.5, peak 11.6 degrees. The blurred fixed domain still holds the pose
    # back (the paper's "constrained by the low-resolution information"), so not all the way to 0.
    assert kept < 0.6 * start
    assert kept < 0.5 * peak
