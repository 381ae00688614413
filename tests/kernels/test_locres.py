import math

import numpy as np
import pytest
import torch

from gmmsession.kernels.fsc import fsc_3d
from gmmsession.kernels.locres import (
    extract_windows_3d,
    local_resolution_3d,
    locres_sample_centres,
    locres_window_3d,
    locres_window_crop_size,
    window_resolutions,
    window_weighted_harmonic_mean_3d,
    windowed_fsc_3d,
)
from gmmsession.kernels.masks import soft_sphere_mask_3d

BOX, APIX = 48, 2.0


def _region_half_maps(box: int = BOX, seed: int = 0, dtype=torch.float32):
    """Many small blobs filling a sphere, plus independent noise per half that is 15x stronger for
    x > 0: windows on the quiet side must resolve finer detail than on the noisy side."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    pos = (torch.rand(80, 3, generator=g, dtype=torch.float64) - 0.5) * (box * 0.7)
    for p in pos:
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 1.0**2))
    sigma = torch.where(x > 0, 0.45, 0.03)
    h1 = vol + sigma * torch.randn(vol.shape, generator=g, dtype=torch.float64)
    h2 = vol + sigma * torch.randn(vol.shape, generator=g, dtype=torch.float64)
    mask = soft_sphere_mask_3d(box, box * 0.38, 3.0, dtype=torch.float64)
    return h1.to(dtype), h2.to(dtype), mask.to(dtype), x


def test_sample_centres_follow_relion_grid():
    centres = locres_sample_centres(64, 12, 6)
    # RELION loops from -box/2 in steps of the sampling and keeps |c| < box/2 - radius.
    axis = np.arange(-32, 32, 12)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    expected = grid[(grid**2).sum(1) < 26**2]
    assert centres.shape == (len(expected), 3)
    assert set(map(tuple, centres.numpy())) == set(map(tuple, expected))


def test_window_is_relion_raised_cosine_and_fits_its_crop():
    crop = locres_window_crop_size(6, 12)
    assert crop == 2 * 18 + 2
    w = locres_window_3d(crop, 6, 12, dtype=torch.float64)
    # RELION's raisedCosineMask is the soft sphere 0.5 + 0.5 cos(pi (d - r) / edge) of the masks module.
    np.testing.assert_allclose(w.numpy(), soft_sphere_mask_3d(crop, 6, 12, dtype=torch.float64).numpy(), atol=1e-12)
    # The whole support lies strictly inside the crop: the outer faces are zero.
    assert float(w[0].abs().max()) == 0 and float(w[:, 0].abs().max()) == 0 and float(w[..., 0].abs().max()) == 0
    assert float(w[1:, 1:, 1:].sum()) == pytest.approx(float(w.sum()))


def test_extract_windows_slices_and_zero_fills():
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(2, 16, 16, 16, generator=g)
    centres = torch.tensor([[0, 0, 0], [3, -2, 1], [7, 7, -8]])
    cut = extract_windows_3d(vol, centres, 6)
    assert cut.shape == (2, 3, 6, 6, 6)
    # Centre (x, y, z) -> voxel (z, y, x) = box//2 + (z, y, x) sits at crop index 3.
    torch.testing.assert_close(cut[:, 0], vol[:, 5:11, 5:11, 5:11])
    torch.testing.assert_close(cut[:, 1], vol[:, 6:12, 3:9, 8:14])
    # Beyond the map edge the crop is zero (RELION's windows are truncated by the box).
    assert float(cut[:, 2, :, :, 4:].abs().max()) == 0  # x index >= 16
    torch.testing.assert_close(cut[:, 2, 3:, :4, :4], vol[:, 0:3, 12:16, 12:16])


def test_full_box_crop_reproduces_relion_full_map_fsc():
    """With crop = box the windowed FSC is RELION's: FSC of the full half maps times the window."""
    h1, h2, _, _ = _region_half_maps(dtype=torch.float64)
    centres = torch.tensor([[5, -3, 2], [-12, 8, 0]])
    window = locres_window_3d(BOX, 4, 8, dtype=torch.float64)
    ours = windowed_fsc_3d(h1, h2, centres, window)
    for k, c in enumerate(centres):
        w = soft_sphere_mask_3d(BOX, 4, 8, center_px=tuple(float(v) for v in c), dtype=torch.float64)
        ref = fsc_3d(h1 * w, h2 * w)
        ref[0] = 1.0 if ref[0] <= 0 else ref[0]
        # A circular shift of both windowed maps leaves the cross-spectrum unchanged: round-off only.
        np.testing.assert_allclose(ours[k].numpy(), ref.numpy(), atol=1e-10)


def test_cropped_fsc_is_the_same_curve_on_coarser_shells():
    """The cropped windows hold the same data; their FSC read at a frequency agrees with the
    full-box FSC at that frequency up to the shell-averaging difference."""
    h1, h2, _, _ = _region_half_maps(dtype=torch.float64)
    centres = torch.tensor([[-10, 0, 0]])
    crop = locres_window_crop_size(4, 8)
    small = windowed_fsc_3d(h1, h2, centres, locres_window_3d(crop, 4, 8, dtype=torch.float64))[0]
    full = windowed_fsc_3d(h1, h2, centres, locres_window_3d(BOX, 4, 8, dtype=torch.float64))[0]
    f_small = np.arange(crop // 2 + 1) / crop
    f_full = np.arange(BOX // 2 + 1) / BOX
    # Shells of the small box are BOX/crop = 1.9 full-box shells wide: the curves agree to the
    # FSC's own per-shell scatter (~1/sqrt(shell size) ~ 0.1 at the low shells), far below the
    # 0 -> 1 range that decides a resolution.
    interp = np.interp(f_small[1:], f_full, full.numpy())
    assert np.max(np.abs(interp - small.numpy()[1:])) < 0.2


def test_window_resolutions_relion_rule():
    fsc = torch.tensor([[1.0, 0.9, 0.5, 0.1, 0.3], [1.0, 0.1, 0.9, 0.9, 0.9], [0.1, 0.9, 0.9, 0.9, 0.9], [1.0, 0.9, 0.9, 0.9, 0.9]], dtype=torch.float64)
    res = window_resolutions(fsc, 8, 2.0, 0.143, 50.0)
    # shell 2 -> 8 Å; shell 0 only -> none -> capped at 50 Å; never drops -> Nyquist 4 Å.
    np.testing.assert_allclose(res.numpy(), [8.0, 50.0, 50.0, 4.0])
    np.testing.assert_allclose(window_resolutions(fsc[:1], 8, 2.0, 0.143, 6.0).numpy(), [6.0])


def test_harmonic_mean_map():
    window = locres_window_3d(10, 2, 2, dtype=torch.float64)
    centres = torch.tensor([[0, 0, 0], [3, 0, 0]])
    out = window_weighted_harmonic_mean_3d(torch.tensor([4.0, 8.0], dtype=torch.float64), centres, window, 16)
    w0 = soft_sphere_mask_3d(16, 2, 2, dtype=torch.float64)
    w1 = soft_sphere_mask_3d(16, 2, 2, center_px=(3.0, 0.0, 0.0), dtype=torch.float64)
    expected = (w0 + w1) / (w0 / 4 + w1 / 8)
    covered = (w0 + w1) > 0
    np.testing.assert_allclose(out[covered].numpy(), expected[covered].numpy(), rtol=1e-6)
    assert torch.isnan(out[~covered]).all()
    # One value everywhere gives that value wherever a window reaches.
    same = window_weighted_harmonic_mean_3d(torch.tensor([5.0, 5.0]), centres, window, 16)
    np.testing.assert_allclose(same[covered].numpy(), 5.0, rtol=1e-6)


def test_local_resolution_sees_the_quiet_half(device):
    h1, h2, mask, x = _region_half_maps()
    out = local_resolution_3d(
        h1.to(device), h2.to(device), APIX, mask.to(device), sampling_angstrom=12.0,
        generator=torch.Generator().manual_seed(0),
    )
    res_map = out.resolution_map.cpu()
    assert res_map.shape == (BOX, BOX, BOX) and out.resolution_map.device.type == device.type
    assert torch.isnan(res_map[mask == 0]).all()
    inside = mask > 0.5
    quiet = torch.nanmedian(res_map[inside & (x < -6)])
    noisy = torch.nanmedian(res_map[inside & (x > 6)])
    # Noise 15x weaker on the quiet side: its windows keep FSC > 0.143 out to far higher shells.
    # A factor 1.5 is far below what this contrast gives and far above window-to-window scatter.
    assert float(noisy) > 1.5 * float(quiet), (float(quiet), float(noisy))
    assert float(quiet) < 8.0
    # Every voxel of the mask's core is covered by some window.
    assert torch.isfinite(res_map[inside]).all()


def test_local_resolution_is_batch_size_independent():
    h1, h2, mask, _ = _region_half_maps(dtype=torch.float64)
    runs = [
        local_resolution_3d(h1, h2, APIX, mask, sampling_angstrom=16.0, batch_size=b, generator=torch.Generator().manual_seed(3))
        for b in (1, 5, 1000)
    ]
    for other in runs[1:]:
        torch.testing.assert_close(other.resolution_angstrom, runs[0].resolution_angstrom, rtol=0, atol=0)
        torch.testing.assert_close(other.fsc, runs[0].fsc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(other.resolution_map, runs[0].resolution_map, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares CUDA with the CPU: needs a CUDA device")
def test_local_resolution_same_on_cuda_as_on_cpu():
    device = torch.device("cuda")
    h1, h2, mask, _ = _region_half_maps(dtype=torch.float64)
    kw = dict(sampling_angstrom=16.0, generator=None)
    cpu = local_resolution_3d(h1, h2, APIX, mask, **{**kw, "generator": torch.Generator().manual_seed(0)})
    gpu = local_resolution_3d(h1.to(device), h2.to(device), APIX, mask.to(device), **{**kw, "generator": torch.Generator().manual_seed(0)})
    # Same CPU random phases, float64: curves agree to round-off, so the shells read are equal.
    torch.testing.assert_close(gpu.fsc.cpu(), cpu.fsc, rtol=0, atol=1e-8)
    torch.testing.assert_close(gpu.resolution_angstrom.cpu(), cpu.resolution_angstrom)


def test_without_mask_and_without_correction():
    h1, h2, _, _ = _region_half_maps()
    out = local_resolution_3d(h1, h2, APIX, None, sampling_angstrom=16.0, randomize_at_angstrom=None)
    assert out.centres_px.shape[0] == locres_sample_centres(BOX, 8, 4).shape[0]
    assert torch.isfinite(out.resolution_angstrom).all() and float(out.resolution_angstrom.max()) <= 50.0
    assert out.fsc.shape == (out.centres_px.shape[0], out.crop_size // 2 + 1)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="cubic"):
        local_resolution_3d(torch.zeros(8, 8, 8), torch.zeros(8, 8, 6), 1.0)
    with pytest.raises(ValueError, match="mask shape"):
        local_resolution_3d(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), 1.0, torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="crop_size"):
        local_resolution_3d(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), 1.0, crop_size=7)
    assert math.isnan(float(window_weighted_harmonic_mean_3d(torch.tensor([1.0]), torch.tensor([[0, 0, 0]]), torch.zeros(4, 4, 4), 8)[0, 0, 0]))
