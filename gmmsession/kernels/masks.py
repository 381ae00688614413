"""Real-space masks for maps: soft spheres and thresholded, extended, soft-edged masks.

Both follow RELION 3.1 (``src/mask.cpp``):

* :func:`soft_sphere_mask_3d` is the mask implied by ``softMaskOutsideMap``: 1 inside
  ``radius``, a raised cosine ``0.5 + 0.5 cos(pi (r - radius) / width)`` out to
  ``radius + width``, 0 beyond. ``r`` is measured from voxel ``box // 2`` (the conventions'
  origin).
* :func:`threshold_mask_3d` is ``relion_mask_create --ini_threshold t --extend_inimask e
  --width_soft_edge w`` (``autoMask``): binarise at ``volume >= t``; set every voxel within a
  distance ``< e`` of a 1-voxel to 1 (``e < 0`` shrinks instead); then every remaining 0-voxel at
  distance ``d < w`` from the extended mask gets ``0.5 + 0.5 cos(pi d / w)``. Distances are
  Euclidean in voxels, searched within a cube of half-width ``ceil(e)`` / ``ceil(w)`` as RELION
  does, and computed exactly with a separable min-plus transform (no scipy, no dense kernels).
"""

from __future__ import annotations

import math

import torch

from gmmsession.kernels.conventions import real_space_center_index
from gmmsession.kernels.gmm import render_gaussians_3d

#: A voxel, or a Gaussian's centre, is inside a soft mask (values in [0, 1]) where the mask is
#: at least this value: the middle of a raised-cosine edge. Every "inside" in gmmsession
#: (patch members and radii, the Gaussians that move with a region, local-resolution medians,
#: mask outlines) uses it.
MASK_INSIDE = 0.5

__all__ = [
    "MASK_INSIDE", "soft_sphere_mask_3d", "threshold_mask_3d", "squared_distance_to_mask_3d", "sample_volume_at", "width_masked_sigmas", "gaussian_selection_mask",
]


def soft_sphere_mask_3d(
    box_size: int,
    radius_px: float,
    edge_width_px: float,
    center_px: torch.Tensor | tuple[float, float, float] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Spherical mask with a raised-cosine edge (RELION ``softMaskOutsideMap``).

    Parameters
    ----------
    box_size : int
        Box edge (voxels).
    radius_px : float
        Radius (voxels) inside which the mask is 1.
    edge_width_px : float
        Width (voxels) of the cosine fall-off to 0; 0 gives a hard sphere (``r <= radius``).
    center_px : (..., 3) tensor or (x, y, z) tuple, optional
        Sphere centre(s) in voxels, ``(x, y, z)`` **relative to voxel box // 2** (default: the
        box centre). Leading dimensions batch the output.

    Returns
    -------
    (..., box, box, box) tensor in [0, 1], indexed ``[z, y, x]``.
    """
    if box_size < 1 or radius_px < 0 or edge_width_px < 0:
        raise ValueError(
            f"need box_size >= 1, radius_px >= 0, edge_width_px >= 0; got {box_size}, {radius_px}, {edge_width_px}"
        )
    if center_px is None:
        center = torch.zeros(3, device=device, dtype=dtype)
    else:
        center = torch.as_tensor(center_px, dtype=dtype, device=device)
        if center.shape[-1:] != (3,):
            raise ValueError(f"center_px must have shape (..., 3) of (x, y, z), got {tuple(center.shape)}")
    coords = torch.arange(box_size, device=center.device, dtype=dtype) - real_space_center_index(box_size)
    cx = center[..., 0, None, None, None]
    cy = center[..., 1, None, None, None]
    cz = center[..., 2, None, None, None]
    r = torch.sqrt(
        (coords[:, None, None] - cz) ** 2 + (coords[None, :, None] - cy) ** 2 + (coords[None, None, :] - cx) ** 2
    )
    if edge_width_px == 0:
        return (r <= radius_px).to(dtype)
    t = ((r - radius_px) / edge_width_px).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def _min_plus_axis(d2: torch.Tensor, dim: int, reach: int) -> torch.Tensor:
    """``out[i] = min_{|s| <= reach} d2[i + s] + s^2`` along ``dim`` (out of range = inf)."""
    d2 = d2.movedim(dim, 0).contiguous()  # shifts along the slowest axis touch contiguous blocks
    out = d2.clone()
    n = d2.shape[0]
    for s in range(1, min(reach, n - 1) + 1):
        torch.minimum(out[: n - s], d2[s:] + s * s, out=out[: n - s])  # value from i + s, placed at i
        torch.minimum(out[s:], d2[: n - s] + s * s, out=out[s:])  # value from i - s, placed at i
    return out.movedim(0, dim)


def squared_distance_to_mask_3d(binary: torch.Tensor, reach_px: int) -> torch.Tensor:
    """Squared Euclidean distance (voxels^2) from every voxel to the nearest ``True`` voxel.

    Only ``True`` voxels within the cube ``|dz|, |dy|, |dx| <= reach_px`` are considered (RELION's
    search window); voxels with none get ``inf``. Exact, separable (three 1D min-plus passes).

    Parameters
    ----------
    binary : (..., z, y, x) bool tensor
    reach_px : int  (>= 0)

    Returns
    -------
    (..., z, y, x) float32 tensor (integer values below 2^24, so exact).
    """
    if binary.ndim < 3:
        raise ValueError(f"binary must have shape (..., z, y, x), got {tuple(binary.shape)}")
    if reach_px < 0:
        raise ValueError(f"reach_px must be >= 0, got {reach_px}")
    dtype = torch.float32
    binary = binary.bool()
    out = torch.full(binary.shape, math.inf, dtype=dtype, device=binary.device)
    # A voxel farther than reach_px along some axis from every True voxel has none in its window:
    # only the True voxels' bounding box grown by reach_px needs the passes (a molecule's mask
    # fills a fraction of the box).
    seen = binary.reshape(-1, *binary.shape[-3:]).any(0)
    if not bool(seen.any()):
        return out
    crop = []
    for axis in range(3):
        hit = torch.nonzero(seen.any(dim=tuple(a for a in range(3) if a != axis))).squeeze(-1)
        lo, hi = int(hit[0]), int(hit[-1])
        crop.append(slice(max(lo - reach_px, 0), min(hi + reach_px + 1, seen.shape[axis])))
    index = (..., *crop)
    part = binary[index]
    d2 = torch.where(part, torch.zeros((), dtype=dtype, device=part.device), torch.full((), math.inf, dtype=dtype, device=part.device))
    for dim in (-1, -2, -3):
        d2 = _min_plus_axis(d2, part.ndim + dim, reach_px)
    out[index] = d2
    return out


def threshold_mask_3d(
    volume: torch.Tensor, threshold: float, extend_px: float = 0.0, soft_edge_px: float = 0.0
) -> torch.Tensor:
    """Binarise, extend and soft-edge a map like ``relion_mask_create`` (RELION ``autoMask``).

    Parameters
    ----------
    volume : (..., box, box, box) real tensor
        Map(s) to threshold (e.g. a low-pass filtered average of the half maps).
    threshold : float
        Voxels with ``volume >= threshold`` seed the mask (``--ini_threshold``).
    extend_px : float
        Grow the seed by this distance in voxels (``--extend_inimask``): voxels at distance
        ``< extend_px`` from a seed voxel become 1. Negative values shrink: 1-voxels within
        ``< |extend_px|`` of a 0-voxel become 0.
    soft_edge_px : float
        Width in voxels of the raised-cosine edge (``--width_soft_edge``); 0 for a binary mask.

    Returns
    -------
    (..., box, box, box) tensor in [0, 1], the volume's dtype.
    """
    if volume.ndim < 3:
        raise ValueError(f"volume must have shape (..., z, y, x), got {tuple(volume.shape)}")
    if soft_edge_px < 0:
        raise ValueError(f"soft_edge_px must be >= 0, got {soft_edge_px}")
    mask = volume >= threshold
    if extend_px > 0:
        d2 = squared_distance_to_mask_3d(mask, math.ceil(extend_px))
        mask = d2 < extend_px**2
    elif extend_px < 0:
        d2 = squared_distance_to_mask_3d(~mask, math.ceil(-extend_px))
        mask = mask & ~(d2 < extend_px**2)
    out = mask.to(volume.dtype if volume.is_floating_point() else torch.float32)
    if soft_edge_px > 0:
        d2 = squared_distance_to_mask_3d(mask, math.ceil(soft_edge_px))
        edge = (~mask) & (d2 < soft_edge_px**2)
        d = torch.sqrt(torch.where(edge, d2, torch.zeros_like(d2)))
        soft = (0.5 + 0.5 * torch.cos(math.pi * d / soft_edge_px)).to(out.dtype)
        out = torch.where(edge, soft, out)
    return out


def sample_volume_at(volume: torch.Tensor, positions_angstrom: torch.Tensor, pixel_size_angstrom: float) -> torch.Tensor:
    """Trilinear value of a ``[z, y, x]`` volume at points given in Å from voxel ``box // 2``.

    Parameters
    ----------
    volume : (D, H, W) real tensor (a mask or a map), voxel ``(z, y, x) = (D // 2, H // 2, W // 2)``
        at the origin.
    positions_angstrom : (..., 3) points ``(x, y, z)`` in Å (the GMM convention).
    pixel_size_angstrom : voxel size (Å).

    Returns
    -------
    (...) tensor: the trilinear interpolation at each point; 0 outside the volume. Differentiable
    with respect to the positions.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must have shape (D, H, W), got {tuple(volume.shape)}")
    if positions_angstrom.shape[-1] != 3:
        raise ValueError(f"positions_angstrom must have shape (..., 3), got {tuple(positions_angstrom.shape)}")
    lead = positions_angstrom.shape[:-1]
    pts = positions_angstrom.reshape(-1, 3).to(volume.dtype)
    sizes = torch.tensor([volume.shape[2], volume.shape[1], volume.shape[0]], dtype=volume.dtype, device=volume.device)  # x, y, z
    centre = torch.tensor([real_space_center_index(int(n)) for n in sizes.tolist()], dtype=volume.dtype, device=volume.device)
    voxel = pts / pixel_size_angstrom + centre
    grid = 2 * voxel / (sizes - 1).clamp_min(1) - 1  # align_corners=True: -1 and 1 are the first and last voxel centres
    out = torch.nn.functional.grid_sample(
        volume[None, None], grid[None, None, None], mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.reshape(lead)


def width_masked_sigmas(sigmas: torch.Tensor, mask_values: torch.Tensor) -> torch.Tensor:
    """The paper's focus by Gaussian width: ``sigma' = sigma / (0.25 + 0.75 M)``.

    ``M`` is the mask value at each Gaussian's centre (clipped to ``[0, 1]``): Gaussians inside
    the mask (``M = 1``) keep their width, those outside are 4 times wider, so their projections
    carry little high-resolution signal and the alignment follows the masked region.
    Amplitudes are left as they are (the paper's rule).
    """
    if sigmas.shape != mask_values.shape:
        raise ValueError(f"sigmas {tuple(sigmas.shape)} and mask_values {tuple(mask_values.shape)} must have the same shape")
    return sigmas / (0.25 + 0.75 * mask_values.clamp(0.0, 1.0))


# Soft edge (voxels) of the mask made from a selection of Gaussians.
_SELECTION_SOFT_EDGE_PX = 3.0


def gaussian_selection_mask(
    positions_angstrom: torch.Tensor, widths_angstrom: torch.Tensor, box_size: int, pixel_size_angstrom: float
) -> torch.Tensor:
    """Soft mask covering a set of Gaussians: every voxel within about 2 sigma of a centre, plus a
    raised-cosine edge of 3 voxels (``relion_mask_create`` style).

    The selected Gaussians are rendered with unit peak; the mask seeds where that density is at
    least ``exp(-2)`` (the value 2 sigma from an isolated centre).
    """
    density = render_gaussians_3d(
        positions_angstrom, torch.ones_like(widths_angstrom), widths_angstrom, box_size, pixel_size_angstrom
    )
    return threshold_mask_3d(density, math.exp(-2.0), 0.0, _SELECTION_SOFT_EDGE_PX)
