"""Back-projection into a padded 3D Fourier grid and reconstruction by direct Fourier inversion.

This is the adjoint of :func:`gmmsession.kernels.projection.project_slices_rfft_2d`: each image
frequency ``j`` (inside the Nyquist circle) is spread with trilinear weights onto the 8 voxels
around ``pad * scale * A.T @ (jx, jy, 0)`` of a half-space (rfft) grid of ``P = pad * box``
points per axis; points with a negative x coordinate are mirrored and conjugated. As in
RELION's ``relion_reconstruct --ctf``, the grid accumulates ``data += CTF * F`` and
``weight += CTF^2`` (``F`` already shifted by ``+origin``).

:func:`finalise_reconstruction` then sums the Friedel pairs of the ``x = 0`` plane, divides the
data by the weight (with a small per-shell floor, see there), inverts the padded transform,
crops to ``box``, divides by the trilinear gridding kernel (``sinc^2`` per axis) and, like
RELION, soft-masks the corners outside the inscribed sphere.

Insertion scatters into flattened grids (``scatter_add_``) in blocks of images; there is no
Python loop over particles, and shell statistics use ``bincount`` over flat shell indices
(no dense ``(box, box, box, shells)`` arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gmmsession.kernels.fourier import irfft_centered_3d
from gmmsession.kernels.projection import _slice_frequency_indices, trilinear_gridding_correction_3d

# Image points inserted per vectorised step: cache-sized temporaries on a CPU; on a GPU, large
# blocks so that launches do not dominate.
_POINTS_PER_BLOCK = {"cpu": 16384, "cuda": 1 << 22}

__all__ = [
    "FourierAccumulator",
    "insertion_points_2d",
    "backproject_slices_rfft_2d",
    "finalise_reconstruction",
    "soft_mask_outside_sphere",
]


@dataclass
class FourierAccumulator:
    """Summable back-projection sums on a padded half-space Fourier grid.

    The sums live on a *centred, unwrapped* grid so that insertion needs no index wrapping:
    element ``[z + P/2, y + P/2, x]`` holds padded-grid frequency ``(x, y, z)`` with
    ``-P/2 <= y, z <= P/2`` and ``0 <= x <= P/2`` (``P = pad_factor * box_size``). The rows for
    ``+P/2`` and ``-P/2`` are the same DFT sample; :meth:`fft_order` folds them and returns the
    usual ``(P, P, P // 2 + 1)`` rfft layout.

    Attributes
    ----------
    data : (P + 1, P + 1, P // 2 + 1) complex tensor, ``sum CTF * F`` (``F``: unnormalised centred image DFTs).
    weight : (P + 1, P + 1, P // 2 + 1) real tensor, ``sum CTF^2``.
    box_size : int
        Box of the map being reconstructed (voxels).
    pad_factor : int

    Accumulators made by different chunks, devices or nodes are combined with ``+`` (the result
    lives on the left operand's device).
    """

    data: torch.Tensor
    weight: torch.Tensor
    box_size: int
    pad_factor: int

    def __post_init__(self) -> None:
        shape = self.grid_shape(self.box_size, self.pad_factor)
        if tuple(self.data.shape) != shape or tuple(self.weight.shape) != shape:
            raise ValueError(
                f"data {tuple(self.data.shape)} and weight {tuple(self.weight.shape)} must both have shape {shape} "
                f"for box {self.box_size} and pad_factor {self.pad_factor}"
            )
        if not self.data.is_complex() or self.weight.is_complex():
            raise ValueError("data must be complex and weight real")

    @staticmethod
    def grid_shape(box_size: int, pad_factor: int) -> tuple[int, int, int]:
        """Shape of the centred, unwrapped accumulation grid: ``(P + 1, P + 1, P // 2 + 1)``."""
        p = int(box_size) * int(pad_factor)
        return (p + 1, p + 1, p // 2 + 1)

    @classmethod
    def zeros(
        cls,
        box_size: int,
        pad_factor: int = 2,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "FourierAccumulator":
        """Empty sums for a ``box_size`` map (``dtype`` is the real dtype)."""
        shape = cls.grid_shape(box_size, pad_factor)
        cdtype = (torch.zeros((), dtype=dtype) * 1j).dtype
        return cls(
            data=torch.zeros(shape, dtype=cdtype, device=device),
            weight=torch.zeros(shape, dtype=dtype, device=device),
            box_size=int(box_size),
            pad_factor=int(pad_factor),
        )

    def fft_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(data, weight)`` on the ``(P, P, P // 2 + 1)`` rfft grid in FFT order (``+-P/2`` rows summed)."""
        return _fold_to_fft_order(self.data), _fold_to_fft_order(self.weight)

    def __add__(self, other: "FourierAccumulator") -> "FourierAccumulator":
        if not isinstance(other, FourierAccumulator):
            return NotImplemented
        if (other.box_size, other.pad_factor) != (self.box_size, self.pad_factor):
            raise ValueError(
                f"cannot add accumulators for box/pad {other.box_size}/{other.pad_factor} and "
                f"{self.box_size}/{self.pad_factor}"
            )
        return FourierAccumulator(
            data=self.data + other.data.to(self.data.device),
            weight=self.weight + other.weight.to(self.weight.device),
            box_size=self.box_size,
            pad_factor=self.pad_factor,
        )

    def to(self, device: torch.device | str) -> "FourierAccumulator":
        """The same sums on another device."""
        return FourierAccumulator(self.data.to(device), self.weight.to(device), self.box_size, self.pad_factor)


def _fold_to_fft_order(grid: torch.Tensor) -> torch.Tensor:
    """Centred ``(P + 1, P + 1, H)`` grid -> FFT-ordered ``(P, P, H)``; frequency ``+P/2`` adds onto ``-P/2``."""
    p = grid.shape[0] - 1
    z = grid[:p].clone()
    z[0] += grid[p]
    zy = z[:, :p].clone()
    zy[:, 0] += z[:, p]
    return torch.fft.ifftshift(zy, dim=(0, 1))


def insertion_points_2d(
    box_size: int, max_radius_px: float | None = None, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The image rfft points that back-projection inserts.

    Points with ``|j| < max_radius_px`` (default ``box / 2``, strictly inside Nyquist as RELION's
    reconstruction uses), skipping the ``jx = 0, jy < 0`` half column (it holds the Friedel
    mates of ``jy > 0``; RELION skips it too).

    Returns
    -------
    flat_index : (m,) int64 positions in a flattened ``(box, box // 2 + 1)`` rfft image.
    jx, jy : (m,) float32 integer frequencies (cycles per box).
    """
    radius = box_size / 2 if max_radius_px is None else float(max_radius_px)
    gx, gy = _slice_frequency_indices(box_size, torch.device(device) if device is not None else torch.device("cpu"))
    keep = (gx * gx + gy * gy < radius * radius) & ~((gx == 0) & (gy < 0))
    flat = torch.nonzero(keep.reshape(-1)).squeeze(-1)
    return flat, gx.reshape(-1)[flat].float(), gy.reshape(-1)[flat].float()


def backproject_slices_rfft_2d(
    spectra: torch.Tensor,
    rotations: torch.Tensor,
    accumulator: FourierAccumulator,
    ctf: torch.Tensor | None = None,
    frequency_scale: torch.Tensor | float = 1.0,
    max_radius_px: float | None = None,
) -> FourierAccumulator:
    """Insert image spectra into ``accumulator`` in place (trilinear, adjoint of projection).

    Parameters
    ----------
    spectra : (n, b, b // 2 + 1) complex tensor
        Centred image rffts, already shifted by ``+origin`` (see
        :func:`gmmsession.kernels.fourier.fourier_shift_rfft_2d`).
    rotations : (n, 3, 3) RELION matrices ``A``.
    accumulator : FourierAccumulator for the output map (box ``B``), updated in place and returned.
    ctf : (n, b, b // 2 + 1) real tensor or None
        CTF of each image; ``data += ctf * F``, ``weight += ctf^2``. None: ``weight += 1``.
    frequency_scale : float or (n,) tensor
        Output-grid frequency index per image frequency index:
        ``B * pixel_out / (b * pixel_image)`` (1 when box and pixel size agree).
    max_radius_px : float or None
        Insert only ``|j| * scale < max_radius_px`` (output-box Fourier pixels, at most and by
        default ``B / 2``, Nyquist). Image frequencies beyond the image's own Nyquist are never used.

    Returns
    -------
    The same ``accumulator``.
    """
    if spectra.ndim != 3 or spectra.shape[-1] != spectra.shape[-2] // 2 + 1:
        raise ValueError(f"spectra must have shape (n, b, b // 2 + 1), got {tuple(spectra.shape)}")
    n, b = spectra.shape[0], spectra.shape[1]
    if rotations.shape != (n, 3, 3):
        raise ValueError(f"rotations must have shape ({n}, 3, 3), got {tuple(rotations.shape)}")
    if ctf is not None and ctf.shape != spectra.shape:
        raise ValueError(f"ctf {tuple(ctf.shape)} must have the shape of spectra {tuple(spectra.shape)}")
    data, weight = accumulator.data, accumulator.weight
    device = data.device
    rdtype = weight.dtype
    big_b = accumulator.box_size
    pad = accumulator.pad_factor
    p = big_b * pad
    # Never beyond the output Nyquist radius: the half-space grid has no column past p / 2.
    radius_out = big_b / 2 if max_radius_px is None else min(float(max_radius_px), big_b / 2)
    scale = torch.as_tensor(frequency_scale, device=device, dtype=rdtype).expand(n).reshape(n)
    if n == 0:
        return accumulator

    # Points inside the image's own Nyquist circle; the output radius is applied per image below.
    flat, jx, jy = insertion_points_2d(b, device=device)
    jxy_t = torch.stack([jx, jy], 0).to(rdtype)  # (2, m)
    r2_img = (jxy_t * jxy_t).sum(0)
    spectra = spectra.to(device)
    # Rows 0 and 1 of A, scaled to padded-grid units, transposed: coords = (s A[:2, :]).T @ (jx, jy).
    rows_t = (rotations.to(device=device, dtype=rdtype)[:, :2, :] * (scale * pad)[:, None, None]).transpose(1, 2)
    if ctf is not None:
        ctf = ctf.to(device=device, dtype=rdtype)
    data_flat = data.view(-1)
    weight_flat = weight.view(-1)
    npix = b * (b // 2 + 1)
    # Blocks of images small enough that the per-point temporaries stay in cache. Per-point
    # quantities are laid out point-last ((3, m), (8, m)): torch's CPU kernels are much faster
    # on long contiguous rows than on short inner dimensions.
    block = max(1, _POINTS_PER_BLOCK.get(device.type, 1 << 22) // max(1, flat.shape[0]))
    # With the usual scale 1 every insertion point is inside the output radius: skip the test.
    all_inside = bool(r2_img.max() * scale.max() ** 2 < radius_out * radius_out) if r2_img.numel() else True
    for start in range(0, n, block):
        sl = slice(start, min(n, start + block))
        vals = spectra[sl].reshape(-1, npix)[:, flat]  # (nb, m) complex
        if ctf is not None:
            c = ctf[sl].reshape(-1, npix)[:, flat]
            re, im, w = vals.real * c, vals.imag * c, c * c
        else:
            re, im = vals.real.contiguous(), vals.imag.contiguous()
            w = torch.ones(re.shape, device=device, dtype=rdtype)
        coords = torch.matmul(rows_t[sl], jxy_t).permute(1, 0, 2).reshape(3, -1)  # (3, nb * m)
        re, im, w = re.reshape(-1), im.reshape(-1), w.reshape(-1)
        if not all_inside:
            sc = scale[sl]
            inside = (r2_img[None, :] * (sc * sc)[:, None] < radius_out * radius_out).reshape(-1)
            coords, re, im, w = coords[:, inside], re[inside], im[inside], w[inside]
        # Points with x < 0 go to their Friedel mate: negate the coordinates, conjugate the value.
        sign = 1.0 - 2.0 * (coords[0] < 0).to(rdtype)
        coords = coords * sign
        im = im * sign
        idx8, w8 = _trilinear_corners_flat(coords, p)
        flat_idx = idx8.reshape(-1)
        data_flat.scatter_add_(0, flat_idx, torch.complex(w8 * re, w8 * im).reshape(-1))
        weight_flat.scatter_add_(0, flat_idx, (w8 * w).reshape(-1))
    return accumulator


def _trilinear_corners_flat(coords: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(8, m)`` and weights ``(8, m)`` of the trilinear neighbours of ``coords``.

    ``coords`` (3, m) are ``(x, y, z)`` rows in padded-grid units with ``0 <= x < p / 2`` and
    ``|y|, |z| < p / 2``; indices address the centred ``(p + 1, p + 1, p // 2 + 1)`` grid of
    :class:`FourierAccumulator` (no wrapping needed). Corner order: (z, y, x) in {0, 1}^3, x fastest.
    """
    half = p // 2 + 1
    row = (p + 1) * half
    fl = torch.floor(coords)
    f = coords - fl
    i0 = fl.to(torch.int64)
    base = (i0[2] + p // 2) * row + (i0[1] + p // 2) * half + i0[0]
    offsets = torch.tensor([0, 1, half, half + 1, row, row + 1, row + half, row + half + 1], device=coords.device)
    idx8 = base[None, :] + offsets[:, None]
    g = 1 - f
    wzy = torch.stack([g[2] * g[1], g[2] * f[1], f[2] * g[1], f[2] * f[1]])  # (4, m)
    wx = torch.stack([g[0], f[0]])  # (2, m)
    w8 = (wzy[:, None, :] * wx[None, :, :]).reshape(8, -1)
    return idx8, w8


def _enforce_hermitian_x0(data: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum each x = 0 voxel with the conjugate of its Friedel mate (both then hold the sum)."""
    p = data.shape[0]
    idx = torch.remainder(-torch.arange(p, device=data.device), p)
    d0 = data[:, :, 0]
    w0 = weight[:, :, 0]
    d0_mate = d0[idx][:, idx].conj()
    w0_mate = w0[idx][:, idx]
    data = data.clone()
    weight = weight.clone()
    data[:, :, 0] = d0 + d0_mate
    weight[:, :, 0] = w0 + w0_mate
    return data, weight


def _radius_grid_3d(p: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """|index| of every voxel of a ``(p, p, p // 2 + 1)`` rfft grid (padded-grid units)."""
    kz = torch.fft.fftfreq(p, d=1.0 / p, device=device, dtype=dtype)
    kx = torch.arange(p // 2 + 1, device=device, dtype=dtype)
    return torch.sqrt(kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2)


def soft_mask_outside_sphere(volume: torch.Tensor, radius_px: float | None = None, cosine_width_px: float = 3.0) -> torch.Tensor:
    """Replace what lies outside a sphere by the mean background, with a raised-cosine edge.

    RELION's ``softMaskOutsideMap`` (which ``relion_reconstruct`` applies to every map): voxels
    with ``r < radius`` are kept, those with ``r > radius + width`` become the (edge-weighted)
    mean of the region outside ``radius``, and in between ``v = (1 - c) v + c * mean`` with
    ``c = 0.5 + 0.5 cos(pi (radius + width - r) / width)``. ``r`` in voxels from voxel ``box // 2``.

    Parameters
    ----------
    volume : (..., box, box, box) real tensor.
    radius_px : float or None
        Default ``box / 2``.
    cosine_width_px : float

    Returns
    -------
    Tensor of the same shape.
    """
    if volume.ndim < 3 or len(set(volume.shape[-3:])) != 1:
        raise ValueError(f"volume must have shape (..., box, box, box), got {tuple(volume.shape)}")
    box = volume.shape[-1]
    radius = box / 2 if radius_px is None else float(radius_px)
    c = torch.arange(box, device=volume.device, dtype=volume.dtype) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    outer = radius + cosine_width_px
    cos_w = 0.5 + 0.5 * torch.cos(math.pi * (outer - r) / cosine_width_px)
    bg_weight = torch.where(r < radius, torch.zeros_like(r), torch.where(r > outer, torch.ones_like(r), cos_w))
    total = bg_weight.sum()
    if float(total) == 0:
        return volume
    background = (volume * bg_weight).sum(dim=(-3, -2, -1), keepdim=True) / total
    return (1 - bg_weight) * volume + bg_weight * background


def finalise_reconstruction(
    accumulator: FourierAccumulator,
    weight_floor_fraction: float = 1e-3,
    max_radius_px: float | None = None,
    mask_outside_sphere: bool = True,
) -> torch.Tensor:
    """Direct Fourier inversion of back-projection sums into a real-space map.

    ``F = data / max(weight, floor)`` inside the sphere ``|k| < max_radius_px`` (default
    Nyquist), where ``floor`` is ``weight_floor_fraction`` times the mean weight of the voxel's
    Fourier shell (shells one output-box Fourier pixel wide). This is the unregularised
    reconstruction of ``relion_reconstruct`` without ``--fsc`` (no tau2 term); RELION divides by
    an iteratively gridded weight instead (Pipe & Menon), which for adequately sampled data is
    the same quotient; the floor only stops near-empty voxels (CTF zeros, few particles) from
    blowing up. Then: inverse padded FFT, crop to ``box``, divide by the trilinear gridding
    kernel (``sinc^2`` per axis on the padded grid) and, as RELION, soft-mask the corners
    outside the inscribed sphere.

    Parameters
    ----------
    accumulator : FourierAccumulator
    weight_floor_fraction : float
        Relative per-shell floor on the weight (>= 0).
    max_radius_px : float or None
        Output-box Fourier pixels; default ``box / 2``.
    mask_outside_sphere : bool
        Apply :func:`soft_mask_outside_sphere` (radius ``box / 2``, 3-voxel edge) as RELION does.

    Returns
    -------
    (box, box, box) real tensor ``[z, y, x]``, origin at voxel ``box // 2``, same intensity scale
    as the projected maps (a map projected with :func:`~gmmsession.kernels.projection.project_volume`
    and reconstructed comes back at its own scale).
    """
    if weight_floor_fraction < 0:
        raise ValueError(f"weight_floor_fraction must be >= 0, got {weight_floor_fraction}")
    box = accumulator.box_size
    pad = accumulator.pad_factor
    p = box * pad
    data, weight = _enforce_hermitian_x0(*accumulator.fft_order())
    radius = _radius_grid_3d(p, data.device, weight.dtype)
    r_max = (box / 2 if max_radius_px is None else float(max_radius_px)) * pad
    inside = radius < r_max
    # Per-shell mean weight by bincount over flattened shell indices (shells of `pad` padded voxels).
    shell = torch.round(radius / pad).to(torch.int64).reshape(-1)
    inside_flat = inside.reshape(-1)
    n_shells = int(math.ceil(r_max / pad)) + 2
    shell_in = shell[inside_flat]
    w_in = weight.reshape(-1)[inside_flat].to(torch.float64)
    w_sum = torch.bincount(shell_in, weights=w_in, minlength=n_shells)
    count = torch.bincount(shell_in, minlength=n_shells).clamp_min(1)
    floor_shell = (weight_floor_fraction * w_sum / count).to(weight.dtype)
    floor = torch.zeros_like(weight).reshape(-1)
    floor[inside_flat] = floor_shell[shell_in]
    floor = floor.reshape(weight.shape)
    # Voxels whose weight and floor are both zero (unsampled shells) stay zero.
    denom = torch.maximum(weight, floor)
    ok = inside & (denom > 0)
    spectrum = torch.where(ok, data / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(data))
    padded = irfft_centered_3d(spectrum, p)
    start = p // 2 - box // 2
    vol = padded[start : start + box, start : start + box, start : start + box]
    vol = vol / trilinear_gridding_correction_3d(box, p, device=vol.device, dtype=vol.dtype)
    return soft_mask_outside_sphere(vol) if mask_outside_sphere else vol
