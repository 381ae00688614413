"""Band-averaged FRC scores: identity, invariances, noise, crop layout, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from gmmsession.kernels.fourier import rfft_centered_2d
from gmmsession.kernels.fsc import frc_2d, shell_index_rfft
from gmmsession.kernels.gmm import fourier_crop_box_size, project_gaussians_rfft_2d
from gmmsession.kernels.rotations import quaternion_to_matrix, rotvec_to_matrix
from gmmsession.kernels.scoring import crop_rfft_2d, frc_band_score, frc_per_ring, ring_band_weights

BOX = 32
PIXEL = 2.0


def _gaussians(g: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pos = (torch.rand(g, 3, generator=gen) - 0.5) * 30.0
    amp = 0.5 + torch.rand(g, generator=gen)
    sig = 1.5 + torch.rand(g, generator=gen)
    return pos.to(device), amp.to(device), sig.to(device)


def _poses(n: int, device, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    rot = quaternion_to_matrix(torch.randn(n, 4, generator=gen))
    shift = torch.randn(n, 2, generator=gen)
    return rot.to(device), shift.to(device)


def test_identical_spectra_score_one(device):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, BOX, BOX, generator=gen).to(device)
    spec = rfft_centered_2d(images)
    w = ring_band_weights(BOX, PIXEL, None, None, device=device)
    score = frc_band_score(spec, spec, shell_index_rfft(BOX, 2, device=device), w)
    assert score.shape == (5,)
    torch.testing.assert_close(score, torch.ones_like(score), atol=1e-5, rtol=0)  # float32 sums


def test_frc_per_ring_matches_frc_2d(device):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, BOX, BOX, generator=gen).to(device)
    b = a + torch.randn(3, BOX, BOX, generator=gen).to(device)
    ours = frc_per_ring(rfft_centered_2d(a), rfft_centered_2d(b), shell_index_rfft(BOX, 2, device=device), BOX // 2 + 1)
    torch.testing.assert_close(ours, frc_2d(a, b), atol=1e-5, rtol=0)  # float32 vs float64 ring sums


def test_score_invariant_to_per_ring_scaling(device):
    pos, amp, sig = _gaussians(40, device)
    rot, shift = _poses(4, device)
    proj = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIXEL)
    gen = torch.Generator().manual_seed(3)
    image = proj + 0.3 * rfft_centered_2d(torch.randn(4, BOX, BOX, generator=gen).to(device))
    idx = shell_index_rfft(BOX, 2, device=device)
    w = ring_band_weights(BOX, PIXEL, 20.0, 5.0, device=device)
    # A positive radial filter (B-factor-like plus a ring-dependent bump) times a global scale.
    ring_gain = (3.0 * torch.exp(-0.05 * idx.float() ** 2) + 0.2 * (idx % 3).float() + 0.1).to(device)
    base = frc_band_score(proj, image, idx, w)
    filtered = frc_band_score(proj * ring_gain * 7.0, image, idx, w)
    torch.testing.assert_close(filtered, base, atol=2e-5, rtol=0)  # float32 rounding of the ring sums
    assert bool((base > 0.2).all()) and bool((base < 0.999).all())  # non-trivial case


def test_noise_scores_near_zero(device):
    gen = torch.Generator().manual_seed(4)
    n, box = 64, 64
    a = rfft_centered_2d(torch.randn(n, box, box, generator=gen).to(device))
    b = rfft_centered_2d(torch.randn(n, box, box, generator=gen).to(device))
    w = ring_band_weights(box, 1.0, None, None, device=device)
    score = frc_band_score(a, b, shell_index_rfft(box, 2, device=device), w)
    # Each ring's correlation of independent noise has std ~ 1/sqrt(elements in the ring); the
    # mean over 32 rings with ~1,600 elements in all has std ~ 0.035 (ring 1 alone weighs 1/32).
    # 0.2 is > 5 sigma for one pair; the mean over 64 pairs has std ~ 0.005.
    assert float(score.abs().max()) < 0.2
    assert abs(float(score.mean())) < 0.025


def test_ring_band_weights_select_the_band():
    w = ring_band_weights(64, 1.5, 40.0, 4.0)
    r = torch.arange(33)
    expected = (r >= 96 / 40) & (r <= 96 / 4)  # rings 3 .. 24
    assert torch.equal(w.bool(), expected)
    with pytest.raises(ValueError):
        ring_band_weights(64, 1.5, 4.0, 40.0)  # empty band


def test_crop_matches_cropped_projection(device):
    pos, amp, sig = _gaussians(30, device)
    rot, shift = _poses(3, device)
    box = 48
    max_frequency = 1 / 6.0
    b = fourier_crop_box_size(box, PIXEL, max_frequency)
    assert b < box
    full = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, box, PIXEL)
    cropped = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, box, PIXEL, max_frequency=max_frequency)
    torch.testing.assert_close(crop_rfft_2d(full, b), cropped, atol=1e-4 * float(full.abs().max()), rtol=0)  # float32


def test_shape_errors(device):
    spec = torch.zeros(2, BOX, BOX // 2 + 1, dtype=torch.complex64, device=device)
    idx = shell_index_rfft(BOX, 2, device=device)
    w = torch.ones(BOX // 2 + 1, device=device)
    with pytest.raises(ValueError, match="same shape"):
        frc_band_score(spec, spec[:1], idx, w)
    with pytest.raises(ValueError, match="ring-index grid"):
        frc_band_score(spec, spec, idx[:-1], w)
    with pytest.raises(ValueError, match="even"):
        crop_rfft_2d(spec, 7)


def test_gradient_finite_and_ascends_to_truth(device):
    pos, amp, sig = _gaussians(60, device)
    rot, shift = _poses(4, device)
    idx = shell_index_rfft(BOX, 2, device=device)
    w = ring_band_weights(BOX, PIXEL, 40.0, None, device=device)
    target = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIXEL)
    gen = torch.Generator().manual_seed(5)
    axis = torch.nn.functional.normalize(torch.randn(4, 3, generator=gen), dim=-1).to(device)
    delta = (axis * math.radians(4.0)).requires_grad_(True)
    dshift = torch.full((4, 2), 0.7, device=device, requires_grad=True)
    scores = []
    for _ in range(15):  # plain normalised gradient ascent: the score must rise toward the truth
        proj = project_gaussians_rfft_2d(pos, amp, sig, rotvec_to_matrix(delta) @ rot, shift + dshift, BOX, PIXEL)
        score = frc_band_score(proj, target, idx, w)
        scores.append(score.detach())
        delta.grad = dshift.grad = None
        score.sum().backward()
        assert torch.isfinite(delta.grad).all() and torch.isfinite(dshift.grad).all()
        with torch.no_grad():
            delta += 0.005 * torch.nn.functional.normalize(delta.grad, dim=-1)
            dshift += 0.05 * torch.nn.functional.normalize(dshift.grad, dim=-1)
    assert bool((scores[-1] > scores[0] + 0.01).all())
    assert bool((delta.detach().norm(dim=-1) < math.radians(4.0)).all())  # moved toward delta = 0


def test_pooled_band_correlation_weights_rings_by_signal():
    from gmmsession.kernels.fsc import shell_index_rfft
    from gmmsession.kernels.scoring import frc_band_score, pooled_band_correlation, ring_band_weights

    box, px = 32, 2.0
    g = torch.Generator().manual_seed(3)
    p = torch.complex(torch.randn(4, box, box // 2 + 1, generator=g), torch.randn(4, box, box // 2 + 1, generator=g))
    ring = shell_index_rfft(box, 2)
    w = ring_band_weights(box, px, 40.0, 5.0)
    assert torch.allclose(pooled_band_correlation(p, p, ring, w), torch.ones(4), atol=1e-5)
    assert torch.allclose(pooled_band_correlation(p, 3.0 * p, ring, w), torch.ones(4), atol=1e-5)  # a global scale does not matter
    # A per-ring filter leaves the FRC at 1 but lowers the pooled correlation: rings are weighted by their power.
    filt = torch.exp(-ring.float() / 3.0)
    assert torch.allclose(frc_band_score(p, p * filt, ring, w), torch.ones(4), atol=1e-5)
    assert bool((pooled_band_correlation(p, p * filt, ring, w) < 0.99).all())
    noise = torch.complex(torch.randn(4, box, box // 2 + 1, generator=g), torch.randn(4, box, box // 2 + 1, generator=g))
    # Independent noise: |correlation| ~ 1/sqrt(number of scored elements) (~0.05 here); 0.2 is 4 sigma.
    assert bool((pooled_band_correlation(p, noise, ring, w).abs() < 0.2).all())
