"""gmm_figure: the plotly view of a GMM, checked on its figure dict (no browser)."""

import numpy as np
import pytest
import torch

from gmmsession.data.gmm import GmmTensors, gmm_dataset
from gmmsession.viz import gmm_figure


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
