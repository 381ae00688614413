"""Atomic models through gemmi."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.models import read_atomic_model


def test_pdb1ake(shared_data):
    m = read_atomic_model(shared_data / "models" / "pdb1ake.pdb")
    assert len(m) == 1661  # every atom of the file is non-hydrogen
    assert m.positions_angstrom.shape == (1661, 3) and m.positions_angstrom.dtype == np.float64
    assert set(m.chain_ids.tolist()) == {"A"}
    assert {"C", "N", "O", "S"} <= set(m.elements.tolist())
    assert (m.bfactors_angstrom2 > 0).all() and (m.occupancies > 0).all()
    # First ATOM record of the file, read independently.
    first = next(line for line in (shared_data / "models" / "pdb1ake.pdb").read_text().splitlines() if line.startswith("ATOM"))
    xyz = [float(first[30:38]), float(first[38:46]), float(first[46:54])]
    np.testing.assert_allclose(m.positions_angstrom[0], xyz, atol=1e-6)
    assert m.atom_names[0] == first[12:16].strip() and m.bfactors_angstrom2[0] == pytest.approx(float(first[60:66]))


def test_mmcif_gives_the_same_atoms(shared_data, tmp_path):
    st = gemmi.read_structure(str(shared_data / "models" / "pdb1ake.pdb"))
    st.setup_entities()
    st.make_mmcif_document().write_file(str(tmp_path / "m.cif"))
    a = read_atomic_model(shared_data / "models" / "pdb1ake.pdb")
    b = read_atomic_model(tmp_path / "m.cif")
    np.testing.assert_allclose(a.positions_angstrom, b.positions_angstrom, atol=1e-6)
    np.testing.assert_array_equal(a.elements, b.elements)


def test_hydrogens_and_waters(tmp_path):
    pdb = (
        "ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00 20.00           N\n"
        "ATOM      2  CA  ALA A   1      11.639   6.071  -5.147  1.00 21.00           C\n"
        "ATOM      3  H   ALA A   1      10.500   6.000  -6.900  1.00 20.00           H\n"
        "HETATM    4  O   HOH A 101       1.000   2.000   3.000  0.50 30.00           O\n"
        "END\n"
    )
    (tmp_path / "t.pdb").write_text(pdb)
    m = read_atomic_model(tmp_path / "t.pdb")
    assert m.elements.tolist() == ["N", "C", "O"] and m.is_water.tolist() == [False, False, True]
    assert m.occupancies[-1] == 0.5
    assert len(read_atomic_model(tmp_path / "t.pdb", include_water=False)) == 2


def test_bad_model_files(tmp_path):
    with pytest.raises(GmmsessionInputError, match="not found"):
        read_atomic_model(tmp_path / "absent.pdb")
    (tmp_path / "empty.pdb").write_text("END\n")
    with pytest.raises(GmmsessionInputError, match="empty.pdb"):
        read_atomic_model(tmp_path / "empty.pdb")
