"""Patch-by-patch refinement building blocks (paper: "Patch-by-patch refinement").

The GMM is split into ``K`` patches by K-means of the Gaussian centres; each patch gets a soft
spherical mask centred on its cluster centre with the radius of its farthest member plus a
5-voxel raised-cosine fall-off (neighbouring masks overlap); after a focused refinement per
patch, the half maps are merged by mask-weighted averaging,
``composite = sum_i M_i map_i / sum_i M_i``, falling back to the map before patches where
``sum_i M_i`` is 0. A result can instead be laid over that composite inside its own mask
(:func:`lay_over`). Pure functions; the session runs the refinements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmmsession.kernels.masks import MASK_INSIDE, sample_volume_at, soft_sphere_mask_3d

__all__ = ["PatchLayout", "patch_layout", "patch_masks", "molecule_gaussians", "mask_centre_radius", "composite_half_maps", "lay_over", "PATCH_SOFT_EDGE_PX"]

PATCH_SOFT_EDGE_PX = 5.0


@dataclass(frozen=True)
class PatchLayout:
    """K patches of a GMM.

    Attributes
    ----------
    labels : (N,) patch index of each clustered Gaussian centre.
    centres_angstrom : (K, 3) cluster centres ``(x, y, z)`` in Å from voxel ``box // 2``.
    radii_angstrom : (K,) distance from each centre to its farthest member (Å).
    """

    labels: np.ndarray
    centres_angstrom: np.ndarray
    radii_angstrom: np.ndarray

    @property
    def k(self) -> int:
        return int(self.centres_angstrom.shape[0])


def patch_layout(centres_angstrom: np.ndarray, k: int = 8, seed: int = 0) -> PatchLayout:
    """K-means (scikit-learn, 10 restarts) of Gaussian centres into ``k`` patches.

    Parameters
    ----------
    centres_angstrom : (N, 3) Gaussian centres in Å (NaN rows, the padding of unequal halves, are dropped).
    k : number of patches (paper: 8); ``k = 1`` is one patch holding every Gaussian.
    seed : K-means seed (the layout is reproducible).
    """
    pts = np.asarray(centres_angstrom, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if k < 1:
        raise ValueError(f"need k >= 1 patches, got {k}")
    if pts.shape[0] < k:
        raise ValueError(f"{pts.shape[0]} Gaussian centres cannot make {k} patches")
    from sklearn.cluster import KMeans  # imported here: scikit-learn takes ~1 s to import

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(pts)
    labels = km.labels_.astype(np.int64)
    centres = np.stack([pts[labels == i].mean(0) for i in range(k)])
    radii = np.array([np.linalg.norm(pts[labels == i] - centres[i], axis=1).max() for i in range(k)])
    return PatchLayout(labels=labels, centres_angstrom=centres, radii_angstrom=radii)


def patch_masks(layout: PatchLayout, box_size: int, pixel_size_angstrom: float, soft_edge_px: float = PATCH_SOFT_EDGE_PX) -> torch.Tensor:
    """(K, box, box, box) soft spherical masks of the patches (1 out to the radius, cosine edge)."""
    centres_px = torch.as_tensor(layout.centres_angstrom / pixel_size_angstrom, dtype=torch.float32)
    return torch.stack([
        soft_sphere_mask_3d(box_size, float(r / pixel_size_angstrom), soft_edge_px, centres_px[i])
        for i, r in enumerate(layout.radii_angstrom)
    ])


def molecule_gaussians(
    positions_angstrom: np.ndarray,
    pixel_size_angstrom: float,
    *,
    density: torch.Tensor | np.ndarray | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Which Gaussians lie on the molecule, so that patches are made of them only.

    A GMM fitted to a whole box also places some Gaussians on solvent noise, far from the
    particle; one such member would make its patch's sphere (radius = farthest member) cover
    most of the molecule. A Gaussian belongs to the molecule where ``mask`` (values in [0, 1])
    is at least :data:`~gmmsession.kernels.masks.MASK_INSIDE` at its centre, or, without a mask, where ``density`` at its centre is at
    least :func:`~gmmsession.algorithms.gmm_build.density_threshold` of ``density`` (the level
    the GMM's K-means seeding uses).

    Parameters
    ----------
    positions_angstrom : (N, 3) centres ``(x, y, z)`` in Å from voxel ``box // 2`` (NaN rows: False).
    pixel_size_angstrom : voxel size (Å).
    density, mask : (D, H, W) map or mask; exactly one of them.

    Returns
    -------
    (N,) bool.
    """
    from gmmsession.algorithms.gmm_build import density_threshold

    if (density is None) == (mask is None):
        raise ValueError("give exactly one of density and mask")
    pos = np.asarray(positions_angstrom, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(pos).all(axis=1)
    region = torch.as_tensor(np.asarray(mask if mask is not None else density), dtype=torch.float64)
    level = MASK_INSIDE if mask is not None else density_threshold(region)
    values = sample_volume_at(region, torch.as_tensor(np.where(finite[:, None], pos, 0.0)), pixel_size_angstrom).numpy()
    return finite & (values >= level)


def mask_centre_radius(mask: np.ndarray, pixel_size_angstrom: float, threshold: float = MASK_INSIDE) -> tuple[np.ndarray, float]:
    """Centre and radius of a (soft) mask, to place a patch that was given as a mask.

    Parameters
    ----------
    mask : (D, H, W) values in [0, 1], indexed ``[z, y, x]``.
    pixel_size_angstrom : voxel size (Å).
    threshold : voxels with ``mask >= threshold`` count for the radius.

    Returns
    -------
    centre_angstrom : (3,) the mask's centre of mass ``(x, y, z)`` in Å from voxel ``box // 2``
        (as :class:`PatchLayout` centres).
    radius_angstrom : distance from that centre to the farthest voxel with ``mask >= threshold`` (Å).
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"need a (D, H, W) mask, got shape {m.shape}")
    total = m.sum()
    if not total > 0:
        raise ValueError("the mask is empty (sums to 0): it has no centre")
    grid = np.stack(np.meshgrid(*(np.arange(n) - n // 2 for n in m.shape), indexing="ij"), -1)  # (D, H, W, 3) z, y, x
    centre_zyx = (grid * m[..., None]).reshape(-1, 3).sum(0) / total
    inside = grid[m >= threshold] if (m >= threshold).any() else grid[m > 0]
    radius_px = float(np.linalg.norm(inside - centre_zyx, axis=1).max())
    return centre_zyx[::-1] * pixel_size_angstrom, radius_px * pixel_size_angstrom


def composite_half_maps(patch_maps: torch.Tensor, masks: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Mask-weighted composite of per-patch half maps.

    Parameters
    ----------
    patch_maps : (K, 2, D, H, W) half maps of each patch's refinement.
    masks : (K, D, H, W) patch masks in [0, 1].
    fallback : (2, D, H, W) half maps used where no mask reaches (the map before patches).

    Returns
    -------
    (2, D, H, W): ``sum_i M_i map_i / sum_i M_i`` where ``sum_i M_i > 0``, else ``fallback``;
    each half from that half's maps only.
    """
    if patch_maps.ndim != 5 or patch_maps.shape[1] != 2 or masks.shape != (patch_maps.shape[0], *patch_maps.shape[2:]):
        raise ValueError(f"need patch_maps (K, 2, D, H, W) and masks (K, D, H, W); got {tuple(patch_maps.shape)}, {tuple(masks.shape)}")
    if fallback.shape != patch_maps.shape[1:]:
        raise ValueError(f"fallback must have shape {tuple(patch_maps.shape[1:])}, got {tuple(fallback.shape)}")
    weight = masks.sum(0)
    num = (masks[:, None] * patch_maps).sum(0)
    covered = weight > 0
    return torch.where(covered, num / torch.where(covered, weight, torch.ones_like(weight)), fallback)


def lay_over(base: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Lay maps over a composite inside their masks, in order: ``out = M_i map_i + (1 - M_i) out``.

    Where a mask is 1 the result is that map alone, where it is 0 the maps below it, blended
    over the mask's soft edge; a later map lies over an earlier one.

    Parameters
    ----------
    base : (2, D, H, W) half maps below (e.g. :func:`composite_half_maps` of the other patches).
    maps : (J, 2, D, H, W) half maps to lay over, bottom first (J may be 0).
    masks : (J, D, H, W) their masks, in [0, 1].

    Returns
    -------
    (2, D, H, W), each half from that half's maps only.
    """
    if maps.ndim != 5 or maps.shape[1:] != base.shape or masks.shape != (maps.shape[0], *base.shape[1:]):
        raise ValueError(f"need base (2, D, H, W), maps (J, 2, D, H, W) and masks (J, D, H, W) on one grid; "
                         f"got {tuple(base.shape)}, {tuple(maps.shape)}, {tuple(masks.shape)}")
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise ValueError("masks must lie in [0, 1]")
    out = base
    for m, top in zip(masks, maps):
        out = m * top + (1 - m) * out
    return out
