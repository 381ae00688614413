"""Focused refinement: the width mask on the reference, and ``Session.focus(mask).refine()``."""

import numpy as np
import pytest
import torch

import gmmsession as gs
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
    assert torch.equal(out.positions_angstrom, g.positions_angstrom) and torch.equal(out.amplitudes, g.amplitudes)
    assert torch.allclose(out.widths_angstrom[:2], torch.tensor([2.0, 2.0]))  # inside: unchanged
    assert torch.allclose(out.widths_angstrom[2], torch.tensor(8.0))  # outside: sigma / 0.25
    assert 2.0 < float(out.widths_angstrom[3]) < 8.0  # on the soft edge: in between
    assert focused_reference(g, None, px) is g


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
