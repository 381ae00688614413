"""Notebook views without a browser: view-model data, widget state, the PNG bytes of image widgets
and FigureWidget trace data after moving the controls programmatically, static fallbacks,
session summary and progress."""

from __future__ import annotations

import re
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import simulated_session
from gmmsession.data.io.mrc import read_map
from gmmsession.viz import viewmodels as vm

pytest.importorskip("anywidget")  # plotly 7's FigureWidget needs it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return simulated_session(tmp_path_factory.mktemp("viz") / "data", n_particles=40, box_size=20, pixel_size_angstrom=4.0,
                             snr=0.5, hinge_max_deg=20.0, seed=3, n_gaussians=40, fit_steps=10)


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
def _decode_png(data: bytes) -> np.ndarray:
    """(h, w, 3) uint8 pixels of an 8-bit RGB PNG without interlacing whose rows all use filter 0
    (what the views write; PIL is not a dependency). An Image widget's value is a memoryview."""
    data = bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour_type, _, _, interlace = header
    assert (depth, colour_type, interlace) == (8, 2, 0)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def _grey(image: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The slices' grey scale: vmin white, vmax black."""
    return (255 * (1 - np.clip((np.asarray(image, np.float64) - vmin) / (vmax - vmin), 0, 1))).astype(np.uint8)


def _pixels(png: bytes, box: int) -> np.ndarray:
    """(box, box, 3) the centre pixel of each enlarged voxel, rows back in array order (row axis up in the PNG)."""
    rgb = _decode_png(png)
    f = rgb.shape[0] // box
    assert rgb.shape == (box * f, box * f, 3) and f >= 3
    return rgb[f // 2::f, f // 2::f][::-1]


def _outlined(png: bytes, box: int, colour: str) -> np.ndarray:
    """(box, box) bool: voxels with at least one pixel of ``colour`` in the PNG (rows in array order)."""
    rgb = _decode_png(png)
    f = rgb.shape[0] // box
    hit = (rgb == [int(colour[k:k + 2], 16) for k in (1, 3, 5)]).all(-1)
    return hit.reshape(box, f, box, f).any(axis=(1, 3))[::-1]


def _boundary(mask_slice: np.ndarray) -> np.ndarray:
    """Voxels inside (>= 0.5) with a 4-neighbour outside or on the image's border."""
    inside = np.pad(mask_slice >= 0.5, 1)
    core = inside[1:-1, 1:-1]
    return core & ~(inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:])


def _figure_widgets(widget) -> int:
    """FigureWidgets in a widget tree (each imports plotly's ~5 MB bundle in the browser)."""
    import plotly.graph_objects as go

    if isinstance(widget, go.FigureWidget):
        return 1
    return sum(_figure_widgets(c) for c in getattr(widget, "children", ()))


def test_map_view_sliders_move_the_slice_images(tiny):
    from gmmsession.viz.widgets import _MASK_COLOUR

    s, sim = tiny
    mask_path = sim.domain_masks[1]
    mask = read_map(mask_path, pixel_size_angstrom=4.0)[0]
    view = s.show_map(mask=mask_path)
    avg = s.half_maps.mean("half").values.astype(np.float32)
    lo, hi = float(avg.min()), float(avg.max())
    assert _figure_widgets(view.widget) == 0 and view.surface is None  # no plotly bundle until the 3D view is asked for

    def shown(axis):
        return _pixels(view.images[axis].value, 20)

    for axis, expected in (("z", avg[10]), ("y", avg[:, 10, :]), ("x", avg[:, :, 10])):
        px = shown(axis)
        assert (px[..., 0] == px[..., 2]).all()  # grey: the outlines are on voxel borders, not centres
        np.testing.assert_allclose(px[..., 0], _grey(expected, lo, hi), atol=1)
    assert "z = 0.0 Å" in view.captions["z"].value and "x → -40.0 … 36.0 Å" in view.captions["z"].value
    assert "y ↑ -40.0 … 36.0 Å" in view.captions["z"].value and "z ↑" in view.captions["x"].value
    x_before = bytes(view.images["x"].value)

    view.sliders["z"].value = 3
    np.testing.assert_allclose(shown("z")[..., 0], _grey(avg[3], lo, hi), atol=1)
    assert "z = -28.0 Å" in view.captions["z"].value
    view.sliders["y"].value = 14
    np.testing.assert_allclose(shown("y")[..., 0], _grey(avg[:, 14, :], lo, hi), atol=1)
    assert bytes(view.images["x"].value) == x_before  # untouched
    view.set_index("x", 4)
    assert view.sliders["x"].value == 4
    np.testing.assert_allclose(shown("x")[..., 0], _grey(avg[:, :, 4], lo, hi), atol=1)

    # The mask's outline follows the slice: drawn exactly on the mask's boundary voxels.
    for z in (3, 10):
        view.sliders["z"].value = z
        outline = _boundary(mask[z])
        np.testing.assert_array_equal(_outlined(view.images["z"].value, 20, _MASK_COLOUR), outline)
    assert outline.any()

    # The isosurface: one FigureWidget, built when the toggle is switched on, at the level slider's value.
    assert (view.level.min, view.level.max) == pytest.approx((lo, hi)) and lo < view.level.value < hi
    view.level.value = lo + 0.75 * (hi - lo)
    view.show_surface.value = True
    assert _figure_widgets(view.widget) == 1
    assert [t.name for t in view.surface.data] == ["map", "mask"]
    assert view.surface.data[0].isomin == pytest.approx(lo + 0.75 * (hi - lo))
    view.level.value = lo + 0.5 * (hi - lo)
    assert view.surface.data[0].isomin == pytest.approx(view.level.value)
    surface = view.surface
    view.show_surface.value = False
    assert _figure_widgets(view.widget) == 0
    view.show_surface.value = True
    assert view.surface is surface and _figure_widgets(view.widget) == 1


def test_map_view_degrades_to_static_html(tiny):
    s, _ = tiny
    view = s.show_map("half2")
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = bundle["text/html"]
    pngs = re.findall(r"<img [^>]*src='data:image/png;base64,([^']+)'", static)
    assert len(pngs) == 3
    import base64

    half2 = s.half_maps.sel(half=2).values.astype(np.float32)
    z = _decode_png(base64.b64decode(pngs[0]))[::-1]  # one pixel per voxel in the static view
    np.testing.assert_allclose(z[..., 0], _grey(half2[10], float(half2.min()), float(half2.max())), atol=1)
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
    assert _figure_widgets(view.widget) == 1
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
    from gmmsession.viz.widgets import _PATCH_COLOURS

    masks = p.masks.values
    for axis, take in (("z", 0), ("y", 1), ("x", 2)):
        later = np.zeros((20, 20), bool)  # a later patch's outline is drawn over an earlier one's where they meet
        for i in reversed(range(p.k)):
            outline = _boundary(np.take(masks[i], 10, axis=take))
            drawn = _outlined(maps.images[axis].value, 20, _PATCH_COLOURS[i])
            assert not (drawn & ~outline).any() and not (outline & ~drawn & ~later).any()
            later |= outline
    assert _boundary(masks[0][10]).any()
    assert p.show().figure.data[1].name == "patch 0"


# ---------------------------------------------------------------------- latent space
def test_latent_view_shows_the_gmm_at_the_chosen_point(tiny, het):
    s, _ = tiny
    halves = s.particles["half"].values
    view = het.show(half=1)
    assert _figure_widgets(view.widget) == 1
    assert [t.name for t in view.figure.data] == ["particles", "shown", "GMM"]
    i1 = int(np.flatnonzero(halves == 1)[0])
    assert view.particle.value == i1 and view.source == "particle"
    np.testing.assert_allclose(_positions(view.figure.data[2]), _gmm_positions(het.gmm_at(het.latent.values[i1], 1)), atol=1e-4)
    n1 = int((halves == 1).sum())
    assert len(view.figure.data[0].x) == n1

    # Along a principal component.
    view.position.value = 1.5
    mean, comps, var = het.pca(1)
    point = mean + 1.5 * np.sqrt(var[0]) * comps[0]
    assert view.source == "pc"
    np.testing.assert_allclose(view.point, point, rtol=1e-6)
    np.testing.assert_allclose(_positions(view.figure.data[2]), _gmm_positions(het.gmm_at(point, 1)), atol=1e-4)
    vol = het.volume_at(point, 1).values
    proj = vol.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(_pixels(view.map_image.value, 20)[..., 0], _grey(proj, proj.min(), proj.max()), atol=1)
    assert "PC1 at +1.50 σ, summed along z" in view.map_caption.value

    # A particle of the other half switches the half and shows that half's decoder.
    i2 = int(np.flatnonzero(halves == 2)[3])
    view.particle.value = i2
    assert view.half.value == 2 and len(view.figure.data[0].x) == int((halves == 2).sum())
    np.testing.assert_allclose(_positions(view.figure.data[2]), _gmm_positions(het.gmm_at(het.latent.values[i2], 2)), atol=1e-4)

    # A click on the scatter selects that particle.
    view._clicked(view.figure.data[0], SimpleNamespace(point_inds=[0]), None)
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
