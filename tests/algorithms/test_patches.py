"""Patch layout, masks and the mask-weighted composite."""

import numpy as np
import pytest
import torch

from gmmsession.algorithms.patches import composite_half_maps, lay_over, molecule_gaussians, patch_layout, patch_masks
from gmmsession.kernels.masks import soft_sphere_mask_3d
from gmmsession.kernels.gmm import render_gaussians_3d


def _two_blobs(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal([-15.0, 0.0, 0.0], 2.0, size=(50, 3))
    b = rng.normal([15.0, 0.0, 0.0], 2.0, size=(50, 3))
    return np.concatenate([a, b])


def test_layout_finds_the_clusters_and_radii():
    pts = _two_blobs()
    lay = patch_layout(np.concatenate([pts, np.full((3, 3), np.nan)]), k=2)  # NaN padding rows are ignored
    assert lay.k == 2 and lay.labels.shape == (100,)
    assert set(lay.labels[:50]) != set(lay.labels[50:])
    order = np.argsort(lay.centres_angstrom[:, 0])
    assert np.allclose(lay.centres_angstrom[order, 0], [-15.0, 15.0], atol=1.0)
    for i in range(2):
        members = pts[lay.labels == i]
        assert lay.radii_angstrom[i] == pytest.approx(np.linalg.norm(members - lay.centres_angstrom[i], axis=1).max())
    assert patch_layout(pts, k=1).labels.max() == 0
    with pytest.raises(ValueError, match="cannot make"):
        patch_layout(pts[:3], k=4)


def test_masks_cover_their_members_and_composite_weights():
    pts = _two_blobs()
    lay = patch_layout(pts, k=2)
    box, px = 40, 1.5
    masks = patch_masks(lay, box, px)
    assert masks.shape == (2, box, box, box)
    c = box // 2
    for i in range(2):
        for p in pts[lay.labels == i]:
            x, y, z = np.round(p / px).astype(int) + c
            # The nearest voxel is up to sqrt(3)/2 px farther out than the member: on the 5 px
            # cosine edge that is >= 0.5 + 0.5 cos(pi 0.87 / 5) = 0.93.
            assert masks[i, z, y, x] >= 0.93
    # Composite: each patch's map where only its mask reaches, the fallback where none does.
    maps = torch.stack([torch.full((2, box, box, box), 1.0), torch.full((2, box, box, box), 3.0)])
    maps[:, 1] *= 10  # half 2 differs: halves are never mixed
    fallback = torch.full((2, box, box, box), -1.0)
    out = composite_half_maps(maps, masks, fallback)
    only0 = (masks[0] > 0) & (masks[1] == 0)
    only1 = (masks[1] > 0) & (masks[0] == 0)
    none = (masks[0] == 0) & (masks[1] == 0)
    assert only0.any() and only1.any() and none.any()
    # (M x / M rounds in float32: compare to 1e-6 relative.)
    for h, scale in ((0, 1.0), (1, 10.0)):
        assert torch.allclose(out[h][only0], torch.tensor(1.0 * scale), rtol=1e-6)
        assert torch.allclose(out[h][only1], torch.tensor(3.0 * scale), rtol=1e-6)
        assert torch.all(out[h][none] == -1.0)
    both = (masks[0] > 0) & (masks[1] > 0)
    if both.any():
        w = masks[:, both]
        assert torch.allclose(out[0][both], (w[0] * 1 + w[1] * 3) / (w[0] + w[1]))


def test_lay_over_puts_each_map_over_the_ones_below_inside_its_mask():
    box = 16
    base = torch.stack([torch.full((box,) * 3, 1.0), torch.full((box,) * 3, 10.0)])  # halves differ
    low = soft_sphere_mask_3d(box, 3.0, 2.0, (-2.0, 0.0, 0.0))
    high = soft_sphere_mask_3d(box, 3.0, 2.0, (2.0, 0.0, 0.0))  # overlaps low around x = 0
    maps = torch.stack([torch.full((2, box, box, box), 3.0), torch.full((2, box, box, box), 5.0)])
    maps[:, 1] *= 10
    out = lay_over(base, maps, torch.stack([low, high]))
    for h, scale in ((0, 1.0), (1, 10.0)):
        assert torch.all(out[h][(low == 0) & (high == 0)] == 1.0 * scale)  # neither: the base
        assert torch.all(out[h][(low == 1) & (high == 0)] == 3.0 * scale)  # the low map alone
        assert torch.all(out[h][high == 1] == 5.0 * scale)  # the high map wins, also where low is 1
        edge = (high > 0) & (high < 1) & (low == 0)
        assert edge.any()
        torch.testing.assert_close(out[h][edge], (high[edge] * 5.0 + (1 - high[edge]) * 1.0) * scale)
    assert ((low == 1) & (high == 1)).any()
    # The order matters; nothing to lay over leaves the base.
    swapped = lay_over(base, maps.flip(0), torch.stack([high, low]))
    assert torch.all(swapped[0][low == 1] == 3.0)
    assert torch.equal(lay_over(base, maps[:0], torch.stack([low, high])[:0]), base)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lay_over(base, maps[:1], 2 * low[None])
    with pytest.raises(ValueError, match="one grid"):
        lay_over(base, maps[:1, :, :8], low[None])


def test_molecule_gaussians_drop_solvent_outliers_that_would_inflate_a_patch():
    """A Gaussian fitted to solvent noise far from the particle is not clustered: with it, its
    patch's radius (farthest member) grows to reach it; without it, the radius is the blob's."""
    pts = _two_blobs()
    box, px = 48, 1.5
    density = render_gaussians_3d(torch.as_tensor(pts), torch.ones(len(pts), dtype=torch.float64),
                                  torch.full((len(pts),), 2.0, dtype=torch.float64), box, px)
    outlier = np.array([[0.0, 30.0, 20.0]])  # in the box, on no density
    centres = np.concatenate([pts, outlier, np.full((1, 3), np.nan)])
    keep = molecule_gaussians(centres, px, density=density)
    assert keep[:100].all() and not keep[100] and not keep[101]
    inflated = patch_layout(centres, k=2).radii_angstrom.max()
    clean = patch_layout(centres[keep], k=2).radii_angstrom.max()
    assert inflated > 25.0 and clean < 10.0
    mask = (density > 0.05 * density.max()).double()
    assert np.array_equal(molecule_gaussians(centres, px, mask=mask), keep)
    with pytest.raises(ValueError, match="exactly one"):
        molecule_gaussians(centres, px)


def test_inside_a_mask_means_the_same_everywhere():
    """Patch members, the Gaussians that move with a region and the local-resolution summary
    all call a point inside where the mask is >= MASK_INSIDE; a value exactly at the
    threshold is inside for each of them, one just below is outside for each of them."""
    from gmmsession.algorithms.final_map import summarize_by_masks
    from gmmsession.algorithms.heterogeneity import mobility_from_mask
    from gmmsession.kernels.masks import MASK_INSIDE, sample_volume_at

    box, pix = 8, 2.0
    mask = np.zeros((box, box, box))
    mask[4, 4, 4] = 1.0
    mask[4, 4, 5] = MASK_INSIDE                      # x = +1 voxel: exactly at the threshold
    mask[4, 4, 3] = np.nextafter(MASK_INSIDE, 0.0)   # x = -1 voxel: just below
    centres = np.array([[0.0, 0.0, 0.0], [pix, 0.0, 0.0], [-pix, 0.0, 0.0]])  # (x, y, z) Å from box // 2
    expected = [True, True, False]

    assert molecule_gaussians(centres, pix, mask=mask).tolist() == expected
    values = sample_volume_at(torch.as_tensor(mask), torch.as_tensor(centres), pix)
    assert (mobility_from_mask(values) == 1).tolist() == expected
    assert int(summarize_by_masks(np.ones_like(mask), mask)["n_voxels"].iloc[0]) == sum(expected)
