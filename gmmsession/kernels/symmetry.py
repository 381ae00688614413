"""Point-group symmetry operators in RELION's settings (C1, Cn, Dn, T, O, I1-I4).

A map with symmetry group ``G`` satisfies ``V(S @ r) = V(r)`` for every operator ``S`` of
``G`` (``r = (x, y, z)`` in Å from voxel ``box // 2``). Because of this, a particle image at
RELION pose ``A`` (``A`` maps the map frame to the image frame, see
:mod:`gmmsession.kernels.conventions`) is equally an image at pose ``A @ S`` for every ``S``:
the projection of ``V`` along ``A @ S`` is the projection of ``V(S^-1 .) = V`` along ``A``.
This is what ``relion_particle_symmetry_expand`` writes and what ``relion_reconstruct --sym``
inserts (both checked in ``tests/relion/test_symmetry_relion.py``).

Orientations are RELION 3.1's (``relion_refine --sym X --print_symmetry_ops`` prints them):

=======  =====================================================================================
group    generators (axis, order)
=======  =====================================================================================
Cn       n-fold about z
Dn       n-fold about z, 2-fold about x
T        3-fold about z, 2-fold about (0, sqrt(2/3), sqrt(1/3))
O        4-fold about z, 3-fold about (1, 1, 1) / sqrt(3)
I1       2-fold about x, 5-fold about (phi, 0, -1) / |.|  (no Crowther 222; Heymann's standard)
I2 (I)   2-fold about z, 5-fold about (1, 0, phi) / |.|  (Crowther 222; RELION's default ``I``)
I3       5-fold about z, 2-fold about (-1, 0, phi) / |.|  (the 52 setting of SPIDER)
I4       5-fold about (2, 0, 1) / sqrt(5), 2-fold about (1, 0, phi) / |.|
=======  =====================================================================================

``phi = (1 + sqrt 5) / 2``. An icosahedral 5-fold and a 2-fold 31.72 degrees apart generate the
whole group (60 operators), so the 3-folds that RELION also lists need not be given. Groups
with mirrors or inversion (Cnv, Cnh, Dnh, Dnd, Sn, Ci, Cs, Th, Td, Oh, Ih) are not supported:
a cryo-EM map of a chiral molecule has none.
"""

from __future__ import annotations

import math
import re

import torch

from gmmsession.kernels.rotations import rotvec_to_matrix

__all__ = ["symmetry_operators", "normalise_symmetry_name", "SUPPORTED_SYMMETRIES"]

SUPPORTED_SYMMETRIES = "C1, Cn (n >= 1), Dn (n >= 2), T, O, I (= I2), I1, I2, I3, I4"

_PHI = (1 + math.sqrt(5)) / 2


def _axis(x: float, y: float, z: float) -> tuple[float, float, float]:
    norm = math.sqrt(x * x + y * y + z * z)
    return (x / norm, y / norm, z / norm)


# (axis, order) generators of the polyhedral groups in RELION's settings (module docstring).
_GENERATORS: dict[str, tuple[tuple[tuple[float, float, float], int], ...]] = {
    "T": (((0.0, 0.0, 1.0), 3), (_axis(0.0, math.sqrt(2 / 3), math.sqrt(1 / 3)), 2)),
    "O": (((0.0, 0.0, 1.0), 4), (_axis(1.0, 1.0, 1.0), 3)),
    "I1": (((1.0, 0.0, 0.0), 2), (_axis(_PHI, 0.0, -1.0), 5)),
    "I2": (((0.0, 0.0, 1.0), 2), (_axis(1.0, 0.0, _PHI), 5)),
    "I3": ((_axis(-1.0, 0.0, _PHI), 2), ((0.0, 0.0, 1.0), 5)),
    "I4": ((_axis(1.0, 0.0, _PHI), 2), (_axis(2.0, 0.0, 1.0), 5)),
}
_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}
_IMPROPER = re.compile(r"^(C\d+[VH]|D\d+[HD]|S\d+|CI|CS|TH|TD|OH|IH|I\dH|I[1-5]?H)$")


def normalise_symmetry_name(name: str) -> str:
    """Canonical spelling of a point-group name: ``"c3"`` -> ``"C3"``, ``"i"`` -> ``"I2"``.

    Raises
    ------
    ValueError
        For a name that is not one of :data:`SUPPORTED_SYMMETRIES` (the message says which are).
    """
    if not isinstance(name, str):
        raise ValueError(f"symmetry must be a string such as 'C1', 'C3', 'D7', 'T', 'O', 'I', got {name!r}")
    key = name.strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", key)
    if m:
        n = int(m.group(2))
        if m.group(1) == "C" and n >= 1:
            return f"C{n}"
        if m.group(1) == "D" and n >= 2:
            return f"D{n}"
    if key in ("T", "O"):
        return key
    if key == "I":
        return "I2"
    if key in ("I1", "I2", "I3", "I4"):
        return key
    if _IMPROPER.fullmatch(key):
        raise ValueError(
            f"symmetry group {name!r} contains mirrors or an inversion, which a chiral molecule cannot have; "
            f"supported: {SUPPORTED_SYMMETRIES}"
        )
    raise ValueError(f"unknown symmetry group {name!r}; supported: {SUPPORTED_SYMMETRIES}")


def _rz_relion(angle_deg: float) -> torch.Tensor:
    """RELION's ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` (float64)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _closure(generators: list[torch.Tensor], expected: int) -> torch.Tensor:
    """All products of ``generators`` (float64 matrices), identity first, in breadth-first order."""
    ops = [torch.eye(3, dtype=torch.float64)]
    i = 0
    while i < len(ops):
        for g in generators:
            candidate = g @ ops[i]
            if min(float((candidate - op).abs().max()) for op in ops) > 1e-8:
                ops.append(candidate)
                if len(ops) > expected:
                    raise RuntimeError(f"symmetry generators do not close into {expected} operators")
        i += 1
    if len(ops) != expected:
        raise RuntimeError(f"symmetry generators closed into {len(ops)} operators, expected {expected}")
    return torch.stack(ops)


def symmetry_operators(
    name: str, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The rotation matrices of a point group in RELION's orientation.

    Parameters
    ----------
    name : str
        ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I`` (= ``I2``, RELION's default), ``I1`` .. ``I4``;
        case-insensitive, surrounding blanks ignored.
    dtype, device : of the result (built in float64, then converted).

    Returns
    -------
    (n_ops, 3, 3) tensor ``S``; ``S[0]`` is the identity. ``Cn``: ``S[k] = Rz(360 k / n)`` in
    RELION's matrix convention (Euler angles ``(0, 0, 360 k / n)``), ``k = 0 .. n - 1``;
    ``Dn``: those ``n`` followed by ``Rx(180) @ S[k]``; ``T``, ``O``, ``I*``: breadth-first
    products of the generators in the module docstring. A particle at pose ``A`` is equally
    at ``A @ S[k]`` for each ``k``.

    Raises
    ------
    ValueError
        For an unknown group or one with mirrors.
    """
    key = normalise_symmetry_name(name)
    if key[0] in "CD" and key[1:].isdigit():
        n = int(key[1:])
        cyclic = [_rz_relion(360.0 * k / n) for k in range(n)]
        if key[0] == "D":
            flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # 2-fold about x
            cyclic = cyclic + [flip @ s for s in cyclic]
        ops = torch.stack(cyclic)
    else:
        gens = [
            rotvec_to_matrix(torch.tensor(axis, dtype=torch.float64) * (2 * math.pi / order))
            for axis, order in _GENERATORS[key]
        ]
        ops = _closure(gens, _ORDERS[key])
    # Round-off clean-up: exact zeros and ones stay exact (C2, D2, O have integer matrices).
    ops = torch.where(ops.abs() < 1e-12, torch.zeros_like(ops), ops)
    return ops.to(dtype=dtype, device=device)

