"""Point-group operators: group structure, RELION's orientations, and which side they act on."""

import math

import pytest
import torch

from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.projection import project_volume
from gmmsession.kernels.symmetry import normalise_symmetry_name, symmetry_operators

GROUPS = {"C1": 1, "C2": 2, "C3": 3, "C7": 7, "D2": 4, "D3": 6, "D7": 14, "T": 12, "O": 24,
          "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _index_of(ops: torch.Tensor, m: torch.Tensor) -> int:
    d = (ops - m).abs().amax((-1, -2))
    assert float(d.min()) < 1e-9, float(d.min())  # float64 products of exact generators: round-off only
    return int(d.argmin())


@pytest.mark.parametrize("name,order", GROUPS.items())
def test_operators_form_a_group_of_rotations(name, order, device):
    ops = symmetry_operators(name, device=device)
    assert ops.shape == (order, 3, 3) and ops.dtype == torch.float64 and ops.device.type == device.type
    ops = ops.cpu()
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.equal(ops[0], eye)
    # Proper rotations (round-off tolerance of float64 products).
    assert torch.allclose(ops @ ops.transpose(1, 2), eye.expand_as(ops), atol=1e-12)
    assert torch.allclose(torch.linalg.det(ops), torch.ones(order, dtype=torch.float64), atol=1e-12)
    # Distinct, closed under products and inverses.
    d = (ops[:, None] - ops[None]).abs().amax((-1, -2)) + 10 * torch.eye(order, dtype=torch.float64)
    assert float(d.min()) > 0.1
    for a in ops:
        _index_of(ops, a.T)
        for b in ops:
            _index_of(ops, a @ b)


def _axes_of_order(ops: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Unit axes (sign fixed) of the operators that rotate by 360/n degrees."""
    out = []
    for r in ops:
        # trace = 1 + 2 cos(angle); compared on the trace (acos is ill-conditioned near 180 degrees).
        if abs(float(torch.trace(r)) - (1 + 2 * math.cos(2 * math.pi / n))) < 1e-9:
            w, v = torch.linalg.eig(r)
            ax = v[:, int((w - 1).abs().argmin())].real
            ax = ax / ax.norm()
            out.append(ax * (1 if float(ax[torch.nonzero(ax.abs() > 1e-6)[0, 0]]) > 0 else -1))
    return out


def _has_axis(axes: list[torch.Tensor], axis: tuple[float, float, float]) -> bool:
    """Up to sign; 1e-6: eigenvectors from a general (non-symmetric) eigensolver."""
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    return any(float(torch.minimum((ax - a).norm(), (ax + a).norm())) < 1e-6 for ax in axes)


def test_relion_orientations():
    # Cn about z, in RELION's matrix convention: S[k] = Euler(0, 0, 360 k / n).
    c5 = symmetry_operators("C5")
    euler = torch.tensor([[0.0, 0.0, 72.0 * k] for k in range(5)], dtype=torch.float64)
    assert torch.allclose(c5, euler_relion_to_matrix(euler), atol=1e-12)
    # Dn: 2-fold about x (RELION), not about y.
    assert _has_axis(_axes_of_order(symmetry_operators("D4"), 2), (1, 0, 0))
    assert not _has_axis(_axes_of_order(symmetry_operators("D3"), 2), (0, 1, 0))
    # T: 3-fold about z; O: 4-fold about z; I2 (RELION's default I): 2-folds along x, y, z and a
    # 5-fold at (1, 0, phi); I1: 2-fold x, 5-fold (phi, 0, -1); I3: 5-fold about z; I4: 5-fold (2, 0, 1).
    phi = (1 + math.sqrt(5)) / 2
    assert _has_axis(_axes_of_order(symmetry_operators("T"), 3), (0, 0, 1))
    assert _has_axis(_axes_of_order(symmetry_operators("O"), 4), (0, 0, 1))
    i2 = symmetry_operators("I")
    assert torch.equal(i2, symmetry_operators("I2"))
    assert all(_has_axis(_axes_of_order(i2, 2), a) for a in [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    assert _has_axis(_axes_of_order(i2, 5), (1, 0, phi))
    assert _has_axis(_axes_of_order(symmetry_operators("I1"), 5), (phi, 0, -1))
    assert _has_axis(_axes_of_order(symmetry_operators("I3"), 5), (0, 0, 1))
    assert _has_axis(_axes_of_order(symmetry_operators("I4"), 5), (2, 0, 1))


def test_names_case_insensitive_and_errors():
    assert normalise_symmetry_name(" c3 ") == "C3"
    assert normalise_symmetry_name("i") == "I2"
    assert torch.equal(symmetry_operators("d2"), symmetry_operators("D2"))
    for bad in ["X3", "C0", "D1", "C", "I5", "", "C3.5"]:
        with pytest.raises(ValueError, match="unknown symmetry group"):
            symmetry_operators(bad)
    for improper in ["C2v", "D3h", "Oh", "Ci"]:
        with pytest.raises(ValueError, match="mirrors"):
            symmetry_operators(improper)
    with pytest.raises(ValueError):
        symmetry_operators(3)  # type: ignore[arg-type]
    assert symmetry_operators("C3", dtype=torch.float32).dtype == torch.float32


def _c3_blobs(box: int, pixel: float) -> torch.Tensor:
    """A chiral, C3-symmetric map about z: three copies of an asymmetric blob group."""
    c = (torch.arange(box, dtype=torch.float64) - box // 2) * pixel
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], -1)
    base = torch.tensor([[8.0, 2.0, 3.0], [5.0, -4.0, -6.0], [11.0, 3.0, -2.0]], dtype=torch.float64)
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for s in symmetry_operators("C3"):
        for p, w in zip(base @ s.T, (1.0, 0.6, 0.8)):  # atoms at S p: the set is invariant
            vol += w * torch.exp(-((r - p) ** 2).sum(-1) / (2 * 2.5**2))
    return vol.float()


def test_image_at_pose_a_is_a_view_at_a_times_s(device):
    """Which side: for V(S r) = V(r), the projection along A equals that along A @ S, not S @ A."""
    box, pixel = 32, 1.5
    vol = _c3_blobs(box, pixel).to(device)
    a = euler_relion_to_matrix(torch.tensor([[30.0, 70.0, -40.0]], dtype=torch.float64))
    s = symmetry_operators("C3")[1]
    shift = torch.zeros(1, 2, device=device)
    ref = project_volume(vol, a.float().to(device), shift, pixel)
    right = project_volume(vol, (a @ s).float().to(device), shift, pixel)
    left = project_volume(vol, (s @ a).float().to(device), shift, pixel)
    scale = float(ref.abs().max())
    # Right: the same image up to float32 and projector interpolation (measured ~1e-3 relative).
    assert float((right - ref).abs().max()) < 0.02 * scale
    # Left multiplication rotates the image in-plane: a different image altogether.
    assert float((left - ref).abs().max()) > 0.3 * scale
