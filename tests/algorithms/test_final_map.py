import numpy as np
import pytest
import torch

from gmmsession.algorithms.final_map import (
    fsc_weights,
    guinier_fit,
    local_filter,
    local_resolution,
    radial_amplitude_profile,
    sharpen,
    summarize_by_masks,
)
from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.kernels.filters import apply_bfactor_3d, lowpass_3d
from gmmsession.kernels.fourier import irfft_centered_3d, rfft_centered_3d, rfft_frequencies_3d
from gmmsession.kernels.masks import soft_sphere_mask_3d
from tests.kernels.test_locres import _region_half_maps

BOX, APIX = 48, 2.0


def _blurred_white_halves(bfactor: float, noise: float, seed: int = 0):
    """A white-spectrum 'structure' blurred by a known B-factor, plus weak independent noise:
    ln(mean |F|) is then a straight line of slope -B/4 in 1/d^2."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(BOX, BOX, BOX, generator=g, dtype=torch.float64)
    # The envelope on every element, corners included (apply_bfactor_3d zeroes beyond Nyquist,
    # which would halve the amplitude of the last shell and bend the line).
    k2 = rfft_frequencies_3d(BOX, APIX, dtype=torch.float64).square().sum(-1)
    signal = irfft_centered_3d(rfft_centered_3d(white) * torch.exp(-bfactor / 4 * k2), BOX)
    h1 = signal + noise * torch.randn(signal.shape, generator=g, dtype=torch.float64)
    h2 = signal + noise * torch.randn(signal.shape, generator=g, dtype=torch.float64)
    return h1, h2


def test_fsc_weights_relion_rule():
    f = np.array([1.0, 0.8, 0.3, 0.2, 0.00005, 0.5, -0.2])
    w = fsc_weights(f)
    np.testing.assert_allclose(w[:4], np.sqrt(2 * f[:4] / (1 + f[:4])))
    assert np.all(w[4:] == 0)  # from the first FSC < 1e-4 on, everything is zero (RELION's ires_max)
    # A negative FSC is also "below 1e-4": it ends the weighting too.
    assert np.all(fsc_weights(np.array([1.0, 0.5, -0.1, 0.4]))[2:] == 0)


def test_guinier_fit_line_and_range():
    x = np.linspace(0, 0.06, 25)
    d = np.where(x > 0, 1 / np.sqrt(np.where(x > 0, x, 1)), np.inf)
    y = 3.0 - 25.0 * x
    y[-2] = np.nan
    slope, intercept, corr, used = guinier_fit(x, y, d, 10.0, 0.0)
    assert slope == pytest.approx(-25.0) and intercept == pytest.approx(3.0) and corr == pytest.approx(1.0)
    assert not used[-2] and not used[0] and np.all(used[d <= 10.0][:-2])


def test_auto_bfactor_recovers_known_blur(device):
    h1, h2 = _blurred_white_halves(150.0, 0.002)
    out = sharpen(h1.to(device), h2.to(device), APIX, bfactor="auto", lowpass_angstrom=None)
    # ln|F| = const - (150/4) s^2 exactly in expectation; per-shell means of ~10^3 Rayleigh-like
    # amplitudes scatter by ~2%, FSC ~ 0.999 keeps weights ~1: the fit is good to a few Å^2.
    assert out.method == "auto_bfactor"
    assert out.bfactor_angstrom2 == pytest.approx(-150.0, abs=6.0)
    assert out.fit_correlation > 0.99
    # The sharpened Guinier plot is flat over the fit range (slope ~ 0), Nyquist shell left out:
    # RELION's B-factor zeroes the corners beyond Nyquist, which halves that shell's mean.
    d = APIX * BOX / np.maximum(np.arange(BOX // 2 + 1), 1e-9)
    s, _, _, _ = guinier_fit(out.guinier_x, out.guinier_sharpened, d, 10.0, APIX * BOX / (BOX // 2 - 1))
    assert abs(s) < 2.0
    assert out.map.shape == (BOX, BOX, BOX) and out.map.dtype == np.float32


def test_user_bfactor_is_weighting_then_relion_bfactor():
    h1, h2 = _blurred_white_halves(100.0, 0.3)
    fsc = gold_standard_fsc(h1, h2, APIX)
    out = sharpen(h1, h2, APIX, bfactor=-80.0, lowpass_angstrom=8.0, fsc=fsc)
    from gmmsession.algorithms.final_map import _apply_shell_weights

    expected = lowpass_3d(apply_bfactor_3d(_apply_shell_weights((h1 + h2) / 2, fsc_weights(fsc.fsc)), APIX, -80.0), APIX, 8.0)
    np.testing.assert_allclose(out.map, expected.numpy(), atol=1e-5 * float(expected.abs().max()))
    assert out.bfactor_angstrom2 == -80.0 and out.lowpass_angstrom == 8.0 and out.method == "bfactor"
    default = sharpen(h1, h2, APIX, bfactor=None, fsc=fsc)
    assert default.lowpass_angstrom == pytest.approx(fsc.resolution_angstrom) and default.bfactor_angstrom2 is None


def test_amplitude_profile_is_matched():
    h1, h2 = _blurred_white_halves(200.0, 0.01)
    g = torch.Generator().manual_seed(5)
    reference = apply_bfactor_3d(torch.randn(BOX, BOX, BOX, generator=g, dtype=torch.float64), APIX, 20.0)
    freq, amp = radial_amplitude_profile(reference, APIX)
    out = sharpen(h1, h2, APIX, amplitude_profile=(freq, amp), fsc_weighting=False, lowpass_angstrom=None)
    _, got = radial_amplitude_profile(torch.from_numpy(out.map).double(), APIX)
    # Every shell is scaled to the profile exactly; the float32 map adds ~1e-6 relative round-off.
    np.testing.assert_allclose(got[1:], amp[1:], rtol=1e-4)
    assert out.method == "amplitude_profile" and out.bfactor_angstrom2 is None
    # The same profile given per shell.
    again = sharpen(h1, h2, APIX, amplitude_profile=amp, fsc_weighting=False, lowpass_angstrom=None)
    np.testing.assert_allclose(again.map, out.map, atol=1e-6 * np.abs(out.map).max())


def test_local_filter_is_per_voxel_lowpass(device):
    g = torch.Generator().manual_seed(2)
    vol = torch.randn(BOX, BOX, BOX, generator=g, dtype=torch.float64).to(device)
    c = torch.arange(BOX) - BOX // 2
    x = c[None, None, :].expand(BOX, BOX, BOX)
    # Shell 12 (8 Å) for x < 0, shell 6 (16 Å) for x >= 0, NaN in one corner slab.
    res = torch.where(x < 0, 8.0, 16.0).to(torch.float64)
    res[:4] = float("nan")
    out = local_filter(vol, res.to(device), APIX).cpu()
    sharp = lowpass_3d(vol, APIX, 8.0).cpu()
    soft = lowpass_3d(vol, APIX, 16.0).cpu()
    xs = x.cpu()
    # Whole shells: each voxel takes exactly one filtered map.
    np.testing.assert_allclose(out[4:][xs[4:] < 0].numpy(), sharp[4:][xs[4:] < 0].numpy(), atol=1e-10)
    np.testing.assert_allclose(out[4:][xs[4:] >= 0].numpy(), soft[4:][xs[4:] >= 0].numpy(), atol=1e-10)
    # Undefined voxels get the worst local resolution's map.
    np.testing.assert_allclose(out[:4].numpy(), soft[:4].numpy(), atol=1e-10)
    # A resolution between two shells blends them linearly in frequency.
    mid = torch.full((BOX, BOX, BOX), BOX * APIX / 10.25, dtype=torch.float64)
    blended = local_filter(vol.cpu(), mid, APIX)
    expected = 0.75 * lowpass_3d(vol.cpu(), APIX, BOX * APIX / 10) + 0.25 * lowpass_3d(vol.cpu(), APIX, BOX * APIX / 11)
    np.testing.assert_allclose(blended.numpy(), expected.numpy(), atol=1e-10)


def test_local_resolution_wrapper_and_patch_summary(device):
    h1, h2, mask, x = _region_half_maps()
    out = local_resolution(h1.to(device), h2.to(device), APIX, mask.to(device), sampling_angstrom=12.0)
    assert out.resolution_map.shape == (BOX, BOX, BOX) and out.n_windows == out.centres_angstrom.shape[0] > 10
    assert out.radius_angstrom == 6.0 and out.edge_angstrom == 12.0 and out.crop_size == 20
    assert out.fsc.shape == (out.n_windows, 11) and np.isinf(out.shell_resolution_angstrom[0])
    left = soft_sphere_mask_3d(BOX, 10.0, 2.0, center_px=(-9.0, 0.0, 0.0))
    right = soft_sphere_mask_3d(BOX, 10.0, 2.0, center_px=(9.0, 0.0, 0.0))
    table = summarize_by_masks(out.resolution_map, torch.stack([left, right]))
    assert list(table.index) == [0, 1] and (table["n_voxels"] > 1000).all()
    # The quiet (x < 0) patch is better resolved; margin as in the kernel test.
    assert table.loc[1, "median_angstrom"] > 1.5 * table.loc[0, "median_angstrom"]
    assert min(table.loc[0, "median_angstrom"], table.loc[1, "median_angstrom"]) <= out.median_angstrom
    # Same seed -> same windows and values (the random phases come from a CPU generator).
    again = local_resolution(h1, h2, APIX, mask, sampling_angstrom=12.0)
    np.testing.assert_array_equal(again.resolution_angstrom, out.resolution_angstrom)


def test_sharpen_bad_input():
    with pytest.raises(ValueError, match="even cubic"):
        sharpen(torch.zeros(5, 5, 5), torch.zeros(5, 5, 5), 1.0)
    h1, h2 = _blurred_white_halves(100.0, 0.1)
    with pytest.raises(ValueError, match="bfactor"):
        sharpen(h1, h2, APIX, bfactor="sharp")
    with pytest.raises(ValueError, match="amplitude_profile"):
        sharpen(h1, h2, APIX, amplitude_profile=np.ones(3))
