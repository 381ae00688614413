import numpy as np
import pytest
import torch

from gmmsession.algorithms.protein import Protein, build_protein, hinge_rotate, protein_from_atomic_model, write_model_pdb


@pytest.fixture(scope="module")
def protein() -> Protein:
    return build_protein(seed=0)


def _names(p: Protein, name: str) -> np.ndarray:
    return p.positions_angstrom[p.atom_names == name]


def test_size_fits_box_64_at_1p5(protein):
    # Box 64 x 1.5 Å = 96 Å; a 60 Å particle leaves >= 18 Å each side (more than the +-3 Å shifts).
    assert 200 <= protein.n_residues <= 350
    assert protein.diameter_angstrom() <= 60.0
    assert np.abs(protein.positions_angstrom).max() < 32.0
    assert set(np.unique(protein.elements)) <= {"C", "N", "O", "S"}
    assert {"C", "N", "O"} <= set(np.unique(protein.elements))


def test_backbone_geometry(protein):
    ca, n, c, o = (_names(protein, k) for k in ("CA", "N", "C", "O"))
    assert len(ca) == len(n) == len(c) == len(o) == protein.n_residues
    d_ca = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    # Loops are resampled arcs, so CA-CA spacing varies a little around 3.8 Å.
    assert np.median(d_ca) == pytest.approx(3.8, abs=0.05)
    assert d_ca.min() > 2.9 and d_ca.max() < 4.6
    assert np.median(np.linalg.norm(n - ca, axis=1)) == pytest.approx(1.46, abs=0.05)
    assert np.median(np.linalg.norm(c - ca, axis=1)) == pytest.approx(1.52, abs=0.05)
    assert np.median(np.linalg.norm(o - c, axis=1)) == pytest.approx(1.23, abs=0.05)
    assert np.median(np.linalg.norm(n[1:] - c[:-1], axis=1)) == pytest.approx(1.33, abs=0.05)


def test_secondary_structure_geometry(protein):
    ss = np.array(list(protein.secondary_structure))
    ca = _names(protein, "CA")
    n = _names(protein, "N")
    o = _names(protein, "O")
    # Helix: i -> i+3 CA distance ~5.0-5.4 Å, i -> i+4 ~6.2 Å, O_i ... N_i+4 hydrogen bond ~3 Å.
    idx = [i for i in range(len(ss) - 4) if (ss[i : i + 5] == "H").all()]
    assert len(idx) > 50
    d3 = np.linalg.norm(ca[np.array(idx) + 3] - ca[idx], axis=1)
    d4 = np.linalg.norm(ca[np.array(idx) + 4] - ca[idx], axis=1)
    assert np.median(d3) == pytest.approx(5.1, abs=0.3)
    assert np.median(d4) == pytest.approx(6.2, abs=0.3)
    assert np.median(np.linalg.norm(o[idx] - n[np.array(idx) + 4], axis=1)) == pytest.approx(3.0, abs=0.25)
    # Strands: i -> i+2 CA ~6.7 Å; nearest CA on a neighbouring strand 4.8 Å away.
    e = np.where(ss == "E")[0]
    assert len(e) > 40
    idx2 = [i for i in e if i + 2 < len(ss) and ss[i + 2] == "E" and ss[i + 1] == "E"]
    assert np.median(np.linalg.norm(ca[np.array(idx2) + 2] - ca[idx2], axis=1)) == pytest.approx(6.7, abs=0.2)
    dist = np.linalg.norm(ca[e][:, None] - ca[e][None], axis=-1)
    far = np.abs(e[:, None] - e[None]) > 3
    nearest = np.where(far, dist, np.inf).min(1)
    assert np.median(nearest) == pytest.approx(4.8, abs=0.3)


def test_no_severe_clashes(protein):
    p = protein.positions_angstrom
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    res = protein.residue_numbers
    nonlocal_pairs = np.abs(res[:, None] - res[None]) > 1
    # Non-bonded atoms closer than 2.2 Å would be bright artefacts at 3 Å. The CA-trace loops
    # kink where they leave a helix, which leaves a few tight i, i+2 contacts: allow 2.5 % of atoms
    # (without side-chain packing this is ~10 %, so the test does fail on a packing regression).
    assert (d[nonlocal_pairs] < 2.2).sum() / 2 < 0.025 * protein.n_atoms


def test_deterministic_and_seed_dependent():
    a, b, c = build_protein(seed=3), build_protein(seed=3), build_protein(seed=4)
    assert np.array_equal(a.positions_angstrom, b.positions_angstrom)
    assert np.array_equal(a.residue_names, b.residue_names)
    assert a.n_atoms != c.n_atoms or not np.allclose(a.positions_angstrom, c.positions_angstrom)


def test_domains_and_hinge(protein):
    assert protein.domain_labels == [1, 2]
    counts = np.bincount(protein.domains)[1:]
    assert counts.min() > 0.3 * protein.n_atoms
    assert protein.bfactors_angstrom2.min() >= 15 and protein.bfactors_angstrom2.max() <= 120
    assert np.linalg.norm(protein.hinge_axis) == pytest.approx(1.0)
    moved = protein.conformation(None, 10.0).numpy()
    fixed = protein.domains == 1
    assert np.allclose(moved[fixed], protein.positions_angstrom[fixed])
    # Distances inside the moving domain are preserved (rigid rotation) but the domain moved.
    m = protein.domains == 2
    d_before = np.linalg.norm(protein.positions_angstrom[m][:50, None] - protein.positions_angstrom[m][None, :50], axis=-1)
    d_after = np.linalg.norm(moved[m][:50, None] - moved[m][None, :50], axis=-1)
    assert np.allclose(d_before, d_after, atol=1e-9)
    assert np.linalg.norm(moved[m] - protein.positions_angstrom[m], axis=1).max() > 2.0
    # Batched angles; 0 degrees is the neutral conformation; +a then -a returns.
    batch = protein.conformation(None, np.array([0.0, 10.0, -10.0]))
    assert batch.shape == (3, protein.n_atoms, 3)
    assert np.allclose(batch[0].numpy(), protein.positions_angstrom)
    assert np.allclose(batch[1].numpy(), moved)
    back = protein.conformation(batch[1], -10.0)
    assert np.allclose(back.numpy(), protein.positions_angstrom, atol=1e-9)


def test_hinge_rotate_axis_points_fixed():
    pos = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = hinge_rotate(pos, torch.tensor([True, True]), torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([90.0], dtype=torch.float64))
    assert torch.allclose(out[0, 0], pos[0])  # on the axis
    assert torch.allclose(out[0, 1], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)  # right-handed
    with pytest.raises(ValueError, match="moving"):
        hinge_rotate(pos, torch.tensor([True]), torch.zeros(3), torch.ones(3), torch.zeros(1))


def test_pdb_round_trip(protein, tmp_path):
    path = write_model_pdb(protein, tmp_path / "model.pdb")
    back = protein_from_atomic_model(path)
    assert back.n_atoms == protein.n_atoms
    assert np.array_equal(back.elements, protein.elements)
    # PDB stores 3 decimals; the loader re-centres on the bounding box (same centre, to rounding).
    assert np.allclose(back.positions_angstrom, protein.positions_angstrom, atol=2e-3)
    assert np.allclose(back.bfactors_angstrom2, protein.bfactors_angstrom2, atol=0.01)
    assert back.domain_labels == [1, 2]
    # k-means domains agree with the built ones for most atoms (up to label swap).
    agree = (back.domains == protein.domains).mean()
    assert max(agree, 1 - agree) > 0.8
