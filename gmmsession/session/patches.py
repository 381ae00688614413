"""Patch-by-patch refinement from the session: ``p = s.patches(k=8); p.refine(); p.composite()``.

A thin object over :mod:`gmmsession.algorithms.patches` and the session's refinement loop. Each
patch is refined from the same starting state (the session when ``patches()`` was called,
normally the global result) with its soft spherical mask as the focus mask; every patch's
result (poses, half maps, GMMs, step record) is kept in ``p.results``. After ``refine()`` the
session is back at the starting state; ``composite()`` then makes the mask-weighted composite
half maps the session's half maps. ``export_star(i, path)`` writes patch ``i``'s poses.

A patch whose mask covers every Gaussian (always so for ``k = 1``) has nothing to focus on: its
width mask changes no Gaussian, so it runs as global refinement (solvent-mask FSC), and ``k = 1``
reproduces :meth:`Session.refine_global`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from gmmsession.algorithms.align import AlignConfig
from gmmsession.algorithms.patches import PatchLayout, composite_half_maps, patch_layout, patch_masks
from gmmsession.data.bridge import half_maps_dataarray
from gmmsession.data.gmm import gmm_to_tensors
from gmmsession.session.history import StepRecord, Timer
from gmmsession.session.session import _mask_label

__all__ = ["Patches", "PatchResult"]


@dataclass(frozen=True)
class PatchResult:
    """One patch's refinement: its step record and the session state it ended in."""

    index: int
    step: StepRecord
    particles: xr.Dataset
    half_maps: xr.DataArray
    gmm: xr.Dataset


class Patches:
    """K patches of a session's GMM and their focused refinements.

    Attributes
    ----------
    layout : :class:`~gmmsession.algorithms.patches.PatchLayout` (labels, centres, radii in Å).
    points_angstrom : (N, 3) the Gaussian centres of both halves that were clustered (``layout.labels`` order).
    masks : xarray.DataArray (patch, z, y, x), the soft spherical masks, the same for both halves.
    results : {patch index: PatchResult} of the patches refined so far.
    """

    def __init__(self, session: Any, k: int = 8, seed: int = 0) -> None:
        if session.gmm is None:
            raise RuntimeError("patches need the session's GMM: call session.build_gmm() (or refine_global) first")
        self._session = session
        self._start = session._state()
        gmm = session.gmm
        centres = np.concatenate([gmm["position_angstrom"].sel(half=h).values for h in (1, 2)])
        self.points_angstrom = centres[np.isfinite(centres).all(axis=1)]  # the clustered centres (both halves)
        self.layout: PatchLayout = patch_layout(centres, k=k, seed=seed)
        masks = patch_masks(self.layout, session.box_size, session.pixel_size_angstrom)
        hm = session.half_maps.sel(half=1)
        self.masks = xr.DataArray(masks.numpy(), dims=("patch", *hm.dims), coords={"patch": np.arange(k), **hm.coords},
                                  name="patch_masks")
        self.results: dict[int, PatchResult] = {}

    @property
    def k(self) -> int:
        return self.layout.k

    def _covers_all_gaussians(self, i: int) -> bool:
        """Every Gaussian centre of both halves lies within the patch's radius (where the mask is 1)."""
        centre, radius = self.layout.centres_angstrom[i], self.layout.radii_angstrom[i]
        for h in (1, 2):
            pos = gmm_to_tensors(self._start["gmm"], h, dtype=torch.float64).positions_angstrom.numpy()
            if np.linalg.norm(pos - centre, axis=1).max() > radius + 1e-6:
                return False
        return True

    def refine(
        self,
        n_iter: int = 3,
        *,
        patches: list[int] | None = None,
        solvent_mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None,
        align: AlignConfig | None = None,
        chunk_size: int = 1000,
        patience: int = 1,
        gmm_fit_steps: int = 60,
        device: Any = None,
        progress: bool = True,
    ) -> list[StepRecord]:
        """Focused refinement of each patch (paper: 3 iterations), each from the starting state.

        ``patches`` selects which (default: all). Returns the step records (``refine_patch``);
        the session is left at the starting state (call :meth:`composite`).
        """
        s = self._session
        todo = list(range(self.k)) if patches is None else [int(i) for i in patches]
        bad = [i for i in todo if not 0 <= i < self.k]
        if bad:
            raise ValueError(f"patch indices {bad} out of range 0..{self.k - 1}")
        steps = []
        try:
            for i in todo:
                s._set_state(self._start)
                focus = None if self._covers_all_gaussians(i) else self.masks.values[i]
                step = s._refine(
                    "refine_patch", n_iter, mask=solvent_mask, focus_mask=focus, align=align, chunk_size=chunk_size,
                    patience=patience, gmm_fit_steps=gmm_fit_steps, device=device, progress=progress,
                    extra_params={"patch": i, "k": self.k, "global": focus is None,
                                  "patch_centre_angstrom": self.layout.centres_angstrom[i].tolist(),
                                  "patch_radius_angstrom": float(self.layout.radii_angstrom[i])},
                    label=f"patch {i + 1}/{self.k}",
                )
                state = s._state()
                self.results[i] = PatchResult(i, step, state["particles"], state["half_maps"], state["gmm"])
                steps.append(step)
        finally:
            s._set_state(self._start)
        return steps

    def composite(self, *, solvent_mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None) -> StepRecord:
        """Mask-weighted composite of the refined patches' half maps (each half separately) as the
        session's half maps; patches not refined contribute the starting maps. Records the
        composite FSC (``patch_composite``)."""
        if not self.results:
            raise RuntimeError("no patch refined yet: call refine() first")
        s = self._session
        start = torch.as_tensor(self._start["half_maps"].values)
        maps = torch.stack([
            torch.as_tensor(self.results[i].half_maps.values) if i in self.results else start for i in range(self.k)
        ])
        with Timer() as t:
            composite = composite_half_maps(maps, torch.as_tensor(self.masks.values), start)
            s._set_state({**s._state(), "half_maps": half_maps_dataarray(composite[0], composite[1], s.pixel_size_angstrom)})
            fsc = s.fsc(mask=solvent_mask)
        start_res = float(self._start_fsc(solvent_mask).attrs["resolution_angstrom"])
        s._record(
            "patch_composite",
            {"k": self.k, "refined_patches": sorted(self.results), "mask": _mask_label(solvent_mask)},
            t,
            {"start_resolution_angstrom": start_res, "resolution_angstrom": float(fsc.attrs["resolution_angstrom"])},
            {"shell_resolution_angstrom": fsc["resolution_angstrom"].values.tolist(), "fsc": fsc.values.tolist()},
        )
        return s.history.last()

    def _start_fsc(self, solvent_mask: Any) -> xr.DataArray:
        s = self._session
        now = s._state()
        try:
            s._set_state(self._start)
            return s.fsc(mask=solvent_mask)
        finally:
            s._set_state(now)

    def export_star(self, i: int, path: str | os.PathLike) -> os.PathLike:
        """Write the input's tables with patch ``i``'s refined poses (RELION star, atomic)."""
        if i not in self.results:
            raise KeyError(f"patch {i} has not been refined (refined: {sorted(self.results)})")
        s = self._session
        now = s._state()
        try:
            s._set_state({"particles": self.results[i].particles, "half_maps": self.results[i].half_maps, "gmm": self.results[i].gmm})
            return s.export_star(path)
        finally:
            s._set_state(now)

    def summary(self) -> pd.DataFrame:
        """One row per patch: centre and radius (Å), Gaussians, and, once refined, the focus-region
        resolution before and after."""
        rows = []
        for i in range(self.k):
            c = self.layout.centres_angstrom[i]
            row = {"x_angstrom": c[0], "y_angstrom": c[1], "z_angstrom": c[2], "radius_angstrom": self.layout.radii_angstrom[i],
                   "n_gaussians": int((self.layout.labels == i).sum()), "refined": i in self.results}
            if i in self.results:
                m = self.results[i].step.metrics
                row["start_resolution_angstrom"] = m.get("start_focus_resolution_angstrom", m.get("start_resolution_angstrom"))
                row["resolution_angstrom"] = m.get("focus_resolution_angstrom", m.get("resolution_angstrom"))
            rows.append(row)
        table = pd.DataFrame(rows)
        table.index.name = "patch"
        return table

    def resolution_summary(self, local_resolution: xr.DataArray) -> pd.DataFrame:
        """Local resolution inside each patch mask (median, quartiles, best/worst in Å), one row per patch.

        ``local_resolution`` from :meth:`Session.local_resolution`; global FSC can hide local
        gains (paper), this is where they show."""
        from gmmsession.algorithms.final_map import summarize_by_masks

        table = summarize_by_masks(np.asarray(local_resolution.values), self.masks.values)
        table.index.name = "patch"
        return table

    def _repr_html_(self) -> str:
        from gmmsession.session.display import html_for

        return html_for(self)

    def __repr__(self) -> str:
        radii = ", ".join(f"{r:.0f}" for r in self.layout.radii_angstrom)
        return f"Patches(k={self.k}, radii Å [{radii}], refined {sorted(self.results)})"
