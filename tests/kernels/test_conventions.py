import math

import numpy as np
import pytest
import torch

from gmmsession.kernels.conventions import euler_relion_to_matrix, matrix_to_euler_relion
from gmmsession.kernels.rotations import (
    geodesic_angle_deg,
    matrix_to_quaternion,
    matrix_to_rotvec,
    quaternion_to_matrix,
    rotvec_to_matrix,
)


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def _ry(b):
    c, s = math.cos(b), math.sin(b)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def test_euler_matches_relion_definition(device):
    rng = np.random.default_rng(0)
    eul = rng.uniform([-180, 0, -180], [180, 180, 180], size=(50, 3))
    got = euler_relion_to_matrix(torch.tensor(eul, device=device, dtype=torch.float64)).cpu().numpy()
    for e, m in zip(eul, got):
        r, t, p = np.deg2rad(e)
        np.testing.assert_allclose(m, _rz(p) @ _ry(t) @ _rz(r), atol=1e-12)


def test_euler_round_trip_including_poles(device):
    rng = np.random.default_rng(1)
    eul = rng.uniform([-180, 0, -180], [180, 180, 180], size=(200, 3))
    eul[:5, 1] = 0.0
    eul[5:10, 1] = 180.0
    m = euler_relion_to_matrix(torch.tensor(eul, device=device, dtype=torch.float64))
    back = matrix_to_euler_relion(m)
    m2 = euler_relion_to_matrix(back)
    # Same rotation (angles themselves are not unique at the poles); float64 round-off only.
    assert geodesic_angle_deg(m, m2).max().item() < 1e-5
    regular = slice(10, None)
    np.testing.assert_allclose(back[regular].cpu().numpy(), eul[regular], atol=1e-8)
    assert torch.all(back[:10, 0] == 0)


def test_rotvec_quaternion_round_trips(device):
    g = torch.Generator().manual_seed(2)
    rv = (torch.rand(300, 3, generator=g, dtype=torch.float64) - 0.5) * 9  # norms up to ~7.8 > pi
    m = rotvec_to_matrix(rv.to(device))
    assert torch.allclose(m @ m.transpose(-1, -2), torch.eye(3, dtype=m.dtype, device=device), atol=1e-12)
    assert torch.allclose(torch.linalg.det(m), torch.ones(300, dtype=m.dtype, device=device), atol=1e-12)
    rv2 = matrix_to_rotvec(m)
    assert rv2.norm(dim=-1).max() <= math.pi + 1e-9
    assert geodesic_angle_deg(m, rotvec_to_matrix(rv2)).max() < 1e-5
    q = matrix_to_quaternion(m)
    assert geodesic_angle_deg(m, quaternion_to_matrix(q)).max() < 1e-5


def test_rotvec_is_right_handed_and_geodesic_angle():
    rv = torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64)
    m = rotvec_to_matrix(rv)
    np.testing.assert_allclose((m @ torch.tensor([1.0, 0, 0], dtype=torch.float64)).numpy(), [0, 1, 0], atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64)
    assert geodesic_angle_deg(eye, m).item() == pytest.approx(90.0)
    small = rotvec_to_matrix(torch.tensor([1e-4, 0, 0], dtype=torch.float64))
    assert geodesic_angle_deg(eye, small).item() == pytest.approx(math.degrees(1e-4), rel=1e-6)


def test_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        euler_relion_to_matrix(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="3, 3"):
        matrix_to_euler_relion(torch.zeros(4, 3))


def test_image_shift_and_origin_are_inverse():
    from gmmsession.kernels.conventions import image_shift_angstrom_from_origin, origin_angstrom_from_image_shift

    origin = torch.tensor([[1.5, -2.0], [0.0, 3.25]])
    shift = image_shift_angstrom_from_origin(origin)
    torch.testing.assert_close(shift, -origin)  # RELION: a map point lands at (A r)[:2] - origin
    torch.testing.assert_close(origin_angstrom_from_image_shift(shift), origin)
