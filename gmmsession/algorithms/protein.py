"""A procedural protein that looks like one at 3 Å, and atomic models as simulator input.

:func:`build_protein` makes a deterministic (seeded) two-domain protein joined by a hinge
linker. Each domain is an alpha/beta/alpha sandwich in the style of a Rossmann fold: a parallel
beta-sheet (strands 4.8 Å apart, 3.35 Å rise per residue, pleated) with alpha-helices
(3.6 residues per turn, 1.5 Å rise, 2.3 Å CA radius, right-handed) packed about 10 Å above
and below it, alternating beta-loop-alpha-loop-beta. Loops are smooth arcs with about 3.8 Å
between consecutive CA atoms. Backbone N, C, O are placed from the CA trace with approximate
trans-peptide geometry, CB with the ideal-geometry formula (L-amino acids), and side chains
follow residue-type topologies (real atom names and elements, all-trans zig-zag placement).
Geometry is approximate: bond lengths are within ~0.1 Å, side chains may touch their
neighbours; at 3 Å the map shows helices with their pitch, separated strands and side-chain
bumps, which is what the simulator needs.

Coordinates are in Å, centred on the bounding-box centre (the map's voxel ``box // 2``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gmmsession.kernels.rotations import rotvec_to_matrix

__all__ = [
    "Protein",
    "build_protein",
    "protein_from_atomic_model",
    "hinge_rotate",
    "write_model_pdb",
]

# Side-chain topologies beyond CB: (atom name, element, parent atom name).
_SIDE_CHAINS: dict[str, list[tuple[str, str, str]]] = {
    "GLY": [],
    "ALA": [],
    "SER": [("OG", "O", "CB")],
    "CYS": [("SG", "S", "CB")],
    "VAL": [("CG1", "C", "CB"), ("CG2", "C", "CB")],
    "THR": [("OG1", "O", "CB"), ("CG2", "C", "CB")],
    "PRO": [("CG", "C", "CB"), ("CD", "C", "CG")],
    "LEU": [("CG", "C", "CB"), ("CD1", "C", "CG"), ("CD2", "C", "CG")],
    "ILE": [("CG1", "C", "CB"), ("CG2", "C", "CB"), ("CD1", "C", "CG1")],
    "ASP": [("CG", "C", "CB"), ("OD1", "O", "CG"), ("OD2", "O", "CG")],
    "ASN": [("CG", "C", "CB"), ("OD1", "O", "CG"), ("ND2", "N", "CG")],
    "GLU": [("CG", "C", "CB"), ("CD", "C", "CG"), ("OE1", "O", "CD"), ("OE2", "O", "CD")],
    "GLN": [("CG", "C", "CB"), ("CD", "C", "CG"), ("OE1", "O", "CD"), ("NE2", "N", "CD")],
    "MET": [("CG", "C", "CB"), ("SD", "S", "CG"), ("CE", "C", "SD")],
    "LYS": [("CG", "C", "CB"), ("CD", "C", "CG"), ("CE", "C", "CD"), ("NZ", "N", "CE")],
    "ARG": [("CG", "C", "CB"), ("CD", "C", "CG"), ("NE", "N", "CD"), ("CZ", "C", "NE"), ("NH1", "N", "CZ"), ("NH2", "N", "CZ")],
    "HIS": [("CG", "C", "CB"), ("ND1", "N", "CG"), ("CD2", "C", "CG"), ("CE1", "C", "ND1"), ("NE2", "N", "CD2")],
    "PHE": [("CG", "C", "CB"), ("CD1", "C", "CG"), ("CD2", "C", "CG"), ("CE1", "C", "CD1"), ("CE2", "C", "CD2"), ("CZ", "C", "CE1")],
    "TYR": [
        ("CG", "C", "CB"), ("CD1", "C", "CG"), ("CD2", "C", "CG"), ("CE1", "C", "CD1"),
        ("CE2", "C", "CD2"), ("CZ", "C", "CE1"), ("OH", "O", "CZ"),
    ],
}

# Residue preferences per secondary structure (H helix, E strand, L loop): name -> weight.
_PREFERENCES = {
    "H": {"ALA": 12, "LEU": 12, "GLU": 10, "LYS": 8, "GLN": 6, "MET": 4, "ARG": 6, "ILE": 5, "SER": 4, "ASP": 4, "PHE": 3, "VAL": 3, "TYR": 2, "HIS": 2, "THR": 3, "ASN": 2, "CYS": 1, "GLY": 2},
    "E": {"VAL": 12, "ILE": 10, "TYR": 6, "PHE": 6, "THR": 8, "LEU": 6, "SER": 4, "CYS": 2, "ALA": 4, "LYS": 3, "GLU": 3, "ARG": 3, "GLN": 2, "MET": 2, "HIS": 2, "GLY": 2},
    "L": {"GLY": 14, "PRO": 10, "ASN": 8, "ASP": 8, "SER": 8, "THR": 5, "LYS": 6, "GLU": 5, "ARG": 3, "GLN": 3, "ALA": 4, "HIS": 2},
}

_CA_CA_ANGSTROM = 3.8


@dataclass(frozen=True, eq=False)
class Protein:
    """An atomic model with domain labels and a hinge.

    Attributes
    ----------
    positions_angstrom : (n_atoms, 3) float64 array, ``(x, y, z)`` in Å (neutral conformation).
    elements : (n_atoms,) str array, ``C``, ``N``, ``O`` or ``S``.
    atom_names, residue_names : (n_atoms,) str arrays (PDB names).
    residue_numbers : (n_atoms,) int array, 1-based.
    bfactors_angstrom2 : (n_atoms,) float array (Å^2).
    domains : (n_atoms,) int array of domain labels ``1, 2, ...``.
    hinge_point_angstrom : (3,) array, a point on the hinge axis (Å).
    hinge_axis : (3,) unit vector; positive angles rotate right-handedly about it.
    moving_domain : the domain label that :meth:`conformation` rotates.
    secondary_structure : str, one letter per residue (``H``, ``E``, ``L``).
    """

    positions_angstrom: np.ndarray
    elements: np.ndarray
    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    bfactors_angstrom2: np.ndarray
    domains: np.ndarray
    hinge_point_angstrom: np.ndarray
    hinge_axis: np.ndarray
    moving_domain: int = 2
    secondary_structure: str = ""
    source: str = field(default="procedural")

    @property
    def n_atoms(self) -> int:
        return int(self.positions_angstrom.shape[0])

    @property
    def n_residues(self) -> int:
        return int(np.unique(self.residue_numbers).size)

    @property
    def domain_labels(self) -> list[int]:
        return sorted(int(d) for d in np.unique(self.domains))

    def diameter_angstrom(self) -> float:
        """Largest distance between two atoms (Å)."""
        return _max_distance(np.asarray(self.positions_angstrom, dtype=np.float64))

    def conformation(self, coords: np.ndarray | torch.Tensor | None, hinge_angle_deg: float | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rotate the moving domain about the hinge axis.

        Parameters
        ----------
        coords : (n_atoms, 3) positions in Å, or ``None`` for :attr:`positions_angstrom`.
        hinge_angle_deg : scalar or (n,) angles in degrees (0 = neutral).

        Returns
        -------
        (n_atoms, 3) tensor for a scalar angle, (n, n_atoms, 3) for ``n`` angles (float64
        unless ``coords`` is a tensor of another floating dtype).
        """
        pos = torch.as_tensor(self.positions_angstrom if coords is None else coords)
        if not pos.is_floating_point():
            pos = pos.double()
        angle = torch.as_tensor(hinge_angle_deg, dtype=pos.dtype, device=pos.device)
        moving = torch.as_tensor(self.domains == self.moving_domain, device=pos.device)
        out = hinge_rotate(
            pos,
            moving,
            torch.as_tensor(self.hinge_point_angstrom, dtype=pos.dtype, device=pos.device),
            torch.as_tensor(self.hinge_axis, dtype=pos.dtype, device=pos.device),
            angle.reshape(-1),
        )
        return out[0] if angle.ndim == 0 else out


def hinge_rotate(
    positions_angstrom: torch.Tensor,
    moving: torch.Tensor,
    hinge_point_angstrom: torch.Tensor,
    hinge_axis: torch.Tensor,
    angle_deg: torch.Tensor,
) -> torch.Tensor:
    """Rotate the ``moving`` atoms about an axis by each angle (right-handed, degrees).

    Parameters
    ----------
    positions_angstrom : (G, 3) tensor.
    moving : (G,) bool tensor.
    hinge_point_angstrom : (3,) point on the axis; hinge_axis : (3,) direction (normalised here).
    angle_deg : (n,) tensor.

    Returns
    -------
    (n, G, 3) tensor; non-moving atoms are unchanged.
    """
    if positions_angstrom.ndim != 2 or positions_angstrom.shape[-1] != 3:
        raise ValueError(f"positions_angstrom must have shape (G, 3), got {tuple(positions_angstrom.shape)}")
    if moving.shape != positions_angstrom.shape[:1]:
        raise ValueError(f"moving must have shape ({positions_angstrom.shape[0]},), got {tuple(moving.shape)}")
    if angle_deg.ndim != 1:
        raise ValueError(f"angle_deg must have shape (n,), got {tuple(angle_deg.shape)}")
    axis = hinge_axis / hinge_axis.norm()
    rot = rotvec_to_matrix(torch.deg2rad(angle_deg)[:, None] * axis)  # (n, 3, 3)
    rel = positions_angstrom - hinge_point_angstrom
    rotated = torch.einsum("nij,gj->ngi", rot, rel) + hinge_point_angstrom
    return torch.where(moving[None, :, None], rotated, positions_angstrom.expand_as(rotated))


# --------------------------------------------------------------------------------------------
# CA traces of secondary-structure elements
# --------------------------------------------------------------------------------------------


def _helix_trace(start: np.ndarray, direction: np.ndarray, n_res: int, phase: float) -> np.ndarray:
    """Right-handed alpha-helix CA trace whose axis starts at ``start`` and runs along ``direction``."""
    a = direction / np.linalg.norm(direction)
    e1 = np.cross(a, [0.0, 0.0, 1.0] if abs(a[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)  # e1 x e2 = a: right-handed
    k = np.arange(n_res)[:, None]
    theta = phase + np.deg2rad(100.0) * k
    return start + 2.3 * (np.cos(theta) * e1 + np.sin(theta) * e2) + 1.5 * k * a


def _strand_trace(start: np.ndarray, direction: np.ndarray, normal: np.ndarray, n_res: int) -> np.ndarray:
    """Pleated beta-strand CA trace: 3.35 Å per residue along ``direction``, +-0.9 Å along ``normal``."""
    k = np.arange(n_res)[:, None]
    pleat = np.where(k % 2 == 0, 0.9, -0.9)
    return start + 3.35 * k * direction + pleat * normal


def _loop_trace(p: np.ndarray, q: np.ndarray, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CA atoms strictly between ``p`` and ``q`` on an arc bulging away from ``centre``."""
    d = float(np.linalg.norm(q - p))
    mid = 0.5 * (p + q)
    out = mid - centre
    chord = (q - p) / max(d, 1e-6)
    out = out - (out @ chord) * chord
    if np.linalg.norm(out) < 1e-3:
        out = np.cross(chord, [0.0, 0.0, 1.0])
    out /= np.linalg.norm(out)
    bulge = 0.25 * d + 1.0 + rng.uniform(0.0, 1.0)
    ctrl = mid + bulge * out
    t = np.linspace(0.0, 1.0, 400)[:, None]
    curve = (1 - t) ** 2 * p + 2 * (1 - t) * t * ctrl + t**2 * q
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n_inner = max(1, int(round(s[-1] / _CA_CA_ANGSTROM)) - 1)
    targets = np.linspace(0.0, s[-1], n_inner + 2)[1:-1]
    return np.stack([np.interp(targets, s, curve[:, i]) for i in range(3)], axis=1)


def _domain_trace(n_strands: int, strand_len: int, helix_len: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """CA trace (local frame, centred) and secondary structure of one alpha/beta/alpha domain.

    Topology beta1-alpha1-beta2-alpha2-...-beta_n (flavodoxin-like, strands in sequence order):
    parallel strands along +x in the plane z = 0, 4.8 Å apart in y; each helix runs back along
    -x at z = +-10 Å over the two strands it joins, alternating above and below the sheet.
    """
    sheet_y = (np.arange(n_strands) - (n_strands - 1) / 2) * 4.8
    order = list(range(n_strands))
    strand_length = 3.35 * (strand_len - 1)
    helix_length = 1.5 * (helix_len - 1)
    zhat = np.array([0.0, 0.0, 1.0])
    xhat = np.array([1.0, 0.0, 0.0])
    elements: list[tuple[str, np.ndarray]] = []
    for i, slot in enumerate(order):
        start = np.array([-strand_length / 2, sheet_y[slot], 0.0])
        elements.append(("E", _strand_trace(start, xhat, zhat, strand_len)))
        if i + 1 < len(order):
            y = 0.5 * (sheet_y[slot] + sheet_y[order[i + 1]])
            z = 10.0 if i % 2 == 0 else -10.0
            start = np.array([helix_length / 2, y + rng.uniform(-1.0, 1.0), z])
            elements.append(("H", _helix_trace(start, -xhat, helix_len, rng.uniform(0, 2 * math.pi))))
    trace, ss = [elements[0][1]], elements[0][0] * len(elements[0][1])
    for kind, ca in elements[1:]:
        loop = _loop_trace(trace[-1][-1], ca[0], np.zeros(3), rng)
        trace += [loop, ca]
        ss += "L" * len(loop) + kind * len(ca)
    ca = np.concatenate(trace)
    return ca - ca.mean(0), ss


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between two point sets (numpy: faster than torch for these sizes)."""
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).min()))


def _max_distance(a: np.ndarray) -> float:
    return float(np.sqrt(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1).max()))


# --------------------------------------------------------------------------------------------
# Full atoms from the CA trace
# --------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _backbone(ca: np.ndarray, ss: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """N, C, O and CB positions from a CA trace (approximate trans-peptide geometry).

    Each peptide ``CA_i -> CA_i+1`` is placed with ideal trans geometry (C-N 1.33 Å, C=O 1.23 Å,
    CA-C-N 116°, C-N-CA 122°) in the plane spanned by the CA-CA vector and the local binormal,
    turned by 35° about the CA-CA axis inside helices (which puts O_i 2.9-3.0 Å from N_i+4 and
    N-CA-C near 109°). CB sits 1.53 Å from CA along the outward bisector of the CA trace, tilted
    towards the N-terminus (alternating faces in strands, pointing out of helices).
    """
    n = len(ca)
    pad = np.concatenate([2 * ca[:1] - ca[1:2] + [0.3, 0.5, 0.0], ca, 2 * ca[-1:] - ca[-2:-1] + [0.0, 0.5, 0.3]])
    nitrogen = np.empty_like(ca)
    carbon = np.empty_like(ca)
    oxygen = np.empty_like(ca)
    for i in range(n + 1):
        a, b = pad[i], pad[i + 1]
        u = _unit(b - a)
        prev = pad[i - 1] if i > 0 else a - (pad[i + 2] - b)
        binormal = np.cross(a - prev, b - a)
        p = binormal - (binormal @ u) * u
        if np.linalg.norm(p) < 1e-6:
            p = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [1.0, 0.0, 0.0])
        p = _unit(p)
        if 1 <= i < n and ss[i - 1] == "H" and ss[i] == "H":
            tau = math.radians(35.0)
            p = math.cos(tau) * p + math.sin(tau) * np.cross(u, p)
        if i >= 1:  # residue i-1 owns C and O of this peptide
            carbon[i - 1] = a + 1.423 * u + 0.533 * p
            oxygen[i - 1] = a + 1.643 * u + 1.743 * p
        if i < n:  # residue i owns N
            nitrogen[i] = b - 1.410 * u - 0.379 * p
    outward = _unit(2 * pad[1:-1] - pad[:-2] - pad[2:])
    tangent = _unit(pad[2:] - pad[:-2])
    cb = ca + 1.53 * _unit(outward - 0.35 * tangent)
    return nitrogen, carbon, oxygen, cb


def _side_chain(name: str, ca: np.ndarray, cb: np.ndarray, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray, int]]:
    """Side-chain atoms beyond CB: (name, element, position, depth) with all-trans zig-zag placement."""
    u = _unit(cb - ca)
    w = _unit(np.cross(u, rng.normal(size=3)))
    placed = {"CB": (cb, 1, 0)}
    out = []
    children_seen: dict[str, int] = {}
    for atom, element, parent in _SIDE_CHAINS[name]:
        ppos, pdepth, _ = placed[parent]
        branch = children_seen.get(parent, 0)
        children_seen[parent] = branch + 1
        depth = pdepth + 1
        zig = 1.0 if depth % 2 == 0 else -1.0
        lateral = zig * w
        if branch == 1:
            lateral = math.cos(2.1) * lateral + math.sin(2.1) * np.cross(u, lateral)
        direction = _unit(math.cos(math.radians(35)) * u + math.sin(math.radians(35)) * lateral)
        pos = ppos + 1.52 * direction
        placed[atom] = (pos, depth, branch)
        out.append((atom, element, pos, depth))
    return out


_SMALLER = ("LEU", "VAL", "THR", "SER", "ALA")
_CONTACT_ANGSTROM = 2.9


def _pack_side_chains(
    names: list[str],
    ca: np.ndarray,
    cb: np.ndarray,
    backbone: list[np.ndarray],
    rng: np.random.Generator,
    centre: np.ndarray,
    max_radius_angstrom: float,
) -> list[list[tuple[str, str, np.ndarray, int]]]:
    """Greedy packing: per residue try a few side-chain directions, keep the one farthest from
    everything placed; if all clash (< 2.9 Å) or leave the sphere ``max_radius_angstrom`` about
    ``centre``, mutate to a smaller residue (``names`` is updated in place)."""
    n = len(names)
    owner = [np.repeat(np.arange(n), 1) for _ in backbone] + [np.array([i for i in range(n) if names[i] != "GLY"])]
    placed = [*backbone, cb[owner[-1]]]
    occupied = np.concatenate(placed)
    occupied_owner = np.concatenate(owner)
    result: list[list[tuple[str, str, np.ndarray, int]]] = [[] for _ in range(n)]
    for i in rng.permutation(n):
        if not _SIDE_CHAINS[names[i]]:
            continue
        others = occupied[occupied_owner != i]
        others = others[((others - ca[i]) ** 2).sum(1) < 14.0**2]  # side chains reach < 9 Å from CA
        ladder = [names[i]] + [r for r in _SMALLER if len(_SIDE_CHAINS[r]) < len(_SIDE_CHAINS[names[i]])]
        chosen = None
        for res in ladder:
            if not _SIDE_CHAINS[res]:
                chosen = (res, [], math.inf)
                break
            for _ in range(8):
                atoms = _side_chain(res, ca[i], cb[i], rng)
                xyz = np.stack([a[2] for a in atoms])
                d = _min_distance(xyz, others) if len(others) else math.inf
                if np.linalg.norm(xyz - centre, axis=1).max() > max_radius_angstrom:
                    d = -1.0
                if chosen is None or chosen[0] != res or d > chosen[2]:
                    chosen = (res, atoms, d)
            if chosen[2] >= _CONTACT_ANGSTROM:
                break
        names[i], result[i] = chosen[0], chosen[1]
        if chosen[1]:
            occupied = np.concatenate([occupied, np.stack([a[2] for a in chosen[1]])])
            occupied_owner = np.concatenate([occupied_owner, np.full(len(chosen[1]), i)])
    return result


def _choose_residues(ss: str, rng: np.random.Generator) -> list[str]:
    names = []
    for s in ss:
        pref = _PREFERENCES[s]
        keys = list(pref)
        w = np.array([pref[k] for k in keys], dtype=float)
        names.append(keys[int(rng.choice(len(keys), p=w / w.sum()))])
    return names


def build_protein(
    seed: int = 0,
    domain_sizes: tuple[tuple[int, int, int], ...] = ((6, 6, 13), (5, 6, 13)),
    linker_residues: int = 5,
    max_radius_angstrom: float = 29.5,
) -> Protein:
    """Build a deterministic procedural two-domain protein joined by a hinge.

    Parameters
    ----------
    seed : random seed (same seed, same protein).
    domain_sizes : per domain ``(n_strands, strand_residues, helix_residues)``. The default
        (about 270 residues, 2,200 atoms) fits a 60 Å sphere, i.e. box 64 at 1.5 Å with margin.
    linker_residues : minimum residues in the hinge linker (more are added if the gap needs them).
    max_radius_angstrom : side chains that would reach further than this from the centre of the
        CA trace are turned or replaced by smaller residues (surface residues are short), which
        keeps the default particle within a 60 Å sphere.

    Returns
    -------
    :class:`Protein` with domains labelled 1 and 2 (domain 2 moves), the hinge axis through
    the middle of the linker, perpendicular to the line joining the domain centres.
    """
    if len(domain_sizes) != 2:
        raise ValueError(f"build_protein makes two domains, got domain_sizes={domain_sizes}")
    rng = np.random.default_rng(seed)
    traces = [_domain_trace(ns, sl, hl, rng) for ns, sl, hl in domain_sizes]
    ca1, ss1 = traces[0]
    ca2_local, ss2 = traces[1]
    # Orient domain 2 for a compact particle (small bounding sphere of the CA atoms) with a short
    # linker, in contact (CA gap >= 5 Å).
    best = None
    for _ in range(64):
        r = _random_rotation(rng)
        ca2 = ca2_local @ r.T
        direction = _unit(rng.normal(size=3))
        for sep in np.arange(12.0, 45.0, 1.0):
            shifted = ca2 + sep * direction
            if _min_distance(ca1, shifted) >= 5.0:
                break
        both = np.concatenate([ca1, shifted])
        radius = float(np.linalg.norm(both - 0.5 * (both.min(0) + both.max(0)), axis=1).max())
        gap = float(np.linalg.norm(shifted[0] - ca1[-1]))
        score = radius + 0.15 * gap
        if best is None or score < best[0]:
            best = (score, shifted)
    ca2 = best[1]
    linker = _loop_trace(ca1[-1], ca2[0], 0.5 * (ca1.mean(0) + ca2.mean(0)), rng)
    if len(linker) < linker_residues:
        extra = _loop_trace(ca1[-1], ca2[0], 0.5 * (ca1.mean(0) + ca2.mean(0)) - 8.0 * _unit(np.cross(ca2.mean(0) - ca1.mean(0), [0, 0, 1.0])), rng)
        linker = extra if len(extra) > len(linker) else linker
    ca = np.concatenate([ca1, linker, ca2])
    ss = ss1 + "L" * len(linker) + ss2
    hinge_res = len(ca1) + len(linker) // 2
    residue_domain = np.where(np.arange(len(ca)) < hinge_res, 1, 2)
    centres = [ca[residue_domain == d].mean(0) for d in (1, 2)]

    names = _choose_residues(ss, rng)
    nitrogen, carbon, oxygen, cb = _backbone(ca, ss)
    centre = 0.5 * (ca.min(0) + ca.max(0))
    side = _pack_side_chains(names, ca, cb, [nitrogen, ca, carbon, oxygen], rng, centre, max_radius_angstrom)
    rows: list[tuple[str, str, np.ndarray, int, int, float]] = []  # name, element, pos, residue, depth, extra B
    for i, res in enumerate(names):
        loop_b = 10.0 if ss[i] == "L" else 0.0
        rows += [("N", "N", nitrogen[i], i, 0, loop_b), ("CA", "C", ca[i], i, 0, loop_b)]
        rows += [("C", "C", carbon[i], i, 0, loop_b), ("O", "O", oxygen[i], i, 0, loop_b)]
        if res != "GLY":
            rows.append(("CB", "C", cb[i], i, 1, loop_b))
            for atom, element, pos, depth in side[i]:
                rows.append((atom, element, pos, i, depth, loop_b))
    pos = np.stack([r[2] for r in rows])
    residue = np.array([r[3] for r in rows])
    domain = residue_domain[residue]
    # B-factors as in a ~3 Å cryo-EM model: 30 Å^2 in domain cores rising to ~60 at the surface,
    # +10 in loops, +3 per side-chain bond.
    radial = np.array([np.linalg.norm(pos[k] - centres[domain[k] - 1]) for k in range(len(rows))])
    radial = radial / np.percentile(radial, 95)
    bfac = 30.0 + 30.0 * np.clip(radial, 0, 1.3) ** 2 + np.array([r[5] + 3.0 * r[4] for r in rows])

    centre = 0.5 * (pos.min(0) + pos.max(0))
    pos = pos - centre  # bounding-box centre at the origin (voxel box // 2)
    hinge_point = ca[hinge_res] - centre
    link = _unit(centres[1] - centres[0])
    axis = np.cross(link, [0.0, 0.0, 1.0] if abs(link[2]) < 0.9 else [1.0, 0.0, 0.0])
    return Protein(
        positions_angstrom=pos,
        elements=np.array([r[1] for r in rows]),
        atom_names=np.array([r[0] for r in rows]),
        residue_names=np.array([names[r[3]] for r in rows]),
        residue_numbers=residue + 1,
        bfactors_angstrom2=bfac,
        domains=domain,
        hinge_point_angstrom=hinge_point,
        hinge_axis=_unit(axis),
        moving_domain=2,
        secondary_structure=ss,
        source=f"build_protein(seed={seed})",
    )


# --------------------------------------------------------------------------------------------
# Atomic models from files
# --------------------------------------------------------------------------------------------


def _read_model_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions, elements, B-factors, atom names, residue names and numbers of a PDB/mmCIF file.

    Uses ``gmmsession.data.io.models.read_atomic_model`` when it exists; otherwise gemmi
    directly (first model, no hydrogens, no waters).
    """
    try:
        from gmmsession.data.io.models import read_atomic_model  # type: ignore[import-not-found]
    except ImportError:
        read_atomic_model = None
    if read_atomic_model is not None:
        m = read_atomic_model(path, include_water=False)
        pos = np.asarray(m.positions_angstrom, dtype=np.float64)
        n = len(pos)
        get = lambda name, default: np.asarray(getattr(m, name, default))  # noqa: E731
        return (
            pos,
            np.asarray(m.elements).astype(str),
            np.asarray(m.bfactors_angstrom2, dtype=np.float64),
            get("atom_names", np.array(["X"] * n)).astype(str),
            get("residue_names", np.array(["UNK"] * n)).astype(str),
            get("residue_numbers", np.arange(1, n + 1)).astype(int),
        )
    import gemmi

    st = gemmi.read_structure(str(path))
    st.remove_hydrogens()
    st.remove_waters()
    rows = []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                rows.append((atom.pos.x, atom.pos.y, atom.pos.z, atom.element.name, atom.b_iso, atom.name, res.name, res.seqid.num))
    if not rows:
        raise ValueError(f"{path}: no atoms in the first model")
    pos = np.array([r[:3] for r in rows], dtype=np.float64)
    return (
        pos,
        np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows], dtype=np.float64),
        np.array([r[5] for r in rows]),
        np.array([r[6] for r in rows]),
        np.array([r[7] for r in rows], dtype=int),
    )


def protein_from_atomic_model(path: str | os.PathLike, seed: int = 0) -> Protein:
    """Load a PDB/mmCIF model as a :class:`Protein`, centred, split into two domains.

    Domains are the two k-means clusters of the atom positions (scikit-learn, seeded); the
    hinge point is the midpoint of the closest pair of atoms across the two clusters and the
    axis is perpendicular to the line between the cluster centres. Zero or missing B-factors
    are replaced by 30 Å^2.
    """
    from sklearn.cluster import KMeans

    pos, elements, bfac, atom_names, residue_names, residue_numbers = _read_model_arrays(Path(path))
    elements = np.array([e.strip().upper() for e in elements])
    bfac = np.where(np.isfinite(bfac) & (bfac > 0), bfac, 30.0)
    pos = pos - 0.5 * (pos.min(0) + pos.max(0))
    if len(pos) >= 2:
        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(pos) + 1
    else:
        labels = np.ones(len(pos), dtype=int)
    if np.unique(labels).size == 2:
        a, b = pos[labels == 1], pos[labels == 2]
        d = torch.cdist(torch.as_tensor(a), torch.as_tensor(b))
        ia, ib = divmod(int(d.argmin()), d.shape[1])
        hinge_point = 0.5 * (a[ia] + b[ib])
        link = _unit(b.mean(0) - a.mean(0))
    else:
        hinge_point, link = np.zeros(3), np.array([1.0, 0.0, 0.0])
    axis = np.cross(link, [0.0, 0.0, 1.0] if abs(link[2]) < 0.9 else [1.0, 0.0, 0.0])
    return Protein(
        positions_angstrom=pos,
        elements=elements,
        atom_names=atom_names,
        residue_names=residue_names,
        residue_numbers=residue_numbers,
        bfactors_angstrom2=bfac,
        domains=labels.astype(int),
        hinge_point_angstrom=hinge_point,
        hinge_axis=_unit(axis),
        moving_domain=2,
        source=str(path),
    )


def write_model_pdb(protein: Protein, path: str | os.PathLike, positions_angstrom: np.ndarray | None = None) -> Path:
    """Write the atoms as a PDB file through gemmi (atomically); chain ``A``, domains in segment IDs."""
    import gemmi

    from gmmsession.data.io._atomic import atomic_path

    pos = protein.positions_angstrom if positions_angstrom is None else np.asarray(positions_angstrom)
    st = gemmi.Structure()
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    current = None
    res = None
    for k in range(protein.n_atoms):
        num = int(protein.residue_numbers[k])
        if num != current:
            if res is not None:
                chain.add_residue(res)
            res = gemmi.Residue()
            res.name = str(protein.residue_names[k])
            res.seqid = gemmi.SeqId(num, " ")
            res.entity_type = gemmi.EntityType.Polymer
            res.segment = f"D{int(protein.domains[k])}"
            current = num
        atom = gemmi.Atom()
        atom.name = str(protein.atom_names[k])
        atom.element = gemmi.Element(str(protein.elements[k]))
        atom.pos = gemmi.Position(*map(float, pos[k]))
        atom.b_iso = float(protein.bfactors_angstrom2[k])
        atom.occ = 1.0
        res.add_atom(atom)
    if res is not None:
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    path = Path(path)
    with atomic_path(path, suffix=".pdb") as tmp:
        st.write_pdb(str(tmp))
    return path
