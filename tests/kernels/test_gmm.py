import math

import pytest
import torch

from gmmsession.kernels.conventions import euler_relion_to_matrix, image_shift_angstrom_from_origin
from gmmsession.kernels.fourier import irfft_centered_2d, irfft_centered_3d, rfft_centered_3d
from gmmsession.kernels.gmm import (
    fourier_crop_box_size,
    gaussian_mass_voxel_units,
    gaussians_rfft_3d,
    project_gaussians_rfft_2d,
    render_gaussians_3d,
)
from gmmsession.kernels.rotations import quaternion_to_matrix

BOX = 32
PIX = 1.5


def _blobs(device, g=6, seed=0, dtype=torch.float64, sigma_min=2.5):
    gen = torch.Generator().manual_seed(seed)
    pos = (torch.rand(g, 3, generator=gen, dtype=dtype) - 0.5) * 14  # within +-7 Å: tails stay inside 48 Å
    amp = torch.rand(g, generator=gen, dtype=dtype) + 0.5
    sig = torch.rand(g, generator=gen, dtype=dtype) + sigma_min
    return pos.to(device), amp.to(device), sig.to(device)


def _poses(n, device, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    rot = quaternion_to_matrix(torch.randn(n, 4, generator=gen, dtype=dtype))
    shift = (torch.rand(n, 2, generator=gen, dtype=dtype) - 0.5) * 4
    return rot.to(device), shift.to(device)


def test_projection_of_rendered_volume_equals_analytic_projection(device):
    pos, amp, sig = _blobs(device)
    vol = render_gaussians_3d(pos, amp, sig, BOX, PIX)
    eye = torch.eye(3, dtype=pos.dtype, device=device)[None]
    spectrum = project_gaussians_rfft_2d(pos, amp, sig, eye, torch.zeros(1, 2, dtype=pos.dtype, device=device), BOX, PIX)
    assert spectrum.shape == (1, BOX, BOX // 2 + 1)
    image = irfft_centered_2d(spectrum, BOX)[0]
    # sigma >= 2.5 Å = 1.7 px: aliasing and Gaussian tails past the box edge are < 1e-3 of the peak.
    assert torch.allclose(image, vol.sum(0), atol=1e-3 * vol.sum(0).abs().max().item())
    # F(0) is the total mass in voxel units.
    assert torch.allclose(spectrum[0, 0, 0].real, gaussian_mass_voxel_units(amp, sig, PIX).sum(), rtol=1e-12)
    assert torch.allclose(vol.sum(), spectrum[0, 0, 0].real, rtol=1e-4)


def test_rfft_3d_matches_rendering(device):
    pos, amp, sig = _blobs(device)
    vol = render_gaussians_3d(pos, amp, sig, BOX, PIX, chunk_size=4)  # chunking exercised
    spectrum = gaussians_rfft_3d(pos, amp, sig, BOX, PIX, chunk_size=4)
    assert spectrum.shape == (BOX, BOX, BOX // 2 + 1)
    # Same aliasing/tail bound as above.
    assert torch.allclose(irfft_centered_3d(spectrum, BOX), vol, atol=1e-4 * vol.abs().max().item())
    assert torch.allclose(rfft_centered_3d(vol), spectrum, atol=1e-3 * spectrum.abs().max().item())


def test_rotating_positions_equals_rotating_pose(device):
    pos, amp, sig = _blobs(device, sigma_min=1.0)
    rot, shift = _poses(4, device)
    by_pose = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIX)
    rotated = torch.einsum("nij,gj->ngi", rot, pos)
    eye = torch.eye(3, dtype=pos.dtype, device=device).expand(4, 3, 3)
    by_positions = project_gaussians_rfft_2d(rotated, amp, sig, eye, shift, BOX, PIX)
    assert torch.allclose(by_pose, by_positions, atol=1e-10)
    # Projection along z of a 3D map: same as the central section of the 3D transform (Fourier slice).
    f3 = gaussians_rfft_3d(pos, amp, sig, BOX, PIX)
    f2 = project_gaussians_rfft_2d(pos, amp, sig, eye[:1], torch.zeros(1, 2, dtype=pos.dtype, device=device), BOX, PIX)
    assert torch.allclose(f3[0], f2[0], atol=1e-10)


def test_gaussian_lands_at_expected_column(device):
    box = 64
    x = 9.0  # Å = 6 px
    pos = torch.tensor([[x, 0.0, 0.0]], dtype=torch.float64, device=device)
    amp = torch.ones(1, dtype=torch.float64, device=device)
    sig = torch.full((1,), 2.0, dtype=torch.float64, device=device)
    euler = torch.zeros(1, 3, dtype=torch.float64, device=device)
    origin = torch.zeros(1, 2, dtype=torch.float64, device=device)
    img = irfft_centered_2d(
        project_gaussians_rfft_2d(pos, amp, sig, euler_relion_to_matrix(euler), image_shift_angstrom_from_origin(origin), box, PIX),
        box,
    )[0]
    row, col = divmod(int(img.argmax()), box)
    assert (row, col) == (box // 2, box // 2 + int(x / PIX))
    # An origin of (+3 Å, 0) moves the image content by -2 px (RELION: point lands at A r - origin).
    origin = torch.tensor([[3.0, 0.0]], dtype=torch.float64, device=device)
    img = irfft_centered_2d(
        project_gaussians_rfft_2d(pos, amp, sig, euler_relion_to_matrix(euler), image_shift_angstrom_from_origin(origin), box, PIX),
        box,
    )[0]
    assert divmod(int(img.argmax()), box) == (box // 2, box // 2 + int(x / PIX) - 2)
    # psi = 90 deg: A = Rz(90) maps x to -y (RELION's Rz has +sin in row 0), so the blob goes to row box//2 - 6.
    euler = torch.tensor([[0.0, 0.0, 90.0]], dtype=torch.float64, device=device)
    img = irfft_centered_2d(
        project_gaussians_rfft_2d(pos, amp, sig, euler_relion_to_matrix(euler), torch.zeros(1, 2, dtype=torch.float64, device=device), box, PIX),
        box,
    )[0]
    assert divmod(int(img.argmax()), box) == (box // 2 - int(x / PIX), box // 2)
    # Peak height of the projection: A sqrt(2 pi) sigma / p (sum of voxels along z).
    assert img.max().item() == pytest.approx(math.sqrt(2 * math.pi) * 2.0 / PIX, rel=1e-3)


def test_batch_consistency_and_per_image_positions(device):
    pos, amp, sig = _blobs(device, sigma_min=1.0)
    rot, shift = _poses(5, device)
    batch = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIX)
    for i in range(5):
        single = project_gaussians_rfft_2d(pos, amp, sig, rot[i : i + 1], shift[i : i + 1], BOX, PIX)
        assert torch.allclose(batch[i], single[0], atol=1e-10)
    per_image = project_gaussians_rfft_2d(
        pos.expand(5, -1, -1), amp.expand(5, -1), sig.expand(5, -1), rot, shift, BOX, PIX
    )
    assert torch.allclose(batch, per_image, atol=1e-10)


def test_fourier_crop_returns_low_frequencies(device):
    pos, amp, sig = _blobs(device, sigma_min=1.0)
    rot, shift = _poses(3, device)
    full = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIX)
    kmax = 0.1  # 1/Å
    b = fourier_crop_box_size(BOX, PIX, kmax)
    assert b % 2 == 0 and b / 2 >= kmax * BOX * PIX and b < BOX
    crop = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIX, max_frequency=kmax)
    assert crop.shape == (3, b, b // 2 + 1)
    h = b // 2
    assert torch.allclose(crop[:, :h, : h + 1], full[:, :h, : h + 1], atol=1e-10)
    assert torch.allclose(crop[:, h + 1 :, : h + 1], full[:, BOX - h + 1 :, : h + 1], atol=1e-10)


def test_gradients_flow(device):
    pos, amp, sig = _blobs(device, g=3, sigma_min=1.0)
    rot, shift = _poses(2, device)
    box = 8

    def f(p, a, s, r, t):
        return torch.view_as_real(project_gaussians_rfft_2d(p, a, s, r, t, box, PIX))

    inputs = tuple(x.clone().requires_grad_(True) for x in (pos, amp, sig, rot, shift))
    assert torch.autograd.gradcheck(f, inputs)
    inputs3 = tuple(x.clone().requires_grad_(True) for x in (pos, amp, sig))
    assert torch.autograd.gradcheck(lambda p, a, s: torch.view_as_real(gaussians_rfft_3d(p, a, s, 6, PIX)), inputs3)


def test_float32_and_shape_errors(device):
    pos, amp, sig = _blobs(device, dtype=torch.float32)
    rot, shift = _poses(2, device, dtype=torch.float32)
    out = project_gaussians_rfft_2d(pos, amp, sig, rot, shift, BOX, PIX)
    assert out.dtype == torch.complex64 and out.device.type == device.type
    with pytest.raises(ValueError, match="positions_angstrom"):
        project_gaussians_rfft_2d(pos[:, :2], amp, sig, rot, shift, BOX, PIX)
    with pytest.raises(ValueError, match="amplitudes"):
        project_gaussians_rfft_2d(pos, amp[:-1], sig, rot, shift, BOX, PIX)
    with pytest.raises(ValueError, match="shift_angstrom"):
        project_gaussians_rfft_2d(pos, amp, sig, rot, shift[:1], BOX, PIX)
    with pytest.raises(ValueError, match="rotations"):
        project_gaussians_rfft_2d(pos, amp, sig, rot[:, :2], shift, BOX, PIX)
    with pytest.raises(ValueError, match="sigmas_angstrom"):
        render_gaussians_3d(pos, amp, sig[:-1], BOX, PIX)


def test_odd_box_and_batched_rendering(device):
    pos, amp, sig = _blobs(device)
    box = 31
    eye = torch.eye(3, dtype=pos.dtype, device=device)[None]
    spectrum = project_gaussians_rfft_2d(pos, amp, sig, eye, torch.zeros(1, 2, dtype=pos.dtype, device=device), box, PIX)
    assert spectrum.shape == (1, box, box // 2 + 1)
    vol = render_gaussians_3d(pos, amp, sig, box, PIX)
    # Same tail/aliasing bound as the even box (46.5 Å box, blobs within +-7 Å, sigma >= 2.5 Å).
    assert torch.allclose(irfft_centered_2d(spectrum, box)[0], vol.sum(0), atol=2e-3 * vol.sum(0).abs().max().item())
    # Leading batch dimensions: (2, G, 3) renders two volumes, each equal to its own rendering.
    pos2 = torch.stack([pos, pos.flip(0)])
    amp2 = torch.stack([amp, 2 * amp])
    sig2 = torch.stack([sig, sig])
    vols = render_gaussians_3d(pos2, amp2, sig2, 16, PIX)
    ffts = gaussians_rfft_3d(pos2, amp2, sig2, 16, PIX)
    assert vols.shape == (2, 16, 16, 16) and ffts.shape == (2, 16, 16, 9)
    assert torch.allclose(vols[1], render_gaussians_3d(pos.flip(0), 2 * amp, sig, 16, PIX))
    assert torch.allclose(ffts[0], gaussians_rfft_3d(pos, amp, sig, 16, PIX))


def test_tiling_over_gaussians_changes_nothing(device, monkeypatch):
    """The projection works tile by tile over the Gaussians; values and gradients must not depend on the tile."""
    import gmmsession.kernels.gmm as kgmm

    pos, amp, sig = _blobs(device, g=7, sigma_min=1.0)
    rot, shift = _poses(3, device)
    amp_per_image = (amp * torch.arange(1, 4, dtype=amp.dtype, device=device)[:, None]).requires_grad_(True)

    def run():
        p = pos.clone().requires_grad_(True)
        s = sig.clone().requires_grad_(True)
        r = rot.clone().requires_grad_(True)
        out = project_gaussians_rfft_2d(p, amp_per_image, s, r, shift, 16, PIX, max_frequency=0.2)
        (out.real**2 + 3 * out.imag).sum().backward()
        grads = [t.grad.clone() for t in (p, s, r, amp_per_image)]
        amp_per_image.grad = None
        return out.detach(), grads

    whole, whole_grads = run()
    monkeypatch.setitem(kgmm._GAUSSIANS_PER_TILE, device.type, 3)  # tiles of 3, 3 and 1 Gaussians
    tiled, tiled_grads = run()
    assert torch.allclose(whole, tiled, atol=1e-12)
    for a, b in zip(whole_grads, tiled_grads):
        assert torch.allclose(a, b, atol=1e-10)
    # Per-image amplitudes: gradient check through the hand-written backward with several tiles.
    inputs = (pos.clone().requires_grad_(True), amp_per_image.detach().clone().requires_grad_(True), sig.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(
        lambda p, a, s: torch.view_as_real(project_gaussians_rfft_2d(p, a, s, rot, shift, 8, PIX)), inputs
    )


def test_rfft_3d_gradients_with_several_chunks(device):
    """The 3D transform's hand-written backward, chunked over Gaussians (5 Gaussians in chunks of 2)."""
    pos, amp, sig = _blobs(device, g=5, sigma_min=1.0)
    inputs = tuple(x.clone().requires_grad_(True) for x in (pos, amp, sig))
    assert torch.autograd.gradcheck(lambda p, a, s: torch.view_as_real(gaussians_rfft_3d(p, a, s, 6, PIX, chunk_size=2)), inputs)
    whole = gaussians_rfft_3d(pos, amp, sig, 8, PIX)
    assert torch.allclose(gaussians_rfft_3d(pos, amp, sig, 8, PIX, chunk_size=2), whole, atol=1e-12)
