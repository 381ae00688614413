import math

import torch

from gmmsession.kernels.ctf import ctf_2d, electron_wavelength_angstrom, phase_flip
from gmmsession.kernels.fourier import rfft_frequencies_2d


def _relion_ctf_scalar(kx, ky, du, dv, az_deg, kv, cs_mm, q0, phase_deg, bfac, scale):
    """RELION 3.1 src/ctf.h written out per point, with its own atan2 and cos (reference for the vectorised kernel)."""
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    u2 = kx * kx + ky * ky
    ang = math.atan2(ky, kx)
    deltaf = -(du + dv) / 2 - (du - dv) / 2 * math.cos(2 * (ang - math.radians(az_deg)))
    k1, k2 = math.pi * lam, math.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    gamma = k1 * deltaf * u2 + k2 * u2 * u2 - math.radians(phase_deg) - k3
    return -scale * math.sin(gamma) * math.exp(-bfac * u2 / 4)


def test_ctf_matches_relion_formula_pointwise(device):
    box, px = 24, 1.3
    freqs = rfft_frequencies_2d(box, px, device=device, dtype=torch.float64)
    params = [(15000.0, 12000.0, 37.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0), (8000.0, 9500.0, -120.0, 200.0, 0.01, 0.07, 90.0, 50.0, 0.8)]
    du = torch.tensor([p[0] for p in params], dtype=torch.float64, device=device)
    dv = torch.tensor([p[1] for p in params], dtype=torch.float64, device=device)
    az = torch.tensor([p[2] for p in params], dtype=torch.float64, device=device)
    got = ctf_2d(
        freqs, du, dv, az,
        torch.tensor([p[3] for p in params], dtype=torch.float64), torch.tensor([p[4] for p in params], dtype=torch.float64),
        torch.tensor([p[5] for p in params], dtype=torch.float64), torch.tensor([p[6] for p in params], dtype=torch.float64),
        torch.tensor([p[7] for p in params], dtype=torch.float64), torch.tensor([p[8] for p in params], dtype=torch.float64),
    ).cpu()
    f = freqs.cpu()
    for i, p in enumerate(params):
        for iy in range(box):
            for ix in range(box // 2 + 1):
                ref = _relion_ctf_scalar(float(f[iy, ix, 0]), float(f[iy, ix, 1]), *p)
                assert abs(float(got[i, iy, ix]) - ref) < 1e-9
    # CTF(0) = +Q0 * scale: density is bright in RELION images.
    assert abs(float(got[0, 0, 0]) - 0.1) < 1e-12


def test_wavelength_and_phase_flip():
    assert abs(electron_wavelength_angstrom(300.0) - 0.019687) < 1e-6
    spec = torch.ones(1, 4, 3, dtype=torch.complex64)
    ctf = torch.tensor([[[0.5, -0.2, 0.0], [-1, 1, -1], [0.1, 0.1, 0.1], [-0.3, 0.3, 0.0]]])
    out = phase_flip(spec, ctf)
    assert torch.equal(out.real, torch.where(ctf < 0, -1.0, 1.0))
