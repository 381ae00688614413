"""Triton kernels (CUDA) for the separable GMM projection used in pose alignment.

:func:`gmmsession.kernels.gmm.project_gaussians_rfft_2d` writes a batch of analytic GMM
projections as one real block product per image::

    out[n] = L[n] @ R[n]^T,   L[n] = [ wE * cos(omega y_n) ; -wE * sin(omega y_n) ]   (2K, G)
                              R[n] = [  E * cos(omega x_n) ;  -E * sin(omega x_n) ]   (2K, G)

with ``E[a, j] = exp(-2 pi^2 sigma_j^2 k_a^2)`` the Gaussian envelope, ``w_j`` the mass and
``y_n, x_n`` the in-plane coordinates of every Gaussian in image ``n``. At the paper's GPCR
scale (7,374 Gaussians, K = 70) the factors are 4 MB per image, so a step is bound by the
memory traffic of the element-wise passes around the matmuls, not by the matmuls. The torch
path (:class:`gmmsession.kernels.gmm._SeparableProjection`) builds each factor in four passes
(phase, cosine, sine, envelope) and reduces the phase gradients in three. Here:

* one Triton kernel writes each factor in a single pass (trigonometry in registers);
* cuBLAS does the products (TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set, as
  alignment does from :class:`~gmmsession.algorithms.align.AlignConfig`);
* one Triton kernel reduces ``d loss / d factor`` against the factor to the coordinate
  gradient, reading each once.

Measured on an H100 at the GPCR scale, batch 256: 2,220 particles/s against 1,620 for the torch
path, peak memory 4.0 GiB against 5.5 GiB (``benchmarks/device_fused.sh``). A version that
never materialised the factors (tiles built in registers and fed to ``tl.dot``) ran at less
than half that speed: its small tiles starve the tensor cores and recompute the trigonometry
per partner tile.

Gradients with respect to the envelopes (amplitudes, widths) are not provided:
:func:`separable_projection_available` says when the caller may use this path, and
:mod:`gmmsession.kernels.gmm` falls back to the torch path otherwise (and when
``GMMSESSION_NO_TRITON=1``). The kernels also run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which the tests use where there is no GPU.
"""

from __future__ import annotations

import os

import torch

try:  # optional: Triton ships with CUDA builds of PyTorch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None
    tl = None

__all__ = ["separable_projection_available", "separable_projection"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def separable_projection_available(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path can run on these tensors: Triton present, float32, and CUDA
    (or CPU tensors under ``TRITON_INTERPRET=1``)."""
    if triton is None or os.environ.get("GMMSESSION_NO_TRITON", "0") == "1":
        return False
    if any(t.dtype != torch.float32 for t in tensors):
        return False
    return all(t.is_cuda for t in tensors) or (_interpreting() and all(t.device.type == "cpu" for t in tensors))


if triton is not None:

    @triton.jit
    def _factor_kernel(c_ptr, env_ptr, omega_ptr, out_ptr, n_gauss, n_freq, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
        """out[n] = [env * cos(omega c_n); -env * sin(omega c_n)], (2K, G), in one pass."""
        pid_n = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        g = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
        mask_g = g < n_gauss
        mask_r = rows < n_freq
        mask = mask_r[:, None] & mask_g[None, :]
        coord = tl.load(c_ptr + pid_n * n_gauss + g, mask=mask_g, other=0.0)
        omega = tl.load(omega_ptr + rows, mask=mask_r, other=0.0)
        env = tl.load(env_ptr + rows[:, None] * n_gauss + g[None, :], mask=mask, other=0.0)
        phase = omega[:, None] * coord[None, :]
        base = out_ptr + pid_n * 2 * n_freq * n_gauss + rows[:, None] * n_gauss + g[None, :]
        tl.store(base, env * tl.cos(phase), mask=mask)
        tl.store(base + n_freq * n_gauss, -env * tl.sin(phase), mask=mask)

    @triton.jit
    def _phase_grad_kernel(gf_ptr, f_ptr, out_ptr, n_gauss, n_freq, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
        """out[n, g] = sum_a gf[n, a, g] f[n, K + a, g] - gf[n, K + a, g] f[n, a, g] (one read of each)."""
        pid_n = tl.program_id(0)
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        mask_g = g < n_gauss
        total = tl.zeros((BLOCK_G,), dtype=tl.float32)
        base = pid_n * 2 * n_freq * n_gauss
        for a0 in range(0, n_freq, BLOCK_K):
            a = a0 + tl.arange(0, BLOCK_K)
            mask = (a[:, None] < n_freq) & mask_g[None, :]
            off = base + a[:, None] * n_gauss + g[None, :]
            gc = tl.load(gf_ptr + off, mask=mask, other=0.0)
            gs = tl.load(gf_ptr + off + n_freq * n_gauss, mask=mask, other=0.0)
            fc = tl.load(f_ptr + off, mask=mask, other=0.0)
            fs = tl.load(f_ptr + off + n_freq * n_gauss, mask=mask, other=0.0)
            total += tl.sum(gc * fs - gs * fc, axis=0)
        tl.store(out_ptr + pid_n * n_gauss + g, total, mask=mask_g)


_FACTOR_BLOCK = (16, 256)  # (frequencies, Gaussians) per program of the element-wise kernels


def _factors(c, env, omega):
    n, g = c.shape
    k = omega.shape[0]
    out = torch.empty(n, 2 * k, g, dtype=c.dtype, device=c.device)
    bk, bg = _FACTOR_BLOCK
    _factor_kernel[(n, triton.cdiv(k, bk), triton.cdiv(g, bg))](c, env, omega, out, g, k, BLOCK_K=bk, BLOCK_G=bg)
    return out


def _phase_grad(gf, factor):
    n, two_k, g = factor.shape
    out = torch.empty(n, g, dtype=factor.dtype, device=factor.device)
    bk, bg = _FACTOR_BLOCK
    _phase_grad_kernel[(n, triton.cdiv(g, bg))](gf, factor, out, g, two_k // 2, BLOCK_K=bk, BLOCK_G=bg)
    return out


class _FactorSeparableProjection(torch.autograd.Function):
    """Factors written once by a Triton kernel, products by cuBLAS, coordinate gradients reduced in one pass."""

    @staticmethod
    def forward(ctx, y, x, env_left, env_right, omega):  # type: ignore[override]
        left = _factors(y, env_left, omega)
        right = _factors(x, env_right, omega)
        ctx.save_for_backward(left, right, omega)
        return torch.bmm(left, right.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        left, right, omega = ctx.saved_tensors  # envelopes never need gradients (separable_projection refuses them)
        # d factor_a / d c = omega_a * (row a + K) and d factor_(a+K) / d c = -omega_a * (row a):
        # omega folded into the small incoming gradient.
        weight = torch.cat([omega, omega])[None, :, None]
        gy = gx = None
        if ctx.needs_input_grad[0]:
            gy = _phase_grad(torch.bmm(grad * weight, right), left)
        if ctx.needs_input_grad[1]:
            gx = _phase_grad(torch.bmm(grad.transpose(1, 2) * weight, left), right)
        return gy, gx, None, None, None


def separable_projection(
    y: torch.Tensor, x: torch.Tensor, env_left: torch.Tensor, env_right: torch.Tensor, omega: torch.Tensor
) -> torch.Tensor:
    """``out[n] = L[n] @ R[n]^T`` (see the module docstring); differentiable in ``y`` and ``x``.

    y, x : (n, G) in-plane coordinates (Å); env_left, env_right : (K, G) envelopes (``w E`` and
    ``E``; the sine rows' minus sign is applied here); omega : (K,) angular frequencies (rad/Å).
    Returns (n, 2K, 2K) float32, the same blocks as the torch path.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed; use the torch path of project_gaussians_rfft_2d")
    if env_left.requires_grad or env_right.requires_grad:
        raise ValueError("the Triton GMM projection needs envelopes without gradients (amplitudes and widths fixed)")
    k = omega.shape[0]
    for name, env in (("env_left", env_left), ("env_right", env_right)):
        if env.shape != (k, y.shape[1]):
            raise ValueError(f"{name} must have shape ({k}, {y.shape[1]}), got {tuple(env.shape)}")
    return _FactorSeparableProjection.apply(y.contiguous(), x.contiguous(), env_left.contiguous(), env_right.contiguous(), omega.contiguous())
