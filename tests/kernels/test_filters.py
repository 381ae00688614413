import math

import pytest
import torch

from gmmsession.kernels.filters import (
    apply_bfactor_3d,
    crop_box_for_resolution,
    fourier_crop_2d,
    fourier_crop_3d,
    fourier_pad_2d,
    fourier_pad_3d,
    lowpass_2d,
    lowpass_3d,
)
from gmmsession.kernels.fourier import rfft_centered_2d, rfft_centered_3d


def _radius(box: int, ndim: int, device) -> torch.Tensor:
    full = torch.fft.fftfreq(box, 1.0 / box, dtype=torch.float64, device=device)
    half = torch.fft.rfftfreq(box, 1.0 / box, dtype=torch.float64, device=device)
    grids = torch.meshgrid(*([full] * (ndim - 1) + [half]), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids)), grids


@pytest.mark.parametrize(
    "box, pixel, resolution, expected_box",
    [(256, 1.0, 4.0, 128), (100, 1.1, 7.0, 32), (64, 2.0, 3.0, 64), (64, 2.0, 4.0, 64), (200, 1.0, 150.0, 4)],
)
def test_crop_box_for_resolution(box, pixel, resolution, expected_box):
    box_out, pixel_out = crop_box_for_resolution(box, pixel, resolution)
    assert box_out == expected_box and box_out % 2 == 0
    assert pixel_out == pytest.approx(pixel * box / box_out)
    if box_out < box:
        assert 2 * pixel_out <= resolution + 1e-9  # Nyquist at or beyond the target
        assert 2 * pixel * box / (box_out - 2) > resolution  # and the next smaller even box is not


def test_crop_box_for_resolution_bookkeeping_grid():
    for box in (64, 90, 128, 360):
        for res in (3.0, 5.5, 8.0, 12.3, 40.0):
            b, p = crop_box_for_resolution(box, 1.3, res)
            assert b <= box and b % 2 == 0 and b * p == pytest.approx(box * 1.3)
            assert b == box or 2 * p <= res + 1e-9


def test_crop_keeps_values_and_centre(device):
    box = 32
    images = torch.zeros(2, box, box, device=device, dtype=torch.float64)
    images[0] = 3.5
    c = torch.arange(box, dtype=torch.float64, device=device) - box // 2
    images[1] = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 4.0**2))  # smooth, centred
    out = fourier_crop_2d(images, 16)
    assert out.shape == (2, 16, 16)
    torch.testing.assert_close(out[0], torch.full_like(out[0], 3.5))
    # The blob (sigma 4 px, negligible power beyond the cropped Nyquist) stays centred at 16 // 2.
    assert int(out[1].argmax()) == 8 * 16 + 8
    # Integral preserved up to the pixel-area change (box 32 -> 16: pixels 4x larger).
    assert float(out[1].sum()) * 4 == pytest.approx(float(images[1].sum()), rel=1e-6)


def test_crop_then_pad_is_lowpass(device):
    g = torch.Generator().manual_seed(0)
    box, small = 32, 20
    images = torch.randn(3, box, box, generator=g, dtype=torch.float64).to(device)
    back = fourier_pad_2d(fourier_crop_2d(images, small), box)
    _, (ky, kx) = _radius(box, 2, device)
    keep = (ky.abs() < small / 2) & (kx.abs() < small / 2)
    spectrum = rfft_centered_2d(images)
    expected = rfft_centered_2d(back)
    # float64 FFTs: round-off only.
    torch.testing.assert_close(expected, spectrum * keep, atol=1e-9, rtol=0)
    # A band-limited image survives the round trip exactly.
    band_limited = torch.fft.fftshift(torch.fft.irfft2(spectrum * keep, s=(box, box)), dim=(-2, -1))
    torch.testing.assert_close(fourier_pad_2d(fourier_crop_2d(band_limited, small), box), band_limited, atol=1e-9, rtol=0)


def test_crop_then_pad_3d_is_lowpass(device):
    g = torch.Generator().manual_seed(1)
    box, small = 16, 10
    vol = torch.randn(box, box, box, generator=g, dtype=torch.float64).to(device)
    back = fourier_pad_3d(fourier_crop_3d(vol, small), box)
    _, (kz, ky, kx) = _radius(box, 3, device)
    keep = (kz.abs() < small / 2) & (ky.abs() < small / 2) & (kx.abs() < small / 2)
    torch.testing.assert_close(rfft_centered_3d(back), rfft_centered_3d(vol) * keep, atol=1e-9, rtol=0)


def test_crop_pad_shape_errors():
    with pytest.raises(ValueError, match="box_out"):
        fourier_crop_2d(torch.zeros(8, 8), 10)
    with pytest.raises(ValueError, match="box_out"):
        fourier_pad_3d(torch.zeros(8, 8, 8), 6)
    with pytest.raises(ValueError, match="square"):
        fourier_crop_2d(torch.zeros(8, 6), 4)


def test_lowpass_kills_beyond_cutoff_and_keeps_below(device):
    g = torch.Generator().manual_seed(2)
    box, apix, res = 32, 1.5, 6.0  # filter shell round(32 * 1.5 / 6) = 8, edge 7..9
    vol = torch.randn(2, box, box, box, generator=g, dtype=torch.float64).to(device)
    out = lowpass_3d(vol, apix, res)
    r, _ = _radius(box, 3, device)
    f_in, f_out = rfft_centered_3d(vol), rfft_centered_3d(out)
    assert float(f_out[..., r > 9].abs().max()) < 1e-9  # zero beyond the edge (round-off only)
    torch.testing.assert_close(f_out[..., r < 7], f_in[..., r < 7], atol=1e-9, rtol=0)
    ratio = (f_out[..., r == 8].abs() / f_in[..., r == 8].abs())
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.5), atol=1e-9, rtol=0)  # mid-edge weight
    images = vol[0, :2]
    out2 = lowpass_2d(images, apix, res, edge_width_shells=0)  # hard cut at ring 8
    r2, _ = _radius(box, 2, device)
    f2 = rfft_centered_2d(out2)
    assert float(f2[..., r2 > 8].abs().max()) < 1e-9
    torch.testing.assert_close(f2[..., r2 <= 8], rfft_centered_2d(images)[..., r2 <= 8], atol=1e-9, rtol=0)


def test_bfactor_envelope_and_inverse(device):
    g = torch.Generator().manual_seed(3)
    box, apix, b = 24, 2.0, 150.0
    vol = torch.randn(box, box, box, generator=g, dtype=torch.float64).to(device)
    blurred = apply_bfactor_3d(vol, apix, b)
    r, _ = _radius(box, 3, device)
    k = r / (box * apix)
    inside = r <= box / 2
    ratio = rfft_centered_3d(blurred)[inside].abs() / rfft_centered_3d(vol)[inside].abs()
    torch.testing.assert_close(ratio, torch.exp(-b / 4 * k[inside] ** 2), atol=1e-9, rtol=1e-9)
    restored = apply_bfactor_3d(blurred, apix, -b)
    expected = rfft_centered_3d(vol) * inside
    torch.testing.assert_close(rfft_centered_3d(restored), expected, atol=1e-8, rtol=0)
    assert math.isclose(float(apply_bfactor_3d(torch.ones(8, 8, 8), 1.0, 500.0).mean()), 1.0)  # DC untouched
