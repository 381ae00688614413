import torch

from gmmsession.kernels.fourier import (
    fourier_shift_rfft_2d,
    irfft_centered_2d,
    irfft_centered_3d,
    rfft_centered_2d,
    rfft_centered_3d,
    rfft_frequencies_2d,
)


def test_centred_rfft_of_a_centred_symmetric_object_is_real(device):
    box = 16
    c = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    img = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / 8)
    f = rfft_centered_2d(img)
    assert f.imag.abs().max() < 1e-12
    assert torch.allclose(irfft_centered_2d(f, box), img, atol=1e-12)
    vol = torch.exp(-(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) / 8)
    assert rfft_centered_3d(vol).imag.abs().max() < 1e-12
    assert torch.allclose(irfft_centered_3d(rfft_centered_3d(vol), box), vol, atol=1e-12)


def test_integer_shift_equals_roll_and_positive_moves_to_larger_index(device):
    box, pixel = 20, 1.5
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, box, box, generator=g, dtype=torch.float64).to(device)
    shifts_px = torch.tensor([[2.0, 0.0], [0.0, -3.0], [4.0, 5.0]], dtype=torch.float64, device=device)
    freqs = rfft_frequencies_2d(box, pixel, device=device, dtype=torch.float64)
    out = irfft_centered_2d(fourier_shift_rfft_2d(rfft_centered_2d(imgs), shifts_px * pixel, freqs), box)
    for i in range(3):
        dx, dy = int(shifts_px[i, 0]), int(shifts_px[i, 1])
        expected = torch.roll(imgs[i], shifts=(dy, dx), dims=(0, 1))  # rows are y, columns x
        assert torch.allclose(out[i], expected, atol=1e-10)
