"""The plotly figures of gmmsession.viz.figures, checked on their figure dicts (no browser)."""

import numpy as np
import pytest
import torch

from gmmsession.data.gmm import GmmTensors, gmm_dataset
from gmmsession.viz import gmm_figure
from gmmsession.viz.figures import fsc_figure, latent_figure, map_slices_figure, pose_change_figure


def _gmm(n: int, seed: int) -> GmmTensors:
    g = torch.Generator().manual_seed(seed)
    return GmmTensors(
        positions_angstrom=torch.randn(n, 3, generator=g) * 10.0,
        amplitudes=torch.rand(n, generator=g) + 0.5,
        widths_angstrom=torch.linspace(1.0, 4.0, n),
    )


@pytest.fixture
def per_half():
    """One GMM per half; half 2 has fewer Gaussians, so its last rows are NaN padding."""
    return gmm_dataset([_gmm(6, 0), _gmm(4, 1)], pixel_size_angstrom=1.5, box_size=32, resolution_angstrom=6.0)


def test_one_trace_per_half_with_positions(per_half):
    fig = gmm_figure(per_half)
    assert [t.type for t in fig.data] == ["scatter3d", "scatter3d"]
    assert [t.name for t in fig.data] == ["half 1", "half 2"]
    assert len(fig.data[0].x) == 6 and len(fig.data[1].x) == 4  # padding rows left out
    pos = per_half["position_angstrom"].sel(half=1).values
    np.testing.assert_allclose(fig.data[0].x, pos[:, 0], rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].y, pos[:, 1], rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].z, pos[:, 2], rtol=1e-6)
    scene = fig.layout.scene
    assert "Å" in scene.xaxis.title.text and "Å" in scene.yaxis.title.text and "Å" in scene.zaxis.title.text


def test_marker_size_follows_width(per_half):
    fig = gmm_figure(per_half, max_marker_size=20.0)
    sizes = np.asarray(fig.data[0].marker.size, dtype=float)
    widths = per_half["width_angstrom"].sel(half=1).values
    assert np.all(np.diff(sizes) > 0)  # widths increase along the Gaussians
    np.testing.assert_allclose(sizes, np.maximum(20.0 * widths / widths.max(), 2.0), rtol=1e-6)
    assert sizes.max() == pytest.approx(20.0)


def test_colour_from_amplitude_on_a_shared_scale(per_half):
    fig = gmm_figure(per_half)
    np.testing.assert_allclose(fig.data[0].marker.color, per_half["amplitude"].sel(half=1).values, rtol=1e-6)
    amps = per_half["amplitude"].values
    amps = amps[np.isfinite(amps)]
    for trace in fig.data:
        assert trace.marker.cmin == pytest.approx(amps.min()) and trace.marker.cmax == pytest.approx(amps.max())
    assert [t.marker.showscale for t in fig.data] == [True, False]


def test_colour_from_another_per_gaussian_variable(per_half):
    ds = per_half.assign(local_resolution=(("half", "gaussian"), np.arange(12, dtype=float).reshape(2, 6)))
    fig = gmm_figure(ds, color="local_resolution")
    np.testing.assert_allclose(fig.data[0].marker.color, np.arange(6.0))
    assert "local_resolution" in fig.data[0].text[0]
    fig = gmm_figure(per_half, color="width_angstrom")
    np.testing.assert_allclose(fig.data[0].marker.color, per_half["width_angstrom"].sel(half=1).values, rtol=1e-6)


def test_hover_text_names_index_amplitude_width(per_half):
    fig = gmm_figure(per_half)
    text = fig.data[1].text[2]
    amp = float(per_half["amplitude"].sel(half=2, gaussian=2))
    wid = float(per_half["width_angstrom"].sel(half=2, gaussian=2))
    assert "half 2" in text and "Gaussian 2" in text
    assert f"{amp:.4g}" in text and f"{wid:.2f} Å" in text


def test_one_half_only(per_half):
    fig = gmm_figure(per_half, half=2)
    assert [t.name for t in fig.data] == ["half 2"]
    np.testing.assert_allclose(fig.data[0].x, per_half["position_angstrom"].sel(half=2).values[:4, 0], rtol=1e-6)


def test_single_gmm_without_half_dimension():
    ds = gmm_dataset(_gmm(5, 2))
    fig = gmm_figure(ds)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 5
    with pytest.raises(ValueError, match="no half dimension"):
        gmm_figure(ds, half=1)


def test_unknown_colour_variable_is_a_clear_error(per_half):
    with pytest.raises(ValueError, match=r"color must name a per-Gaussian variable.*amplitude.*'sharpness'"):
        gmm_figure(per_half, color="sharpness")
    with pytest.raises(ValueError, match="per-Gaussian"):
        gmm_figure(per_half, color="position_angstrom")  # has an xyz dimension: not one value per Gaussian


def test_unknown_half_is_a_clear_error(per_half):
    with pytest.raises(ValueError, match=r"half must be one of \[1, 2\].*got 3"):
        gmm_figure(per_half, half=3)


def test_not_a_gmm_dataset(per_half):
    with pytest.raises(ValueError, match="missing variables"):
        gmm_figure(per_half.drop_vars("width_angstrom"))


# ---------------------------------------------------------------- map slices, latent space, pose changes, FSC per stage
def test_map_slices_are_the_central_planes_in_angstrom():
    vol = np.arange(6 * 8 * 10, dtype=float).reshape(6, 8, 10)  # z, y, x all different: a transposed slice would show
    fig = map_slices_figure(vol, 1.5)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert [t.name for t in fig.data] == ["z = 3", "y = 4", "x = 5"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), vol[3])
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), vol[:, 4])
    np.testing.assert_array_equal(np.asarray(fig.data[2].z), vol[:, :, 5])
    np.testing.assert_allclose(fig.data[0].x, np.arange(10) * 1.5)  # x in Å
    np.testing.assert_allclose(fig.data[1].y, np.arange(6) * 1.5)  # z in Å
    assert {t.zmin for t in fig.data} == {0.0} and {t.zmax for t in fig.data} == {float(vol.max())}
    with pytest.raises(ValueError, match=r"\(z, y, x\).*\(8, 10\)"):
        map_slices_figure(vol[0], 1.5)


def test_latent_figure_pc1_follows_the_dominant_direction_per_half():
    rng = np.random.default_rng(0)
    n = 200
    hinge = rng.uniform(-20, 20, n)
    halves = np.repeat([1, 2], n // 2)
    direction = np.array([0.6, -0.8, 0.0])
    z = hinge[:, None] * direction + 0.1 * rng.normal(size=(n, 3))
    fig = latent_figure(z, halves, hinge, "hinge (deg)")
    assert [t.name for t in fig.data] == ["half 1", "half 2"]
    for trace, h in zip(fig.data, (1, 2)):
        sel = halves == h
        assert len(trace.x) == sel.sum()
        assert abs(np.corrcoef(trace.x, hinge[sel])[0, 1]) > 0.99  # PC1 is the hinge direction
        np.testing.assert_allclose(trace.marker.color, hinge[sel])
        assert trace.marker.cmin == pytest.approx(hinge.min()) and trace.marker.cmax == pytest.approx(hinge.max())
    assert "PC1" in fig.layout.xaxis.title.text and "PC2" in fig.layout.yaxis.title.text


def test_latent_figure_one_dimension_and_bad_shapes():
    fig = latent_figure(np.linspace(0, 1, 10)[:, None], np.repeat([1, 2], 5))
    np.testing.assert_array_equal(fig.data[0].y, np.zeros(5))
    with pytest.raises(ValueError, match="halves"):
        latent_figure(np.zeros((10, 2)), np.ones(9))


def test_pose_change_figure_two_histograms_per_stage():
    changes = {"global": (np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.1, 0.2])), "focused": (np.array([0.2]), np.array([0.0]))}
    fig = pose_change_figure(changes)
    assert [t.type for t in fig.data] == ["histogram"] * 4
    assert [t.name for t in fig.data] == ["global", "global", "focused", "focused"]
    np.testing.assert_array_equal(fig.data[0].x, changes["global"][0])
    np.testing.assert_array_equal(fig.data[1].x, changes["global"][1])
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x", "x2"]  # angles left, shifts right
    with pytest.raises(ValueError, match="same shape"):
        pose_change_figure({"bad": (np.zeros(3), np.zeros(2))})


def test_fsc_figure_without_components_has_one_trace_per_curve():
    import xarray as xr

    shells = np.arange(5)
    curve = xr.DataArray(np.linspace(1, 0, 5), dims="shell",
                         coords={"shell": shells, "resolution_angstrom": ("shell", [np.inf, 20, 10, 6.7, 5]),
                                 "fsc_unmasked": ("shell", np.linspace(1, 0.1, 5))}, attrs={"resolution_angstrom": 6.7})
    assert len(fsc_figure(curve, curve, names=["a", "b"]).data) == 4
    fig = fsc_figure(curve, curve, names=["a", "b"], components=False)
    assert [t.name for t in fig.data] == ["a (6.70 Å)", "b (6.70 Å)"]


def test_crossing_resolution_reads_the_last_shell_above_the_threshold():
    from gmmsession.viz.figures import crossing_resolution, fsc_svg

    freq = np.arange(6) / 60.0  # shells at 60/i Å
    fsc = np.array([1.0, 0.95, 0.6, 0.3, 0.1, 0.05])
    assert crossing_resolution(freq, fsc, 0.143) == pytest.approx(20.0)  # shell 3 (0.3) is the last above
    assert crossing_resolution(freq, fsc, 0.5) == pytest.approx(30.0)
    assert crossing_resolution(freq, np.ones(6), 0.143) is None  # never crosses
    assert "20.00 Å" in fsc_svg(("final", freq, fsc))
