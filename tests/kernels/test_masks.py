import itertools
import math

import pytest
import torch

from gmmsession.kernels.masks import soft_sphere_mask_3d, squared_distance_to_mask_3d, threshold_mask_3d


def test_soft_sphere_values_and_monotonic_edge(device):
    box, radius, width = 32, 8.0, 4.0
    mask = soft_sphere_mask_3d(box, radius, width, device=device)
    assert mask.shape == (box, box, box) and mask.device.type == device.type
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    c = box // 2
    line = mask[c, c, c:].cpu()  # along +x from the centre voxel: r = 0, 1, 2, ...
    assert torch.all(line[:9] == 1.0)  # r <= radius
    assert torch.all(line[12:] == 0.0)  # r >= radius + width
    assert torch.all(line[1:] <= line[:-1])  # monotonic fall-off
    assert float(line[10]) == pytest.approx(0.5, abs=1e-6)  # halfway through the edge
    assert float(mask[0, 0, 0]) == 0.0


def test_soft_sphere_offset_centres_batch():
    centres = torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])
    mask = soft_sphere_mask_3d(16, 3.0, 2.0, centres)
    assert mask.shape == (2, 16, 16, 16)
    # Centre (x, y, z) relative to box // 2 = 8 -> voxel [z, y, x] = [9, 6, 11].
    assert float(mask[1, 9, 6, 11]) == 1.0 and float(mask[1, 8, 8, 8]) < 1.0
    torch.testing.assert_close(mask[0], soft_sphere_mask_3d(16, 3.0, 2.0))
    hard = soft_sphere_mask_3d(16, 3.0, 0.0)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        soft_sphere_mask_3d(16, 3.0, 2.0, torch.zeros(2))


def _brute_force_d2(binary: torch.Tensor, reach: int) -> torch.Tensor:
    out = torch.full(binary.shape, math.inf)
    ones = binary.nonzero().tolist()
    for z, y, x in itertools.product(*(range(n) for n in binary.shape)):
        for oz, oy, ox in ones:
            if max(abs(oz - z), abs(oy - y), abs(ox - x)) <= reach:
                out[z, y, x] = min(float(out[z, y, x]), (oz - z) ** 2 + (oy - y) ** 2 + (ox - x) ** 2)
    return out


def test_squared_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    binary = torch.rand(9, 10, 11, generator=g) > 0.93
    torch.testing.assert_close(squared_distance_to_mask_3d(binary, 3), _brute_force_d2(binary, 3), atol=0, rtol=0)


def test_squared_distance_of_a_small_region_in_a_large_box():
    """The passes run only over the True voxels' bounding box grown by the reach; the voxels
    outside it are inf, as the brute force says. Batched masks share one box (their union's)."""
    g = torch.Generator().manual_seed(1)
    binary = torch.zeros(2, 12, 13, 14, dtype=torch.bool)
    binary[0, 2:5, 3:6, 8:10] = torch.rand(3, 3, 2, generator=g) > 0.5
    binary[0, 3, 4, 8] = True
    binary[1, 9, 10, 11] = True  # near the far corner: the union's box reaches the edges
    for reach in (0, 2, 3):
        d2 = squared_distance_to_mask_3d(binary, reach)
        for b in range(2):
            torch.testing.assert_close(d2[b], _brute_force_d2(binary[b], reach), atol=0, rtol=0)
    assert bool(torch.isinf(squared_distance_to_mask_3d(torch.zeros(5, 6, 7, dtype=torch.bool), 2)).all())


def test_threshold_mask_extend_and_soft_edge(device):
    box = 24
    vol = torch.zeros(2, box, box, box, device=device)
    vol[:, 12, 12, 12] = 1.0
    binary = threshold_mask_3d(vol, 0.5)
    assert binary.sum() == 2.0
    extended = threshold_mask_3d(vol, 0.5, extend_px=3.0)
    # Voxels at squared distance < 9 from one voxel: count the lattice points of that ball.
    n_ball = sum(1 for p in itertools.product(range(-3, 4), repeat=3) if sum(v * v for v in p) < 9)
    assert float(extended[0].sum()) == n_ball
    soft = threshold_mask_3d(vol, 0.5, extend_px=3.0, soft_edge_px=5.0)
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    line = soft[0, 12, 12, 12:].cpu()  # outwards along x: 1 inside (d2 < 9), cosine edge, 0
    assert torch.all(line[:3] == 1.0)
    assert torch.all(line[1:] <= line[:-1])
    # Voxel x = 12 + 4: the nearest extended-mask voxel is x = 12 + 2, d = 2 -> 0.5 + 0.5 cos(pi 2 / 5).
    assert float(line[4]) == pytest.approx(0.5 + 0.5 * math.cos(math.pi * 2 / 5), abs=1e-6)
    assert float(line[7]) == 0.0  # d = 5 is not < 5
    torch.testing.assert_close(soft[0], soft[1])


def test_threshold_mask_shrink():
    vol = torch.zeros(16, 16, 16)
    vol[4:12, 4:12, 4:12] = 1.0
    shrunk = threshold_mask_3d(vol, 0.5, extend_px=-2.0)
    # A 1-voxel becomes 0 when a 0-voxel lies at distance < 2 (only the face neighbour at 1):
    # one layer is peeled, 8^3 -> 6^3.
    assert float(shrunk.sum()) == 6**3


def test_sample_volume_at_follows_the_voxel_origin(device):
    from gmmsession.kernels.masks import sample_volume_at

    box, px = 12, 2.0
    z, y, x = torch.meshgrid(*(torch.arange(box, dtype=torch.float64, device=device),) * 3, indexing="ij")
    vol = 1.0 * x + 10.0 * y + 100.0 * z  # linear: trilinear interpolation is exact inside
    c = box // 2
    pts = torch.tensor([[0.0, 0.0, 0.0], [px, 0.0, 0.0], [0.5 * px, -1.5 * px, 2.25 * px]], dtype=torch.float64, device=device)
    got = sample_volume_at(vol, pts, px)
    want = torch.tensor([c + 10 * c + 100 * c, (c + 1) + 10 * c + 100 * c, (c + 0.5) + 10 * (c - 1.5) + 100 * (c + 2.25)],
                        dtype=torch.float64, device=device)
    assert torch.allclose(got, want, atol=1e-9)
    # Outside the box: 0. Leading dimensions are kept.
    far = torch.tensor([[[100.0, 0.0, 0.0]]], dtype=torch.float64, device=device)
    assert sample_volume_at(vol, far, px).shape == (1, 1) and float(sample_volume_at(vol, far, px)) == 0.0


def test_width_mask_widens_outside_only(device):
    from gmmsession.kernels.masks import width_masked_sigmas

    sig = torch.tensor([2.0, 2.0, 2.0, 2.0], device=device)
    m = torch.tensor([1.0, 0.0, 0.5, 1.3], device=device)
    out = width_masked_sigmas(sig, m)
    assert torch.allclose(out, torch.tensor([2.0, 8.0, 2.0 / 0.625, 2.0], device=device))
    with pytest.raises(ValueError, match="same shape"):
        width_masked_sigmas(sig, m[:2])
