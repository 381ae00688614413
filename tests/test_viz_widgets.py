"""Notebook views without a browser: view-model data, widget state and FigureWidget trace data
after moving the controls programmatically, static fallbacks, session summary and progress."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import gmmsession as gs
from gmmsession.data.io.mrc import read_map
from gmmsession.viz import viewmodels as vm

pytest.importorskip("anywidget")  # plotly 7's FigureWidget needs it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    sim = gs.simulate(d / "data", n_particles=40, box_size=20, pixel_size_angstrom=4.0, snr=0.5, hinge_max_deg=20.0, seed=3)
    s = gs.Session.from_star(sim.particles_star, device="cpu")
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=40, n_iter=10, progress=False)
    return s, sim


@pytest.fixture(scope="module")
def het(tiny):
    s, _ = tiny
    return s.heterogeneity(latent_dim=2, n_epochs=1, progress=False, n_anchors=8, hidden=16, batch_size=8)


# ---------------------------------------------------------------------- view models
def test_slices_are_the_volume_at_the_index():
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for axis, take in (("z", 0), ("y", 1), ("x", 2)):
        v = vm.slice_view(vol, axis, 5, pixel_size_angstrom=2.0)
        assert v["image"].shape == (16, 16)
        np.testing.assert_array_equal(v["image"], np.take(vol, 5, axis=take))
        assert v["position_angstrom"] == pytest.approx((5 - 8) * 2.0)
        assert (v["rows"], v["columns"]) == {"z": ("y", "x"), "y": ("z", "x"), "x": ("z", "y")}[axis]
    centre = vm.orthogonal_slices(vol)
    assert {a: centre[a]["index"] for a in "zyx"} == {"z": 8, "y": 8, "x": 8}
    with pytest.raises(ValueError, match="index must be in 0..15"):
        vm.slice_view(vol, "z", 16)


def test_isosurface_level_and_grid():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[8:12, 8:12, 8:12] = 1.0
    lv = vm.isosurface_levels(vol)
    assert lv["min"] == 0.0 and lv["max"] == 1.0
    assert lv["min"] < lv["default"] < lv["max"]
    g = vm.isosurface_grid(vol, pixel_size_angstrom=2.0, max_size=8)
    assert g["bin"] == 3 and g["value"].shape == (6 ** 3,) == g["x"].shape
    assert g["value"].max() <= 1.0 and np.isclose(g["value"].sum() * 27, vol[:18, :18, :18].sum())


def test_progress_view_text():
    v = vm.progress_view(50, 200, 2.0, "refine_global", info={"iteration": 2, "n_iter": 3, "resolution_angstrom": 7.25})
    assert v["fraction"] == 0.25 and v["rate"] == 25.0 and v["remaining_s"] == 6.0
    for part in ("iteration 2/3", "50/200 particles", "25.0 particles/s", "resolution 7.25 Å"):
        assert part in v["text"]


# ---------------------------------------------------------------------- map view
def test_map_view_sliders_move_the_slices(tiny):
    s, sim = tiny
    mask = sim.domain_masks[1]
    view = s.show_map(mask=mask)
    avg = s.half_maps.mean("half").values
    assert [t.name for t in view.slices.data[:3]] == ["z", "y", "x"]
    np.testing.assert_allclose(view.slices.data[0].z, avg[10], rtol=1e-6)
    view.sliders["z"].value = 3
    np.testing.assert_allclose(view.slices.data[0].z, avg[3], rtol=1e-6)
    view.sliders["y"].value = 14
    np.testing.assert_allclose(view.slices.data[1].z, avg[:, 14, :], rtol=1e-6)
    np.testing.assert_allclose(view.slices.data[2].z, avg[:, :, 10], rtol=1e-6)  # untouched
    assert view.slices.layout.annotations[0].text == f"z = {(3 - 10) * 4.0:.1f} Å"
    # The mask's contour follows the slice.
    contours = [t for t in view.slices.data if t.type == "contour"]
    assert len(contours) == 3
    np.testing.assert_allclose(contours[0].z, read_map(mask, pixel_size_angstrom=4.0)[0][3], rtol=1e-6)
    # Isosurface level: default and slider inside the map's range.
    lo, hi = float(avg.min()), float(avg.max())
    assert lo < view.surface.data[0].isomin < hi
    assert (view.level.min, view.level.max) == pytest.approx((lo, hi))
    view.level.value = lo + 0.75 * (hi - lo)
    assert view.surface.data[0].isomin == pytest.approx(view.level.value)
    assert [t.name for t in view.surface.data] == ["map", "mask"]


def test_map_view_degrades_to_static_html(tiny):
    s, _ = tiny
    view = s.show_map("half2")
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = bundle["text/html"]
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", static)) == 3
    assert "<script" not in static
    assert bundle["text/plain"].startswith("MapView('half2', box 20")
    with pytest.raises(ValueError, match="volume must be one of"):
        s.show_map("nonsense")


# ---------------------------------------------------------------------- GMM view
def _positions(trace) -> np.ndarray:
    return np.stack([np.asarray(trace.x), np.asarray(trace.y), np.asarray(trace.z)], axis=1)


def _gmm_positions(gmm, half=None) -> np.ndarray:
    g = gmm.sel(half=half) if half is not None else gmm
    pos = g["position_angstrom"].transpose("gaussian", "xyz").sel(xyz=["x", "y", "z"]).values
    return pos[np.isfinite(pos).all(-1)]


def test_gmm_view_half_selector(tiny):
    s, _ = tiny
    view = s.show_gmm(half=2)
    np.testing.assert_allclose(_positions(view.figure.data[0]), _gmm_positions(s.gmm, 2), rtol=1e-6)
    np.testing.assert_allclose(view.figure.data[0].marker.color, s.gmm["amplitude"].sel(half=2).values, rtol=1e-6)
    view.half.value = 1
    np.testing.assert_allclose(_positions(view.figure.data[0]), _gmm_positions(s.gmm, 1), rtol=1e-6)
    widths = s.gmm["width_angstrom"].sel(half=1).values
    sizes = np.asarray(view.figure.data[0].marker.size, dtype=float)
    assert np.argmax(sizes) == np.argmax(widths)
    static = view._repr_mimebundle_()["text/html"]
    assert static.count("<circle") == len(widths) and "<script" not in static


def test_gmm_view_with_patches_and_mask(tiny):
    s, sim = tiny
    p = s.patches(2, mask=sim.mask)
    view = s.show_gmm(patches=p, mask=sim.domain_masks[1])
    names = [t.name for t in view.figure.data]
    assert names == ["GMM", "patch 0", "patch 0 centre", "patch 1", "patch 1 centre", "mask"]
    np.testing.assert_allclose(view.figure.data[2].x, [p.layout.centres_angstrom[0][0]], rtol=1e-6)
    maps = s.show_map(patches=p)
    assert sum(t.type == "contour" for t in maps.slices.data) == 3 * p.k
    assert p.show().figure.data[1].name == "patch 0"


# ---------------------------------------------------------------------- latent space
def test_latent_view_shows_the_gmm_at_the_chosen_point(tiny, het):
    s, _ = tiny
    halves = s.particles["half"].values
    view = het.show(half=1)
    i1 = int(np.flatnonzero(halves == 1)[0])
    assert view.particle.value == i1 and view.source == "particle"
    np.testing.assert_allclose(_positions(view.gmm_figure.data[0]), _gmm_positions(het.gmm_at(het.latent.values[i1], 1)), atol=1e-4)
    n1 = int((halves == 1).sum())
    assert len(view.latent_figure.data[0].x) == n1

    # Along a principal component.
    view.position.value = 1.5
    mean, comps, var = het.pca(1)
    point = mean + 1.5 * np.sqrt(var[0]) * comps[0]
    assert view.source == "pc"
    np.testing.assert_allclose(view.point, point, rtol=1e-6)
    np.testing.assert_allclose(_positions(view.gmm_figure.data[0]), _gmm_positions(het.gmm_at(point, 1)), atol=1e-4)
    vol = het.volume_at(point, 1).values
    np.testing.assert_allclose(view.map_figure.data[0].z, vol.sum(axis=0), rtol=1e-4, atol=1e-6)

    # A particle of the other half switches the half and shows that half's decoder.
    i2 = int(np.flatnonzero(halves == 2)[3])
    view.particle.value = i2
    assert view.half.value == 2 and len(view.latent_figure.data[0].x) == int((halves == 2).sum())
    np.testing.assert_allclose(_positions(view.gmm_figure.data[0]), _gmm_positions(het.gmm_at(het.latent.values[i2], 2)), atol=1e-4)

    # A click on the scatter selects that particle.
    view._clicked(view.latent_figure.data[0], SimpleNamespace(point_inds=[0]), None)
    assert view.particle.value == int(np.flatnonzero(halves == 2)[0])

    bundle = het._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "<svg" in bundle["text/html"]


# ---------------------------------------------------------------------- summary and progress
def test_summary_reads_resolution_from_history_without_fsc(tiny, monkeypatch):
    s, _ = tiny

    def no_fsc(*args, **kwargs):
        raise AssertionError("the summary must not compute an FSC")

    monkeypatch.setattr(s, "fsc", no_fsc)
    summary = s.summary()
    assert summary["GMM (Gaussians per half)"] == "40 / 40"
    rec = [r for r in s.history if "resolution_angstrom" in r.metrics][-1]
    assert summary["resolution (Å, 0.143)"].startswith(f"{rec.metrics['resolution_angstrom']:.2f}")
    page = s._repr_html_()
    assert "GMM (Gaussians per half)" in page and rec.name in page and "<script" not in page
    assert "GMM (Gaussians per half): 40 / 40" in repr(s)


def test_notebook_progress_html():
    from gmmsession.viz.html import NotebookProgress

    shown = []

    class Handle:
        def update(self, bundle, raw):
            shown.append(bundle)

    def display(bundle, raw, display_id):
        shown.append(bundle)
        return Handle()

    bar = NotebookProgress(40, "refine_global", display=display, min_interval_s=0.0)
    bar.update(10, iteration=1, n_iter=2)
    bar.update(20, resolution_angstrom=12.5)
    bar.update(30, iteration=2, n_iter=2)
    bar.close()
    assert "iteration 2/2" in shown[-1]["text/plain"] and "30/40 particles" in shown[-1]["text/plain"]
    assert "resolution 12.50 Å" in shown[-1]["text/plain"]  # kept from the earlier update
    assert "done in" in shown[-1]["text/html"]


def test_refine_reports_iterations_to_the_notebook_display(tiny, monkeypatch):
    import gmmsession.viz.html as vh

    s, _ = tiny
    calls = []

    class Recorder:
        def __init__(self, total, desc, unit):
            calls.append(("open", total, desc))

        def update(self, n_done, **info):
            calls.append(("update", n_done, info))

        def close(self):
            calls.append(("close",))

    monkeypatch.setattr(vh, "_in_notebook_kernel", lambda: True)
    monkeypatch.setattr(vh, "NotebookProgress", Recorder)
    step = s.refine_global(n_iter=1, gmm_fit_steps=3, chunk_size=40)
    n = int(s.particles.sizes["particle"])
    assert calls[0] == ("open", n, "refine_global") and calls[-1] == ("close",)
    updates = [c for c in calls if c[0] == "update"]
    assert max(c[1] for c in updates) == n
    assert any(c[2].get("iteration") == 1 and c[2].get("n_iter") == 1 for c in updates)
    res = [c[2]["resolution_angstrom"] for c in updates if "resolution_angstrom" in c[2]]
    assert res == [pytest.approx(s.history.last("refine_global_iteration").metrics["resolution_angstrom"])]
    assert step.name == "refine_global"
