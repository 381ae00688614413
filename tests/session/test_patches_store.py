"""Patches and the focus mask are saved with the session; ``Patches.add`` merges an outside result; which iteration a focused or patch refinement keeps."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import gmmsession as gs
from tests.conftest import simulated_session
from gmmsession.algorithms.align import AlignConfig
from gmmsession.algorithms.patches import mask_centre_radius
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.kernels.masks import soft_sphere_mask_3d

FAST = dict(gmm_fit_steps=3, chunk_size=40, progress=False, align=AlignConfig(n_steps=2, batch_size=64))  # < 1 s a refinement


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 20-px, 24-particle session with a GMM, saved (``base.gmms``); and a sphere mask on its +x side."""
    d = tmp_path_factory.mktemp("patches_store")
    s, _ = simulated_session(d / "sim", n_particles=24, box_size=20, pixel_size_angstrom=3.6, snr=1.0, hinge_max_deg=0.0, seed=2,
                             n_gaussians=20, fit_steps=3)
    sphere = soft_sphere_mask_3d(20, 4.0, 2.0, (4.0, 0.0, 0.0)).numpy()
    return d, s.save(d / "base.gmms"), sphere


def _assert_same_result(a, b):
    assert a.index == b.index and a.step.to_dict() == b.step.to_dict()
    for v in ("rot_deg", "tilt_deg", "psi_deg", "origin_x_angstrom", "origin_y_angstrom"):
        np.testing.assert_array_equal(a.particles[v].values, b.particles[v].values)
    np.testing.assert_array_equal(a.half_maps.values, b.half_maps.values)
    np.testing.assert_array_equal(a.gmm["position_angstrom"].values, b.gmm["position_angstrom"].values)


def test_patches_and_focus_mask_survive_save_and_open(tiny):
    d, base, sphere = tiny
    s = gs.open_session(base)
    assert s.last_patches is None and s.focus_mask is None  # a file without these groups
    p = s.patches(k=2)
    assert s.last_patches is p
    p.refine(n_iter=1, **FAST)
    p.composite()
    composite = s.half_maps.values.copy()
    s.focus(sphere).refine(n_iter=1, **FAST)
    assert s.focus_mask.attrs["source"] == "array"
    np.testing.assert_array_equal(s.focus_mask.values, sphere)

    r = gs.open_session(s.save(d / "patched.gmms"))
    assert r.focus_mask.dims == ("z", "y", "x") and r.focus_mask.attrs["source"] == "array"
    np.testing.assert_array_equal(r.focus_mask.values, sphere)
    q = r.last_patches
    assert q is not None and q.k == 2 and sorted(q.results) == [0, 1] and q.added == {}
    xr.testing.assert_equal(q.masks, p.masks)
    for f in ("labels", "centres_angstrom", "radii_angstrom"):
        np.testing.assert_array_equal(getattr(q.layout, f), getattr(p.layout, f))
    np.testing.assert_array_equal(q.points_angstrom, p.points_angstrom)
    for i in (0, 1):
        _assert_same_result(q.results[i], p.results[i])
    np.testing.assert_array_equal(q._start["half_maps"].values, p._start["half_maps"].values)
    pd.testing.assert_frame_equal(q.summary(), p.summary())
    # The reopened patches compose to the same half maps, and export as before.
    q.composite()
    np.testing.assert_array_equal(r.half_maps.values, composite)
    a = gs.Session.from_star(p.export_star(1, d / "p1.star"))
    b = gs.Session.from_star(q.export_star(1, d / "q1.star"))
    np.testing.assert_array_equal(a.particles["rot_deg"].values, b.particles["rot_deg"].values)


def test_add_merges_a_focused_result_as_one_more_patch(tiny):
    d, base, sphere = tiny
    s = gs.open_session(base)
    p = s.patches(k=2)
    p.refine(n_iter=1, **FAST)
    with pytest.raises(GmmsessionInputError, match="focus_mask"):
        p.add(gs.open_session(base))  # no mask given and none known
    other = gs.open_session(base)
    other.focus(sphere).refine(n_iter=1, **FAST)
    other.reconstruct(pad_factor=1, progress=False)  # half maps surely unlike the patches' (refinement may not move)
    step = p.add(other)  # the mask of other's focused refinement
    assert step.name == "patch_add" and step.params["patch"] == 2 and s.history.last() is step
    assert p.k == 3 and p.masks.shape == (3, 20, 20, 20) and list(p.masks["patch"].values) == [0, 1, 2]
    np.testing.assert_array_equal(p.masks.values[2], sphere)
    np.testing.assert_array_equal(p.results[2].half_maps.values, other.half_maps.values)
    assert p.added == {2: "focus_mask (array)"}
    centre, radius = p.layout.centres_angstrom[2], p.layout.radii_angstrom[2]
    np.testing.assert_allclose(centre, [14.4, 0.0, 0.0], atol=0.5)  # sphere at +4 px in x, 3.6 Å pixels
    assert 4 * 3.6 <= radius <= 6 * 3.6  # mask >= 0.5 out to about 5 px
    table = p.summary()
    assert list(table.index) == [0, 1, 2] and table.loc[2, "origin"] == "added: focus_mask (array)"
    assert np.isfinite(table.loc[2, "resolution_angstrom"])
    # refine() leaves the added result alone unless named.
    assert [st.params["patch"] for st in p.refine(n_iter=1, **FAST)] == [0, 1]
    np.testing.assert_array_equal(p.results[2].half_maps.values, other.half_maps.values)

    comp = p.composite()
    assert comp.params["added_patches"] == [2]
    maps = np.stack([p.results[i].half_maps.values for i in range(3)])
    m = p.masks.values
    weight = m.sum(0)
    covered = weight > 0
    want = (m[:, None] * maps).sum(0) / np.where(covered, weight, 1)
    np.testing.assert_allclose(s.half_maps.values[:, covered], want[:, covered], rtol=1e-4, atol=1e-6)
    two = (m[:2, None] * maps[:2]).sum(0) / np.where(m[:2].sum(0) > 0, m[:2].sum(0), 1)
    assert not np.allclose(s.half_maps.values[:, covered], two[:, covered])  # the third mask counts

    r = gs.open_session(s.save(d / "added.gmms"))
    q = r.last_patches
    assert q.k == 3 and q.added == p.added
    _assert_same_result(q.results[2], p.results[2])
    np.testing.assert_array_equal(q.masks.values, p.masks.values)
    np.testing.assert_array_equal(q.layout.centres_angstrom, p.layout.centres_angstrom)
    q.composite()
    np.testing.assert_array_equal(r.half_maps.values, s.half_maps.values)


def test_add_on_top_lays_the_result_over_the_composite_inside_its_mask(tiny):
    d, base, sphere = tiny
    s = gs.open_session(base)
    p = s.patches(k=2)
    p.refine(n_iter=1, **FAST)
    p.composite()
    below = s.half_maps.values.copy()  # the two patches' mask-weighted composite
    other = gs.open_session(base)
    other.focus(sphere).refine(n_iter=1, **FAST)
    other.reconstruct(pad_factor=1, progress=False)  # half maps surely unlike the patches'
    step = p.add(other, on_top=True)
    assert step.params["on_top"] is True and p.on_top == [2] and p.added == {2: "focus_mask (array)"}
    assert p.summary().loc[2, "origin"] == "added (on top): focus_mask (array)"
    comp = p.composite()
    assert comp.params["on_top_patches"] == [2] and comp.params["added_patches"] == [2]
    got, top = s.half_maps.values, other.half_maps.values
    inside, outside, edge = sphere == 1, sphere == 0, (sphere > 0) & (sphere < 1)
    assert inside.any() and outside.any() and edge.any()
    np.testing.assert_array_equal(got[:, inside], top[:, inside])  # the added result alone, not averaged
    np.testing.assert_array_equal(got[:, outside], below[:, outside])
    m = sphere[edge]
    np.testing.assert_allclose(got[:, edge], m * top[:, edge] + (1 - m) * below[:, edge], rtol=1e-5, atol=1e-6)
    # Saved and reopened, the patches lay it on top again.
    r = gs.open_session(s.save(d / "on_top.gmms"))
    q = r.last_patches
    assert q.on_top == [2]
    q.composite()
    np.testing.assert_array_equal(r.half_maps.values, got)


def test_add_with_a_given_mask_and_bad_inputs(tiny):
    d, base, sphere = tiny
    s = gs.open_session(base)
    p = s.patches(k=2)
    n = int(s.gmm.sizes["gaussian"])
    selected = np.zeros(n, dtype=bool)
    selected[:5] = True
    p.add(s, mask=selected)  # a boolean over Gaussians, resolved as focus() does
    assert p.k == 3 and p.added[2] == "gaussians"
    np.testing.assert_array_equal(p.masks.values[2], s.focus(selected).mask.values)
    with pytest.raises(GmmsessionInputError, match="shape"):
        p.add(s, mask=np.ones((4, 4, 4), dtype=np.float32))
    assert p.k == 3 and len(p.masks) == 3  # a refused add changes nothing


def test_mask_centre_radius():
    box, px = 20, 2.0
    m = soft_sphere_mask_3d(box, 3.0, 0.0, (2.0, -1.0, 0.0)).numpy()  # hard sphere, radius 3 px at x=+2, y=-1
    centre, radius = mask_centre_radius(m, px)
    np.testing.assert_allclose(centre, [4.0, -2.0, 0.0], atol=1e-6)
    assert radius == pytest.approx(3.0 * px, abs=0.1)
    with pytest.raises(ValueError, match="empty"):
        mask_centre_radius(np.zeros((4, 4, 4)), px)


def test_keep_last_accepts_every_iteration_keep_best_only_improving_ones(tiny, monkeypatch):
    """Every iteration is flagged "not improved": keep="best" leaves the start, keep="last" ends at the last one."""
    import dataclasses

    import gmmsession.session.session as session_module

    d, base, sphere = tiny
    real, last = session_module._refine_global, {}

    def never_improved(*args, **kwargs):
        for res in real(*args, **kwargs):
            last["maps"] = res.half_maps.numpy().copy()
            yield dataclasses.replace(res, improved=False)

    monkeypatch.setattr(session_module, "_refine_global", never_improved)
    s = gs.open_session(base)
    start = s.half_maps.values.copy()
    step = s.focus(sphere).refine(n_iter=2, **FAST)
    assert step.metrics["accepted_iteration"] == 0 and step.params["keep"] == "best"
    np.testing.assert_array_equal(s.half_maps.values, start)
    step = s.focus(sphere).refine(n_iter=2, keep="last", **FAST)
    assert step.metrics["accepted_iteration"] == 2 and step.params["keep"] == "last"
    np.testing.assert_array_equal(s.half_maps.values, last["maps"])
    assert not np.array_equal(last["maps"], start)
    p = s.patches(k=2)
    for keep, accepted in (("best", 0), ("last", 2)):
        steps = p.refine(n_iter=2, keep=keep, **FAST)
        assert [st.metrics["accepted_iteration"] for st in steps] == [accepted, accepted]
    np.testing.assert_array_equal(p.results[1].half_maps.values, last["maps"])
    with pytest.raises(ValueError, match="keep"):
        s.focus(sphere).refine(n_iter=1, keep="first", **FAST)
