"""Fourier-space GMM fitting kernels: cropping, shell weights, loss, FSC, nearest neighbours."""

import numpy as np
import pytest
import torch

from gmmsession.kernels.fourier import rfft_centered_3d
from gmmsession.kernels.fsc import fsc_3d, shell_index_rfft
from gmmsession.kernels.gmm import gaussians_rfft_3d
from gmmsession.kernels.gmm_fit import (
    crop_rfft_3d,
    fit_box_size,
    fourier_fit_loss,
    gaussians_rfft_3d_cropped,
    max_shell_for_resolution,
    nearest_neighbour_distances,
    shell_correlation_rfft_3d,
    shell_weights_rfft_3d,
)


def _random_gmm(n, box, px, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.6 * box * px
    amp = 0.5 + torch.rand(n, generator=g, dtype=dtype)
    sig = px * (0.8 + torch.rand(n, generator=g, dtype=dtype))
    return pos.to(device), amp.to(device), sig.to(device)


def test_max_shell_and_fit_box():
    # box 64 at 1.5 Å: shell i is at 96 / i Å.
    assert max_shell_for_resolution(64, 1.5, 6.0) == 16  # exactly on shell 16
    assert max_shell_for_resolution(64, 1.5, 6.1) == 15
    assert max_shell_for_resolution(64, 1.5, 3.0) == 32  # Nyquist
    assert fit_box_size(64, 1.5, 6.0) == 34
    assert fit_box_size(64, 1.5, 3.0) == 64  # capped at the box
    with pytest.raises(ValueError):
        max_shell_for_resolution(64, 1.5, 0.0)


@pytest.mark.parametrize("box,res", [(32, 4.0), (33, 5.0), (40, 9.0)])
def test_cropped_grid_holds_every_element_of_the_fitted_shells(box, res):
    px = 1.0
    b = fit_box_size(box, px, res)
    s_max = max_shell_for_resolution(box, px, res)
    full = shell_index_rfft(box, 3).reshape(-1)
    index = torch.arange(full.numel(), dtype=torch.float64).reshape(box, box, box // 2 + 1)
    cropped_index = crop_rfft_3d(torch.complex(index, torch.zeros_like(index)), box, b).real.long().reshape(-1)
    for s in range(s_max + 1):
        want = set(torch.nonzero(full == s).reshape(-1).tolist())
        got = set(cropped_index[full[cropped_index] == s].tolist())
        assert got == want, f"shell {s}: {len(want - got)} elements missing from the cropped grid"
    # and the cropped grid's own shell indices are the full grid's
    assert torch.equal(shell_index_rfft(b, 3).reshape(-1).clamp(max=s_max + 1), full[cropped_index].clamp(max=s_max + 1))


def test_analytic_cropped_transform_equals_cropped_full_transform(device):
    box, px = 40, 1.3
    pos, amp, sig = _random_gmm(30, box, px, device=device)
    b = fit_box_size(box, px, 6.0)
    assert b < box
    full = gaussians_rfft_3d(pos, amp, sig, box, px)
    direct = gaussians_rfft_3d_cropped(pos, amp, sig, box, px, b, chunk_size=7)
    expected = crop_rfft_3d(full, box, b)
    assert direct.shape == (b, b, b // 2 + 1)
    # float64 throughout: only rounding differences
    torch.testing.assert_close(direct, expected, rtol=1e-9, atol=1e-9 * float(full.abs().max()))


def test_shell_correlation_matches_fsc_3d(device):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 24, 24, 24, generator=g, dtype=torch.float64).to(device)
    b = a + 0.7 * torch.randn(2, 24, 24, 24, generator=g, dtype=torch.float64).to(device)
    got = shell_correlation_rfft_3d(rfft_centered_3d(a), rfft_centered_3d(b))
    torch.testing.assert_close(got, fsc_3d(a, b), rtol=0, atol=1e-12)


def test_loss_is_the_mean_relative_error_over_shells(device):
    g = torch.Generator().manual_seed(2)
    vol = torch.randn(20, 20, 20, generator=g, dtype=torch.float64).to(device)
    spec = rfft_centered_3d(vol)
    w = shell_weights_rfft_3d(spec, max_shell=7)
    assert float(fourier_fit_loss(spec, spec, w)) == 0.0
    # A uniform relative error e in every shell gives loss e^2 (every shell weighs 1/S).
    for e in (0.1, 0.5):
        torch.testing.assert_close(fourier_fit_loss((1 + e) * spec, spec, w), torch.tensor(e * e, dtype=torch.float64, device=device))
    # An error in one shell only counts 1/S of its relative size, wherever the shell is.
    idx = shell_index_rfft(20, 3, device=device)
    for s in (1, 7):
        bumped = torch.where(idx == s, 2 * spec, spec)
        torch.testing.assert_close(fourier_fit_loss(bumped, spec, w), torch.tensor(1.0 / 8, dtype=torch.float64, device=device))
    # Shells beyond max_shell carry no weight.
    assert float(w[idx > 7].abs().max()) == 0.0


def test_loss_is_differentiable_through_the_mixture(device):
    box, px = 24, 2.0
    pos, amp, sig = _random_gmm(10, box, px, device=device)
    target = gaussians_rfft_3d_cropped(pos, amp, sig, box, px, 14)
    w = shell_weights_rfft_3d(target, 6)
    moved = (pos + 0.3).requires_grad_(True)
    loss = fourier_fit_loss(gaussians_rfft_3d_cropped(moved, amp, sig, box, px, 14), target, w)
    loss.backward()
    assert float(loss.detach()) > 0 and torch.isfinite(moved.grad).all() and float(moved.grad.abs().sum()) > 0


def test_empty_shells_get_a_floor_not_an_infinite_weight():
    vol = torch.zeros(16, 16, 16, dtype=torch.float64)
    vol[8, 8, 8] = 1.0
    spec = rfft_centered_3d(vol)
    idx = shell_index_rfft(16, 3)
    spec = torch.where(idx <= 3, spec, torch.zeros_like(spec))  # shells 4.. empty
    w = shell_weights_rfft_3d(spec, 6)
    assert torch.isfinite(w).all()
    assert float(w[idx == 5].max()) > 0


@pytest.mark.parametrize("chunk", [3, 4096])
def test_nearest_neighbour_distances_match_brute_force(device, chunk):
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(2, 50, 3, generator=g, dtype=torch.float64).to(device)
    got = nearest_neighbour_distances(pts, chunk_size=chunk)
    d = np.linalg.norm(pts.cpu().numpy()[:, :, None] - pts.cpu().numpy()[:, None], axis=-1)
    d[:, np.arange(50), np.arange(50)] = np.inf
    np.testing.assert_allclose(got.cpu().numpy(), d.min(-1), rtol=1e-12)
    # a cubic lattice of spacing a: every point's nearest neighbour is at a
    a = 3.7
    lattice = torch.stack(torch.meshgrid(*[torch.arange(4.0, dtype=torch.float64)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    torch.testing.assert_close(nearest_neighbour_distances(lattice.to(device)), torch.full((64,), a, dtype=torch.float64, device=device))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        nearest_neighbour_distances(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="must end with"):
        crop_rfft_3d(torch.zeros(8, 8, 4, dtype=torch.complex64), 8, 4)
    with pytest.raises(ValueError, match="share the grid shape"):
        fourier_fit_loss(torch.zeros(4, 4, 3, dtype=torch.complex64), torch.zeros(6, 6, 4, dtype=torch.complex64), torch.zeros(6, 6, 4))
    with pytest.raises(ValueError, match="box_out"):
        crop_rfft_3d(torch.zeros(8, 8, 5, dtype=torch.complex64), 8, 5)
