"""The Session: a thin, stateful facade over particles, half maps and history.

It translates arguments, calls the algorithms, stores results as xarray and appends a
:class:`~gmmsession.session.history.StepRecord` for every step. No numerics live here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from gmmsession.algorithms.gmm_build import GmmBuildConfig
from gmmsession.algorithms.gmm_build import build_gmm as _build_gmm
from gmmsession.algorithms.align import AlignConfig
from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.algorithms.refine import GlobalRefineConfig
from gmmsession.algorithms.symmetry import expand_symmetry as _expand_symmetry
from gmmsession.algorithms.refine import refine_global as _refine_global
from gmmsession.algorithms.reconstruct import ReconstructConfig, reconstruct_half_maps
from gmmsession.data.bridge import fsc_dataarray, half_maps_dataarray, particle_tensors
from gmmsession.data.chunks import iter_particle_chunks
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.gmm import gmm_dataset, gmm_to_tensors
from gmmsession.data.io.cryosparc import read_cryosparc
from gmmsession.data.io.export import export_star as _export_star
from gmmsession.data.io.mrc import read_map, write_map
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import ParticleImageReader
from gmmsession.data.particles import ParticleSet, check_half_sets, check_one_grid, check_poses
from gmmsession.kernels.conventions import matrix_to_euler_relion
from gmmsession.kernels.device import resolve_device
from gmmsession.kernels.masks import MASK_INSIDE, sample_volume_at
from gmmsession.kernels.symmetry import normalise_symmetry_name
from gmmsession.session.store import session_input_paths
from gmmsession.session.history import History, StepRecord, Timer, change_histogram, environment_versions

if TYPE_CHECKING:  # pragma: no cover
    from gmmsession.session.focus import Focus
    from gmmsession.session.heterogeneity import Heterogeneity
    from gmmsession.session.patches import Patches

__all__ = ["Session"]


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "particle"):
    """A progress display or a no-op; returns (set_done, close).

    In a notebook kernel the display the viz layer registers (:func:`display.progress_display`,
    an HTML line updated in place that stays readable in a saved notebook); elsewhere a
    ``tqdm.auto`` bar. ``set_done(n, **info)`` takes the cumulative count that the algorithms'
    progress callbacks report, and optionally numbers shown beside it (``iteration``,
    ``n_iter``, ``resolution_angstrom``: kept until replaced).
    """
    if not enabled:
        return (lambda n, **info: None), (lambda: None)
    from gmmsession.session.display import progress_display

    shown = progress_display(total, desc, unit)
    if shown is not None:
        return shown
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
    postfix: dict[str, Any] = {}

    def set_done(n_done: int, **info: Any) -> None:
        if info:
            postfix.update(info)
            bar.set_postfix(postfix, refresh=False)
        bar.update(n_done - bar.n)

    return set_done, bar.close


# Per-iteration metrics copied into the refine_global step record as curves (one value per iteration).
_ITERATION_SUMMARY = (
    "resolution_angstrom", "focus_resolution_angstrom", "improved", "median_angle_change_deg", "median_shift_change_angstrom", "mean_score",
)


def _set_symmetry(pset: ParticleSet, symmetry: str) -> None:
    """Record the (validated, canonical) point group on the particle table, where it is saved with the session."""
    try:
        pset.particles.attrs["symmetry"] = normalise_symmetry_name(symmetry)
    except ValueError as exc:
        raise GmmsessionInputError(f"symmetry {symmetry!r}: {exc}") from None


def _mask_label(mask: Any) -> str | None:
    """How a mask argument is recorded in the history."""
    if mask is None:
        return None
    return str(mask) if isinstance(mask, (str, os.PathLike)) else "array"


class Session:
    """Interactive GMM-refinement session.

    Build one with :meth:`from_star`, :meth:`from_cryosparc` or
    :func:`gmmsession.open_session`; the constructor stores state and does no work.

    Parameters
    ----------
    particle_set : the particles, optics groups and source tables.
    device : torch device for computation; ``None`` picks CUDA when present.
    history : earlier steps (when reopening a saved session).
    half_maps : earlier half maps (dims ``half``, ``z``, ``y``, ``x``).
    """

    def __init__(
        self,
        particle_set: ParticleSet,
        *,
        device: torch.device | str | None = None,
        history: History | None = None,
        half_maps: xr.DataArray | None = None,
        gmm: xr.Dataset | None = None,
        latent: xr.DataArray | None = None,
    ) -> None:
        self._set = particle_set
        self._latent = latent
        self._device = None if device is None else torch.device(device)
        self.last_heterogeneity: Heterogeneity | None = None  # the models of the last heterogeneity() (saved)
        self.last_patches: Patches | None = None  # the last patches() object, its layout, masks and results (saved)
        self.focus_mask: xr.DataArray | None = None  # (z, y, x) mask of the last focus(mask).refine() (saved)
        self.history = history if history is not None else History()
        self._half_maps = half_maps
        self._gmm = gmm

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_star(
        cls, path: str | os.PathLike, stacks_root: str | os.PathLike | None = None, *, seed: int = 0, device: Any = None,
        symmetry: str = "C1",
    ) -> "Session":
        """Open a RELION 3.0/3.1/4/5 particle star file (e.g. ``Refine3D/job042/run_data.star``).

        Image names ``N@stack.mrcs`` resolve relative to the star file's folder or ``stacks_root``.
        Without a half-set column (``rlnRandomSubset``) the particles are split into two halves
        by a seeded permutation, recorded in the history. ``symmetry`` is the point group of the
        refinement (RELION names: C1, Cn, Dn, T, O, I1-I4); reconstructions impose it.
        """
        with Timer() as t:
            pset = read_relion_star(path, stacks_root=stacks_root, split_seed=seed)
            _set_symmetry(pset, symmetry)
        return cls._from_set(pset, "from_star", {"path": str(path), "stacks_root": _str(stacks_root), "seed": seed,
                                                 "symmetry": pset.particles.attrs["symmetry"]}, t, seed, device)

    @classmethod
    def from_cryosparc(
        cls, path: str | os.PathLike, stacks_root: str | os.PathLike | None = None, *, seed: int = 0, device: Any = None,
        symmetry: str = "C1",
    ) -> "Session":
        """Open a cryoSPARC ``.cs`` particle file; ``stacks_root`` is the cryoSPARC project folder.
        ``symmetry`` as in :meth:`from_star`."""
        with Timer() as t:
            pset = read_cryosparc(path, stacks_root=stacks_root, split_seed=seed)
            _set_symmetry(pset, symmetry)
        return cls._from_set(pset, "from_cryosparc", {"path": str(path), "stacks_root": _str(stacks_root), "seed": seed,
                                                      "symmetry": pset.particles.attrs["symmetry"]}, t, seed, device)

    @classmethod
    def _from_set(cls, pset: ParticleSet, name: str, params: dict, t: Timer, seed: int, device: Any) -> "Session":
        check_one_grid(pset.particles, pset.optics, params.get("path"))
        metrics: dict[str, Any] = {"half_source": pset.particles.attrs.get("half_source", "file")}
        s = cls(pset, device=device)
        counts = np.bincount(pset.particles["half"].values, minlength=3)
        metrics.update(n_particles=int(pset.particles.sizes["particle"]), n_half1=int(counts[1]), n_half2=int(counts[2]))
        s._record(name, params, t, metrics)
        return s

    # ------------------------------------------------------------------ state
    @property
    def symmetry(self) -> str:
        """Point group imposed in reconstructions (``"C1"`` after :meth:`expand_symmetry`)."""
        return str(self.particles.attrs.get("symmetry", "C1"))

    @property
    def particles(self) -> xr.Dataset:
        """Per-particle poses, CTF, half set and image location (dimension ``particle``, input order)."""
        return self._set.particles

    @property
    def optics(self) -> xr.Dataset:
        """Optics groups (dimension ``optics_group``): pixel size, box, voltage, Cs, amplitude contrast."""
        return self._set.optics

    @property
    def half_maps(self) -> xr.DataArray | None:
        """Half maps (dims ``half`` = [1, 2], ``z``, ``y``, ``x``; Å coordinates) or ``None`` before :meth:`reconstruct`."""
        return self._half_maps

    @property
    def device(self) -> torch.device:
        return resolve_device(self._device)

    @property
    def box_size(self) -> int:
        """Output box (pixels): that of the first optics group."""
        return int(self.optics["box_size"].values[0])

    @property
    def pixel_size_angstrom(self) -> float:
        """Output pixel size (Å): that of the first optics group."""
        return float(self.optics["pixel_size_angstrom"].values[0])

    # ------------------------------------------------------------------ steps
    def reconstruct(
        self, *, chunk_size: int = 1000, pad_factor: int = 2, device: Any = None, progress: bool = True
    ) -> StepRecord:
        """Reconstruct one half map per half set by direct Fourier inversion (CTF-weighted).

        Streams the particles in chunks of ``chunk_size`` (memory does not grow with the
        particle count). The result is in :attr:`half_maps`; the step record is returned.
        """
        check_half_sets(self.particles)
        check_poses(self.particles)
        dev = resolve_device(device if device is not None else self._device)
        config = ReconstructConfig(pad_factor=pad_factor, chunk_size=chunk_size, device=str(dev), symmetry=self.symmetry)
        n = int(self.particles.sizes["particle"])
        update, close = _progress_bar(n, "reconstruct", progress)
        with Timer() as t:
            chunks = (
                (c.images, c.params, c.halves)
                for c in iter_particle_chunks(self.particles, self.optics, chunk_size=chunk_size, device=dev)
            )
            try:
                maps = reconstruct_half_maps(chunks, self.box_size, self.pixel_size_angstrom, config, progress=update)
            finally:
                close()
        self._half_maps = half_maps_dataarray(maps[0], maps[1], self.pixel_size_angstrom)
        fsc = self.fsc()
        self._record(
            "reconstruct",
            {"chunk_size": chunk_size, "pad_factor": pad_factor, "device": str(dev)},
            t,
            {"n_particles": n, "resolution_angstrom": float(fsc.attrs["resolution_angstrom"]), "particles_per_s": n / max(t.duration_s, 1e-9)},
            {"fsc": fsc.values.tolist()},
        )
        return self.history.last()

    def build_gmm(
        self,
        n_gaussians: int | None = None,
        model: str | os.PathLike | None = None,
        *,
        resolution_angstrom: float | None = None,
        mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None,
        seed: int = 0,
        n_iter: int | None = None,
        device: Any = None,
        progress: bool = True,
    ) -> StepRecord:
        """Build one GMM per half map (stored in :attr:`gmm`).

        Parameters
        ----------
        n_gaussians : number of Gaussians; ``None`` estimates it from the target resolution
            (mean nearest-neighbour spacing, see :func:`~gmmsession.algorithms.gmm_build.estimate_n_gaussians`)
            on half 1 and uses the same number for half 2.
        model : PDB/mmCIF fitted to the consensus map (RELION map frame: voxel (0, 0, 0) at 0 Å):
            one Gaussian per non-H atom, randomised independently per half at the target resolution.
        resolution_angstrom : target resolution; default the current gold-standard resolution
            (masked if ``mask`` is given).
        seed : seeds K-means / model randomisation (half 2 uses ``seed + 1``: the halves never share a reference).
        n_iter : fit steps (default of :class:`~gmmsession.algorithms.gmm_build.GmmBuildConfig`).
        """
        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        dev = resolve_device(device if device is not None else self._device)
        res = float(resolution_angstrom) if resolution_angstrom is not None else float(self.fsc(mask=mask).attrs["resolution_angstrom"])
        if not np.isfinite(res):
            raise RuntimeError("the half maps have no measurable resolution (FSC below 0.143 everywhere); give resolution_angstrom")
        px = self.pixel_size_angstrom
        n_total = 2 * (n_iter if n_iter is not None else GmmBuildConfig().n_iter)
        update, close = _progress_bar(n_total, "build_gmm", progress, unit="step")
        gmms, reports = [], []
        with Timer() as t:
            try:
                n = n_gaussians
                for i, h in enumerate((1, 2)):
                    offset = i * (n_total // 2)
                    gmm, report = _build_gmm(
                        self._half_maps.sel(half=h).values, px, res, n_gaussians=n, model=model, seed=seed + i,
                        n_iter=n_iter, device=dev, progress=lambda k, o=offset: update(o + k),
                    )
                    n = gmm.n_gaussians if model is None else None
                    gmms.append(gmm)
                    reports.append(report)
            finally:
                close()
        self._gmm = gmm_dataset(gmms, pixel_size_angstrom=px, box_size=self.box_size, resolution_angstrom=res)
        metrics: dict[str, Any] = {"resolution_angstrom": res, "n_gaussians": gmms[0].n_gaussians}
        for h, r in zip((1, 2), reports):
            metrics[f"half{h}_min_fsc"] = r.min_fsc
            metrics[f"half{h}_mean_fsc"] = r.mean_fsc
        self._record(
            "build_gmm",
            {"n_gaussians": n_gaussians, "model": _str(model), "resolution_angstrom": res, "seed": seed, "n_iter": n_iter, "device": str(dev)},
            t,
            metrics,
            {f"half{h}_gmm_fsc": r.fsc.tolist() for h, r in zip((1, 2), reports)},
        )
        return self.history.last()

    def refine_global(
        self,
        n_iter: int = 5,
        *,
        mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None,
        align: AlignConfig | None = None,
        chunk_size: int = 1000,
        patience: int = 1,
        gmm_fit_steps: int = 60,
        device: Any = None,
        progress: bool = True,
    ) -> StepRecord:
        """Gold-standard global pose refinement against the GMMs (builds them first if needed).

        Per iteration and half set: re-fit the half's GMM to its own low-passed half map, align
        the half's particles to it (Adam on a rotation-vector update and a shift, maximising the
        band FRC), reconstruct, measure the (masked) gold-standard FSC. Stops early when the FSC
        stops improving; the session keeps the best iteration, so it never ends worse than it
        started. Ctrl-C between iterations keeps the last finished one.

        ``mask`` is the solvent mask of the FSC (MRC path on the session's grid or array).
        Returns the step record (it displays the FSC of every iteration); ``history`` gets one
        ``refine_global_iteration`` record per iteration.
        """
        return self._refine(
            "refine_global", n_iter, mask=mask, focus_mask=None, align=align, chunk_size=chunk_size, patience=patience,
            gmm_fit_steps=gmm_fit_steps, device=device, progress=progress,
        )

    def focus(self, mask: Any) -> "Focus":
        """A focused view of the session: ``s.focus(mask).refine(n_iter=3)``.

        ``mask`` selects the region the alignment follows: an MRC path on the session's grid, an
        array or DataArray of the map's shape with values in [0, 1], or a boolean array over
        Gaussians (one entry per Gaussian of the session's GMM, both halves built with the same
        number), which becomes a soft mask around the selected Gaussians of both halves.
        """
        from gmmsession.session.focus import Focus

        return Focus(self, mask)

    def heterogeneity(
        self,
        mask: Any = None,
        latent_dim: int = 4,
        n_epochs: int = 20,
        *,
        device: Any = None,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        **options: Any,
    ) -> "Heterogeneity":
        """Train one encoder/decoder per half set on the current poses; returns the models.

        Each particle is scored on its own pixel grid (optics groups of one box may differ in
        pixel size; the GMM projection is analytic, so nothing is resampled).

        Parameters
        ----------
        mask : optional mobility mask (MRC path, array, or boolean over Gaussians, as for
            :meth:`focus`): only Gaussians inside it (centre where the mask is >= 0.5) move, fully
            (:func:`~gmmsession.algorithms.heterogeneity.mobility_from_mask`), and the latent space describes that
            region (measured on the simulator's hinge: PC1 against the true hinge angle,
            Spearman 0.90 per half with the moving domain's mask, 0.75-0.80 without).
        latent_dim, n_epochs : size of the latent vector, passes over each half's particles.
        options : further :class:`~gmmsession.algorithms.heterogeneity.HeterogeneityConfig`
            fields (``n_anchors``, ``hidden``, ``batch_size``, ``learning_rate``, ``latent_weight``,
            ``max_resolution_angstrom``, ``seed``, ...).
        checkpoint : optional file path: after every epoch of each half the networks, the
            optimiser state, the epoch and the losses are written there (atomically). If the
            file exists, its networks must fit (same ``latent_dim``, ``n_anchors``, ``hidden``,
            GMM sizes and particles per half, else an error naming the file and the field) and
            training resumes after its last finished epoch, up to ``n_epochs``; the result
            equals an uninterrupted run with the same settings.

        Returns
        -------
        :class:`~gmmsession.session.heterogeneity.Heterogeneity` (``.latent``, ``.pca()``,
        ``.gmm_at()``, ``.volume_at()``, ``.trajectory()``); also kept as :attr:`last_heterogeneity`.
        """
        from gmmsession.algorithms.heterogeneity import HeterogeneityConfig
        from gmmsession.session.heterogeneity import Heterogeneity

        if self._gmm is None:
            raise RuntimeError("no GMM yet: call session.build_gmm() first")
        config = HeterogeneityConfig(latent_dim=latent_dim, n_epochs=n_epochs, **options)
        mask_da = None if mask is None else self.focus(mask).mask
        dev = resolve_device(device if device is not None else self._device)
        res = float(self.fsc().attrs["resolution_angstrom"])
        het = Heterogeneity(self, config, mask_da)
        update, close = _progress_bar(2 * n_epochs, "heterogeneity", progress, unit="epoch")
        with Timer() as t:
            try:
                het.run(dev, res, progress=lambda h, epoch, loss: update((h - 1) * n_epochs + epoch), checkpoint=checkpoint)
            finally:
                close()
        self.last_heterogeneity = het
        self._latent = het.latent
        metrics: dict[str, Any] = {"resolution_angstrom": res}
        for h, losses in het.losses.items():
            if losses:
                metrics[f"half{h}_final_loss"] = losses[-1]
            metrics[f"half{h}_resumed_from_epoch"] = het.resumed_from.get(h, 0)
        self._record(
            "heterogeneity",
            {**vars(config), "mask": _mask_label(mask), "device": str(dev), "checkpoint": None if checkpoint is None else str(checkpoint)},
            t, metrics, {f"half{h}_loss": list(v) for h, v in het.losses.items()},
        )
        return het

    def expand_symmetry(self) -> StepRecord:
        """Expand the particles to C1 for focused work: each particle repeated at its symmetry-related
        poses (``A @ S_k``, as ``relion_particle_symmetry_expand``), half sets kept; the session's
        symmetry becomes C1. The half maps (a symmetric reconstruction) stay valid: the expanded set
        reconstructs to the same maps in C1. ``export_star`` then writes one row per copy.
        Re-impose the symmetry on a focused result with
        :func:`gmmsession.algorithms.symmetry.symmetrize_map` (mask-weighted)."""
        group = self.symmetry
        done = self.particles.attrs.get("symmetry_expanded") if "symmetry_operator" in self.particles else None
        if group == "C1":
            hint = f"the particles are already symmetry-expanded: {done}" if done else "open it with symmetry='C3', say"
            raise RuntimeError(f"the session's symmetry is C1: nothing to expand ({hint})")
        if done:
            raise RuntimeError(f"the particles are already symmetry-expanded ({done}); expanding again would repeat every copy")
        with Timer() as t:
            expanded = _expand_symmetry(self.particles, group)
            expanded.attrs["symmetry"] = "C1"
            self._set.particles = expanded
        self._record("expand_symmetry", {"symmetry": group}, t, {"n_particles": int(expanded.sizes["particle"])})
        return self.history.last()

    def patches(self, k: int = 8, *, seed: int = 0, mask: Any = None) -> "Patches":
        """Split the GMM into ``k`` patches (K-means of the Gaussian centres of both halves) for
        patch-by-patch refinement: ``p = s.patches(8); p.refine(n_iter=3); p.composite()``.
        Also kept (and saved with the session) as :attr:`last_patches`.

        Only Gaussians on the molecule are clustered: inside ``mask`` (a solvent mask: MRC path
        or array), or without one, where the half-map average (low-passed to the current
        resolution) is above its density threshold. A GMM fitted to the whole box also puts
        some Gaussians on solvent noise, and one of them would blow its patch's sphere up to
        cover most of the molecule (seen on the simulator: radii of 44 Å on a 60 Å particle)."""
        from gmmsession.session.patches import Patches

        self.last_patches = Patches(self, k=k, seed=seed, mask=mask)
        return self.last_patches

    def _state(self) -> dict[str, Any]:
        """The refinable state (poses, half maps, GMMs); xarray objects are replaced, never edited, so references are safe."""
        return {"particles": self._set.particles, "half_maps": self._half_maps, "gmm": self._gmm}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set.particles = state["particles"]
        self._half_maps = state["half_maps"]
        self._gmm = state["gmm"]

    def _refine(
        self,
        name: str,
        n_iter: int,
        *,
        mask: Any,
        focus_mask: np.ndarray | None,
        align: AlignConfig | None,
        chunk_size: int,
        patience: int | None,
        gmm_fit_steps: int,
        device: Any,
        progress: bool,
        extra_params: dict | None = None,
        label: str | None = None,
        keep: str = "best",
    ) -> StepRecord:
        """The refinement loop behind :meth:`refine_global`, :meth:`Focus.refine` and
        :meth:`Patches.refine` (``focus_mask`` a volume or None; ``label`` names the progress bar;
        ``keep``: ``"best"`` accepts only iterations whose (focus-mask) FSC improved, ``"last"``
        every iteration, so the session ends at the last one)."""
        if keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        check_half_sets(self.particles)
        check_poses(self.particles)
        if self._gmm is None:
            self.build_gmm(mask=mask, device=device, progress=progress)
        dev = resolve_device(device if device is not None else self._device)
        config = GlobalRefineConfig(
            n_iter=n_iter, align=align if align is not None else AlignConfig(), chunk_size=chunk_size,
            patience=max(n_iter, 1) if patience is None else patience,
            gmm=GmmBuildConfig(n_iter=gmm_fit_steps), device=str(dev), reconstruct=ReconstructConfig(symmetry=self.symmetry),
        )
        mask_t = None if mask is None else torch.as_tensor(self._load_mask(mask))
        focus_t = None if focus_mask is None else torch.as_tensor(focus_mask, dtype=torch.float32)
        px = self.pixel_size_angstrom
        maps = torch.as_tensor(self._half_maps.values)
        refs = {h: gmm_to_tensors(self._gmm, h) for h in (1, 2)}
        start_fsc = self.fsc(mask=mask)
        start_focus = None if focus_mask is None else self.fsc(mask=focus_mask)
        n = int(self.particles.sizes["particle"])
        bar_update, bar_close = _progress_bar(n * n_iter, label or name, progress)
        done_before = {"n": 0}  # particles aligned in earlier iterations (the callback counts within one)
        accepted = 0
        interrupted = False
        curves: dict[str, list] = {}
        with Timer() as t:
            try:
                for res in _refine_global(self.particles, self.optics, maps, refs, px, config, mask=mask_t,
                                          progress=lambda stage, done, total: bar_update(
                                              done_before["n"] + done, iteration=done_before["n"] // n + 1, n_iter=n_iter),
                                          focus_mask=focus_t):
                    done_before["n"] = res.iteration * n
                    bar_update(done_before["n"], resolution_angstrom=float(res.fsc.resolution_angstrom))
                    self._record_iteration(f"{name}_iteration", res)
                    curves[f"fsc_iteration_{res.iteration}"] = res.fsc.fsc.tolist()
                    for h, fit_fsc in (res.gmm_fit_fsc or {}).items():
                        curves[f"gmm_fit_fsc_half{h}_iteration_{res.iteration}"] = [float(v) for v in fit_fsc]
                    for key, values in (("angle_change_deg", res.poses.angle_change_deg), ("shift_change_angstrom", res.poses.shift_change_angstrom)):
                        counts, edges = change_histogram(values.numpy())
                        curves[f"{key}_hist_iteration_{res.iteration}"], curves[f"{key}_edges_iteration_{res.iteration}"] = counts, edges
                    if res.fsc_focus is not None:
                        curves[f"fsc_focus_iteration_{res.iteration}"] = res.fsc_focus.fsc.tolist()
                    for key, value in self.history.last().metrics.items():
                        if key in _ITERATION_SUMMARY:
                            curves.setdefault(f"iteration_{key}", []).append(float(value))
                    if res.improved or keep == "last":
                        self._accept_iteration(res)
                        accepted = res.iteration
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bar_close()
        final_fsc = self.fsc(mask=mask)
        metrics = {"start_resolution_angstrom": float(start_fsc.attrs["resolution_angstrom"]),
                   "resolution_angstrom": float(final_fsc.attrs["resolution_angstrom"]),
                   "accepted_iteration": accepted, "interrupted": interrupted}
        curves = {"shell_resolution_angstrom": final_fsc["resolution_angstrom"].values.tolist(),
                  "fsc_start": start_fsc.values.tolist(), **curves, "fsc": final_fsc.values.tolist()}
        if focus_mask is not None:
            final_focus = self.fsc(mask=focus_mask)
            metrics.update(start_focus_resolution_angstrom=float(start_focus.attrs["resolution_angstrom"]),
                           focus_resolution_angstrom=float(final_focus.attrs["resolution_angstrom"]))
            curves.update(fsc_focus_start=start_focus.values.tolist(), fsc_focus=final_focus.values.tolist())
        self._record(
            name,
            {"n_iter": n_iter, "mask": _mask_label(mask), **(extra_params or {}),
             "chunk_size": chunk_size, "patience": patience, "keep": keep, "gmm_fit_steps": gmm_fit_steps, "device": str(dev),
             "align": dataclasses.asdict(config.align)},
            t,
            metrics,
            curves,
        )
        return self.history.last()

    def _record_iteration(self, name: str, res: Any) -> None:
        t = Timer()
        t.started_utc, t.duration_s = "", res.seconds
        metrics = {"resolution_angstrom": float(res.fsc.resolution_angstrom), "fsc_quality": res.quality, "improved": bool(res.improved),
                   "median_angle_change_deg": float(res.poses.angle_change_deg.median()),
                   "median_shift_change_angstrom": float(res.poses.shift_change_angstrom.median()),
                   "mean_score": float(res.poses.score.mean()), "mean_initial_score": float(res.poses.initial_score.mean())}
        curves = {"fsc": res.fsc.fsc.tolist()}
        if res.fsc_focus is not None:
            metrics["focus_resolution_angstrom"] = float(res.fsc_focus.resolution_angstrom)
            curves["fsc_focus"] = res.fsc_focus.fsc.tolist()
        self._record(name, {"iteration": res.iteration}, t, metrics, curves)

    def _accept_iteration(self, res: Any) -> None:
        """Make an iteration's poses, half maps and references the session's state."""
        self._set_poses(res.poses.rotation, res.poses.origin_angstrom)
        self._half_maps = half_maps_dataarray(res.half_maps[0], res.half_maps[1], self.pixel_size_angstrom)
        self._gmm = gmm_dataset([res.gmm[1], res.gmm[2]], pixel_size_angstrom=self.pixel_size_angstrom, box_size=self.box_size,
                                resolution_angstrom=float(res.fsc.resolution_angstrom))

    def _set_poses(self, rotation: torch.Tensor, origin_angstrom: torch.Tensor) -> None:
        """Make (n, 3, 3) RELION matrices and (n, 2) origins (Å) the particles' poses."""
        euler = matrix_to_euler_relion(rotation.double()).numpy()
        p = self.particles.copy()
        for i, name in enumerate(("rot_deg", "tilt_deg", "psi_deg")):
            p[name] = ("particle", euler[:, i], p[name].attrs)
        p["origin_x_angstrom"] = ("particle", origin_angstrom[:, 0].double().numpy(), p["origin_x_angstrom"].attrs)
        p["origin_y_angstrom"] = ("particle", origin_angstrom[:, 1].double().numpy(), p["origin_y_angstrom"].attrs)
        self._set.particles = p

    def conf_to_pose(
        self, mask: Any, *, refine_steps: int = 30, refine_learning_rate: float = 1e-3, centre: bool = True, reconstruct: bool = True,
        progress: bool = True,
    ) -> StepRecord:
        """Turn each particle's conformation of the masked region into a change of its pose.

        Uses the models of the last :meth:`heterogeneity` (this session's, or reopened with it):
        per half, the decoder's GMM at each particle's latent point is rigidly superposed onto
        the neutral GMM over the Gaussians inside ``mask`` (centre where the mask is >= 0.5;
        the Gaussians of a soft edge's outside part do not move with the region and would pull
        the superposition toward no motion), weighted by mask x mass (weighted
        Kabsch, :func:`~gmmsession.algorithms.heterogeneity.conformation_poses`), and the
        particle's pose becomes the pose at which the neutral region looks like its
        conformation. Then, as in the paper, ``refine_steps`` Adam steps (rate
        ``refine_learning_rate``) minimise the RMSD between the projections of the masked
        region (:func:`~gmmsession.algorithms.heterogeneity.refine_conformation_poses`;
        0 steps: the superposition alone). The history metrics say what the refinement added:
        the median angle between the superposed and refined poses and the projected RMSD (Å)
        before and after. Afterwards the session's poses are the converted ones (continue with
        ``s.focus(mask).refine()``), and with ``reconstruct`` the half maps are rebuilt from them.

        With ``centre`` (default) each half's poses are converted against the masked region at
        that half's mean placement over its particles rather than at the neutral GMM's
        (:func:`~gmmsession.algorithms.heterogeneity.mean_conformation`): a small bias of one
        half's decoder would otherwise rotate that half's whole domain frame against the other's
        (2.6 degrees between the halves, measured on the simulator); the removed mean motion per
        half is in the history metrics.

        ``mask``: MRC path, array, or boolean over Gaussians, as for :meth:`focus`.
        """
        from gmmsession.algorithms.heterogeneity import (
            conformation_poses,
            mean_conformation,
            mobility_from_mask,
            refine_conformation_poses,
        )
        from gmmsession.kernels.gmm import gaussian_mass_voxel_units
        from gmmsession.kernels.rotations import geodesic_angle_deg

        het = self.last_heterogeneity
        if het is None or self.latent is None:
            raise RuntimeError("conf_to_pose needs the networks and latent vectors of session.heterogeneity() (this session or a saved one)")
        if refine_steps < 0 or not refine_learning_rate > 0:
            raise ValueError(f"need refine_steps >= 0 and refine_learning_rate > 0, got {refine_steps}, {refine_learning_rate}")
        volume = torch.as_tensor(np.asarray(self.focus(mask).mask.values), dtype=torch.float32)
        start = particle_tensors(self.particles, self.optics, dtype=torch.float64)
        rotation, origin = start.rotation.clone(), start.origin_angstrom.clone()
        kabsch_rotation = rotation.clone()
        rmsd_kabsch, rmsd_refined = torch.zeros(rotation.shape[0], dtype=torch.float64), torch.zeros(rotation.shape[0], dtype=torch.float64)
        halves = self.particles["half"].values
        mean_motion: dict[str, float] = {}
        with Timer() as t:
            for h in (1, 2):
                decoder, gmm = het.models[h][1], het.gmms[h]
                dev = decoder.neutral.device  # superposition and refinement where the decoder runs (GPU when there)
                neutral = decoder.neutral.detach().to(torch.float64)
                mass = gaussian_mass_voxel_units(gmm.amplitudes.cpu(), gmm.widths_angstrom.cpu(), self.pixel_size_angstrom).clamp_min(0)
                inside = sample_volume_at(volume, neutral.cpu(), self.pixel_size_angstrom)
                weights = inside * mass * mobility_from_mask(inside)  # the Gaussians that move with the region
                if float(weights.sum()) <= 0:
                    raise GmmsessionInputError(f"the mask covers no Gaussian of half {h}'s GMM (none has its centre where the mask is >= {MASK_INSIDE})")
                keep = torch.nonzero(weights > 0).squeeze(1)  # zero-weight Gaussians change neither fit: leave them out
                weights, neutral = weights[keep].to(dev, torch.float64), neutral[keep.to(dev)]
                idx = torch.as_tensor(np.flatnonzero(halves == h))
                z = torch.as_tensor(self.latent.values[idx.numpy()], device=dev)

                def decoded(b: int) -> torch.Tensor:
                    with torch.no_grad():
                        return decoder(z[b : b + 4096])[:, keep.to(dev)].to(torch.float64)

                if centre:
                    neutral, mean_angle = mean_conformation(neutral, (decoded(b) for b in range(0, len(idx), 4096)), weights)
                    mean_motion[f"half{h}_mean_motion_removed_deg"] = float(mean_angle)
                for b in range(0, len(idx), 4096):
                    sel = idx[b : b + 4096]
                    conf = decoded(b)
                    rot0, origin0 = start.rotation[sel].to(dev), start.origin_angstrom[sel].to(dev)
                    k_rot, k_origin, _ = conformation_poses(rot0, origin0, neutral, conf, weights)
                    kabsch_rotation[sel] = k_rot.cpu()
                    out = refine_conformation_poses(rot0, origin0, k_rot, k_origin, neutral, conf, weights,
                                                    n_steps=refine_steps, learning_rate=refine_learning_rate)
                    rotation[sel], origin[sel], rmsd_kabsch[sel], rmsd_refined[sel] = (v.cpu() for v in out)
            self._set_poses(rotation, origin)
        angles = geodesic_angle_deg(start.rotation, rotation)
        refined = geodesic_angle_deg(kabsch_rotation, rotation)
        metrics = {
            "median_angle_change_deg": float(angles.median()), "max_angle_change_deg": float(angles.max()),
            "refine_median_angle_deg": float(refined.median()), "refine_max_angle_deg": float(refined.max()),
            "median_rmsd_kabsch_angstrom": float(rmsd_kabsch.median()), "median_rmsd_refined_angstrom": float(rmsd_refined.median()),
            **mean_motion,
        }
        params = {"mask": _mask_label(mask), "refine_steps": refine_steps, "refine_learning_rate": refine_learning_rate, "centre": centre,
                  "reconstruct": reconstruct}
        self._record("conf_to_pose", params, t, metrics)
        record = self.history.last()
        if reconstruct:
            self.reconstruct(progress=progress)
        return record

    @property
    def latent(self) -> xr.DataArray | None:
        """Latent vectors (particle, latent_dim) of the last :meth:`heterogeneity` (saved with the
        session, as are the networks); None before one, or once the particle set has changed
        (e.g. :meth:`expand_symmetry`), since then the rows no longer match the particles."""
        z = self._latent
        if z is None or not np.array_equal(z["particle"].values, self.particles["particle"].values):
            return None
        return z

    @property
    def gmm(self) -> xr.Dataset | None:
        """The GMMs (dims ``half``, ``gaussian``): ``position_angstrom``, ``amplitude``, ``width_angstrom``; None before :meth:`build_gmm`."""
        return self._gmm

    def check_images(self, *, drop_nonfinite: bool = False, chunk_size: int = 1000) -> StepRecord:
        """Scan every particle image for NaN/Inf pixels.

        Raises :class:`~gmmsession.data.io.stack.NonFiniteImageError` naming the particles, or,
        with ``drop_nonfinite=True``, removes them from the session (recorded in the history
        with their image names). Missing stacks, short stacks and wrong boxes raise too.
        """
        with Timer() as t:
            with ParticleImageReader(self.particles, self.optics) as reader:
                bad = reader.find_nonfinite(chunk_size=chunk_size)
                if len(bad) and not drop_nonfinite:
                    raise reader.nonfinite_error(bad)
        names = self.particles["image_name"].values[bad].astype(str).tolist()
        if len(bad):
            keep = np.ones(self.particles.sizes["particle"], dtype=bool)
            keep[bad] = False
            self._set.particles = self.particles.isel(particle=keep)
        self._record(
            "check_images",
            {"drop_nonfinite": drop_nonfinite, "chunk_size": chunk_size},
            t,
            {"n_nonfinite": len(bad), "n_particles": int(self.particles.sizes["particle"])},
            {"dropped_image_names": names} if names else {},
        )
        return self.history.last()

    def fsc(self, mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None, *, seed: int = 0) -> xr.DataArray:
        """Gold-standard FSC between the half maps.

        Parameters
        ----------
        mask : an MRC path or an array on the half-map grid; with a mask, the FSC is
            corrected by phase randomisation (RELION postprocess).
        seed : seed for the phase randomisation.

        Returns
        -------
        xarray.DataArray over ``shell`` with coordinate ``resolution_angstrom`` and the
        attribute ``resolution_angstrom`` (0.143 crossing). Masked results also carry the
        unmasked, masked and phase-randomised curves as coordinates.
        """
        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        px = self.pixel_size_angstrom
        h1 = torch.as_tensor(self._half_maps.sel(half=1).values)
        h2 = torch.as_tensor(self._half_maps.sel(half=2).values)
        mask_t = None if mask is None else torch.as_tensor(self._load_mask(mask))
        result = gold_standard_fsc(h1, h2, px, mask=mask_t, seed=seed)
        return fsc_dataarray(result, box_size=h1.shape[-1], pixel_size_angstrom=px)

    def local_resolution(
        self, mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None, *, sampling_angstrom: float = 25.0,
        device: Any = None,
    ) -> xr.DataArray:
        """Local resolution of the half maps (windowed, phase-randomisation-corrected FSC as
        ``relion_postprocess --locres``), as a map in Å on the half-map grid (NaN where no window
        reaches or the mask is 0). Summarise it per patch with ``Patches.resolution_summary``."""
        from gmmsession.algorithms.final_map import local_resolution as _local_resolution

        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        dev = resolve_device(device if device is not None else self._device)
        h1, h2, mask_t = self._half_map_tensors(mask, dev)
        with Timer() as t:
            res = _local_resolution(h1, h2, self.pixel_size_angstrom, mask_t, sampling_angstrom)
        hm = self._half_maps.sel(half=1)
        da = xr.DataArray(res.resolution_map, dims=hm.dims, coords=hm.coords, name="local_resolution",
                          attrs={"units": "Å", "median_angstrom": res.median_angstrom, "sampling_angstrom": res.sampling_angstrom,
                                 "radius_angstrom": res.radius_angstrom, "n_windows": int(len(res.resolution_angstrom))})
        self._record("local_resolution", {"mask": _mask_label(mask), "sampling_angstrom": sampling_angstrom, "device": str(dev)}, t,
                     {"median_angstrom": res.median_angstrom, "n_windows": int(len(res.resolution_angstrom)),
                      "best_window_angstrom": float(np.nanmin(res.resolution_angstrom)) if len(res.resolution_angstrom) else float("nan")})
        return da

    def final_map(
        self,
        path: str | os.PathLike | None = None,
        *,
        mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None,
        bfactor: float | str | None = "auto",
        local_resolution: xr.DataArray | None = None,
        device: Any = None,
    ) -> xr.DataArray:
        """The map to look at: the half-map average sharpened like ``relion_postprocess``
        (``bfactor="auto"``: Guinier fit from 10 Å; a number; or None) with FSC weighting, then
        low-pass filtered by the local resolution (pass ``local_resolution=`` from
        :meth:`local_resolution`, or None to low-pass at the global resolution instead).
        Written to ``path`` (MRC, atomic) when given; returns the map."""
        from gmmsession.algorithms.final_map import local_filter, sharpen

        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        dev = resolve_device(device if device is not None else self._device)
        h1, h2, mask_t = self._half_map_tensors(mask, dev)
        px = self.pixel_size_angstrom
        with Timer() as t:
            sharp = sharpen(h1, h2, px, mask_t, bfactor=bfactor, lowpass_angstrom=None if local_resolution is not None else "resolution")
            volume = torch.as_tensor(sharp.map)
            if local_resolution is not None:
                volume = local_filter(volume.to(dev), torch.as_tensor(np.asarray(local_resolution.values), device=dev), px).cpu()
            out = None if path is None else write_map(path, volume.numpy(), px)
        hm = self._half_maps.sel(half=1)
        da = xr.DataArray(volume.numpy(), dims=hm.dims, coords=hm.coords, name="final_map",
                          attrs={"bfactor_angstrom2": float(sharp.bfactor_angstrom2) if sharp.bfactor_angstrom2 is not None else float("nan"),
                                 "resolution_angstrom": float(sharp.resolution_angstrom), "method": sharp.method,
                                 "local_filter": int(local_resolution is not None)})
        self._record("final_map", {"path": None if out is None else str(out), "mask": _mask_label(mask), "bfactor": bfactor,
                                   "local_filter": local_resolution is not None}, t,
                     {"bfactor_angstrom2": da.attrs["bfactor_angstrom2"], "resolution_angstrom": da.attrs["resolution_angstrom"]})
        return da

    def _half_map_tensors(self, mask: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h1 = torch.as_tensor(self._half_maps.sel(half=1).values, device=device)
        h2 = torch.as_tensor(self._half_maps.sel(half=2).values, device=device)
        mask_t = None if mask is None else torch.as_tensor(self._load_mask(mask), device=device)
        return h1, h2, mask_t

    def _load_mask(self, mask: Any) -> np.ndarray:
        shape = tuple(self._half_maps.shape[1:])
        if isinstance(mask, (str, os.PathLike)):
            arr, _ = read_map(mask, pixel_size_angstrom=self.pixel_size_angstrom)
            origin = f"mask file {mask}"
        else:
            arr = np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask, dtype=np.float32)
            origin = "mask array"
        if arr.shape != shape:
            raise GmmsessionInputError(f"{origin} has shape {arr.shape}, the half maps {shape}")
        if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise GmmsessionInputError(f"{origin}: mask values must be finite and in [0, 1] (got {arr.min():g}..{arr.max():g})")
        return arr

    def write_half_maps(self, directory: str | os.PathLike, prefix: str = "half") -> list[Path]:
        """Write ``{prefix}1.mrc`` and ``{prefix}2.mrc`` (atomic, correct voxel size)."""
        if self._half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        d = Path(directory)
        return [write_map(d / f"{prefix}{h}.mrc", self._half_maps.sel(half=h).values, self.pixel_size_angstrom) for h in (1, 2)]

    def export_star(self, path: str | os.PathLike, *, on_dark_images: str = "warn") -> Path:
        """Write the input's tables with this session's poses (RELION star; lossless, atomic).

        Refuses to write over any input file of the session. Particles from cryoSPARC stacks
        stored dark (``blob/sign`` -1) are read bright here but RELION would read them dark:
        ``on_dark_images="warn"`` (default) warns, ``"raise"`` refuses
        (:func:`gmmsession.data.io.export.export_star`).
        """
        with Timer() as t:
            out = _export_star(path, self._set, inputs=session_input_paths(self._set), on_dark_images=on_dark_images)
        self._record("export_star", {"path": str(path)}, t, {"n_particles": int(self.particles.sizes["particle"])})
        return Path(out)

    def save(self, path: str | os.PathLike) -> Path:
        """Save the whole session (particles, optics, sources, half maps, history) to one file, atomically."""
        from gmmsession.session.store import save_session

        with Timer() as t:
            out = save_session(self, path)
        self._record("save", {"path": str(path)}, t, {})
        # Saved before its own record: re-saving keeps the file identical to the session state on open.
        return out

    # ------------------------------------------------------------------ display
    def summary(self) -> dict[str, Any]:
        """Plain facts about the session (used by ``repr`` and the notebook view)."""
        p, o = self.particles, self.optics
        counts = np.bincount(p["half"].values, minlength=3)
        out: dict[str, Any] = {
            "particles": int(p.sizes["particle"]),
            "half sets": f"{int(counts[1])} / {int(counts[2])}",
            "optics groups": int(o.sizes["optics_group"]),
            "box (px)": self.box_size,
            "pixel size (Å)": self.pixel_size_angstrom,
            "source": f"{p.attrs.get('source_format', '?')}: {p.attrs.get('source_path', '?')}",
            "device": str(self.device),
            "steps": len(self.history),
        }
        if self._gmm is not None:
            amp = self._gmm["amplitude"]
            out["GMM (Gaussians per half)"] = " / ".join(str(int(np.isfinite(amp.sel(half=h).values).sum())) for h in amp["half"].values)
        if self._half_maps is not None:
            # The last step that measured the current maps (no FSC computed for a display).
            rec = next((r for r in reversed(list(self.history)) if "resolution_angstrom" in r.metrics
                        and not r.name.endswith("_iteration")), None)
            if rec is not None:
                out["resolution (Å, 0.143)"] = f"{float(rec.metrics['resolution_angstrom']):.2f} ({rec.name})"
        if len(self.history):
            out["last steps"] = ", ".join(r.name for r in list(self.history)[-3:])
        return out

    def show_map(self, volume: Any = "average", *, mask: Any = None, patches: "Patches | None" = None) -> Any:
        """Interactive view of a map: three orthogonal slices (images, each with a slider and its
        position in Å) and, behind a "3D isosurface" toggle, an isosurface at an adjustable level
        (plotly); a static picture in a notebook saved with outputs. The slices are plain
        ipywidgets images, so they work wherever ipywidgets do (also on a slow machine where
        plotly's widget code takes longer to load than anywidget allows).

        ``volume``: ``"average"`` (of the half maps), ``"half1"``, ``"half2"``, or a (box, box, box)
        array / DataArray on the session's grid (e.g. ``h.volume_at(z)``). ``mask`` (MRC path,
        array or DataArray, or ``"focus"`` for :attr:`focus_mask`) is outlined on the slices and
        shown as a translucent surface in 3D; ``patches`` (e.g. :attr:`last_patches`) adds their masks' outlines.
        """
        from gmmsession.session.display import build_view

        if isinstance(volume, str):
            if self._half_maps is None:
                raise RuntimeError("no half maps yet: call session.reconstruct() first")
            names = {"average": None, "half1": 1, "half2": 2}
            if volume not in names:
                raise ValueError(f"volume must be one of {list(names)} or an array, got {volume!r}")
            hm = self._half_maps
            title, volume = volume, (hm.mean("half") if names[volume] is None else hm.sel(half=names[volume])).values
        else:
            title, volume = getattr(volume, "name", None) or "map", np.asarray(getattr(volume, "values", volume))
        return build_view("map", volume, pixel_size_angstrom=self.pixel_size_angstrom, mask=self._view_mask(mask),
                          patch_masks=None if patches is None else patches.masks.values, title=str(title))

    def show_gmm(self, half: int | None = None, *, patches: "Patches | None" = None, mask: Any = None) -> Any:
        """Interactive 3D scatter of the GMM (colour = amplitude, size = width) with a half selector
        (``half`` the one shown first), optionally with the patches (``patches=s.last_patches``)
        or a mask's surface (as in :meth:`show_map`) overlaid."""
        from gmmsession.session.display import build_view

        if self._gmm is None:
            raise RuntimeError("no GMM yet: call session.build_gmm() first")
        return build_view("gmm", self._gmm, half=half, patches=patches, mask=self._view_mask(mask),
                          pixel_size_angstrom=self.pixel_size_angstrom)

    def _view_mask(self, mask: Any) -> np.ndarray | None:
        if isinstance(mask, str) and mask == "focus":
            if self.focus_mask is None:
                raise RuntimeError("no focus mask yet: s.focus(mask).refine() keeps it")
            return np.asarray(self.focus_mask.values)
        return None if mask is None else self._load_mask(mask)

    def __repr__(self) -> str:
        lines = [f"  {k}: {v}" for k, v in self.summary().items()]
        return "gmmsession.Session\n" + "\n".join(lines)

    def _repr_html_(self) -> str:
        from gmmsession.session.display import html_for

        return html_for(self)

    # ------------------------------------------------------------------ internals
    def _record(self, name: str, params: dict, t: Timer, metrics: dict, curves: dict | None = None) -> None:
        self.history.append(
            StepRecord(
                name=name,
                params=params,
                started_utc=t.started_utc,
                duration_s=t.duration_s,
                versions=environment_versions(),
                metrics=metrics,
                curves=curves or {},
            )
        )


def _str(x: Any) -> str | None:
    return None if x is None else str(x)
