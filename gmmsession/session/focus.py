"""Focused refinement from the session: ``s.focus(mask).refine(n_iter=3)``.

A thin object: it turns the user's mask into a volume on the session's grid and runs the
session's refinement loop with it (:meth:`Session._refine`), where the GMM reference is
widened outside the mask (``sigma / (0.25 + 0.75 M)``) after every fit. Afterwards the
session's poses, half maps, GMMs and ``export_star()`` are the focused result, and
``session.focus_mask`` is the mask; the history records the whole-map and the focus-region
FSC of every iteration.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import xarray as xr

from gmmsession.algorithms.align import AlignConfig
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.gmm import gmm_to_tensors
from gmmsession.kernels.masks import MASK_INSIDE, gaussian_selection_mask
from gmmsession.session.history import StepRecord

__all__ = ["Focus"]

class Focus:
    """A focus region of a session; ``refine()`` runs focused refinement on it.

    Attributes
    ----------
    mask : xarray.DataArray (z, y, x) in [0, 1] on the session's grid.
    source : how the mask was given (path, ``"array"`` or ``"gaussians"``).
    """

    def __init__(self, session: Any, mask: Any) -> None:
        self._session = session
        if session.half_maps is None:
            raise RuntimeError("no half maps yet: call session.reconstruct() first")
        volume, self.source = self._resolve(mask)
        hm = session.half_maps.sel(half=1)
        self.mask = xr.DataArray(volume, dims=hm.dims, coords=hm.coords, name="focus_mask",
                                 attrs={"source": self.source, "long_name": "focus mask"})

    def _resolve(self, mask: Any) -> tuple[np.ndarray, str]:
        s = self._session
        if isinstance(mask, (str, os.PathLike)):
            return s._load_mask(mask), str(mask)
        arr = np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask)
        if arr.dtype == bool and arr.ndim == 1:
            return self._from_gaussians(arr), "gaussians"
        return s._load_mask(arr), "array"

    def _from_gaussians(self, selected: np.ndarray) -> np.ndarray:
        s = self._session
        if s.gmm is None:
            raise RuntimeError("a mask over Gaussians needs the session's GMM: call session.build_gmm() first")
        n = int(s.gmm.sizes["gaussian"])
        if selected.shape != (n,):
            raise GmmsessionInputError(f"the boolean Gaussian mask has {selected.shape[0]} entries, the session's GMM {n} Gaussians")
        if not selected.any():
            raise GmmsessionInputError("the boolean Gaussian mask selects no Gaussian")
        pos, wid = [], []
        for h in (1, 2):
            g = gmm_to_tensors(s.gmm, h, dtype=torch.float64)
            keep = torch.as_tensor(selected[: g.n_gaussians])
            pos.append(g.positions_angstrom[keep])
            wid.append(g.widths_angstrom[keep])
        volume = gaussian_selection_mask(torch.cat(pos), torch.cat(wid), s.box_size, s.pixel_size_angstrom)
        return volume.float().numpy()

    def refine(
        self,
        n_iter: int = 3,
        *,
        solvent_mask: str | os.PathLike | np.ndarray | xr.DataArray | None = None,
        align: AlignConfig | None = None,
        chunk_size: int = 1000,
        patience: int | None = None,
        keep: str = "best",
        gmm_fit_steps: int = 60,
        device: Any = None,
        progress: bool = True,
    ) -> StepRecord:
        """Focused refinement (paper: 3 iterations). Runs all ``n_iter`` iterations (``patience``
        None; an int stops after that many iterations in a row without improvement) and keeps
        the best by the FSC within the focus mask: a focused run's first iteration often scores
        below its start while the poses leave the consensus, and improves after. ``keep="last"``
        keeps the last iteration instead, as the paper does. ``solvent_mask``
        is used for the whole-map FSC that is reported alongside. Returns the step record
        (``refine_focus``); the mask becomes the session's :attr:`~gmmsession.Session.focus_mask`
        (saved with it; ``Patches.add`` uses it)."""
        step = self._session._refine(
            "refine_focus", n_iter, mask=solvent_mask, focus_mask=self.mask.values, align=align, chunk_size=chunk_size,
            patience=patience, keep=keep, gmm_fit_steps=gmm_fit_steps, device=device, progress=progress,
            extra_params={"focus_mask": self.source, "focus_mask_volume_fraction": float(self.mask.values.mean())},
        )
        self._session.focus_mask = self.mask
        return step

    def _repr_html_(self) -> str:
        from gmmsession.session.display import html_for

        return html_for(self)

    def __repr__(self) -> str:
        return f"Focus(mask from {self.source}, {float((self.mask.values >= MASK_INSIDE).mean()) * 100:.1f} % of the box)"
