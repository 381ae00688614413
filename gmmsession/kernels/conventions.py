"""The one place where gmmsession's geometric conventions are decided.

Everything here follows RELION 3.1 (``src/euler.cpp``, ``src/projector.cpp``,
``src/backprojector.cpp``), verified against ``relion_project`` and ``relion_reconstruct``
in ``tests/relion``.

Coordinates
-----------
* Arrays are indexed ``[z, y, x]`` for volumes and ``[y, x]`` for images (x is the fastest,
  MRC column axis). A point ``r = (x, y, z)`` is measured in Å from voxel ``box // 2``
  along each axis; image points ``(x, y)`` from pixel ``box // 2``.
* Euler angles are RELION's ZYZ (rot, tilt, psi), in degrees:
  ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with
  ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
  ``Ry(b) = [[cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]``.
* Projection (the forward model): a point ``r`` of the map appears in the particle image at
  ``(A @ r)[:2] - origin``, where ``origin = (rlnOriginXAngst, rlnOriginYAngst)`` in Å.
  In Fourier space the image transform at ``k = (kx, ky)`` (1/Å) is the map's transform at
  ``A.T @ (kx, ky, 0)`` times ``exp(+2 pi i k . origin)``.
* Reconstruction undoes this: each image is shifted by ``+origin`` before back-projection.
* RELION 3.0 and older files store ``rlnOriginX/Y`` in **pixels**; 3.1+ store
  ``rlnOriginXAngst/YAngst`` in Å. Internally gmmsession always stores Å.
* Gaussian width and B-factor: a Gaussian ``exp(-|r|^2 / (2 sigma^2))`` has the Fourier
  envelope ``exp(-2 pi^2 sigma^2 |k|^2) = exp(-B |k|^2 / 4)`` with ``B = 8 pi^2 sigma^2``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "origin_pixels_to_angstrom",
    "origin_angstrom_to_pixels",
    "image_shift_angstrom_from_origin",
    "bfactor_to_sigma_angstrom",
    "sigma_angstrom_to_bfactor",
    "real_space_center_index",
]


def real_space_center_index(box_size: int) -> int:
    """Index of the real-space origin along an axis of length ``box_size`` (``box // 2``)."""
    return int(box_size) // 2


def euler_relion_to_matrix(euler_deg: torch.Tensor) -> torch.Tensor:
    """RELION ZYZ Euler angles (rot, tilt, psi; degrees) to rotation matrices.

    Parameters
    ----------
    euler_deg : (..., 3) tensor
        ``rot, tilt, psi`` in degrees (``rlnAngleRot, rlnAngleTilt, rlnAnglePsi``).

    Returns
    -------
    (..., 3, 3) tensor
        ``A = Rz(psi) Ry(tilt) Rz(rot)``; ``(A @ r)[:2]`` is where a map point ``r`` lands
        in the image.
    """
    if euler_deg.shape[-1] != 3:
        raise ValueError(f"euler_deg must have shape (..., 3), got {tuple(euler_deg.shape)}")
    if not euler_deg.is_floating_point():
        euler_deg = euler_deg.to(torch.get_default_dtype())
    rad = torch.deg2rad(euler_deg)
    cr, ct, cp = torch.cos(rad).unbind(-1)
    sr, st, sp = torch.sin(rad).unbind(-1)
    row0 = torch.stack([cp * ct * cr - sp * sr, cp * ct * sr + sp * cr, -cp * st], dim=-1)
    row1 = torch.stack([-sp * ct * cr - cp * sr, -sp * ct * sr + cp * cr, sp * st], dim=-1)
    row2 = torch.stack([st * cr, st * sr, ct], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def matrix_to_euler_relion(matrix: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rotation matrices to RELION ZYZ Euler angles (rot, tilt, psi; degrees).

    Follows RELION's ``Euler_matrix2angles``: tilt in [0, 180]; at the gimbal poles
    (``sin(tilt) < eps``) rot is set to 0 and the whole in-plane angle goes to psi.

    Parameters
    ----------
    matrix : (..., 3, 3) tensor
    eps : float
        Threshold on ``sin(tilt)`` below which the pole branch is used.

    Returns
    -------
    (..., 3) tensor of degrees, rot and psi in (-180, 180].
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    a = matrix
    sin_tilt = torch.sqrt(a[..., 2, 0] ** 2 + a[..., 2, 1] ** 2)
    regular = sin_tilt > eps
    rot = torch.where(regular, torch.atan2(a[..., 2, 1], a[..., 2, 0]), torch.zeros_like(sin_tilt))
    tilt = torch.atan2(sin_tilt, a[..., 2, 2])
    psi_regular = torch.atan2(a[..., 1, 2], -a[..., 0, 2])
    # Poles: tilt = 0 -> A = Rz(psi + rot); tilt = 180 -> A00 = -cos(psi - rot), A01 = sin(psi - rot).
    north = a[..., 2, 2] > 0
    psi_pole = torch.where(
        north, torch.atan2(a[..., 0, 1], a[..., 0, 0]), torch.atan2(a[..., 0, 1], -a[..., 0, 0])
    )
    tilt = torch.where(regular, tilt, torch.where(north, torch.zeros_like(tilt), torch.full_like(tilt, math.pi)))
    psi = torch.where(regular, psi_regular, psi_pole)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))


def origin_pixels_to_angstrom(origin_px: torch.Tensor, pixel_size_angstrom: torch.Tensor | float) -> torch.Tensor:
    """RELION 3.0 ``rlnOriginX/Y`` (pixels) to 3.1 ``rlnOriginXAngst/YAngst`` (Å)."""
    return origin_px * pixel_size_angstrom


def origin_angstrom_to_pixels(origin_angstrom: torch.Tensor, pixel_size_angstrom: torch.Tensor | float) -> torch.Tensor:
    """RELION 3.1 ``rlnOriginXAngst/YAngst`` (Å) to pixels."""
    return origin_angstrom / pixel_size_angstrom


def image_shift_angstrom_from_origin(origin_angstrom: torch.Tensor) -> torch.Tensor:
    """The translation (Å) that the forward model applies to a projection: ``-origin``.

    A map point lands at ``(A @ r)[:2] + shift`` with ``shift = -origin``.
    """
    return -origin_angstrom


def origin_angstrom_from_image_shift(shift_angstrom: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`image_shift_angstrom_from_origin`: the ``rlnOriginX/YAngst`` of a shift."""
    return -shift_angstrom


def bfactor_to_sigma_angstrom(bfactor_angstrom2: torch.Tensor | float) -> torch.Tensor | float:
    """B-factor (Å^2) to the real-space Gaussian width sigma (Å): ``sigma = sqrt(B / (8 pi^2))``."""
    if isinstance(bfactor_angstrom2, torch.Tensor):
        return torch.sqrt(bfactor_angstrom2 / (8 * math.pi**2))
    return math.sqrt(bfactor_angstrom2 / (8 * math.pi**2))


def sigma_angstrom_to_bfactor(sigma_angstrom: torch.Tensor | float) -> torch.Tensor | float:
    """Gaussian width sigma (Å) to B-factor (Å^2): ``B = 8 pi^2 sigma^2``."""
    return 8 * math.pi**2 * sigma_angstrom**2
