"""Analytic Gaussian-mixture kernels: projections, 3D rendering and 3D Fourier transforms.

A Gaussian mixture (or a set of atoms) is the density

    M(r) = sum_j A_j exp(-|r - c_j|^2 / (2 sigma_j^2)),        r, c_j in Å,

with ``A_j`` the **peak** (3D) amplitude of Gaussian ``j`` (the paper's formula) and ``c_j``
measured in Å from voxel ``box // 2`` (see :mod:`gmmsession.kernels.conventions`).

Normalisation (the same for every kernel here, and the one RELION's projector uses)
------------------------------------------------------------------------------------
Values are in *voxel units*: a rendered volume holds ``M`` sampled at the voxel centres, and
a projection image holds the **sum of voxels along the beam**, i.e. ``(1/p) * integral M dz``
with ``p`` the pixel size in Å. Consequently

* the projected Gaussian ``j`` is ``A_j sqrt(2 pi) sigma_j / p * exp(-|t - t_j|^2 / (2 sigma_j^2))``
  (the paper's 2D formula drops the factor ``sqrt(2 pi) sigma_j / p``: there the 2D peak is
  ``A_j``; here the 3D peak is ``A_j`` and projection conserves mass);
* the Fourier transforms are those of the centred DFTs of :mod:`gmmsession.kernels.fourier`:
  Gaussian ``j`` contributes ``m_j exp(-2 pi^2 sigma_j^2 |k|^2) exp(-2 pi i k . c_j)`` with
  ``m_j = A_j (2 pi sigma_j^2)^(3/2) / p^3`` (its mass in voxel units; ``F(0)`` is the sum of
  all voxels of the rendered volume and of all pixels of the projection image).

The analytic transforms are sampled on the rfft grid without aliasing: their inverse DFT is
the band-limited density, which differs from point-sampling ``M`` only where a Gaussian is
narrower than about a pixel.

All kernels are batched, differentiable with respect to positions, amplitudes and widths, and
run on any device; the dtype follows ``positions_angstrom`` (complex outputs use the matching
complex dtype).
"""

from __future__ import annotations

import math

import torch

from gmmsession.kernels.conventions import real_space_center_index
from gmmsession.kernels.gmm_triton import separable_projection, separable_projection_available

__all__ = [
    "project_gaussians_rfft_2d",
    "render_gaussians_3d",
    "gaussians_rfft_3d",
    "gaussian_mass_voxel_units",
    "fourier_crop_box_size",
]


def fourier_crop_box_size(box_size: int, pixel_size_angstrom: float, max_frequency: float | None) -> int:
    """Even box of the Fourier-cropped rfft grid that contains all frequencies up to ``max_frequency``.

    Parameters
    ----------
    box_size : full image box (pixels).
    pixel_size_angstrom : pixel size of the full box (Å).
    max_frequency : highest frequency needed (1/Å), or ``None`` for the full box.

    Returns
    -------
    ``min(box_size, 2 * ceil(max_frequency * box_size * pixel_size_angstrom))``, at least 2
    (rounded up to even). The cropped grid has the same frequency spacing as the full one.
    """
    if max_frequency is None:
        return int(box_size)
    if max_frequency <= 0:
        raise ValueError(f"max_frequency must be > 0 (1/Å), got {max_frequency}")
    half = math.ceil(max_frequency * box_size * pixel_size_angstrom - 1e-9)
    return int(min(box_size, max(2, 2 * half)))


def gaussian_mass_voxel_units(
    amplitudes: torch.Tensor, sigmas_angstrom: torch.Tensor, pixel_size_angstrom: float
) -> torch.Tensor:
    """Mass of peak-amplitude Gaussians in voxel units: ``A (2 pi sigma^2)^(3/2) / p^3``.

    This is the value of each Gaussian's Fourier transform at ``k = 0`` and the sum of its
    rendered voxels (for ``sigma`` above about a pixel). Shapes broadcast.
    """
    return amplitudes * (2 * math.pi * sigmas_angstrom**2) ** 1.5 / pixel_size_angstrom**3


def _frequency_indices(n_out: int, *, rfft: bool, like: torch.Tensor) -> torch.Tensor:
    """Integer frequency indices of a centred-DFT axis: fftfreq or rfftfreq order, as floats."""
    if rfft:
        return torch.arange(n_out // 2 + 1, device=like.device, dtype=like.dtype)
    return torch.fft.fftfreq(n_out, d=1.0 / n_out, device=like.device, dtype=like.dtype)


def _axis_factor(
    index: torch.Tensor,
    spacing: float,
    coords: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_j exp(-2 pi^2 sigma_j^2 k^2) exp(-2 pi i k c_j)`` with ``k = index * spacing``.

    index (K,), coords (..., G), sigmas and weights broadcastable to (..., G); returns
    ``(..., K, G)`` complex. The real envelope multiplies cosine and sine before they are
    combined (``torch.complex(cos, sin)`` measured faster on CPU than ``torch.polar``).
    """
    k = index * spacing
    envelope = torch.exp((-2 * math.pi**2) * sigmas[..., None, :] ** 2 * (k**2)[:, None])
    if weights is not None:
        envelope = envelope * weights[..., None, :]
    phase = (-2 * math.pi) * k[:, None] * coords[..., None, :]
    return torch.complex(envelope * torch.cos(phase), envelope * torch.sin(phase))


# Gaussians per tile of the projection kernel: on the CPU a tile's factors stay in cache (the
# matmuls and the element-wise passes then run several times faster than on whole-G tensors);
# on CUDA one tile holds everything (fewest launches).
_GAUSSIANS_PER_TILE = {"cpu": 512, "cuda": 1 << 30}


def _phase_factor(coords: torch.Tensor, omega: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
    """``envelope * [cos(omega c); sin(omega c)]`` for one tile: (n, 2K, g) real.

    coords (n, g) in Å, omega (K,) angular frequencies (rad/Å), envelope (2K, g) or (n, 2K, g).
    With ``envelope = [w E; -w E]`` the rows are the real and imaginary parts of
    ``w E exp(-i omega c)``. The Gaussian axis is the contiguous one, so the trigonometry runs
    over long vectors.
    """
    k = omega.shape[0]
    phase = omega[:, None] * coords[:, None, :]
    out = torch.empty(coords.shape[0], 2 * k, coords.shape[1], dtype=coords.dtype, device=coords.device)
    torch.cos(phase, out=out[:, :k])
    torch.sin(phase, out=out[:, k:])
    return out.mul_(envelope)


def _tiles(n_gaussians: int, device: torch.device) -> list[slice]:
    step = _GAUSSIANS_PER_TILE.get(device.type, _GAUSSIANS_PER_TILE["cuda"])
    return [slice(s, min(s + step, n_gaussians)) for s in range(0, n_gaussians, step)]


class _SeparableProjection(torch.autograd.Function):
    """``blocks[n] = sum_j L[n, :, j] R[n, :, j]^T`` with ``L = envL * [cos(omega y); sin(omega y)]`` and
    ``R = envR * [cos(omega x); sin(omega x)]``: the four real block products of the projection's
    separable Fourier transform (see :func:`project_gaussians_rfft_2d`).

    A hand-written backward: the gradients of the phases need no further trigonometry
    (``d/dc [E cos(omega c)] = omega * (E sin)`` is a row of the same factor), the factors are
    computed once per tile and kept for the backward, and the work runs tile by tile over the
    Gaussians. Per step that is three batched matmuls plus a few element-wise passes, where
    autograd through the element-wise graph took about five times longer.

    Inputs: y, x (n, G) in-plane coordinates (Å); envL, envR (2K, G) or (n, 2K, G); omega (K,).
    Output: (n, 2K, 2K).
    """

    @staticmethod
    def forward(ctx, y, x, env_left, env_right, omega):  # type: ignore[override]
        n, g = y.shape
        k = omega.shape[0]
        keep = any(ctx.needs_input_grad)
        out = torch.zeros(n, 2 * k, 2 * k, dtype=y.dtype, device=y.device)
        factors = []
        for sl in _tiles(g, y.device):
            left = _phase_factor(y[:, sl], omega, env_left[..., sl])
            right = _phase_factor(x[:, sl], omega, env_right[..., sl])
            out.baddbmm_(left, right.transpose(-2, -1))
            if keep:
                factors.append((left, right))
        ctx.save_for_backward(y, x, env_left, env_right, omega)
        ctx.factors = factors
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        y, x, env_left, env_right, omega = ctx.saved_tensors
        factors = ctx.factors
        k = omega.shape[0]
        need_y, need_x, need_el, need_er, _ = ctx.needs_input_grad
        # Row a of dL/dc is omega_a * (row a + K of L) and row a + K is -omega_a * (row a): fold
        # omega into the (tiny) incoming gradient instead of into the (large) factors.
        weight = torch.cat([omega, omega])[None, :, None]
        grad = grad.contiguous()
        grad_left = grad  # d loss / d L = grad @ R
        grad_right = grad.transpose(-2, -1).contiguous()  # d loss / d R = grad^T @ L
        gy = torch.zeros_like(y) if need_y else None
        gx = torch.zeros_like(x) if need_x else None
        ge_l = torch.zeros_like(env_left) if need_el else None
        ge_r = torch.zeros_like(env_right) if need_er else None
        for (left, right), sl in zip(factors, _tiles(y.shape[1], y.device)):
            for coord_grad, env_grad, env, factor, other, g_in in (
                (gy, ge_l, env_left, left, right, grad_left),
                (gx, ge_r, env_right, right, left, grad_right),
            ):
                if coord_grad is None and env_grad is None:
                    continue
                if coord_grad is not None:
                    gf = torch.bmm(g_in * weight, other)  # omega-weighted d loss / d factor
                    t = gf[:, :k] * factor[:, k:]
                    t.addcmul_(gf[:, k:], factor[:, :k], value=-1)
                    coord_grad[:, sl] = t.sum(1)
                if env_grad is not None:
                    # d loss / d env = (d loss / d factor) * trig, recomputed (only GMM fitting needs it).
                    gf = torch.bmm(g_in, other)
                    ones = torch.ones_like(env[..., sl] if env.ndim == 2 else env[0, :, sl])
                    gf.mul_(_phase_factor(y[:, sl] if factor is left else x[:, sl], omega, ones))
                    env_grad[..., sl] = gf.sum(0) if env.ndim == 2 else gf
        return gy, gx, ge_l, ge_r, None


def _check_gaussians(
    positions: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, batch: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate (G,3)/(n,G,3) positions with (G,)/(n,G) amplitudes and widths; return them as float."""
    if positions.ndim not in (2, 3) or positions.shape[-1] != 3:
        raise ValueError(f"positions_angstrom must have shape (G, 3) or (n, G, 3), got {tuple(positions.shape)}")
    g = positions.shape[-2]
    for name, t in (("amplitudes", amplitudes), ("sigmas_angstrom", sigmas)):
        if t.ndim not in (1, 2) or t.shape[-1] != g:
            raise ValueError(
                f"{name} must have shape (G,) or (n, G) with G={g} (positions {tuple(positions.shape)}), got {tuple(t.shape)}"
            )
        if t.ndim == 2 and batch is not None and t.shape[0] not in (1, batch):
            raise ValueError(f"{name} has batch {t.shape[0]}, expected {batch} (shape {tuple(t.shape)})")
    if positions.ndim == 3 and batch is not None and positions.shape[0] not in (1, batch):
        raise ValueError(f"positions_angstrom has batch {positions.shape[0]}, expected {batch} ({tuple(positions.shape)})")
    dtype = positions.dtype if positions.is_floating_point() else torch.get_default_dtype()
    return (
        positions.to(dtype),
        amplitudes.to(device=positions.device, dtype=dtype),
        sigmas.to(device=positions.device, dtype=dtype),
    )


def project_gaussians_rfft_2d(
    positions_angstrom: torch.Tensor,
    amplitudes: torch.Tensor,
    sigmas_angstrom: torch.Tensor,
    rotations: torch.Tensor,
    shift_angstrom: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    max_frequency: float | None = None,
) -> torch.Tensor:
    """Analytic Fourier transform of Gaussian projections on the centred rfft grid.

    Gaussian ``j`` lands in image ``n`` at ``t_nj = (R_n @ c_j)[:2] + shift_n`` (Å from pixel
    ``box // 2``; ``x`` = column). With RELION metadata use ``R_n`` from
    :func:`~gmmsession.kernels.conventions.euler_relion_to_matrix` and
    ``shift_n = image_shift_angstrom_from_origin(origin_n) = -origin_n``. The transform
    factors per axis, so the sum over Gaussians is one batched complex matrix product
    ``(n, Ky, G) @ (n, G, Kx)``: no interpolation, no voxel grid, no ``(n, G, Ky, Kx)`` tensor.

    Parameters
    ----------
    positions_angstrom : (G, 3) or (n, G, 3) tensor
        Centres ``(x, y, z)`` in Å from voxel ``box // 2`` (shared or per image).
    amplitudes : (G,) or (n, G) tensor
        Peak 3D amplitudes ``A_j``.
    sigmas_angstrom : (G,) or (n, G) tensor
        Widths in Å (> 0).
    rotations : (n, 3, 3) tensor
        Projection matrices ``A`` (map -> image frame).
    shift_angstrom : (n, 2) tensor
        In-plane translation ``(dx, dy)`` in Å applied after rotation.
    box_size : image box in pixels.
    pixel_size_angstrom : pixel size in Å.
    max_frequency : float, optional
        If given (1/Å), return only the Fourier-cropped grid of box
        ``b = fourier_crop_box_size(box_size, pixel_size_angstrom, max_frequency)``: the rows
        and columns of the full grid with ``|index| <= b / 2`` (same frequency spacing), laid
        out as the centred rfft of a ``b x b`` image.

    Returns
    -------
    (n, b, b // 2 + 1) complex tensor, ``b = box_size`` unless cropped. ``irfft_centered_2d``
    of it is the band-limited projection in voxel units (sum of voxels along ``z``).
    """
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (n, 3, 3), got {tuple(rotations.shape)}")
    n = rotations.shape[0]
    if shift_angstrom.shape != (n, 2):
        raise ValueError(f"shift_angstrom must have shape ({n}, 2) to match rotations {tuple(rotations.shape)}, got {tuple(shift_angstrom.shape)}")
    if box_size < 2 or pixel_size_angstrom <= 0:
        raise ValueError(f"need box_size >= 2 and pixel_size_angstrom > 0, got {box_size}, {pixel_size_angstrom}")
    pos, amp, sig = _check_gaussians(positions_angstrom, amplitudes, sigmas_angstrom, n)
    rot = rotations.to(device=pos.device, dtype=pos.dtype)
    shift = shift_angstrom.to(device=pos.device, dtype=pos.dtype)

    # In-plane coordinates (n, G) of every Gaussian in every image.
    if pos.ndim == 2:
        xy = torch.einsum("nij,gj->nig", rot[:, :2, :], pos)
    else:
        xy = torch.einsum("nij,ngj->nig", rot[:, :2, :], pos.expand(n, -1, -1))
    xy = xy + shift[:, :, None]
    mass = gaussian_mass_voxel_units(amp, sig, pixel_size_angstrom)

    b = fourier_crop_box_size(box_size, pixel_size_angstrom, max_frequency)
    spacing = 1.0 / (box_size * pixel_size_angstrom)
    k = _frequency_indices(b, rfft=True, like=pos) * spacing  # 0 .. b // 2, shared by both axes
    kh = k.shape[0]
    # Real arithmetic: one real block product of [Re; Im] factors per image gives the four
    # products rr, ri, ir, ii. Only ky >= 0 is computed: at -ky the factor is the complex
    # conjugate (real envelope and mass). The envelope exp(-2 pi^2 sigma^2 k^2) does not depend
    # on the pose and is computed once.
    envelope = torch.exp((-2 * math.pi**2) * sig[..., None, :] ** 2 * (k**2)[:, None])  # (K, G) or (n, K, G)
    omega = (2 * math.pi) * k
    y, x = xy[:, 1].contiguous(), xy[:, 0].contiguous()
    if envelope.ndim == 2 and not (envelope.requires_grad or mass.requires_grad) and separable_projection_available(y, x):
        # Fixed GMM (pose alignment): the fused kernels never materialise the factors.
        blocks = separable_projection(y, x, envelope * mass[None, :], envelope, omega)
    else:
        env_right = torch.cat([envelope, -envelope], dim=-2)
        env_left = env_right * mass[..., None, :]
        blocks = _SeparableProjection.apply(y, x, env_left.contiguous(), env_right.contiguous(), omega)
    rr, ri = blocks[..., :kh, :kh], blocks[..., :kh, kh:]
    ir, ii = blocks[..., kh:, :kh], blocks[..., kh:, kh:]
    n_pos = (b + 1) // 2  # ky = 0 .. ceil(b / 2) - 1
    positive = torch.complex(rr[..., :n_pos, :] - ii[..., :n_pos, :], ri[..., :n_pos, :] + ir[..., :n_pos, :])
    negative = torch.complex(rr[..., 1:, :] + ii[..., 1:, :], ri[..., 1:, :] - ir[..., 1:, :])  # ky = -1 .. -(b // 2)
    return torch.cat([positive, negative.flip(-2)], dim=-2)


def _flatten_batched_gaussians(
    positions_angstrom: torch.Tensor, amplitudes: torch.Tensor, sigmas_angstrom: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Size]:
    """Check ``(..., G, 3)``, ``(..., G)``, ``(..., G)`` and flatten the leading dims: ``(B, G, 3)``, ``(B, G)``, ``(B, G)``, lead."""
    if positions_angstrom.ndim < 2 or positions_angstrom.shape[-1] != 3:
        raise ValueError(f"positions_angstrom must have shape (..., G, 3), got {tuple(positions_angstrom.shape)}")
    lead = positions_angstrom.shape[:-1]
    if amplitudes.shape != lead or sigmas_angstrom.shape != lead:
        raise ValueError(
            f"amplitudes {tuple(amplitudes.shape)} and sigmas_angstrom {tuple(sigmas_angstrom.shape)} must have shape {tuple(lead)}"
        )
    dtype = positions_angstrom.dtype if positions_angstrom.is_floating_point() else torch.get_default_dtype()
    pos = positions_angstrom.to(dtype).reshape(-1, lead[-1], 3)
    amp = amplitudes.to(pos).reshape(-1, lead[-1])
    sig = sigmas_angstrom.to(pos).reshape(-1, lead[-1])
    return pos, amp, sig, lead


def _render_axis(n_vox: int, pixel_size_angstrom: float, coords: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Real-space 1D Gaussians ``exp(-(u - c_j)^2 / (2 sigma_j^2))`` on voxel centres: (n_vox, G)."""
    u = (torch.arange(n_vox, device=coords.device, dtype=coords.dtype) - real_space_center_index(n_vox)) * pixel_size_angstrom
    return torch.exp(-((u[:, None] - coords[None, :]) ** 2) / (2 * sigmas[None, :] ** 2))


def render_gaussians_3d(
    positions_angstrom: torch.Tensor,
    amplitudes: torch.Tensor,
    sigmas_angstrom: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Point-sample the Gaussian mixture on a cubic voxel grid (real space).

    Each Gaussian is separable, ``A_j gz_j(z) gy_j(y) gx_j(x)``; the sum over Gaussians is
    contracted in chunks as ``(z*y, G) @ (G, x)``, never building ``(G, box, box, box)``.

    Parameters
    ----------
    positions_angstrom : (..., G, 3) tensor, ``(x, y, z)`` in Å from voxel ``box // 2``.
    amplitudes, sigmas_angstrom : (..., G) tensors (peak amplitude; width in Å).
    box_size : voxels per side.
    pixel_size_angstrom : voxel size in Å.
    chunk_size : Gaussians per contraction (memory ``box^2 * chunk_size``).

    Returns
    -------
    (..., box, box, box) real tensor indexed ``[z, y, x]``; undersampled Gaussians
    (``sigma`` below about a voxel) alias, see :func:`gaussians_rfft_3d` for the band-limited map.
    """
    pos, amp, sig, lead = _flatten_batched_gaussians(positions_angstrom, amplitudes, sigmas_angstrom)
    out = []
    for p, a, s in zip(pos, amp, sig):
        vol = torch.zeros(box_size * box_size, box_size, dtype=pos.dtype, device=pos.device)
        for start in range(0, p.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            gx = _render_axis(box_size, pixel_size_angstrom, p[sl, 0], s[sl])
            gy = _render_axis(box_size, pixel_size_angstrom, p[sl, 1], s[sl])
            gz = _render_axis(box_size, pixel_size_angstrom, p[sl, 2], s[sl]) * a[sl]
            zy = (gz[:, None, :] * gy[None, :, :]).reshape(box_size * box_size, -1)
            vol = vol + zy @ gx.T
        out.append(vol.reshape(box_size, box_size, box_size))
    return torch.stack(out).reshape(*lead[:-1], box_size, box_size, box_size)


def gaussians_rfft_3d(
    positions_angstrom: torch.Tensor,
    amplitudes: torch.Tensor,
    sigmas_angstrom: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Analytic 3D Fourier transform of the mixture on the centred rfft grid.

    ``F(k) = sum_j m_j exp(-2 pi^2 sigma_j^2 |k|^2) exp(-2 pi i k . c_j)`` with the voxel-unit
    mass ``m_j`` (module docstring), i.e. the counterpart of
    :func:`~gmmsession.kernels.fourier.rfft_centered_3d` of the rendered volume.
    ``irfft_centered_3d(F, box_size)`` is the band-limited (alias-free) density map.

    Parameters
    ----------
    positions_angstrom : (..., G, 3) tensor, ``(x, y, z)`` in Å from voxel ``box // 2``.
    amplitudes, sigmas_angstrom : (..., G) tensors.
    box_size, pixel_size_angstrom : grid size and voxel size (Å).
    chunk_size : Gaussians per contraction.

    Returns
    -------
    (..., box, box, box // 2 + 1) complex tensor, indexed ``[kz, ky, kx]``.
    """
    pos, amp, sig, lead = _flatten_batched_gaussians(positions_angstrom, amplitudes, sigmas_angstrom)
    nh = box_size // 2 + 1
    spacing = 1.0 / (box_size * pixel_size_angstrom)
    k_full = _frequency_indices(box_size, rfft=False, like=pos) * spacing
    k_half = _frequency_indices(box_size, rfft=True, like=pos) * spacing
    out = []
    for p, a, s in zip(pos, amp, sig):
        mass = gaussian_mass_voxel_units(a, s, pixel_size_angstrom)
        # Real envelopes exp(-2 pi^2 sigma^2 k^2) (mass on z); the phases are inside the Function.
        env_z = torch.exp((-2 * math.pi**2) * s[None, :] ** 2 * (k_full**2)[:, None]) * mass[None, :]
        env_y = torch.exp((-2 * math.pi**2) * s[None, :] ** 2 * (k_full**2)[:, None])
        env_x = torch.exp((-2 * math.pi**2) * s[None, :] ** 2 * (k_half**2)[:, None])
        f = _SeparableTransform3d.apply(p[:, 2], p[:, 1], p[:, 0], env_z, env_y, env_x,
                                        (2 * math.pi) * k_full, (2 * math.pi) * k_half, int(chunk_size))
        out.append(f.reshape(box_size, box_size, nh))
    return torch.stack(out).reshape(*lead[:-1], box_size, box_size, nh)


def _phases(coords: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``exp(-i omega c)``: (K, g) complex for coords (g,) and angular frequencies (K,)."""
    phase = omega[:, None] * coords[None, :]
    return torch.complex(torch.cos(phase), -torch.sin(phase))


class _SeparableTransform3d(torch.autograd.Function):
    """``F[kz, ky, kx] = sum_j Z[kz, j] Y[ky, j] X[kx, j]`` with ``Z = envZ exp(-i omega_z z)`` etc.

    Chunked over Gaussians with a hand-written backward: per chunk, two complex matmuls of the
    forward's size and two element-wise products (the factors are recomputed, nothing of size
    ``K^2 x G`` is kept), where autograd through the element-wise graph took about three times
    the forward. Inputs: z, y, x (G,) in Å; envelopes (Kz, G), (Ky, G), (Kx, G) real;
    omega_full (Kz = Ky,), omega_half (Kx,); chunk size. Output (Kz * Ky, Kx) complex.
    """

    @staticmethod
    def forward(ctx, z, y, x, env_z, env_y, env_x, omega_full, omega_half, chunk):  # type: ignore[override]
        kz, kx = omega_full.shape[0], omega_half.shape[0]
        out = None
        for sl in _chunks(z.shape[0], chunk):
            zf = env_z[:, sl] * _phases(z[sl], omega_full)
            yf = env_y[:, sl] * _phases(y[sl], omega_full)
            xf = env_x[:, sl] * _phases(x[sl], omega_half)
            zy = (zf[:, None, :] * yf[None, :, :]).reshape(kz * kz, -1)
            term = zy @ xf.transpose(0, 1)
            out = term if out is None else out.add_(term)
        if out is None:
            out = torch.zeros(kz * kz, kx, dtype=torch.complex128 if z.dtype == torch.float64 else torch.complex64, device=z.device)
        ctx.save_for_backward(z, y, x, env_z, env_y, env_x, omega_full, omega_half)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        z, y, x, env_z, env_y, env_x, omega_full, omega_half = ctx.saved_tensors
        need = ctx.needs_input_grad
        kz = omega_full.shape[0]
        grads: list[torch.Tensor | None] = [
            torch.zeros_like(t) if need[i] else None for i, t in enumerate((z, y, x, env_z, env_y, env_x))
        ]
        grad_t = grad.transpose(0, 1)
        for sl in _chunks(z.shape[0], ctx.chunk):
            pz, py, px = _phases(z[sl], omega_full), _phases(y[sl], omega_full), _phases(x[sl], omega_half)
            zf, yf, xf = env_z[:, sl] * pz, env_y[:, sl] * py, env_x[:, sl] * px
            zy = (zf[:, None, :] * yf[None, :, :]).reshape(kz * kz, -1)
            g_x = grad_t @ zy.conj()  # d loss / d X*: (Kx, g)
            g_zy = (grad @ xf.conj()).reshape(kz, kz, -1)  # d loss / d (ZY)*: (Kz, Ky, g)
            g_z = (g_zy * yf.conj()[None, :, :]).sum(1)
            g_y = (g_zy * zf.conj()[:, None, :]).sum(0)
            for i, (g_f, phase, env, omega) in enumerate(
                ((g_z, pz, env_z, omega_full), (g_y, py, env_y, omega_full), (g_x, px, env_x, omega_half))
            ):
                # F = env * exp(-i omega c): dF/dc = -i omega F, dF/denv = phase; dL/dp = Re(conj(g) dF/dp).
                prod = g_f.conj() * phase
                if grads[i] is not None:
                    grads[i][sl] = (omega[:, None] * env[:, sl] * prod.imag).sum(0)
                if grads[3 + i] is not None:
                    grads[3 + i][:, sl] = prod.real
        return (*grads, None, None, None)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, max(int(size), 1))]
