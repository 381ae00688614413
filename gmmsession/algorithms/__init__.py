"""Refinement and reconstruction loops: plain functions, frozen configs, progress callbacks."""

from gmmsession.algorithms.postprocess import FscResult, gold_standard_fsc
from gmmsession.algorithms.protein import Protein, build_protein, protein_from_atomic_model, write_model_pdb
from gmmsession.algorithms.reconstruct import ReconstructConfig, backproject_chunk, reconstruct_half_maps
from gmmsession.algorithms.simulate import SimulatedDataset, perturb_star_poses, simulate

from gmmsession.algorithms.align import AlignConfig, PoseUpdate, concat_pose_updates, refine_poses, refine_poses_chunk
from gmmsession.algorithms.gmm_build import (
    GmmBuildConfig,
    GmmBuildReport,
    build_gmm,
    density_threshold,
    estimate_n_gaussians,
    fit_gmm,
    kmeans_centres,
    model_centres,
)
from gmmsession.algorithms.refine import GlobalRefineConfig, IterationResult, fsc_quality, refine_global

__all__ = [
    "FscResult", "gold_standard_fsc",
    "Protein", "build_protein", "protein_from_atomic_model", "write_model_pdb",
    "ReconstructConfig", "backproject_chunk", "reconstruct_half_maps",
    "SimulatedDataset", "perturb_star_poses", "simulate",
    "AlignConfig", "PoseUpdate", "concat_pose_updates", "refine_poses", "refine_poses_chunk", "GmmBuildConfig", "GmmBuildReport", "build_gmm", "density_threshold", "estimate_n_gaussians", "fit_gmm", "kmeans_centres", "model_centres", "GlobalRefineConfig", "IterationResult", "fsc_quality", "refine_global",
]
