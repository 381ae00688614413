"""Heterogeneity networks: neutral decoder at zero, mask-limited movement, the feature's
direction, and training that separates two conformations (tiny synthetic GMM, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gmmsession.algorithms import heterogeneity as het
from gmmsession.data.bridge import ParticleTensors
from gmmsession.data.gmm import GmmTensors
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import irfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.gmm import project_gaussians_rfft_2d
from gmmsession.kernels.rotations import quaternion_to_matrix

BOX, PIXEL = 32, 2.0


def _two_blob_gmm(seed: int = 0) -> tuple[GmmTensors, torch.Tensor]:
    """60 Gaussians in two clusters along x; returns the GMM and the mask of the right cluster."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(30, 3, generator=gen) * 3.0 + torch.tensor([-8.0, 0.0, 0.0])
    right = torch.randn(30, 3, generator=gen) * 3.0 + torch.tensor([8.0, 0.0, 0.0])
    pos = torch.cat([left, right])
    gmm = GmmTensors(pos, torch.ones(60), torch.full((60,), 2.0))
    return gmm, torch.arange(60) >= 30


def _params(n: int, rotations: torch.Tensor, pixel: float = PIXEL) -> ParticleTensors:
    z = torch.zeros(n)
    return ParticleTensors(
        rotation=rotations, origin_angstrom=torch.zeros(n, 2), defocus_u_angstrom=z + 15000, defocus_v_angstrom=z + 15000,
        defocus_angle_deg=z, phase_shift_deg=z, ctf_bfactor_angstrom2=z, ctf_scale=z + 1, voltage_kv=z + 300, cs_mm=z + 2.7,
        amplitude_contrast=z + 0.1, pixel_size_angstrom=z + pixel, box_size=torch.full((n,), BOX),
    )


def _images(positions: torch.Tensor, gmm: GmmTensors, params: ParticleTensors, pixel: float = PIXEL) -> torch.Tensor:
    """Noise-free CTF-modulated images of per-particle GMM centres (n, G, 3)."""
    spec = project_gaussians_rfft_2d(positions, gmm.amplitudes, gmm.widths_angstrom, params.rotation, torch.zeros(len(positions), 2), BOX, pixel)
    ctf = ctf_2d(rfft_frequencies_2d(BOX, pixel), **params.ctf_kwargs())
    return irfft_centered_2d(spec * ctf, BOX)


def _decoder(gmm: GmmTensors, n_anchors: int = 4, latent_dim: int = 1, mobility=None, width=None) -> het.AnchorDecoder:
    torch.manual_seed(0)
    anchors = het.anchor_points(gmm.positions_angstrom, gmm.amplitudes, n_anchors)
    return het.AnchorDecoder(gmm.positions_angstrom, anchors, latent_dim, hidden=32, mobility=mobility, anchor_width_angstrom=width)


def test_decoder_is_neutral_at_zero_and_mobility_limits_movement():
    gmm, right = _two_blob_gmm()
    dec = _decoder(gmm, latent_dim=2, mobility=right.float())
    # f(0) - f(0) with f evaluated on one row and on a batch: float32 GEMM rounding only (~1e-8 Å measured).
    torch.testing.assert_close(dec(torch.zeros(3, 2)), gmm.positions_angstrom.expand(3, -1, -1), atol=1e-5, rtol=0)
    with torch.no_grad():
        moved = dec(torch.randn(5, 2) * 3) - gmm.positions_angstrom
    assert float(moved[:, ~right].abs().max()) == 0.0  # outside the mask nothing moves
    assert float(moved[:, right].abs().max()) > 0.0
    full = _decoder(gmm, latent_dim=2)
    torch.testing.assert_close(full.weights.sum(1), torch.ones(60))  # a convex combination of anchor moves
    with pytest.raises(ValueError, match="latent must have shape"):
        dec(torch.zeros(3, 5))


def test_feature_points_towards_the_particles_conformation():
    """Image of the GMM with its right cluster moved by +v (in the image plane): the feature at
    the anchors of the right cluster points along +v, at the left cluster it is small."""
    gmm, right = _two_blob_gmm()
    dec = _decoder(gmm, n_anchors=2, width=4.0)  # sharp weights: each cluster follows its own anchor
    n = 6
    rot = torch.eye(3).expand(n, 3, 3).contiguous()
    params = _params(n, rot)
    v = torch.tensor([0.0, 2.0, 0.0])  # +y in the map frame = +y in the image for the identity pose
    moved = gmm.positions_angstrom.clone()
    moved[right] += v
    images = _images(moved.expand(n, -1, -1), gmm, params)
    setup = het.scoring_setup(BOX, PIXEL, het.HeterogeneityConfig(min_resolution_angstrom=None), torch.device("cpu"), resolution_angstrom=2 * PIXEL)
    feats = het.particle_features(gmm.to("cpu"), dec.weights, het.prepare_batch(images, params, setup), setup)
    assert feats.shape == (n, 2, 3)
    torch.testing.assert_close(feats.square().mean(dim=(1, 2)), torch.ones(n))  # unit RMS
    anchors = het.anchor_points(gmm.positions_angstrom, gmm.amplitudes, 2)
    a_right = int(anchors[:, 0].argmax())
    # +y dominates the right anchor's feature; the left anchor barely moves (its cluster matches).
    assert bool((feats[:, a_right, 1] > 0.8 * feats[:, a_right].norm(dim=-1)).all())
    assert bool((feats[:, 1 - a_right].norm(dim=-1) < 0.3 * feats[:, a_right].norm(dim=-1)).all())


TRAIN_CONFIG = het.HeterogeneityConfig(latent_dim=1, n_anchors=4, hidden=32, n_epochs=15, batch_size=16, learning_rate=3e-3,
                                      min_resolution_angstrom=None)


def _train_and_encode(gmm: GmmTensors, images: torch.Tensor, params: ParticleTensors, setup):
    """Fresh networks trained with TRAIN_CONFIG (batches reshuffled per epoch, seeded), then every
    particle encoded in batches of 16: (encoder, decoder, losses, latent (n, 1))."""
    n, cfg = images.shape[0], TRAIN_CONFIG
    dec = _decoder(gmm, n_anchors=cfg.n_anchors)
    torch.manual_seed(0)
    enc = het.GmmEncoder(dec.n_anchors, cfg.latent_dim, hidden=cfg.hidden)

    def batches(epoch):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for b in range(0, n, cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            yield images[idx], params.select(idx)

    losses = het.train_half(batches, gmm, enc, dec, setup, cfg)
    z = het.encode_half(((images[b : b + 16], params.select(slice(b, b + 16))) for b in range(0, n, 16)), gmm, enc, dec, setup)
    return enc, dec, losses, z


def test_training_separates_two_conformations():
    """Particles of two states (right cluster at -v or +v), random poses, mild noise: after a few
    epochs the 1-D latent separates the states in each direction of the ordering."""
    gmm, right = _two_blob_gmm(1)
    n = 64
    gen = torch.Generator().manual_seed(2)
    rot = quaternion_to_matrix(torch.randn(n, 4, generator=gen))
    params = _params(n, rot)
    state = torch.arange(n) % 2
    shift = torch.tensor([0.0, 0.0, 3.0]) * (2 * state[:, None] - 1)  # along z: seen at every angle but the top view
    pos = gmm.positions_angstrom.expand(n, -1, -1).clone()
    pos[:, right] += shift[:, None, :]
    clean = _images(pos, gmm, params)
    images = clean + 0.3 * clean.std() * torch.randn(clean.shape, generator=gen)
    setup = het.scoring_setup(BOX, PIXEL, TRAIN_CONFIG, torch.device("cpu"), resolution_angstrom=2 * PIXEL)
    enc, dec, losses, z = _train_and_encode(gmm, images, params, setup)
    assert len(losses) == TRAIN_CONFIG.n_epochs and losses[-1] < losses[0]
    z = z[:, 0].numpy()
    # Separation: the two states' latent values do not overlap (one threshold splits them).
    lo, hi = sorted([z[state.numpy() == 0], z[state.numpy() == 1]], key=np.mean)
    assert lo.max() < hi.min(), (np.sort(lo), np.sort(hi))
    # The decoder moves the right cluster (mostly) along z between the two states' latents.
    with torch.no_grad():
        d = (dec(torch.tensor([[float(hi.mean())]])) - dec(torch.tensor([[float(lo.mean())]])))[0]
    move = d[right].mean(0)
    assert float(move[2].abs()) > 0.5 * float(move.norm()) and float(move.norm()) > 1.0
    assert float(d[~right].norm(dim=-1).mean()) < 0.5 * float(d[right].norm(dim=-1).mean())


def test_two_pixel_sizes_each_scored_on_their_own_grid():
    """Optics groups of one box may differ in pixel size: with one scoring grid per pixel size,
    a batch mixing 2.0 and 2.4 Å/px particles trains and encodes each particle on its own grid.
    The two states separate in both groups, and a mixed batch encodes every particle exactly as
    a batch of its group alone does (the grouping keeps the order)."""
    gmm, right = _two_blob_gmm(1)
    n, pixels = 64, (PIXEL, 1.2 * PIXEL)
    gen = torch.Generator().manual_seed(2)
    rot = quaternion_to_matrix(torch.randn(n, 4, generator=gen))
    group = torch.arange(n) % 4 >= 2  # interleaved: every batch holds both pixel sizes
    state = torch.arange(n) % 2
    shift = torch.tensor([0.0, 0.0, 3.0]) * (2 * state[:, None] - 1)
    pos = gmm.positions_angstrom.expand(n, -1, -1).clone()
    pos[:, right] += shift[:, None, :]
    parts = [_params(n, rot, px) for px in pixels]
    params = ParticleTensors(**{k: torch.where(group.view(-1, *[1] * (v.dim() - 1)), vars(parts[1])[k], v)
                                for k, v in vars(parts[0]).items()})
    clean = torch.where(group[:, None, None], _images(pos, gmm, parts[1], pixels[1]), _images(pos, gmm, parts[0], pixels[0]))
    images = clean + 0.3 * clean.std() * torch.randn(clean.shape, generator=gen)
    setups = {px: het.scoring_setup(BOX, px, TRAIN_CONFIG, torch.device("cpu"), resolution_angstrom=2 * max(pixels)) for px in pixels}
    assert setups[pixels[0]].crop != setups[pixels[1]].crop  # the groups really are scored on different grids
    enc, dec, losses, z = _train_and_encode(gmm, images, params, setups)
    assert losses[-1] < losses[0]
    z = z[:, 0]
    for g in (False, True):
        idx = torch.nonzero(group == g).squeeze(-1)
        alone = het.encode_half([(images[idx], params.select(idx))], gmm, enc, dec, setups[pixels[int(g)]])[:, 0]
        torch.testing.assert_close(z[idx], alone, atol=1e-5, rtol=0)  # float32 batch arithmetic only
        zg, sg = z[idx].numpy(), state[idx].numpy()
        lo, hi = sorted([zg[sg == 0], zg[sg == 1]], key=np.mean)
        assert lo.max() < hi.min(), (g, np.sort(lo), np.sort(hi))
    with pytest.raises(ValueError, match="no scoring grid for pixel size 2.4"):
        het.encode_half([(images, params)], gmm, enc, dec, {PIXEL: setups[PIXEL]})


def test_latent_pca_orders_directions_by_variance():
    gen = np.random.default_rng(0)
    z = gen.normal(size=(500, 3)) * np.array([5.0, 1.0, 0.1])
    mean, comps, var = het.latent_pca(z)
    assert abs(abs(comps[0, 0]) - 1) < 0.01 and var[0] > var[1] > var[2]
    np.testing.assert_allclose(mean, z.mean(0))
    assert math.isclose(var.sum(), z.var(0, ddof=1).sum(), rel_tol=1e-9)


def test_conformation_poses_reproduce_the_projected_region():
    """The masked region's conformational centres seen at the old pose land exactly where its
    neutral centres land at the new pose (image coordinates = (A c)_xy - origin)."""
    gmm, right = _two_blob_gmm(3)
    gen = torch.Generator().manual_seed(4)
    n = 5
    a = quaternion_to_matrix(torch.randn(n, 4, generator=gen, dtype=torch.float64))
    origin = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    moves = quaternion_to_matrix(torch.tensor([[1.0, 0.1, 0.0, 0.05]], dtype=torch.float64) + 0.05 * torch.randn(n, 4, generator=gen, dtype=torch.float64))
    t = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    neutral = gmm.positions_angstrom.double()
    conf = neutral.expand(n, -1, -1).clone()
    conf[:, right] = neutral[right] @ moves.transpose(-1, -2) + t[:, None, :]
    conf[:, ~right] += 5 * torch.randn(n, int((~right).sum()), 3, generator=gen, dtype=torch.float64)  # the rest does something else
    new_a, new_origin, angle = het.conformation_poses(a, origin, neutral, conf, right.double())
    seen_before = (conf[:, right] @ a.transpose(-1, -2))[..., :2] - origin[:, None, :]
    seen_after = (neutral[right] @ new_a.transpose(-1, -2))[..., :2] - new_origin[:, None, :]
    torch.testing.assert_close(seen_after, seen_before, atol=1e-9, rtol=0)  # float64, exact rigid data
    torch.testing.assert_close(torch.det(new_a), torch.ones(n, dtype=torch.float64))
    assert bool((angle > 0).all())


def _rigid_domain_case(n: int = 6, seed: int = 4):
    """Neutral GMM, per-particle conformations whose masked (right) cluster moved rigidly, old poses."""
    gmm, right = _two_blob_gmm(3)
    gen = torch.Generator().manual_seed(seed)
    a = quaternion_to_matrix(torch.randn(n, 4, generator=gen, dtype=torch.float64))
    origin = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    moves = quaternion_to_matrix(torch.tensor([[1.0, 0.1, 0.0, 0.05]], dtype=torch.float64) + 0.05 * torch.randn(n, 4, generator=gen, dtype=torch.float64))
    neutral = gmm.positions_angstrom.double()
    conf = neutral.expand(n, -1, -1).clone()
    conf[:, right] = neutral[right] @ moves.transpose(-1, -2) + torch.randn(n, 3, generator=gen, dtype=torch.float64)[:, None, :]
    conf[:, ~right] += 5 * torch.randn(n, int((~right).sum()), 3, generator=gen, dtype=torch.float64)
    return a, origin, neutral, conf, right.double(), gen


def test_projection_refinement_keeps_the_exact_superposition(device):
    """Rigid data: the Kabsch pose already projects the neutral region exactly onto the
    conformation's projection; 30 Adam steps (lr 1e-3) leave it where it is (on every device:
    conf_to_pose runs both where the decoder is)."""
    from gmmsession.kernels.rotations import geodesic_angle_deg

    a, origin, neutral, conf, mask = (v.to(device) for v in _rigid_domain_case()[:5])
    k_rot, k_origin, _ = het.conformation_poses(a, origin, neutral, conf, mask)
    rot, org, rmsd0, rmsd1 = het.refine_conformation_poses(a, origin, k_rot, k_origin, neutral, conf, mask, n_steps=30, learning_rate=1e-3)
    # float64 rounding of a 60-point superposition: measured ~1e-14 Å; the refinement's gradient is
    # noise far below Adam's eps (1e-8), so any step it takes is ~lr * 1e-6 rad at most.
    assert float(rmsd0.max()) < 1e-9 and float(rmsd1.max()) <= float(rmsd0.max())
    assert float(geodesic_angle_deg(rot, k_rot).max()) < 1e-5
    torch.testing.assert_close(org, k_origin, atol=1e-7, rtol=0)
    same, *_ = het.refine_conformation_poses(a, origin, k_rot, k_origin, neutral, conf, mask, n_steps=0)
    torch.testing.assert_close(same, k_rot, atol=0, rtol=0)  # 0 steps: Kabsch only


def test_projection_refinement_reduces_the_projected_rmsd_from_a_perturbed_pose():
    from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix

    a, origin, neutral, conf, mask, gen = _rigid_domain_case()
    k_rot, k_origin, _ = het.conformation_poses(a, origin, neutral, conf, mask)
    n = a.shape[0]
    tilt = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1) * math.radians(1.0)
    start_rot = rotvec_to_matrix(tilt) @ k_rot
    start_origin = k_origin + 0.3 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    rot, org, rmsd0, rmsd1 = het.refine_conformation_poses(a, origin, start_rot, start_origin, neutral, conf, mask)
    assert bool((rmsd0 > 0.1).all()) and bool((rmsd1 < 0.5 * rmsd0).all())
    # The paper's 30 steps at lr 1e-3 move a pose by 1.7 deg at most and mostly fix the shift (the
    # 1 deg tilt measured 0.4-1.4 deg after them); run long enough, the projected fit lands on
    # the exact (Kabsch) pose: the 2D objective's minimum is the 3D superposition.
    rot, _, _, rmsd_long = het.refine_conformation_poses(a, origin, start_rot, start_origin, neutral, conf, mask, n_steps=300,
                                                         learning_rate=3e-3)
    assert float(rmsd_long.max()) < 1e-3 and float(geodesic_angle_deg(rot, k_rot).max()) < 0.01
    with pytest.raises(ValueError, match="weights"):
        het.refine_conformation_poses(a, origin, k_rot, k_origin, neutral, conf, torch.zeros(neutral.shape[0], dtype=torch.float64))


def test_mean_conformation_finds_a_biased_mean_motion():
    """Conformations that all carry one extra rigid motion (a decoder's bias) on top of motions
    that average out: the mean placement is that bias applied to the neutral region."""
    from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix

    gen = torch.Generator().manual_seed(7)
    neutral = 10 * torch.randn(40, 3, generator=gen, dtype=torch.float64)
    weights = torch.rand(40, generator=gen, dtype=torch.float64)
    bias_r = rotvec_to_matrix(torch.tensor([0.0, 0.05, 0.02], dtype=torch.float64))  # 3.08 degrees
    bias_t = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    angles = torch.linspace(-0.3, 0.3, 61, dtype=torch.float64)  # symmetric: averages to no motion
    motions = rotvec_to_matrix(axis * angles[:, None])
    conf = (neutral @ motions.transpose(-1, -2)) @ bias_r.T + bias_t
    reference, angle = het.mean_conformation(neutral, [conf[:30], conf[30:]], weights)
    torch.testing.assert_close(reference, neutral @ bias_r.T + bias_t, atol=1e-9, rtol=0)  # float64, exact rigid data
    assert abs(float(angle) - float(geodesic_angle_deg(bias_r, torch.eye(3, dtype=torch.float64)))) < 1e-9
    unbiased, angle0 = het.mean_conformation(neutral, [neutral @ motions.transpose(-1, -2)], weights)
    torch.testing.assert_close(unbiased, neutral, atol=1e-9, rtol=0)
    assert float(angle0) < 1e-6
