"""Fourier cropping/padding, low-pass filters and B-factors for images and maps.

All functions take and return **real-space** tensors (``[..., y, x]`` images, ``[..., z, y, x]``
volumes, origin at ``box // 2``), batched over leading dimensions; the Fourier work uses the
centred rfft helpers of :mod:`gmmsession.kernels.fourier`, so cropping keeps the object at
``box_out // 2``.

Cropping/padding conventions
----------------------------
* Values are preserved: a constant image stays the same constant (the spectrum is scaled by
  ``(box_out / box_in) ** ndim`` to undo the unnormalised FFT).
* The pixel size changes as ``pixel_out = pixel_in * box_in / box_out``.
* Only frequencies strictly inside the smaller box's Nyquist, ``|k_axis| < min(box) / 2`` on every
  axis, are transferred; the smaller box's Nyquist planes are zero. The Nyquist plane of an even
  box holds one real coefficient for two Hermitian partners and cannot be split or merged
  exactly; dropping it makes crop-then-pad exactly a (box-shaped) low-pass.

Low-pass and B-factor follow RELION 3.1 ``lowPassFilterMap`` and ``applyBFactorToMap``
(``src/fftw.cpp``).
"""

from __future__ import annotations

import math

import torch

from gmmsession.kernels.fourier import (
    irfft_centered_2d,
    irfft_centered_3d,
    rfft_centered_2d,
    rfft_centered_3d,
)

__all__ = [
    "crop_box_for_resolution",
    "fourier_crop_2d",
    "fourier_pad_2d",
    "fourier_crop_3d",
    "fourier_pad_3d",
    "lowpass_2d",
    "lowpass_3d",
    "apply_bfactor_3d",
]


def _check_box(x: torch.Tensor, ndim: int, name: str) -> int:
    if x.ndim < ndim or len(set(x.shape[-ndim:])) != 1:
        kind = "square" if ndim == 2 else "cubic"
        raise ValueError(f"{name} must be {kind} in its last {ndim} dimensions, got shape {tuple(x.shape)}")
    return int(x.shape[-1])


def crop_box_for_resolution(box_size: int, pixel_size_angstrom: float, resolution_angstrom: float) -> tuple[int, float]:
    """Smallest even box whose Nyquist is at or just beyond ``resolution_angstrom``.

    Parameters
    ----------
    box_size : int
        Current box (pixels).
    pixel_size_angstrom : float
        Current pixel size (Å).
    resolution_angstrom : float
        Finest resolution to keep (Å). Finer than the current Nyquist returns the box unchanged.

    Returns
    -------
    (box_out, pixel_size_out_angstrom) with ``2 * pixel_size_out <= resolution`` (Nyquist at or
    beyond the target), ``box_out`` even and ``<= box_size`` (or ``box_size`` itself, even if odd,
    when no crop is possible), and
    ``pixel_size_out = pixel_size * box_size / box_out``.
    """
    if box_size < 2 or pixel_size_angstrom <= 0 or resolution_angstrom <= 0:
        raise ValueError(
            f"need box_size >= 2 and positive pixel size and resolution, got {box_size}, "
            f"{pixel_size_angstrom}, {resolution_angstrom}"
        )
    needed = 2.0 * pixel_size_angstrom * box_size / resolution_angstrom
    box_out = math.ceil(needed - 1e-9)  # tolerance: a target exactly on a box's Nyquist selects that box
    box_out += box_out % 2
    box_out = max(2, min(box_out, box_size))
    return box_out, pixel_size_angstrom * box_size / box_out


def _resize_rfft(spectrum: torch.Tensor, box_in: int, box_out: int, ndim: int) -> torch.Tensor:
    """Copy the frequencies ``|k| < min(box_in, box_out) / 2`` (per axis) of a centred rfft into a new grid."""
    keep = min(box_in, box_out) // 2 - (1 if min(box_in, box_out) % 2 == 0 else 0)
    # keep: highest |k| index transferred on every axis (strictly below the smaller Nyquist).
    batch = spectrum.shape[: spectrum.ndim - ndim]
    out = spectrum.new_zeros(*batch, *([box_out] * (ndim - 1)), box_out // 2 + 1)
    full_pos = slice(0, keep + 1)
    src_neg = slice(box_in - keep, box_in)
    dst_neg = slice(box_out - keep, box_out)
    half = slice(0, keep + 1)
    if ndim == 2:
        out[..., full_pos, half] = spectrum[..., full_pos, half]
        out[..., dst_neg, half] = spectrum[..., src_neg, half]
    else:
        for dz_dst, dz_src in ((full_pos, full_pos), (dst_neg, src_neg)):
            for dy_dst, dy_src in ((full_pos, full_pos), (dst_neg, src_neg)):
                out[..., dz_dst, dy_dst, half] = spectrum[..., dz_src, dy_src, half]
    return out * (box_out / box_in) ** ndim


def fourier_crop_2d(images: torch.Tensor, box_out: int) -> torch.Tensor:
    """Fourier-crop (downsample) real images to ``box_out``; real in, real out.

    Parameters
    ----------
    images : (..., box, box) real tensor
    box_out : int  (``<= box``)

    Returns
    -------
    (..., box_out, box_out) tensor; the pixel size becomes ``pixel * box / box_out``.
    """
    box = _check_box(images, 2, "images")
    if not 1 <= box_out <= box:
        raise ValueError(f"box_out must be in [1, {box}] to crop images of shape {tuple(images.shape)}, got {box_out}")
    return irfft_centered_2d(_resize_rfft(rfft_centered_2d(images), box, box_out, 2), box_out)


def fourier_pad_2d(images: torch.Tensor, box_out: int) -> torch.Tensor:
    """Fourier-pad (upsample by sinc interpolation) real images to ``box_out >= box``.

    Parameters
    ----------
    images : (..., box, box) real tensor
    box_out : int  (``>= box``)

    Returns
    -------
    (..., box_out, box_out) tensor; the pixel size becomes ``pixel * box / box_out``. The input's
    Nyquist row/column is not transferred (see the module notes).
    """
    box = _check_box(images, 2, "images")
    if box_out < box:
        raise ValueError(f"box_out must be >= {box} to pad images of shape {tuple(images.shape)}, got {box_out}")
    return irfft_centered_2d(_resize_rfft(rfft_centered_2d(images), box, box_out, 2), box_out)


def fourier_crop_3d(volume: torch.Tensor, box_out: int) -> torch.Tensor:
    """Fourier-crop real volumes ``(..., box, box, box)`` to ``box_out`` (see :func:`fourier_crop_2d`)."""
    box = _check_box(volume, 3, "volume")
    if not 1 <= box_out <= box:
        raise ValueError(f"box_out must be in [1, {box}] to crop volumes of shape {tuple(volume.shape)}, got {box_out}")
    return irfft_centered_3d(_resize_rfft(rfft_centered_3d(volume), box, box_out, 3), box_out)


def fourier_pad_3d(volume: torch.Tensor, box_out: int) -> torch.Tensor:
    """Fourier-pad real volumes ``(..., box, box, box)`` to ``box_out >= box`` (see :func:`fourier_pad_2d`)."""
    box = _check_box(volume, 3, "volume")
    if box_out < box:
        raise ValueError(f"box_out must be >= {box} to pad volumes of shape {tuple(volume.shape)}, got {box_out}")
    return irfft_centered_3d(_resize_rfft(rfft_centered_3d(volume), box, box_out, 3), box_out)


def _radius_fourier_pixels(box: int, ndim: int, device: torch.device) -> torch.Tensor:
    full = torch.fft.fftfreq(box, d=1.0 / box, device=device, dtype=torch.float64)
    half = torch.fft.rfftfreq(box, d=1.0 / box, device=device, dtype=torch.float64)
    grids = torch.meshgrid(*([full] * (ndim - 1) + [half]), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def _lowpass_weights(
    box: int, ndim: int, pixel_size_angstrom: float, resolution_angstrom: float, edge_width_shells: int, device: torch.device
) -> torch.Tensor:
    if pixel_size_angstrom <= 0 or resolution_angstrom <= 0 or edge_width_shells < 0:
        raise ValueError(
            f"need positive pixel size and resolution and edge_width_shells >= 0, got {pixel_size_angstrom}, "
            f"{resolution_angstrom}, {edge_width_shells}"
        )
    res = _radius_fourier_pixels(box, ndim, device) / box  # cycles per pixel
    # RELION: the filter shell is rounded, the half width is an integer division.
    shell = math.floor(box * pixel_size_angstrom / resolution_angstrom + 0.5)
    half_width = int(edge_width_shells) // 2
    edge_low = max(0.0, (shell - half_width) / box)
    edge_high = (shell + half_width) / box
    if edge_high <= edge_low:  # no edge: a hard cut at the filter shell
        return (res <= edge_high).to(torch.float64)
    t = ((res - edge_low) / (edge_high - edge_low)).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def lowpass_2d(
    images: torch.Tensor, pixel_size_angstrom: float, resolution_angstrom: float, edge_width_shells: int = 2
) -> torch.Tensor:
    """Low-pass filter real images with a raised-cosine edge (as :func:`lowpass_3d`, on rings)."""
    box = _check_box(images, 2, "images")
    weights = _lowpass_weights(box, 2, pixel_size_angstrom, resolution_angstrom, edge_width_shells, images.device)
    spectrum = rfft_centered_2d(images)
    return irfft_centered_2d(spectrum * weights.to(spectrum.real.dtype), box)


def lowpass_3d(
    volume: torch.Tensor, pixel_size_angstrom: float, resolution_angstrom: float, edge_width_shells: int = 2
) -> torch.Tensor:
    """Low-pass filter real volumes to a resolution, RELION ``lowPassFilterMap``.

    The filter shell is ``i = round(box * pixel / resolution)``; with ``h = edge_width_shells // 2``
    the weight is 1 below shell ``i - h``, 0 beyond ``i + h`` and ``0.5 + 0.5 cos(pi t)`` in
    between (``t`` from 0 to 1 across the edge, radius ``|k|`` in unrounded Fourier pixels).
    ``edge_width_shells < 2`` gives a hard cut keeping ``|k| <= i``.

    Parameters
    ----------
    volume : (..., box, box, box) real tensor
    pixel_size_angstrom : float
    resolution_angstrom : float
        Cut-off (Å), e.g. the FSC = 0.143 resolution.
    edge_width_shells : int
        RELION's ``--filter_edge_width`` (default 2 shells).

    Returns
    -------
    (..., box, box, box) tensor.
    """
    box = _check_box(volume, 3, "volume")
    weights = _lowpass_weights(box, 3, pixel_size_angstrom, resolution_angstrom, edge_width_shells, volume.device)
    spectrum = rfft_centered_3d(volume)
    return irfft_centered_3d(spectrum * weights.to(spectrum.real.dtype), box)


def apply_bfactor_3d(volume: torch.Tensor, pixel_size_angstrom: float, bfactor_angstrom2: float) -> torch.Tensor:
    """Multiply a map's spectrum by ``exp(-B |k|^2 / 4)`` up to Nyquist, zero beyond (RELION ``applyBFactorToMap``).

    Positive ``bfactor_angstrom2`` blurs, negative sharpens (``relion_postprocess --adhoc_bfac -100``
    is ``bfactor_angstrom2=-100``). Same envelope as :mod:`gmmsession.kernels.conventions`
    (a Gaussian of width sigma has ``B = 8 pi^2 sigma^2``).

    Parameters
    ----------
    volume : (..., box, box, box) real tensor
    pixel_size_angstrom : float
    bfactor_angstrom2 : float

    Returns
    -------
    (..., box, box, box) tensor.
    """
    box = _check_box(volume, 3, "volume")
    if pixel_size_angstrom <= 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    radius = _radius_fourier_pixels(box, 3, volume.device)
    k = radius / (box * pixel_size_angstrom)  # 1/Å
    inside = k <= 1.0 / (2.0 * pixel_size_angstrom)
    weights = torch.where(inside, torch.exp(-(bfactor_angstrom2 / 4.0) * k * k), torch.zeros_like(k))
    spectrum = rfft_centered_3d(volume)
    return irfft_centered_3d(spectrum * weights.to(spectrum.real.dtype), box)
