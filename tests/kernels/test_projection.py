"""Physics of the voxel forward model (Fourier-slice projection)."""

import math

import pytest
import torch

from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.projection import (
    prepare_volume_for_projection,
    project_slices_rfft_2d,
    project_volume,
    trilinear_gridding_correction_3d,
)


def gaussian_blobs(box: int, centres: torch.Tensor, sigma: float, device) -> torch.Tensor:
    """Sum of isotropic Gaussians at ``centres`` (k, 3) given as (x, y, z) voxels from ``box // 2``."""
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box, device=device)
    for cx, cy, cz in centres.tolist():
        vol += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return vol


def analytic_projection(box: int, centres_xy: torch.Tensor, sigma: float, device) -> torch.Tensor:
    """Line integral of the Gaussians along z: 2D Gaussians of mass sqrt(2 pi) sigma each."""
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    img = torch.zeros(centres_xy.shape[0], box, box, device=device)
    for i in range(centres_xy.shape[0]):
        for cx, cy in centres_xy[i].tolist():
            img[i] += math.sqrt(2 * math.pi) * sigma * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return img


def test_projection_matches_analytic_line_integral_with_rotation_and_shift(device):
    box, sigma = 32, 1.5
    centres = torch.tensor([[5.0, -3.0, 2.0], [-4.0, 6.0, -1.0], [0.0, 0.0, 7.0]])
    vol = gaussian_blobs(box, centres, sigma, device)
    euler = torch.tensor([[0.0, 0.0, 0.0], [30.0, 50.0, -70.0], [120.0, 100.0, 15.0]], dtype=torch.float64)
    rot = euler_relion_to_matrix(euler).float().to(device)
    origin = torch.tensor([[0.0, 0.0], [2.5, -1.0], [-3.0, 4.0]], device=device)  # Å, pixel 1
    imgs = project_volume(vol, rot, origin, pixel_size_angstrom=1.0)
    # Convention: a map point r appears at (A r)[:2] - origin.
    expected_xy = (rot @ centres.to(device).T).transpose(1, 2)[..., :2] - origin[:, None, :]
    expected = analytic_projection(box, expected_xy, sigma, device)
    a = imgs.flatten(1) - imgs.flatten(1).mean(1, keepdim=True)
    b = expected.flatten(1) - expected.flatten(1).mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    # Trilinear interpolation on a 2x padded grid (with sinc^2 pre-correction) is not exact:
    # 2-4 % relative error and a 4 % high DC here, exactly as relion_project (see
    # tests/relion/test_projection_relion.py). A wrong rotation or shift convention gives
    # correlations far below 0.99.
    assert float(corr.min()) > 0.995, corr
    err = (imgs - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1)
    assert float(err.max()) < 0.06, err


def test_projection_moves_by_minus_origin(device):
    box = 32
    vol = gaussian_blobs(box, torch.tensor([[0.0, 0.0, 0.0]]), 1.5, device)  # one blob: a unique peak
    rot = torch.eye(3, device=device)[None]
    img = project_volume(vol, rot, torch.tensor([[3.0, -5.0]], device=device), 1.0)[0]
    iy, ix = divmod(int(img.argmax()), box)
    assert (ix - box // 2, iy - box // 2) == (-3, 5)


def test_slices_are_zero_outside_nyquist_and_hermitian_consistent(device):
    box = 16
    torch.manual_seed(0)
    vol = torch.randn(box, box, box, device=device)
    spec = prepare_volume_for_projection(vol, 2)
    rot = euler_relion_to_matrix(torch.tensor([[10.0, 80.0, 33.0]], dtype=torch.float64)).float().to(device)
    sl = project_slices_rfft_2d(spec, rot, box, 2)[0]
    ky = torch.fft.fftfreq(box, 1 / box, device=device)
    kx = torch.arange(box // 2 + 1, device=device)
    outside = ky[:, None] ** 2 + kx[None, :] ** 2 > (box / 2) ** 2
    assert sl[outside].abs().max() == 0
    # Column kx = 0 holds Friedel pairs: S(0, -ky) = conj S(0, ky) up to interpolation symmetry.
    col = sl[:, 0]
    mate = col[torch.remainder(-torch.arange(box, device=device), box)].conj()
    assert torch.allclose(col[1 : box // 2], mate[1 : box // 2], atol=1e-3 * float(col.abs().max()))


def test_gridding_correction_is_separable_sinc2():
    g = trilinear_gridding_correction_3d(8, 16, dtype=torch.float64)
    assert g[4, 4, 4] == 1
    assert torch.isclose(g[4, 4, 0], torch.sinc(torch.tensor(-4 / 16.0, dtype=torch.float64)) ** 2)


def test_shape_errors():
    with pytest.raises(ValueError, match="volume"):
        prepare_volume_for_projection(torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="rotations"):
        project_slices_rfft_2d(torch.zeros(8, 8, 5, dtype=torch.complex64), torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="origin_angstrom"):
        project_volume(torch.zeros(4, 4, 4), torch.eye(3)[None], torch.zeros(2, 2), 1.0)
