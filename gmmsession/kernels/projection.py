"""Voxel forward model: Fourier-slice projection of a map (pure torch, batched, CPU/CUDA).

The convention is the one of :mod:`gmmsession.kernels.conventions`: the image transform at
``k = (kx, ky)`` is the map's transform at ``A.T @ (kx, ky, 0)`` times
``exp(+2 pi i k . origin)`` (``origin`` = ``rlnOriginX/YAngst`` in Å), i.e. the projection is
moved by ``-origin`` in real space, exactly as ``relion_project`` does.

Method (as RELION's ``Projector``): the map is divided by the real-space transform of the
trilinear kernel (gridding pre-correction, ``sinc^2`` per axis on the padded grid), zero-padded
by ``pad_factor``, transformed with a centred rfft, and the padded transform is sampled by
trilinear interpolation at the rotated image frequencies. Frequencies outside the Nyquist
circle of the image (``|k| > box / 2`` in pixel units) are set to zero.

Layout: volumes ``[..., z, y, x]``, images ``[..., y, x]``, rfft spectra have ``x // 2 + 1``
columns, the real-space origin is voxel/pixel ``box // 2``.
"""

from __future__ import annotations

import torch

from gmmsession.kernels.conventions import image_shift_angstrom_from_origin
from gmmsession.kernels.fourier import (
    irfft_centered_2d,
    rfft_centered_3d,
    rfft_frequencies_2d,
    fourier_shift_rfft_2d,
)

__all__ = [
    "trilinear_gridding_correction_3d",
    "pad_volume",
    "prepare_volume_for_projection",
    "project_slices_rfft_2d",
    "project_volume",
]


def trilinear_gridding_correction_3d(
    box_size: int,
    padded_box_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Real-space transform of the trilinear interpolation kernel on a padded Fourier grid.

    Trilinear interpolation of a transform sampled on a grid of ``padded_box_size`` points per
    axis multiplies the real-space object by ``prod_i sinc^2(r_i / padded_box_size)`` (``r_i``
    in voxels from voxel ``box_size // 2``; ``sinc(x) = sin(pi x) / (pi x)``).

    Returns
    -------
    (box, box, box) tensor: the factor on the central ``box_size`` voxels (always > 0.4 for a
    padding factor >= 1).
    """
    r = torch.arange(box_size, device=device, dtype=dtype) - box_size // 2
    s = torch.sinc(r / padded_box_size) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def pad_volume(volume: torch.Tensor, padded_box_size: int) -> torch.Tensor:
    """Zero-pad ``(..., box, box, box)`` to ``padded_box_size`` keeping voxel ``box // 2`` at ``padded // 2``."""
    box = volume.shape[-1]
    if padded_box_size < box:
        raise ValueError(f"padded_box_size {padded_box_size} is smaller than the volume box {tuple(volume.shape)}")
    start = padded_box_size // 2 - box // 2
    out = volume.new_zeros(*volume.shape[:-3], padded_box_size, padded_box_size, padded_box_size)
    out[..., start : start + box, start : start + box, start : start + box] = volume
    return out


def prepare_volume_for_projection(volume: torch.Tensor, pad_factor: int = 2) -> torch.Tensor:
    """Gridding-pre-corrected, zero-padded, centred rfft of a map, ready for :func:`project_slices_rfft_2d`.

    Parameters
    ----------
    volume : (box, box, box) real tensor, ``[z, y, x]``, origin at voxel ``box // 2``.
    pad_factor : int
        Oversampling of the Fourier grid (RELION's ``--pad``, default 2).

    Returns
    -------
    (pad * box, pad * box, pad * box // 2 + 1) complex tensor.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must have shape (box, box, box), got {tuple(volume.shape)}")
    if int(pad_factor) < 1:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    if volume.is_complex():
        raise ValueError("volume must be real")
    if not volume.is_floating_point():
        volume = volume.to(torch.get_default_dtype())
    box = volume.shape[-1]
    padded = int(pad_factor) * box
    corr = trilinear_gridding_correction_3d(box, padded, device=volume.device, dtype=volume.dtype)
    return rfft_centered_3d(pad_volume(volume / corr, padded))


def _slice_frequency_indices(box_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies ``(jx, jy)`` of the ``box x (box // 2 + 1)`` rfft grid of an image."""
    jy = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device)
    jx = torch.arange(box_size // 2 + 1, device=device, dtype=jy.dtype)
    gy, gx = torch.meshgrid(jy, jx, indexing="ij")
    return gx, gy


def _trilinear_corners(
    coords: torch.Tensor, padded_box_size: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Flat indices and weights of the 8 trilinear neighbours of half-space coordinates.

    ``coords`` (..., 3) are ``(x, y, z)`` in padded-grid units with ``x >= 0``. Returns the 8
    flat indices into a ``(P, P, P // 2 + 1)`` array (y and z wrapped into FFT order, x clamped
    to the last column where its weight is 0) and the 8 weights.
    """
    p = padded_box_size
    half = p // 2 + 1
    floor = torch.floor(coords)
    frac = coords - floor
    i0 = floor.to(torch.int64)
    x0 = i0[..., 0].clamp(0, half - 1)
    x1 = (i0[..., 0] + 1).clamp(0, half - 1)
    y0 = torch.remainder(i0[..., 1], p)
    y1 = torch.remainder(i0[..., 1] + 1, p)
    z0 = torch.remainder(i0[..., 2], p)
    z1 = torch.remainder(i0[..., 2] + 1, p)
    fx, fy, fz = frac.unbind(-1)
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
    idx = []
    wts = []
    for zi, wz in ((z0, gz), (z1, fz)):
        for yi, wy in ((y0, gy), (y1, fy)):
            base = (zi * p + yi) * half
            wzy = wz * wy
            idx.append(base + x0)
            wts.append(wzy * gx)
            idx.append(base + x1)
            wts.append(wzy * fx)
    return idx, wts, frac


def project_slices_rfft_2d(
    padded_spectrum: torch.Tensor,
    rotations: torch.Tensor,
    box_size: int,
    pad_factor: int = 2,
    frequency_scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Central slices of a padded map transform, as centred image rffts (no shift, no CTF).

    Parameters
    ----------
    padded_spectrum : (P, P, P // 2 + 1) complex tensor from :func:`prepare_volume_for_projection`,
        ``P = pad_factor * volume_box``.
    rotations : (..., 3, 3) RELION rotation matrices ``A``; the image frequency ``k`` samples the
        map at ``A.T @ (kx, ky, 0)``.
    box_size : int
        Image box (pixels). Equal to the volume box for the usual case.
    pad_factor : int
        The padding used to make ``padded_spectrum``.
    frequency_scale : float or (...,) tensor
        Image frequency index ``j`` samples the volume at ``j * frequency_scale`` volume-box
        frequency indices (``volume_box * volume_pixel / (box_size * image_pixel)``; 1 when image
        and volume share box and pixel size).

    Returns
    -------
    (..., box, box // 2 + 1) complex tensor: the unnormalised DFT of the projection, centred
    (real-space origin at pixel ``box // 2``). Frequencies with ``|j| > box / 2`` or beyond the
    volume's Nyquist radius are zero.
    """
    if padded_spectrum.ndim != 3 or padded_spectrum.shape[0] != padded_spectrum.shape[1] or (
        padded_spectrum.shape[2] != padded_spectrum.shape[0] // 2 + 1
    ):
        raise ValueError(f"padded_spectrum must have shape (P, P, P // 2 + 1), got {tuple(padded_spectrum.shape)}")
    if rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (..., 3, 3), got {tuple(rotations.shape)}")
    if not padded_spectrum.is_complex():
        raise ValueError("padded_spectrum must be complex")
    p = padded_spectrum.shape[0]
    if p % int(pad_factor) != 0:
        raise ValueError(f"padded box {p} is not a multiple of pad_factor {pad_factor}")
    device = padded_spectrum.device
    real_dtype = padded_spectrum.real.dtype
    batch = rotations.shape[:-2]
    rot = rotations.to(device=device, dtype=real_dtype).reshape(-1, 3, 3)
    n = rot.shape[0]
    scale = torch.as_tensor(frequency_scale, device=device, dtype=real_dtype).expand(batch).reshape(n)

    gx, gy = _slice_frequency_indices(box_size, device)
    gx = gx.to(real_dtype)
    gy = gy.to(real_dtype)
    r2 = gx * gx + gy * gy
    keep = r2 <= (box_size / 2) ** 2
    jx = gx[keep]
    jy = gy[keep]
    # (n, m, 3): A.T @ (jx, jy, 0) = jx * A[0, :] + jy * A[1, :], in padded-grid units.
    s = (scale * int(pad_factor))[:, None, None]
    coords = (jx[None, :, None] * rot[:, None, 0, :] + jy[None, :, None] * rot[:, None, 1, :]) * s
    in_volume = (coords * coords).sum(-1) <= (p / 2) ** 2
    flip = coords[..., 0] < 0
    coords = torch.where(flip[..., None], -coords, coords)
    idx, wts, _ = _trilinear_corners(coords, p)
    flat = padded_spectrum.reshape(-1)
    vals = torch.zeros(coords.shape[:-1], dtype=padded_spectrum.dtype, device=device)
    for i, w in zip(idx, wts):
        vals = vals + w * flat[i]
    vals = torch.where(flip, vals.conj(), vals)
    vals = torch.where(in_volume, vals, torch.zeros((), dtype=vals.dtype, device=device))
    out = torch.zeros(n, box_size, box_size // 2 + 1, dtype=padded_spectrum.dtype, device=device)
    out[:, keep] = vals
    return out.reshape(*batch, box_size, box_size // 2 + 1)


def project_volume(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    origin_angstrom: torch.Tensor,
    pixel_size_angstrom: float,
    ctf: torch.Tensor | None = None,
    pad_factor: int = 2,
) -> torch.Tensor:
    """Real-space projections of a map, as ``relion_project`` (optionally ``--ctf``) makes them.

    Parameters
    ----------
    volume : (box, box, box) real tensor ``[z, y, x]``.
    rotations : (n, 3, 3) RELION matrices (:func:`gmmsession.kernels.conventions.euler_relion_to_matrix`).
    origin_angstrom : (n, 2) ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å; the projection is moved
        by ``-origin``.
    pixel_size_angstrom : float
        Pixel size of map and images (Å).
    ctf : (n, box, box // 2 + 1) real tensor or None
        CTF on the image rfft grid (:func:`gmmsession.kernels.ctf.ctf_2d`); multiplies the spectrum
        (no phase flip).
    pad_factor : int

    Returns
    -------
    (n, box, box) real tensor.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must have shape (box, box, box), got {tuple(volume.shape)}")
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (n, 3, 3), got {tuple(rotations.shape)}")
    n = rotations.shape[0]
    if origin_angstrom.shape != (n, 2):
        raise ValueError(f"origin_angstrom must have shape ({n}, 2), got {tuple(origin_angstrom.shape)}")
    box = volume.shape[-1]
    if ctf is not None and ctf.shape != (n, box, box // 2 + 1):
        raise ValueError(f"ctf must have shape ({n}, {box}, {box // 2 + 1}), got {tuple(ctf.shape)}")
    spectrum = prepare_volume_for_projection(volume, pad_factor)
    slices = project_slices_rfft_2d(spectrum, rotations, box, pad_factor)
    freqs = rfft_frequencies_2d(box, pixel_size_angstrom, device=volume.device, dtype=slices.real.dtype)
    origin = origin_angstrom.to(device=volume.device, dtype=slices.real.dtype)
    slices = fourier_shift_rfft_2d(slices, image_shift_angstrom_from_origin(origin), freqs)
    if ctf is not None:
        slices = slices * ctf.to(device=volume.device, dtype=slices.real.dtype)
    return irfft_centered_2d(slices, box)
