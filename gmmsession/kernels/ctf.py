"""Contrast transfer function exactly as RELION 3.1 computes it (``src/ctf.h``).

``CTF(k) = -scale * sin(gamma) * exp(-B |k|^2 / 4)`` with
``gamma = pi lambda deltaf |k|^2 + (pi / 2) Cs lambda^3 |k|^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2))``
and ``deltaf = -(dfU + dfV) / 2 - (dfU - dfV) / 2 * cos(2 (atan2(ky, kx) - azimuth))``.
``CTF(0) = +Q0``: particles are bright in RELION images.
"""

from __future__ import annotations

import math

import torch

__all__ = ["electron_wavelength_angstrom", "ctf_2d", "phase_flip"]


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor | float:
    """Relativistic electron wavelength (Å) at an acceleration voltage in kV (RELION's constants)."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


def ctf_2d(
    frequencies: torch.Tensor,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    defocus_angle_deg: torch.Tensor,
    voltage_kv: torch.Tensor | float,
    cs_mm: torch.Tensor | float,
    amplitude_contrast: torch.Tensor | float,
    phase_shift_deg: torch.Tensor | float = 0.0,
    bfactor_angstrom2: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Evaluate RELION's CTF on a grid of frequencies, batched over particles.

    Parameters
    ----------
    frequencies : (..., 2) tensor of ``(kx, ky)`` in 1/Å, e.g. ``(box, box // 2 + 1, 2)`` from
        :func:`gmmsession.kernels.fourier.rfft_frequencies_2d`.
    defocus_u_angstrom, defocus_v_angstrom, defocus_angle_deg : (n,) tensors
        ``rlnDefocusU``, ``rlnDefocusV`` (Å, underfocus positive) and ``rlnDefocusAngle`` (degrees).
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg, bfactor_angstrom2, scale : float or (n,)
        Optics-group constants and per-particle ``rlnPhaseShift``, ``rlnCtfBfactor``,
        ``rlnCtfScalefactor``.

    Returns
    -------
    (n, *frequencies.shape[:-1]) real tensor.
    """
    if frequencies.shape[-1] != 2:
        raise ValueError(f"frequencies must have shape (..., 2), got {tuple(frequencies.shape)}")
    du = torch.as_tensor(defocus_u_angstrom, dtype=frequencies.dtype, device=frequencies.device).reshape(-1)
    n = du.shape[0]
    grid_dims = frequencies.ndim - 1

    def per_particle(x: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=frequencies.dtype, device=frequencies.device).reshape(-1)
        if t.shape[0] not in (1, n):
            raise ValueError(f"per-particle CTF parameter has {t.shape[0]} values, expected 1 or {n}")
        return t.reshape(-1, *([1] * grid_dims))

    du = per_particle(du)
    dv = per_particle(defocus_v_angstrom)
    azimuth = torch.deg2rad(per_particle(defocus_angle_deg))
    lam = electron_wavelength_angstrom(per_particle(voltage_kv))
    cs = per_particle(cs_mm) * 1e7
    q0 = per_particle(amplitude_contrast)
    phase = torch.deg2rad(per_particle(phase_shift_deg))
    bfac = per_particle(bfactor_angstrom2)
    sc = per_particle(scale)

    kx = frequencies[..., 0]
    ky = frequencies[..., 1]
    k2 = kx * kx + ky * ky
    # cos(2 (angle - azimuth)) without per-pixel trigonometry: the grid terms cos 2a, sin 2a
    # (a = atan2(ky, kx); 1 and 0 at k = 0) are shared by every particle.
    safe_k2 = torch.where(k2 > 0, k2, torch.ones_like(k2))
    cos2a = torch.where(k2 > 0, (kx * kx - ky * ky) / safe_k2, torch.ones_like(k2))
    sin2a = 2 * kx * ky / safe_k2
    cos_term = cos2a * torch.cos(2 * azimuth) + sin2a * torch.sin(2 * azimuth)
    deltaf = -(du + dv) / 2 - (du - dv) / 2 * cos_term
    lam2 = lam * lam
    gamma = (
        (math.pi * lam) * (deltaf * k2)
        + ((math.pi / 2) * cs * lam2 * lam) * (k2 * k2)
        - (phase + torch.atan(q0 / torch.sqrt(1 - q0 * q0)))
    )
    ctf = -sc * torch.sin(gamma)
    if bool((bfac != 0).any()):
        ctf = ctf * torch.exp(-bfac * k2 / 4)
    return ctf

def phase_flip(spectrum: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Phase-flip image spectra: multiply by ``sign(CTF)`` (zeros of the CTF keep their value).

    Parameters
    ----------
    spectrum : (n, box, box // 2 + 1) complex tensor
    ctf : (n, box, box // 2 + 1) real tensor from :func:`ctf_2d`
    """
    if spectrum.shape != ctf.shape:
        raise ValueError(f"spectrum {tuple(spectrum.shape)} and ctf {tuple(ctf.shape)} must have the same shape")
    return spectrum * torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)
