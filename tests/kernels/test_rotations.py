"""Weighted Kabsch superposition: exact recovery, proper rotations only, weights honoured."""

from __future__ import annotations

import pytest
import torch

from gmmsession.kernels.rotations import geodesic_angle_deg, kabsch_superposition, quaternion_to_matrix


def test_recovers_a_known_rigid_motion_in_a_batch():
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(5, 40, 3, generator=gen, dtype=torch.float64) * 10
    rot = quaternion_to_matrix(torch.randn(5, 4, generator=gen, dtype=torch.float64))
    t = torch.randn(5, 3, generator=gen, dtype=torch.float64) * 5
    tgt = src @ rot.transpose(-1, -2) + t[:, None, :]
    r, tt = kabsch_superposition(src, tgt)
    torch.testing.assert_close(r, rot, atol=1e-10, rtol=0)  # float64, exact data
    torch.testing.assert_close(tt, t, atol=1e-9, rtol=0)


def test_a_mirror_image_still_gives_a_rotation():
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    r, _ = kabsch_superposition(src, src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert float(torch.det(r)) == pytest.approx(1.0, abs=1e-12)


def test_weights_select_the_points_that_count():
    """Half the points move rigidly, half elsewhere: weights on the first half recover their motion."""
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(60, 3, generator=gen, dtype=torch.float64) * 8
    rot = quaternion_to_matrix(torch.tensor([[0.9, 0.1, 0.3, -0.2]], dtype=torch.float64))[0]
    tgt = src @ rot.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    tgt[30:] = torch.randn(30, 3, generator=gen, dtype=torch.float64) * 8
    w = torch.cat([torch.ones(30), torch.zeros(30)]).double()
    r, _ = kabsch_superposition(src, tgt, w)
    assert float(geodesic_angle_deg(r, rot)) < 1e-6
    r_all, _ = kabsch_superposition(src, tgt)
    assert float(geodesic_angle_deg(r_all, rot)) > 1.0  # unweighted, the outliers pull it off
    with pytest.raises(ValueError, match="same shape"):
        kabsch_superposition(src, tgt[:10])
