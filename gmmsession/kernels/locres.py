"""Local resolution by windowed gold-standard FSC (``relion_postprocess --locres``), batched.

The recipe of RELION 3.1 ``Postprocessing::run_locres`` (``src/postprocessing.cpp``), with the
work reorganised for speed:

* **Sample grid.** Window centres every ``step_px = round(sampling / pixel)`` voxels (RELION's
  rounding, halves up) on each
  axis, at ``-box // 2 + n * step_px`` voxels from the origin voxel ``box // 2`` (RELION's
  Xmipp-origin loop), kept where their distance to the origin is ``< box // 2 - radius_px``
  (RELION's sphere). :func:`locres_sample_centres` builds it; callers may restrict it further
  (e.g. to windows that touch a mask, :func:`windows_touching_mask`).
* **Window.** A soft sphere ``w(d)``: 1 for ``d < radius_px``, ``0.5 - 0.5 cos(pi (r_out - d) /
  edge_px)`` out to ``r_out = radius_px + edge_px``, 0 beyond (RELION ``raisedCosineMask``; the
  same curve as :func:`gmmsession.kernels.masks.soft_sphere_mask_3d`). RELION's defaults are
  ``radius = sampling / 2`` and ``edge = sampling`` (Å, rounded to voxels).
* **Cropped FSC (the speed choice).** RELION multiplies the *full* half maps by each window
  and takes full-box FFTs. Here each window's content is cut out into a cube of side
  ``crop = 2 * floor(radius_px + edge_px) + 2`` (the smallest even cube that holds the whole
  window support around voxel ``crop // 2``; content outside the map is zero, as in RELION),
  so every FFT is ``(crop / box)^3`` the size. The windowed maps are identical; only the
  Fourier sampling differs: shells are ``crop * pixel / i`` Å apart instead of ``box * pixel /
  i``, i.e. the FSC is the same curve read on a coarser grid of shells (each shell averages
  ``box / crop`` of RELION's). Pass ``crop_size=box`` to get RELION's shells (and its FSC
  values exactly) at full-box cost.
* **Correction.** With ``randomize_from_shell`` (RELION: ``--locres_randomize_at`` 25 Å, shell
  ``int(box * pixel / 25)`` of the *full* box), phases of both full half maps are randomised
  once beyond that shell, the same windows are cut from them, and ``FSC_true = (FSC_t - FSC_n)
  / (1 - FSC_n)`` from two (crop) shells beyond the randomisation shell converted to the crop
  grid, ``int(crop * pixel / randomize_at_A)``. Shell 0 of every curve that is ``<= 0`` is
  set to 1 (RELION ``calculateFSCtrue``).
* **Resolution per window.** The last shell before the corrected FSC first drops below 0.143
  (:func:`gmmsession.kernels.fsc.resolution_at_threshold`), capped at ``min_resolution``
  (RELION ``--locres_minres``, 50 Å) and set to it when no shell passes.
* **Full map.** RELION's rule: the window-weighted harmonic mean of the windows'
  resolutions, ``1 / (sum_w w / res_w / sum_w w)`` at every voxel; voxels that no window
  reaches are NaN (RELION writes 0). It is smooth (windows overlap by design) and needs no
  extra interpolation grid.

All tensors stay on the inputs' device; windows are processed ``batch_size`` at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from gmmsession.kernels.conventions import real_space_center_index
from gmmsession.kernels.fsc import (
    corrected_masked_fsc,
    fsc_3d,
    phase_randomize_3d,
    resolution_at_threshold,
)

__all__ = [
    "LocalResolution3d",
    "locres_sample_centres",
    "locres_window_crop_size",
    "locres_window_3d",
    "extract_windows_3d",
    "windows_touching_mask",
    "windowed_fsc_3d",
    "window_resolutions",
    "window_weighted_harmonic_mean_3d",
    "local_resolution_3d",
]


class LocalResolution3d(NamedTuple):
    """Output of :func:`local_resolution_3d`.

    Attributes
    ----------
    resolution_map : (box, box, box) float32 tensor
        Local resolution (Å) per voxel; NaN where no window reaches (and outside a given mask).
    centres_px : (n, 3) long tensor
        Window centres ``(x, y, z)`` in voxels from voxel ``box // 2``.
    resolution_angstrom : (n,) float64 tensor
        Resolution of each window (Å).
    fsc : (n, crop // 2 + 1) float64 tensor
        Each window's (corrected) FSC on the crop's shells (``crop * pixel / i`` Å).
    crop_size : int
        Side of the cropped cube used for the window FFTs.
    """

    resolution_map: torch.Tensor
    centres_px: torch.Tensor
    resolution_angstrom: torch.Tensor
    fsc: torch.Tensor
    crop_size: int


def _relion_round(value: float) -> int:
    """RELION's ``ROUND``: halves away from zero (Python's ``round`` rounds them to even)."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def locres_sample_centres(
    box_size: int, step_px: int, radius_px: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """RELION's local-resolution sample grid.

    Parameters
    ----------
    box_size : int
        Map edge (voxels).
    step_px : int
        Grid spacing (voxels), ``round(sampling_angstrom / pixel)``.
    radius_px : int
        Window radius (voxels); centres are kept where ``|c| < box // 2 - radius_px``.

    Returns
    -------
    (n, 3) long tensor of centres ``(x, y, z)`` in voxels from voxel ``box // 2``, z slowest.
    """
    if box_size < 2 or step_px < 1 or radius_px < 0:
        raise ValueError(f"need box_size >= 2, step_px >= 1, radius_px >= 0; got {box_size}, {step_px}, {radius_px}")
    origin = real_space_center_index(box_size)
    axis = torch.arange(-origin, box_size - origin, step_px, device=device, dtype=torch.long)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    centres = torch.stack([x.flatten(), y.flatten(), z.flatten()], dim=-1)
    limit = box_size // 2 - radius_px
    keep = (centres.to(torch.float64) ** 2).sum(-1) < float(limit) ** 2
    return centres[keep]


def locres_window_crop_size(radius_px: float, edge_px: float) -> int:
    """Smallest even cube side holding a window of support ``radius + edge`` around voxel ``crop // 2``.

    ``2 * floor(radius_px + edge_px) + 2``: offsets ``-floor(R) .. floor(R)`` fit in
    ``-crop // 2 .. crop // 2 - 1``.
    """
    if radius_px < 0 or edge_px < 0:
        raise ValueError(f"radius_px and edge_px must be >= 0, got {radius_px}, {edge_px}")
    return 2 * int(math.floor(radius_px + edge_px)) + 2


def locres_window_3d(
    crop_size: int, radius_px: float, edge_px: float, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The soft spherical window centred at voxel ``crop // 2`` (RELION ``raisedCosineMask``).

    Returns
    -------
    (crop, crop, crop) tensor in [0, 1]: 1 for ``d < radius``, ``0.5 - 0.5 cos(pi (radius + edge
    - d) / edge)`` up to ``radius + edge``, 0 beyond (a hard sphere ``d <= radius`` when ``edge = 0``).
    """
    if crop_size < 1 or radius_px < 0 or edge_px < 0:
        raise ValueError(f"need crop_size >= 1, radius_px >= 0, edge_px >= 0; got {crop_size}, {radius_px}, {edge_px}")
    c = torch.arange(crop_size, device=device, dtype=torch.float64) - real_space_center_index(crop_size)
    d = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if edge_px == 0:
        return (d <= radius_px).to(dtype)
    outer = radius_px + edge_px
    soft = 0.5 - 0.5 * torch.cos(math.pi * (outer - d) / edge_px)
    w = torch.where(d < radius_px, torch.ones_like(d), torch.where(d > outer, torch.zeros_like(d), soft))
    return w.to(dtype)


def _window_indices(centres_px: torch.Tensor, box_size: int, crop_size: int) -> tuple[torch.Tensor, ...]:
    """Per-axis voxel indices ``(n, crop)`` of each crop and their in-box flags."""
    offsets = torch.arange(crop_size, device=centres_px.device) - real_space_center_index(crop_size)
    origin = real_space_center_index(box_size)
    idx = centres_px[:, :, None] + origin + offsets  # (n, 3 [x, y, z], crop)
    valid = (idx >= 0) & (idx < box_size)
    return idx.clamp(0, box_size - 1), valid


def extract_windows_3d(volumes: torch.Tensor, centres_px: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Cut cubes of side ``crop_size`` centred (voxel ``crop // 2``) on each centre; zero outside the map.

    Parameters
    ----------
    volumes : (..., box, box, box) real tensor (``[z, y, x]``)
    centres_px : (n, 3) long tensor, ``(x, y, z)`` voxels from voxel ``box // 2``
    crop_size : int

    Returns
    -------
    (..., n, crop, crop, crop) tensor.
    """
    if volumes.ndim < 3 or len(set(volumes.shape[-3:])) != 1:
        raise ValueError(f"volumes must have shape (..., box, box, box), got {tuple(volumes.shape)}")
    if centres_px.ndim != 2 or centres_px.shape[-1] != 3:
        raise ValueError(f"centres_px must have shape (n, 3), got {tuple(centres_px.shape)}")
    box = int(volumes.shape[-1])
    idx, valid = _window_indices(centres_px.to(volumes.device, torch.long), box, crop_size)
    ix, iy, iz = idx.unbind(1)
    vx, vy, vz = valid.unbind(1)
    cut = volumes[..., iz[:, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    inside = vz[:, :, None, None] & vy[:, None, :, None] & vx[:, None, None, :]
    return cut * inside.to(cut.dtype)


def windows_touching_mask(
    mask: torch.Tensor, centres_px: torch.Tensor, window: torch.Tensor, threshold: float = 0.5, batch_size: int = 64
) -> torch.Tensor:
    """Which windows reach a mask voxel with value ``>= threshold`` (anywhere the window is > 0).

    Parameters
    ----------
    mask : (box, box, box) tensor
    centres_px : (n, 3) long tensor
    window : (crop, crop, crop) tensor from :func:`locres_window_3d`
    threshold : float
    batch_size : int

    Returns
    -------
    (n,) bool tensor.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape (box, box, box), got {tuple(mask.shape)}")
    support = window.to(mask.device) > 0
    crop = int(window.shape[-1])
    out = []
    for start in range(0, centres_px.shape[0], batch_size):
        cut = extract_windows_3d(mask, centres_px[start : start + batch_size], crop)
        out.append(((cut >= threshold) & support).flatten(1).any(dim=1))
    if not out:
        return torch.zeros(0, dtype=torch.bool, device=mask.device)
    return torch.cat(out)


def _dc_fix(fsc: torch.Tensor) -> torch.Tensor:
    dc = fsc[..., :1]
    return torch.cat([torch.where(dc <= 0, torch.ones_like(dc), dc), fsc[..., 1:]], dim=-1)


def windowed_fsc_3d(
    half1: torch.Tensor,
    half2: torch.Tensor,
    centres_px: torch.Tensor,
    window: torch.Tensor,
    randomized: tuple[torch.Tensor, torch.Tensor] | None = None,
    randomize_from_shell_crop: int | None = None,
) -> torch.Tensor:
    """FSC of the windowed half maps for one batch of windows, optionally phase-randomisation corrected.

    Parameters
    ----------
    half1, half2 : (box, box, box) real tensors
    centres_px : (b, 3) long tensor of window centres
    window : (crop, crop, crop) tensor from :func:`locres_window_3d`
    randomized : pair of (box, box, box) tensors, optional
        The half maps with phases randomised beyond a shell (:func:`phase_randomize_3d`).
    randomize_from_shell_crop : int, optional
        That shell on the crop's grid; required with ``randomized``.

    Returns
    -------
    (b, crop // 2 + 1) float64 tensor: ``FSC_true`` (or the masked FSC without ``randomized``).
    """
    if half1.shape != half2.shape or half1.ndim != 3:
        raise ValueError(f"half1 and half2 must be (box, box, box) of one shape, got {tuple(half1.shape)}, {tuple(half2.shape)}")
    crop = int(window.shape[-1])
    maps = [half1, half2] if randomized is None else [half1, half2, randomized[0], randomized[1]]
    cuts = extract_windows_3d(torch.stack(maps), centres_px, crop) * window.to(half1.device, half1.dtype)
    fsc = _dc_fix(fsc_3d(cuts[0::2], cuts[1::2]).to(torch.float64))  # (1 or 2, b, shells)
    if randomized is None:
        return fsc[0]
    if randomize_from_shell_crop is None:
        raise ValueError("randomize_from_shell_crop is required with randomized maps")
    return corrected_masked_fsc(fsc[0], fsc[1], randomize_from_shell_crop)


def window_resolutions(
    fsc: torch.Tensor, crop_size: int, pixel_size_angstrom: float, threshold: float = 0.143, min_resolution_angstrom: float = 50.0
) -> torch.Tensor:
    """Resolution (Å) of each window's FSC: RELION's rule, capped at ``min_resolution_angstrom``.

    Parameters
    ----------
    fsc : (..., crop // 2 + 1) tensor

    Returns
    -------
    (...,) float64 tensor; ``min_resolution_angstrom`` where no shell passes.
    """
    res = resolution_at_threshold(fsc, crop_size, pixel_size_angstrom, threshold)
    return res.clamp(max=min_resolution_angstrom)


def window_weighted_harmonic_mean_3d(
    values: torch.Tensor, centres_px: torch.Tensor, window: torch.Tensor, box_size: int, batch_size: int = 64
) -> torch.Tensor:
    """Per voxel ``1 / (sum_w w / v_w / sum_w w)`` over windows ``w`` (RELION's local-resolution map).

    Parameters
    ----------
    values : (n,) positive tensor (e.g. resolutions, Å)
    centres_px : (n, 3) long tensor
    window : (crop, crop, crop) tensor
    box_size : int

    Returns
    -------
    (box, box, box) float32 tensor; NaN where the windows' weights sum to 0.
    """
    if values.ndim != 1 or centres_px.shape != (values.shape[0], 3):
        raise ValueError(f"values (n,) and centres_px (n, 3) must match, got {tuple(values.shape)}, {tuple(centres_px.shape)}")
    device = values.device
    crop = int(window.shape[-1])
    w = window.to(device, torch.float64).flatten()
    inv_sum = torch.zeros(box_size**3, dtype=torch.float64, device=device)
    w_sum = torch.zeros(box_size**3, dtype=torch.float64, device=device)
    for start in range(0, values.shape[0], batch_size):
        idx, valid = _window_indices(centres_px[start : start + batch_size].to(device, torch.long), box_size, crop)
        ix, iy, iz = idx.unbind(1)
        vx, vy, vz = valid.unbind(1)
        flat = (iz[:, :, None, None] * box_size + iy[:, None, :, None]) * box_size + ix[:, None, None, :]
        inside = (vz[:, :, None, None] & vy[:, None, :, None] & vx[:, None, None, :]).flatten(1)
        weights = w[None, :] * inside
        keep = weights > 0
        flat = flat.flatten(1)[keep]
        weights_kept = weights[keep]
        inv = (weights / values[start : start + batch_size, None].to(torch.float64))[keep]
        inv_sum.index_add_(0, flat, inv)
        w_sum.index_add_(0, flat, weights_kept)
    out = torch.where(w_sum > 0, w_sum / torch.where(inv_sum > 0, inv_sum, torch.ones_like(inv_sum)), torch.full_like(w_sum, math.nan))
    return out.reshape(box_size, box_size, box_size).to(torch.float32)


def local_resolution_3d(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_angstrom: float,
    mask: torch.Tensor | None = None,
    *,
    sampling_angstrom: float = 25.0,
    radius_angstrom: float | None = None,
    edge_angstrom: float | None = None,
    randomize_at_angstrom: float | None = 25.0,
    min_resolution_angstrom: float = 50.0,
    threshold: float = 0.143,
    mask_threshold: float = 0.5,
    crop_size: int | None = None,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
) -> LocalResolution3d:
    """Local resolution of two half maps by windowed FSC (``relion_postprocess --locres``), batched.

    Parameters
    ----------
    half1, half2 : (box, box, box) real tensors (``[z, y, x]``, even box), any device.
    pixel_size_angstrom : float
    mask : (box, box, box) tensor in [0, 1], optional
        Only windows reaching a voxel with ``mask >= mask_threshold`` are computed, and the map is
        NaN where ``mask <= 0``. RELION samples the whole box; the mask only saves time here.
    sampling_angstrom : float
        Grid spacing of the windows (RELION ``--locres_sampling``, 25 Å).
    radius_angstrom, edge_angstrom : float, optional
        Window radius and soft-edge width (RELION defaults: ``sampling / 2`` and ``sampling``).
        Rounded to voxels as RELION does.
    randomize_at_angstrom : float or None
        Phase-randomise beyond this resolution for the mask correction (RELION
        ``--locres_randomize_at``, 25 Å); ``None`` uses the plain windowed FSC.
    min_resolution_angstrom : float
        Worst resolution reported (RELION ``--locres_minres``, 50 Å).
    threshold : float
        FSC threshold (0.143).
    crop_size : int, optional
        Side of the window FFTs; default :func:`locres_window_crop_size`. Must be even.
    batch_size : int
        Windows per batch (memory ~ ``4 * batch * crop^3`` values).
    generator : torch.Generator, optional
        Randomness of the phase randomisation (a CPU generator gives identical maps on every device).

    Returns
    -------
    LocalResolution3d
    """
    if half1.shape != half2.shape or half1.ndim != 3 or len(set(half1.shape)) != 1:
        raise ValueError(f"half1 and half2 must be cubic (box, box, box) volumes of one shape, got {tuple(half1.shape)} and {tuple(half2.shape)}")
    if mask is not None and mask.shape != half1.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the half maps' {tuple(half1.shape)}")
    if pixel_size_angstrom <= 0 or sampling_angstrom <= 0 or batch_size < 1:
        raise ValueError(f"need positive pixel size, sampling and batch size, got {pixel_size_angstrom}, {sampling_angstrom}, {batch_size}")
    box = int(half1.shape[-1])
    half2 = half2.to(half1.device, half1.dtype)
    radius_a = 0.5 * sampling_angstrom if radius_angstrom is None else radius_angstrom
    edge_a = sampling_angstrom if edge_angstrom is None else edge_angstrom
    step_px = max(1, _relion_round(sampling_angstrom / pixel_size_angstrom))
    radius_px = _relion_round(radius_a / pixel_size_angstrom)
    edge_px = _relion_round(edge_a / pixel_size_angstrom)
    crop = locres_window_crop_size(radius_px, edge_px) if crop_size is None else int(crop_size)
    if crop < 2 or crop % 2:
        raise ValueError(f"crop_size must be even and >= 2, got {crop}")
    window = locres_window_3d(crop, radius_px, edge_px, device=half1.device, dtype=half1.dtype)

    centres = locres_sample_centres(box, step_px, radius_px, device=half1.device)
    if mask is not None:
        mask = mask.to(half1.device, half1.dtype)
        centres = centres[windows_touching_mask(mask, centres, window, mask_threshold)]

    randomized = None
    shell_crop = None
    if randomize_at_angstrom is not None:
        shell_full = int(box * pixel_size_angstrom / randomize_at_angstrom)
        pair = phase_randomize_3d(torch.stack([half1, half2]), shell_full, generator)
        randomized = (pair[0], pair[1])
        shell_crop = int(crop * pixel_size_angstrom / randomize_at_angstrom)

    curves = []
    for start in range(0, centres.shape[0], batch_size):
        batch = centres[start : start + batch_size]
        curves.append(windowed_fsc_3d(half1, half2, batch, window, randomized, shell_crop))
    fsc = torch.cat(curves) if curves else torch.zeros(0, crop // 2 + 1, dtype=torch.float64, device=half1.device)
    res = window_resolutions(fsc, crop, pixel_size_angstrom, threshold, min_resolution_angstrom)

    res_map = window_weighted_harmonic_mean_3d(res, centres, window, box) if res.numel() else torch.full(
        (box, box, box), math.nan, dtype=torch.float32, device=half1.device
    )
    if mask is not None:
        res_map = torch.where(mask > 0, res_map, torch.full_like(res_map, math.nan))
    return LocalResolution3d(res_map, centres, res, fsc, crop)
