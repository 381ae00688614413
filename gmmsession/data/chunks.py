"""Chunked particle streams: images plus their parameters as tensors, one chunk at a time.

Every per-particle step consumes this stream, so no step ever holds a whole stack in memory,
and a later distributed runner can hand each worker its own positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from gmmsession.data.bridge import ParticleTensors, particle_tensors
from gmmsession.data.io.stack import ParticleImageReader

__all__ = ["ParticleChunk", "iter_particle_chunks"]


@dataclass(frozen=True)
class ParticleChunk:
    """``positions`` (n,) along ``particle``; ``images`` (n, box, box) float32 real space, as stored
    times the particle's ``image_sign`` where the set has one (cryoSPARC ``blob/sign``; protein
    bright, RELION's convention), not phase-flipped; ``params`` their poses and CTF; ``halves``
    (n,) int64 half set 1 or 2."""

    positions: np.ndarray
    images: torch.Tensor
    params: ParticleTensors
    halves: torch.Tensor


def iter_particle_chunks(
    particles: xr.Dataset,
    optics: xr.Dataset,
    positions: np.ndarray | None = None,
    *,
    chunk_size: int = 2000,
    device: torch.device | str | None = None,
    reader: ParticleImageReader | None = None,
) -> Iterator[ParticleChunk]:
    """Yield :class:`ParticleChunk` s of at most ``chunk_size`` particles, in ``positions`` order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if positions is None:
        positions = np.arange(particles.sizes["particle"])
    reader = reader if reader is not None else ParticleImageReader(particles, optics)
    for pos, images in reader.iter_chunks(np.asarray(positions), chunk_size):
        pos = np.asarray(pos)
        yield ParticleChunk(
            positions=pos,
            images=torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32).to(device),
            params=particle_tensors(particles, optics, pos, device=device),
            halves=torch.as_tensor(particles["half"].values[pos], dtype=torch.int64, device=device),
        )
