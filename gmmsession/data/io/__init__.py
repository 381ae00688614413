"""Readers and writers for RELION, cryoSPARC, MRC and atomic-model files (on starfile, mrcfile, gemmi)."""

from gmmsession.data.io.cryosparc import read_cryosparc
from gmmsession.data.io.export import export_star
from gmmsession.data.io.models import AtomicModel, read_atomic_model
from gmmsession.data.io.mrc import MrcHeaderWarning, read_map, read_map_with_origin, write_map
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import NonFiniteImageError, ParticleImageReader

__all__ = [
    "read_cryosparc", "export_star", "AtomicModel", "read_atomic_model", "MrcHeaderWarning", "read_map", "read_map_with_origin",
    "write_map", "read_relion_star", "NonFiniteImageError", "ParticleImageReader",
]
