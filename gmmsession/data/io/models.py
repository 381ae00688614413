"""Atomic models (PDB, mmCIF) through gemmi, e.g. to seed a Gaussian mixture from atoms."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from gmmsession.data.errors import GmmsessionInputError

__all__ = ["AtomicModel", "read_atomic_model"]


@dataclass(frozen=True)
class AtomicModel:
    """Non-hydrogen atoms of the first model of a structure, in file order.

    Attributes
    ----------
    positions_angstrom : (n, 3) float64
        ``x, y, z`` in Å, model (file) coordinates.
    elements : (n,) str
        Element symbols (``"C"``, ``"N"``, ``"FE"`` as gemmi names them, upper-case).
    bfactors_angstrom2 : (n,) float64
        Isotropic B-factors (Å²).
    occupancies : (n,) float64
    chain_ids, residue_names, atom_names : (n,) str
    residue_numbers : (n,) int64
        Author residue numbers.
    is_water : (n,) bool
    source_path : str
    """

    positions_angstrom: np.ndarray
    elements: np.ndarray
    bfactors_angstrom2: np.ndarray
    occupancies: np.ndarray
    chain_ids: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    atom_names: np.ndarray
    is_water: np.ndarray
    source_path: str

    def __len__(self) -> int:
        return int(self.positions_angstrom.shape[0])

    def __repr__(self) -> str:
        chains = ",".join(dict.fromkeys(self.chain_ids.tolist()))
        return f"AtomicModel({len(self)} atoms, chains {chains}, from {self.source_path})"


def read_atomic_model(path: str | os.PathLike, *, include_water: bool = True) -> AtomicModel:
    """Read the non-hydrogen atoms of the first model of a PDB or mmCIF file.

    Parameters
    ----------
    path : ``.pdb``, ``.ent``, ``.cif``, ``.mmcif`` (optionally gzipped), anything gemmi reads.
    include_water : bool
        Keep water oxygens (default True: the file's content as it is).

    Returns
    -------
    AtomicModel
        Hydrogens and deuteriums are removed; every alternative conformation is kept (with
        its occupancy).

    Raises
    ------
    GmmsessionInputError
        Missing or unreadable file, or no atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise GmmsessionInputError(f"atomic model not found: {path}")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError on malformed files
        raise GmmsessionInputError(f"{path}: not a readable PDB/mmCIF file ({exc})") from exc
    if len(structure) == 0:
        raise GmmsessionInputError(f"{path}: the file holds no model")
    model = structure[0]
    pos, el, b, occ, chain, resn, resi, name, water = [], [], [], [], [], [], [], [], []
    for ch in model:
        for res in ch:
            is_water = res.is_water()
            if is_water and not include_water:
                continue
            for atom in res:
                if atom.element.is_hydrogen:
                    continue
                pos.append((atom.pos.x, atom.pos.y, atom.pos.z))
                el.append(atom.element.name.upper())
                b.append(atom.b_iso)
                occ.append(atom.occ)
                chain.append(ch.name)
                resn.append(res.name)
                resi.append(res.seqid.num)
                name.append(atom.name)
                water.append(is_water)
    if not pos:
        raise GmmsessionInputError(f"{path}: no non-hydrogen atoms in the first model")
    return AtomicModel(
        positions_angstrom=np.asarray(pos, dtype=np.float64).reshape(-1, 3),
        elements=np.asarray(el, dtype=str),
        bfactors_angstrom2=np.asarray(b, dtype=np.float64),
        occupancies=np.asarray(occ, dtype=np.float64),
        chain_ids=np.asarray(chain, dtype=str),
        residue_names=np.asarray(resn, dtype=str),
        residue_numbers=np.asarray(resi, dtype=np.int64),
        atom_names=np.asarray(name, dtype=str),
        is_water=np.asarray(water, dtype=bool),
        source_path=str(path.resolve()),
    )
