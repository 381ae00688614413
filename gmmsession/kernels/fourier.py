"""Fourier-space helpers for centred images and volumes (rfft layout).

Layout conventions (see :mod:`gmmsession.kernels.conventions`): images are ``[..., y, x]``,
volumes ``[..., z, y, x]``, the real-space origin is at index ``box // 2`` on every axis.
A *centred* rfft puts that origin at index 0 before transforming, so a centred, real,
symmetric object has a real transform. Frequencies are in 1/Å.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "rfft_centered_2d",
    "irfft_centered_2d",
    "rfft_centered_3d",
    "irfft_centered_3d",
    "rfft_frequencies_2d",
    "rfft_frequencies_3d",
    "fourier_shift_rfft_2d",
]


def _check_square(x: torch.Tensor, ndim: int, name: str) -> int:
    if x.ndim < ndim:
        raise ValueError(f"{name} must have at least {ndim} dimensions, got shape {tuple(x.shape)}")
    sizes = x.shape[-ndim:]
    if len(set(sizes)) != 1:
        raise ValueError(f"{name} must be square/cubic in its last {ndim} dimensions, got shape {tuple(x.shape)}")
    return int(sizes[0])


def rfft_centered_2d(images: torch.Tensor) -> torch.Tensor:
    """rfft of real images ``(..., box, box)`` with the origin at ``box // 2`` -> ``(..., box, box // 2 + 1)``."""
    _check_square(images, 2, "images")
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)), dim=(-2, -1))


def irfft_centered_2d(spectrum: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfft_centered_2d`: ``(..., box, box // 2 + 1)`` -> real ``(..., box, box)``."""
    if spectrum.shape[-2:] != (box_size, box_size // 2 + 1):
        raise ValueError(
            f"spectrum must have shape (..., {box_size}, {box_size // 2 + 1}) for box {box_size}, got {tuple(spectrum.shape)}"
        )
    real = torch.fft.irfft2(spectrum, s=(box_size, box_size), dim=(-2, -1))
    return torch.fft.fftshift(real, dim=(-2, -1))


def rfft_centered_3d(volume: torch.Tensor) -> torch.Tensor:
    """rfft of real volumes ``(..., box, box, box)`` with the origin at ``box // 2``."""
    _check_square(volume, 3, "volume")
    return torch.fft.rfftn(torch.fft.ifftshift(volume, dim=(-3, -2, -1)), dim=(-3, -2, -1))


def irfft_centered_3d(spectrum: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfft_centered_3d`."""
    if spectrum.shape[-3:] != (box_size, box_size, box_size // 2 + 1):
        raise ValueError(
            f"spectrum must have shape (..., {box_size}, {box_size}, {box_size // 2 + 1}), got {tuple(spectrum.shape)}"
        )
    real = torch.fft.irfftn(spectrum, s=(box_size,) * 3, dim=(-3, -2, -1))
    return torch.fft.fftshift(real, dim=(-3, -2, -1))


def rfft_frequencies_2d(
    box_size: int,
    pixel_size_angstrom: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frequencies (1/Å) of the rfft grid of a ``box x box`` image.

    Returns
    -------
    (box, box // 2 + 1, 2) tensor of ``(kx, ky)``; ``kx`` runs along the last axis.
    With ``pixel_size_angstrom=1`` the values are in cycles per pixel.
    """
    ky = torch.fft.fftfreq(box_size, d=pixel_size_angstrom, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(box_size, d=pixel_size_angstrom, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def rfft_frequencies_3d(
    box_size: int,
    pixel_size_angstrom: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frequencies (1/Å) of the rfft grid of a cubic volume: ``(box, box, box // 2 + 1, 3)`` of ``(kx, ky, kz)``."""
    kz = torch.fft.fftfreq(box_size, d=pixel_size_angstrom, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(box_size, d=pixel_size_angstrom, device=device, dtype=dtype)
    gz, gy, gx = torch.meshgrid(kz, kz, kx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def fourier_shift_rfft_2d(
    spectrum: torch.Tensor, shift_angstrom: torch.Tensor, frequencies: torch.Tensor
) -> torch.Tensor:
    """Translate images given as centred rffts by ``shift_angstrom`` (real space, Å).

    Parameters
    ----------
    spectrum : (..., box, box // 2 + 1) complex tensor
    shift_angstrom : (..., 2) tensor of ``(dx, dy)``; positive moves content to larger x / y.
    frequencies : (box, box // 2 + 1, 2) tensor from :func:`rfft_frequencies_2d` (same units).
        The grid is separable (kx along the last axis, ky along the first), so the phase
        ramp is computed per axis and multiplied: no trigonometry per pixel.

    Returns
    -------
    ``spectrum * exp(-2 pi i k . shift)``.
    """
    if shift_angstrom.shape[-1] != 2:
        raise ValueError(f"shift_angstrom must have shape (..., 2), got {tuple(shift_angstrom.shape)}")
    if frequencies.shape[:-1] != spectrum.shape[-2:]:
        raise ValueError(
            f"frequencies {tuple(frequencies.shape)} do not match spectrum {tuple(spectrum.shape)}"
        )
    kx = frequencies[0, :, 0]
    ky = frequencies[:, 0, 1]
    phase_x = -2 * math.pi * kx * shift_angstrom[..., 0, None]  # (..., Kx)
    phase_y = -2 * math.pi * ky * shift_angstrom[..., 1, None]  # (..., Ky)
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x)
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y)
    return spectrum * (ramp_y[..., :, None] * ramp_x[..., None, :])
