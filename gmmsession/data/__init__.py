"""Labelled data (xarray schema), the torch bridge, chunked particle streams and file I/O."""

from gmmsession.data.bridge import ParticleTensors, fsc_dataarray, half_maps_dataarray, particle_tensors, volume_dataarray
from gmmsession.data.chunks import ParticleChunk, iter_particle_chunks
from gmmsession.data.errors import GmmsessionInputError, SessionVersionError
from gmmsession.data.particles import ParticleSet, SourceTables, check_half_sets, check_poses, split_random_halves

from gmmsession.data.gmm import GMM_UNITS, GMM_VARIABLES, GmmTensors, gmm_dataset, gmm_to_tensors

__all__ = [
    "ParticleTensors", "fsc_dataarray", "half_maps_dataarray", "particle_tensors", "volume_dataarray",
    "ParticleChunk", "iter_particle_chunks",
    "GmmsessionInputError", "SessionVersionError",
    "ParticleSet", "SourceTables", "check_half_sets", "check_poses", "split_random_halves",
    "GMM_UNITS", "GMM_VARIABLES", "GmmTensors", "gmm_dataset", "gmm_to_tensors",
]
