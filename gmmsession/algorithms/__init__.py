"""Refinement and reconstruction loops: plain functions, frozen configs, progress callbacks."""

from gmmsession.algorithms.postprocess import FscResult, gold_standard_fsc
from gmmsession.algorithms.protein import Protein, build_protein, protein_from_atomic_model, write_model_pdb
from gmmsession.algorithms.reconstruct import ReconstructConfig, backproject_chunk, reconstruct_half_maps
from gmmsession.algorithms.simulate import SimulatedDataset, simulate

__all__ = [
    "FscResult", "gold_standard_fsc",
    "Protein", "build_protein", "protein_from_atomic_model", "write_model_pdb",
    "ReconstructConfig", "backproject_chunk", "reconstruct_half_maps",
    "SimulatedDataset", "simulate",
]
