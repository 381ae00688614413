import math

import numpy as np
import pytest
import torch

from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.kernels.fsc import (
    corrected_masked_fsc,
    frc_2d,
    fsc_3d,
    last_shell_above_threshold,
    phase_randomize_3d,
    randomization_shell,
    resolution_at_threshold,
    shell_index_rfft,
    shell_resolution_angstrom,
)
from gmmsession.kernels.masks import soft_sphere_mask_3d


def _relion_getfsc_reference(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Literal transcription of the loops of RELION's getFSC (src/fftw.cpp), numpy, slow, tiny boxes only."""
    f1, f2 = np.fft.rfftn(m1), np.fft.rfftn(m2)
    n = m1.shape[0]
    xsize = n // 2 + 1
    num, d1, d2 = np.zeros(xsize), np.zeros(xsize), np.zeros(xsize)
    for k in range(n):
        kp = k if k < xsize else k - n
        for i in range(n):
            ip = i if i < xsize else i - n
            for j in range(xsize):
                idx = int(math.floor(math.sqrt(kp * kp + ip * ip + j * j) + 0.5))
                if idx >= xsize:
                    continue
                z1, z2 = f1[k, i, j], f2[k, i, j]
                num[idx] += (np.conj(z1) * z2).real
                d1[idx] += abs(z1) ** 2
                d2[idx] += abs(z2) ** 2
    return num / np.sqrt(d1 * d2)


def _smooth_volume(box: int, generator: torch.Generator, n_blobs: int = 12) -> torch.Tensor:
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for _ in range(n_blobs):
        p = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * box * 0.5
        s = 0.8 + torch.rand((), generator=generator, dtype=torch.float64)
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s**2))
    return vol


def test_fsc_matches_relion_getfsc_loops():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, 8, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(8, 8, 8, generator=g, dtype=torch.float64)
    ours = fsc_3d(a, b).numpy()
    ref = _relion_getfsc_reference(a.numpy(), b.numpy())
    # Same sums in a different order: float64 round-off only.
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_shell_index_rounds_and_drops_corners():
    idx = shell_index_rfft(8, 3)
    assert idx.shape == (8, 8, 5)
    assert idx[0, 0, 0] == 0 and idx[0, 0, 4] == 4 and idx[4, 0, 0] == 4
    assert idx[1, 1, 1] == 2  # sqrt(3) = 1.73 rounds to 2
    assert idx[4, 4, 4] == 5  # corner beyond Nyquist: the drop bin box // 2 + 1


def test_fsc_with_itself_is_one(device):
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(2, 16, 16, 16, generator=g).to(device)
    fsc = fsc_3d(vol, vol)
    assert fsc.shape == (2, 9)
    assert fsc.device.type == device.type
    # float32 spectra: products agree to ~1e-6 relative.
    torch.testing.assert_close(fsc, torch.ones_like(fsc), atol=1e-5, rtol=0)


def test_fsc_of_independent_noise_is_near_zero(device):
    g = torch.Generator().manual_seed(2)
    box = 32
    a = torch.randn(box, box, box, generator=g).to(device)
    b = torch.randn(box, box, box, generator=g).to(device)
    fsc = fsc_3d(a, b).cpu()
    counts = torch.bincount(shell_index_rfft(box, 3).flatten(), minlength=box // 2 + 2)[: box // 2 + 1]
    # The FSC of independent noise has a standard deviation of about 1/sqrt(2 n) for n complex
    # elements; 3/sqrt(n) is > 4 sigma. Shell 0 (one real DC term, FSC = +-1) is excluded.
    bound = 3.0 / torch.sqrt(counts[1:].double())
    assert torch.all(fsc[1:].abs().double() < bound), (fsc, bound)


def test_fsc_invariant_to_scaling_and_sign_flips_it(device):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 16, 16, generator=g).to(device)
    b = a + torch.randn(16, 16, 16, generator=g).to(device)
    ref = fsc_3d(a, b)
    torch.testing.assert_close(fsc_3d(3.0 * a, 0.25 * b), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fsc_3d(-a, b), -ref, atol=1e-5, rtol=0)


def test_frc_batched_equals_per_image(device):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 2, 24, 24, generator=g).to(device)
    b = a + 2 * torch.randn(3, 2, 24, 24, generator=g).to(device)
    frc = frc_2d(a, b)
    assert frc.shape == (3, 2, 13)
    torch.testing.assert_close(frc[1, 0], frc_2d(a[1, 0], b[1, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(frc_2d(a, a), torch.ones_like(frc), atol=1e-5, rtol=0)


def test_fsc_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        fsc_3d(torch.zeros(8, 8, 8), torch.zeros(10, 10, 10))
    with pytest.raises(ValueError, match="cubic"):
        fsc_3d(torch.zeros(8, 8, 6), torch.zeros(8, 8, 6))
    with pytest.raises(ValueError, match="even"):
        frc_2d(torch.zeros(7, 7), torch.zeros(7, 7))


def test_shell_resolution_angstrom():
    res = shell_resolution_angstrom(64, 1.5)
    assert res.shape == (33,)
    assert math.isinf(res[0])
    assert res[1] == pytest.approx(96.0) and res[32] == pytest.approx(3.0)  # Nyquist = 2 pixels


def test_resolution_rule_is_last_shell_before_first_drop():
    fsc = torch.tensor([1.0, 0.95, 0.6, 0.2, 0.1, 0.3, 0.05, 0.0, 0.0])  # box 16
    # First shell below 0.143 is 4 (the rebound at 5 is ignored): resolution of shell 3.
    assert int(last_shell_above_threshold(fsc)) == 3
    assert float(resolution_at_threshold(fsc, 16, 2.0)) == pytest.approx(32.0 / 3)
    batch = torch.stack([fsc, torch.ones(9), torch.tensor([1.0, 0.1] + [0.0] * 7)])
    shells = last_shell_above_threshold(batch)
    assert shells.tolist() == [3, 8, 0]
    res = resolution_at_threshold(batch, 16, 2.0)
    assert res[1] == pytest.approx(4.0) and math.isinf(res[2])
    with pytest.raises(ValueError, match="shells"):
        resolution_at_threshold(fsc, 32, 1.0)


def test_phase_randomisation_keeps_amplitudes_and_low_shells(device):
    g = torch.Generator().manual_seed(5)
    box, shell = 24, 5
    vol = _smooth_volume(box, g).to(device) + 0.01 * torch.randn(box, box, box, generator=g, dtype=torch.float64).to(device)
    out = phase_randomize_3d(vol, shell, torch.Generator().manual_seed(0))
    assert out.shape == vol.shape and out.dtype == vol.dtype and out.device.type == device.type
    f_in, f_out = torch.fft.rfftn(vol), torch.fft.rfftn(out)
    # float64 FFT round trip: amplitudes agree to round-off on every element, including the
    # Hermitian-paired kx = 0 plane, which proves the randomised spectrum is Hermitian-consistent.
    torch.testing.assert_close(f_out.abs(), f_in.abs(), atol=1e-9, rtol=1e-9)
    full = torch.fft.fftfreq(box, 1.0 / box, dtype=torch.float64, device=device)
    half = torch.fft.rfftfreq(box, 1.0 / box, dtype=torch.float64, device=device)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    inner = kx**2 + ky**2 + kz**2 < shell**2
    torch.testing.assert_close(f_out[inner], f_in[inner], atol=1e-9, rtol=1e-9)
    fsc = fsc_3d(vol, out).cpu()
    counts = torch.bincount(shell_index_rfft(box, 3).flatten(), minlength=box // 2 + 2)[: box // 2 + 1]
    # Beyond the randomisation shell (+1: shell `shell` is half randomised) the phases are
    # independent of the original's: same 3/sqrt(n) noise bound as independent noise.
    beyond = slice(shell + 1, None)
    assert torch.all(fsc[beyond].abs() < 3.0 / torch.sqrt(counts[beyond].double()))
    torch.testing.assert_close(fsc[:shell], torch.ones(shell, dtype=fsc.dtype), atol=1e-9, rtol=0)


def test_phase_randomisation_is_reproducible_and_independent_per_batch():
    g = torch.Generator().manual_seed(6)
    vol = torch.randn(2, 16, 16, 16, generator=g)
    a = phase_randomize_3d(vol, 3, torch.Generator().manual_seed(7))
    b = phase_randomize_3d(vol, 3, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    same = phase_randomize_3d(torch.stack([vol[0], vol[0]]), 3, torch.Generator().manual_seed(7))
    assert not torch.allclose(same[0], same[1])


def test_randomization_shell_and_correction():
    fsc = torch.tensor([0.5, 0.99, 0.9, 0.79, 0.5, 0.1])
    assert randomization_shell(fsc) == 3  # shell 0 is never chosen, even below 0.8
    assert randomization_shell(torch.ones(6)) is None
    t = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    n = torch.tensor([1.0, 0.9, 0.5, 0.4, 0.2, 0.2, 0.0])
    out = corrected_masked_fsc(t, n, randomize_from_shell=2)
    # Shells < 2 + 2 keep the masked FSC; from 4 on (t - n) / (1 - n).
    expected = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.5, 0.375, 0.4])
    torch.testing.assert_close(out, expected)


def test_gold_standard_fsc_recipe(device):
    g = torch.Generator().manual_seed(8)
    box, apix = 32, 2.0
    signal = _smooth_volume(box, g, n_blobs=20)
    h1 = (signal + 0.05 * torch.randn(signal.shape, generator=g, dtype=torch.float64)).float().to(device)
    h2 = (signal + 0.05 * torch.randn(signal.shape, generator=g, dtype=torch.float64)).float().to(device)
    plain = gold_standard_fsc(h1, h2, apix)
    assert plain.fsc_masked is None and not plain.mask_used
    assert plain.resolution_angstrom == plain.resolution_unmasked_angstrom
    assert 2 * apix < plain.resolution_angstrom < box * apix / 2  # crosses 0.143 at a mid shell

    mask = soft_sphere_mask_3d(box, 10, 4, device=device)
    res = gold_standard_fsc(h1, h2, apix, mask, seed=3)
    assert res.fsc_unmasked.shape == (box // 2 + 1,)
    np.testing.assert_allclose(res.fsc_unmasked, plain.fsc_unmasked)
    # Noise fills the box, signal sits inside the mask: masking raises the FSC and the
    # corrected resolution is at least as good as the unmasked one.
    assert res.mask_used
    assert res.resolution_angstrom <= res.resolution_unmasked_angstrom
    assert res.randomize_from_shell == randomization_shell(torch.from_numpy(res.fsc_unmasked))
    s = res.randomize_from_shell
    np.testing.assert_allclose(res.fsc_corrected[: s + 2], res.fsc_masked[: s + 2])
    again = gold_standard_fsc(h1.cpu(), h2.cpu(), apix, mask.cpu(), seed=3)
    # The seed fixes the phases on every device; FFTs differ across devices at float32 round-off.
    np.testing.assert_allclose(again.fsc_corrected, res.fsc_corrected, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gold_standard_fsc(h1, h2, apix, 2 * mask)


def test_gold_standard_fsc_without_randomisation_shell():
    g = torch.Generator().manual_seed(9)
    vol = _smooth_volume(16, g).float()
    res = gold_standard_fsc(vol, vol.clone(), 1.0, soft_sphere_mask_3d(16, 5, 2))
    assert res.randomize_from_shell is None and res.notes
    assert res.resolution_angstrom == pytest.approx(2.0)  # identical halves: Nyquist
