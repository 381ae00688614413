"""Rotation parameterisations: rotation vectors, unit quaternions, geodesic distance.

All functions are batched over leading dimensions and differentiable. RELION Euler angles
live in :mod:`gmmsession.kernels.conventions`.
"""

from __future__ import annotations

import torch

__all__ = [
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "geodesic_angle_deg",
    "kabsch_superposition",
]


def _check_last(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, shape))}), got {tuple(x.shape)}")


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (axis * angle, radians; any norm) to rotation matrices (Rodrigues).

    Parameters
    ----------
    rotvec : (..., 3) tensor
        Norms above pi are valid (cryoSPARC writes them); the result is the same rotation
        as the vector reduced modulo 2 pi.

    Returns
    -------
    (..., 3, 3) tensor ``R`` with ``R @ v`` rotating ``v`` right-handedly about the axis.
    """
    _check_last(rotvec, (3,), "rotvec")
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2.clamp_min(1e-30))
    small = theta2 < 1e-8
    # sin(t)/t and (1 - cos t)/t^2 with Taylor series near 0 (keeps gradients finite).
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-30))
    k = _skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(k.shape)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(w, x, y, z)`` (normalised here) to rotation matrices.

    Parameters
    ----------
    quaternion : (..., 4) tensor, scalar first.
    """
    _check_last(quaternion, (4,), "quaternion")
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to unit quaternions ``(w, x, y, z)`` with ``w >= 0``.

    Uses the numerically stable branch choice (largest diagonal term).
    """
    _check_last(matrix, (3, 3), "matrix")
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate solutions; pick the one with the largest denominator per element.
    tr = m00 + m11 + m22
    cands = torch.stack(
        [
            torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )
    diag = torch.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_rotvec(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to rotation vectors with norm in [0, pi] (radians)."""
    q = matrix_to_quaternion(matrix)
    w = q[..., :1].clamp(-1.0, 1.0)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s > 1e-12, angle / s.clamp_min(1e-30), 2.0 / w.clamp_min(1e-30))
    return xyz * scale


def geodesic_angle_deg(matrix_a: torch.Tensor, matrix_b: torch.Tensor) -> torch.Tensor:
    """Angle (degrees, in [0, 180]) of the rotation taking ``matrix_a`` to ``matrix_b``.

    Parameters
    ----------
    matrix_a, matrix_b : (..., 3, 3) tensors, broadcastable.
    """
    _check_last(matrix_a, (3, 3), "matrix_a")
    _check_last(matrix_b, (3, 3), "matrix_b")
    rel = matrix_a.transpose(-1, -2) @ matrix_b
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    sin = skew.norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def kabsch_superposition(
    source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid superposition: the proper rotation ``R`` and translation ``t`` minimising
    ``sum_j w_j |R s_j + t - t_j|^2`` (weighted Kabsch, batched).

    Parameters
    ----------
    source, target : (..., N, 3) tensors (same shape; any units).
    weights : (N,) or (..., N) non-negative weights with a positive sum; None: equal.

    Returns
    -------
    R : (..., 3, 3) with det +1 (never a reflection); t : (..., 3).
    """
    if source.shape != target.shape or source.ndim < 2 or source.shape[-1] != 3:
        raise ValueError(f"source and target must have the same shape (..., N, 3), got {tuple(source.shape)}, {tuple(target.shape)}")
    w = torch.ones(source.shape[:-1], dtype=source.dtype, device=source.device) if weights is None else weights.to(source)
    if w.shape[-1] != source.shape[-2]:
        raise ValueError(f"weights must have shape (..., {source.shape[-2]}), got {tuple(w.shape)}")
    w = w.expand(source.shape[:-1]) / w.sum(-1, keepdim=True)
    s_mean = (w[..., None] * source).sum(-2)
    t_mean = (w[..., None] * target).sum(-2)
    h = ((source - s_mean[..., None, :]) * w[..., None]).transpose(-1, -2) @ (target - t_mean[..., None, :])
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    r = vt.transpose(-1, -2) @ fix @ u.transpose(-1, -2)
    return r, t_mean - (r @ s_mean[..., None])[..., 0]
