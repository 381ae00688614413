"""Heterogeneity analysis from the session: ``h = s.heterogeneity(mask=None, latent_dim=4)``.

A thin object over :mod:`gmmsession.algorithms.heterogeneity`: one encoder/decoder pair per
half set, each trained only on its own half's particles against its own half's GMM, at the
session's current poses. Afterwards:

* ``h.latent``: xarray.DataArray (``particle``, ``latent_dim``), particles in the session's order
  (each particle encoded by its own half's model);
* ``h.pca(half)``: mean, principal directions and variances of a half's latent points;
* ``h.gmm_at(point, half)`` / ``h.volume_at(point, half)``: the decoder's GMM at a latent
  point (xarray, like ``s.gmm``) and its rendered map;
* ``h.trajectory(pc=1, n=10, half=1)``: latent points along a principal direction.

Training can be checkpointed (``s.heterogeneity(..., checkpoint="het.pt")``: written after
every epoch of each half, resumed from when the file exists; :func:`read_checkpoint`,
:func:`write_checkpoint`). The trained networks are saved with the session (group
``heterogeneity``, :meth:`Heterogeneity.to_bytes`) and rebuilt on open as
``s.last_heterogeneity``, so ``gmm_at``, ``volume_at`` and ``s.conf_to_pose`` work on a
reopened session.

The latent space of the two halves are separate models: their axes are not comparable
(a latent value of half 1 means nothing to half 2's decoder).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gmmsession.algorithms.heterogeneity import (
    HeterogeneityConfig,
    build_networks,
    encode_half,
    latent_pca,
    mobility_from_mask,
    network_state,
    networks_from_state,
    scoring_setup,
    train_half,
)
from gmmsession._version import __version__
from gmmsession.data.chunks import iter_particle_chunks
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io._atomic import atomic_path
from gmmsession.data.gmm import GmmTensors, gmm_dataset, gmm_to_tensors
from gmmsession.kernels.gmm import render_gaussians_3d
from gmmsession.kernels.masks import sample_volume_at

__all__ = ["Heterogeneity", "read_checkpoint", "write_checkpoint"]


class Heterogeneity:
    """Trained per-half heterogeneity models of a session (see the module docstring).

    Attributes
    ----------
    latent : xarray.DataArray (particle, latent_dim)
    losses : {half: [mean loss per epoch]}
    resumed_from : {half: epochs taken from a checkpoint (0: trained from scratch)}
    config : HeterogeneityConfig
    mask : xarray.DataArray (z, y, x) of the mobility mask, or None
    """

    def __init__(self, session: Any, config: HeterogeneityConfig, mask: xr.DataArray | None = None) -> None:
        self._session = session
        self.config = config
        self.mask = mask
        self.models: dict[int, tuple[Any, Any]] = {}
        self.gmms: dict[int, GmmTensors] = {}
        self.losses: dict[int, list[float]] = {}
        self.latent: xr.DataArray | None = None
        self.resumed_from: dict[int, int] = {}

    # ------------------------------------------------------------------ running
    def _batches(self, positions: np.ndarray, epoch: int | None) -> Iterator[tuple[torch.Tensor, Any]]:
        s, bs = self._session, self.config.batch_size
        order = positions if epoch is None else np.random.default_rng([self.config.seed, epoch]).permutation(positions)
        for chunk in iter_particle_chunks(s.particles, s.optics, order, chunk_size=max(bs, 1024)):
            for b in range(0, len(chunk.positions), bs):
                idx = torch.arange(b, min(b + bs, len(chunk.positions)))
                yield chunk.images[idx], chunk.params.select(idx)

    def run(
        self, device: torch.device, resolution_angstrom: float, progress: Any = None, checkpoint: str | os.PathLike | None = None
    ) -> None:
        """Train both halves' models and encode every particle (called by the session).

        With ``checkpoint`` (a file path) the training state is written there after every
        epoch of each half (:func:`write_checkpoint`); if the file exists at the start, it
        must match (:func:`read_checkpoint`) and training resumes after its last finished epoch.
        """
        s = self._session
        halves = s.particles["half"].values
        latent = np.full((halves.shape[0], self.config.latent_dim), np.nan, dtype=np.float32)
        # One scoring grid per pixel size in use (optics groups of one box may differ in it).
        used = np.isin(s.optics["optics_group"].values, np.unique(s.particles["optics_group"].values))
        pixels = sorted({float(v) for v in np.asarray(s.optics["pixel_size_angstrom"].values)[used]})
        setup = {px: scoring_setup(s.box_size, px, self.config, device, resolution_angstrom) for px in pixels}
        gmms = {h: gmm_to_tensors(s.gmm, half=h) for h in (1, 2)}
        n_gaussians = {h: int(gmms[h].positions_angstrom.shape[0]) for h in (1, 2)}
        n_particles = {h: int((halves == h).sum()) for h in (1, 2)}
        saved: dict[str, Any] | None = None
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            if checkpoint.exists():
                saved = read_checkpoint(checkpoint, self.config, n_gaussians, n_particles)
            else:
                saved = _checkpoint_payload(self.config, n_gaussians, n_particles)
        for h in (1, 2):
            gmm = gmms[h]
            mobility = None
            if self.mask is not None:
                volume = torch.as_tensor(np.asarray(self.mask.values), dtype=torch.float32)
                mobility = mobility_from_mask(sample_volume_at(volume, gmm.positions_angstrom, s.pixel_size_angstrom))
            encoder, decoder = build_networks(gmm, self.config, mobility)
            encoder, decoder = encoder.to(device), decoder.to(device)
            positions = np.flatnonzero(halves == h)
            report = None if progress is None else (lambda epoch, loss, h=h: progress(h, epoch, loss))
            resume = None if saved is None else saved["halves"].get(h)
            self.resumed_from[h] = 0 if resume is None else int(resume["epoch"])
            def save(state: dict[str, Any], h: int = h) -> None:
                saved["halves"][h] = state
                write_checkpoint(checkpoint, saved)

            self.losses[h] = train_half(lambda e, p=positions: self._batches(p, e), gmm, encoder, decoder, setup, self.config, report,
                                        resume=resume, on_epoch=None if saved is None else save)
            latent[positions] = encode_half(self._batches(positions, None), gmm, encoder, decoder, setup).numpy()
            self.models[h] = (encoder.eval(), decoder.eval())
            self.gmms[h] = gmm
        self.latent = xr.DataArray(
            latent,
            dims=("particle", "latent_dim"),
            coords={"particle": s.particles["particle"].values, "latent_dim": np.arange(self.config.latent_dim)},
            name="latent",
            attrs={"long_name": "latent vector (per-half models: axes not comparable between halves)"},
        )

    # ------------------------------------------------------------------ saving
    def to_bytes(self) -> bytes:
        """The trained networks as ``torch.save`` bytes (what the session file stores in its
        ``heterogeneity`` group): config, per-half :func:`network_state`, the half GMMs the
        decoders were built on, and the losses. The latent vectors are saved by the session
        (group ``latent``); the mobility mask is not (its label is in the history)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "gmmsession_version": __version__,
            "config": dict(vars(self.config)),
            "losses": {h: [float(v) for v in self.losses.get(h, [])] for h in self.models},
            "halves": {
                h: {
                    **network_state(*self.models[h]),
                    "gmm": {
                        "positions_angstrom": self.gmms[h].positions_angstrom.detach().cpu(),
                        "amplitudes": self.gmms[h].amplitudes.detach().cpu(),
                        "widths_angstrom": self.gmms[h].widths_angstrom.detach().cpu(),
                    },
                }
                for h in self.models
            },
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, session: Any, raw: bytes) -> "Heterogeneity":
        """Rebuild the object :meth:`to_bytes` wrote, networks on the CPU; ``latent`` is the
        session's (None when its particles no longer match), ``mask`` is None."""
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise GmmsessionInputError(f"heterogeneity networks of format {payload.get('format')}: this gmmsession reads {CHECKPOINT_FORMAT}")
        config = HeterogeneityConfig(**payload["config"])
        het = cls(session, config)
        for h, state in payload["halves"].items():
            het.models[int(h)] = networks_from_state(state)
            g = state["gmm"]
            het.gmms[int(h)] = GmmTensors(g["positions_angstrom"], g["amplitudes"], g["widths_angstrom"])
        het.losses = {int(h): list(v) for h, v in payload["losses"].items()}
        het.latent = session.latent
        return het

    # ------------------------------------------------------------------ exploring
    def _decoder(self, half: int) -> Any:
        if half not in self.models:
            raise ValueError(f"half must be 1 or 2 (trained: {sorted(self.models)}), got {half}")
        return self.models[half][1]

    def pca(self, half: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean (d,), directions (d, d) as rows, variances (d,)) of one half's latent points."""
        self._decoder(half)
        z = self.latent.values[self._session.particles["half"].values == half]
        return latent_pca(z)

    def trajectory(self, pc: int = 1, n: int = 10, half: int = 1, extent: float = 2.0) -> np.ndarray:
        """(n, latent_dim) points along principal direction ``pc`` (1-based), from ``-extent`` to
        ``+extent`` standard deviations around the mean of the half's latent points."""
        mean, comps, var = self.pca(half)
        if not 1 <= pc <= len(var):
            raise ValueError(f"pc must be in 1..{len(var)}, got {pc}")
        t = np.linspace(-extent, extent, n) * np.sqrt(var[pc - 1])
        return mean[None, :] + t[:, None] * comps[pc - 1][None, :]

    def _positions_at(self, point: Any, half: int) -> torch.Tensor:
        decoder = self._decoder(half)
        z = torch.as_tensor(np.asarray(point, dtype=np.float32).reshape(1, -1), device=decoder.neutral.device)
        with torch.no_grad():
            return decoder(z)[0].cpu()

    def gmm_at(self, point: Any, half: int = 1) -> xr.Dataset:
        """The decoder's GMM at a latent point (positions move; amplitudes and widths are the half's)."""
        pos = self._positions_at(point, half)
        g, s = self.gmms[half], self._session
        return gmm_dataset(GmmTensors(pos, g.amplitudes.cpu(), g.widths_angstrom.cpu()), pixel_size_angstrom=s.pixel_size_angstrom,
                           box_size=s.box_size, attrs={"latent_point": [float(v) for v in np.ravel(point)], "half": half})

    def volume_at(self, point: Any, half: int = 1) -> xr.DataArray:
        """The rendered map (z, y, x) of the decoder's GMM at a latent point, on the session's grid."""
        pos = self._positions_at(point, half)
        g, s = self.gmms[half], self._session
        vol = render_gaussians_3d(pos, g.amplitudes.cpu(), g.widths_angstrom.cpu(), s.box_size, s.pixel_size_angstrom)
        hm = s.half_maps.sel(half=half)
        return xr.DataArray(vol.numpy(), dims=hm.dims, coords=hm.coords, name="volume",
                            attrs={"latent_point": [float(v) for v in np.ravel(point)], "half": half})

    def show(self, half: int = 1, *, show_volume: bool = True) -> Any:
        """Interactive latent space of one half (ipywidgets + plotly): its particles on two principal
        components; pick a particle (click, or its index) or move along a PC, and the GMM
        (``gmm_at``) and a projection of the map (``volume_at``) at that latent point are shown."""
        from gmmsession.session.display import build_view

        if self.latent is None:
            raise RuntimeError("no latent space yet: run s.heterogeneity() first")
        return build_view("latent", self, particle_half=self._session.particles["half"].values, half=half, show_volume=show_volume)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        if self.latent is None:
            return {"text/plain": repr(self)}
        return self.show()._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        n = 0 if self.latent is None else int(self.latent.sizes["particle"])
        last = {h: round(v[-1], 4) for h, v in self.losses.items() if v}
        return f"Heterogeneity({n} particles, latent_dim {self.config.latent_dim}, final loss per half {last})"


# ---------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = 1
# What must agree for a checkpoint's networks to fit this run (n_epochs may grow; the
# optimisation settings such as learning_rate or batch_size are the current call's).
_MATCHED_CONFIG_FIELDS = ("latent_dim", "n_anchors", "hidden")


def _checkpoint_payload(config: HeterogeneityConfig, n_gaussians: dict[int, int], n_particles: dict[int, int]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "gmmsession_version": __version__,
        "config": dict(vars(config)),
        "n_gaussians": dict(n_gaussians),
        "n_particles": dict(n_particles),
        "halves": {},
    }


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save(payload)`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``): an interruption leaves the previous checkpoint or none, never half a file."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)


def read_checkpoint(
    path: str | os.PathLike, config: HeterogeneityConfig, n_gaussians: dict[int, int], n_particles: dict[int, int]
) -> dict[str, Any]:
    """Load a heterogeneity checkpoint and check that it fits this run.

    Raises :class:`~gmmsession.data.errors.GmmsessionInputError` naming the file and the first
    field that differs: ``latent_dim``, ``n_anchors``, ``hidden`` (the networks' shapes), the
    GMM size or the number of particles of a half set.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise GmmsessionInputError(f"{path}: not a readable heterogeneity checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GmmsessionInputError(f"{path}: not a heterogeneity checkpoint of format {CHECKPOINT_FORMAT}")
    expect = {f: getattr(config, f) for f in _MATCHED_CONFIG_FIELDS}
    found = {f: payload["config"].get(f) for f in _MATCHED_CONFIG_FIELDS}
    for h in (1, 2):
        expect[f"half {h} GMM size (n_gaussians)"] = n_gaussians[h]
        found[f"half {h} GMM size (n_gaussians)"] = payload["n_gaussians"].get(h)
        expect[f"half {h} particle count"] = n_particles[h]
        found[f"half {h} particle count"] = payload["n_particles"].get(h)
    for field, value in expect.items():
        if found[field] != value:
            raise GmmsessionInputError(
                f"checkpoint {path} does not match this run: {field} is {found[field]} there, {value} here "
                "(delete the file or pass another checkpoint path to start afresh)"
            )
    return payload
