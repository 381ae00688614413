"""The labelled form of a Gaussian mixture model (GMM) and its bridge to tensors.

``gmm`` (xarray.Dataset)
    dimensions: ``gaussian`` (and ``half`` = [1, 2] for one GMM per half map), ``xyz``
    coordinates: ``gaussian`` (0..G-1), ``xyz`` = ``["x", "y", "z"]``, ``half`` (if present)

    ======================  ===========  ==========================================================
    name                    units        meaning
    ======================  ===========  ==========================================================
    position_angstrom       Å            centre ``(x, y, z)`` from voxel ``box // 2`` (dims ``[half,] gaussian, xyz``)
    amplitude               map value    **peak** 3D amplitude ``A_j`` in the map's units
    width_angstrom          Å            standard deviation ``sigma_j``
    ======================  ===========  ==========================================================

    The density is ``sum_j A_j exp(-|r - c_j|^2 / (2 sigma_j^2))`` (the convention of
    :mod:`gmmsession.kernels.gmm`). Attributes: ``pixel_size_angstrom`` and ``box_size`` of
    the map the GMM was fitted to, ``resolution_angstrom`` (the fit's target resolution),
    ``frame`` (a sentence naming the coordinate origin).

    When the halves have different numbers of Gaussians, the shorter one is padded with
    rows whose three variables are NaN; :func:`gmm_to_tensors` drops them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

__all__ = ["GmmTensors", "GMM_VARIABLES", "GMM_UNITS", "gmm_dataset", "gmm_to_tensors"]

GMM_VARIABLES = ("position_angstrom", "amplitude", "width_angstrom")
GMM_UNITS = {"position_angstrom": "Å", "amplitude": "map value", "width_angstrom": "Å"}
_FRAME = "positions in Å from voxel box // 2 of the map (gmmsession convention), x = column axis"


@dataclass(frozen=True)
class GmmTensors:
    """One Gaussian mixture as tensors.

    Attributes
    ----------
    positions_angstrom : (G, 3) ``(x, y, z)`` in Å from voxel ``box // 2``.
    amplitudes : (G,) peak amplitudes (map units).
    widths_angstrom : (G,) standard deviations in Å.
    """

    positions_angstrom: torch.Tensor
    amplitudes: torch.Tensor
    widths_angstrom: torch.Tensor

    def __post_init__(self) -> None:
        p, a, w = self.positions_angstrom, self.amplitudes, self.widths_angstrom
        if p.ndim != 2 or p.shape[-1] != 3 or a.shape != p.shape[:1] or w.shape != p.shape[:1]:
            raise ValueError(
                f"GmmTensors needs positions (G, 3), amplitudes (G,), widths (G,); got {tuple(p.shape)}, {tuple(a.shape)}, {tuple(w.shape)}"
            )

    @property
    def n_gaussians(self) -> int:
        return int(self.positions_angstrom.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GmmTensors:
        """The same mixture on another device / dtype."""
        return GmmTensors(*(t.to(device=device, dtype=dtype) for t in (self.positions_angstrom, self.amplitudes, self.widths_angstrom)))

    def detach(self) -> GmmTensors:
        return GmmTensors(*(t.detach() for t in (self.positions_angstrom, self.amplitudes, self.widths_angstrom)))

    def __repr__(self) -> str:
        return f"GmmTensors({self.n_gaussians} Gaussians, {self.positions_angstrom.dtype}, {self.positions_angstrom.device})"


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def gmm_dataset(
    gmm: GmmTensors | Sequence[GmmTensors],
    *,
    pixel_size_angstrom: float | None = None,
    box_size: int | None = None,
    resolution_angstrom: float | None = None,
    attrs: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Labelled dataset of one GMM (dim ``gaussian``) or of one per half (dims ``half``, ``gaussian``).

    Parameters
    ----------
    gmm : one :class:`GmmTensors`, or a sequence of two (half 1, half 2).
    pixel_size_angstrom, box_size : the map the GMM describes (stored as attributes).
    resolution_angstrom : target resolution of the fit (Å), stored as an attribute.
    attrs : further attributes (e.g. fit metrics); values must be netCDF-storable.

    Returns
    -------
    xarray.Dataset with ``position_angstrom``, ``amplitude``, ``width_angstrom`` (float32 as
    given; units attributes) — see the module docstring.
    """
    halves = isinstance(gmm, (list, tuple))
    items = list(gmm) if halves else [gmm]
    if halves and len(items) != 2:
        raise ValueError(f"a per-half GMM needs exactly two GmmTensors (half 1, half 2), got {len(items)}")
    n = max(g.n_gaussians for g in items)
    pos, amp, wid = [], [], []
    for g in items:
        pad = n - g.n_gaussians
        p, a, w = _numpy(g.positions_angstrom), _numpy(g.amplitudes), _numpy(g.widths_angstrom)
        if pad:
            p = np.concatenate([p, np.full((pad, 3), np.nan, dtype=p.dtype)])
            a = np.concatenate([a, np.full(pad, np.nan, dtype=a.dtype)])
            w = np.concatenate([w, np.full(pad, np.nan, dtype=w.dtype)])
        pos.append(p)
        amp.append(a)
        wid.append(w)
    dims = ("half", "gaussian") if halves else ("gaussian",)
    coords: dict[str, object] = {"gaussian": np.arange(n), "xyz": ["x", "y", "z"]}
    if halves:
        coords["half"] = [1, 2]

    def stack(arrs: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrs) if halves else arrs[0]

    ds = xr.Dataset(
        {
            "position_angstrom": (dims + ("xyz",), stack(pos), {"units": GMM_UNITS["position_angstrom"], "long_name": "Gaussian centre"}),
            "amplitude": (dims, stack(amp), {"units": GMM_UNITS["amplitude"], "long_name": "peak amplitude"}),
            "width_angstrom": (dims, stack(wid), {"units": GMM_UNITS["width_angstrom"], "long_name": "Gaussian sigma"}),
        },
        coords=coords,
    )
    ds.attrs["frame"] = _FRAME
    if pixel_size_angstrom is not None:
        ds.attrs["pixel_size_angstrom"] = float(pixel_size_angstrom)
    if box_size is not None:
        ds.attrs["box_size"] = int(box_size)
    if resolution_angstrom is not None:
        ds.attrs["resolution_angstrom"] = float(resolution_angstrom)
    if attrs:
        ds.attrs.update(dict(attrs))
    return ds


def gmm_to_tensors(
    gmm: xr.Dataset,
    half: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> GmmTensors:
    """Tensors of one GMM from a dataset of :func:`gmm_dataset`.

    Parameters
    ----------
    gmm : dataset with dim ``gaussian`` (and ``half``).
    half : 1 or 2; required when the dataset has a ``half`` dimension, refused otherwise.
    device, dtype : of the returned tensors (default float32 on CPU).

    Returns
    -------
    :class:`GmmTensors`; padding rows (NaN) are dropped.
    """
    missing = [v for v in GMM_VARIABLES if v not in gmm]
    if missing:
        raise ValueError(f"not a GMM dataset: missing variables {missing}")
    if "half" in gmm.dims:
        if half is None:
            raise ValueError("the GMM dataset has one GMM per half: pass half=1 or half=2")
        if half not in gmm["half"].values.tolist():
            raise ValueError(f"half must be one of {gmm['half'].values.tolist()}, got {half}")
        gmm = gmm.sel(half=half)
    elif half is not None:
        raise ValueError(f"the GMM dataset has no half dimension, got half={half}")
    pos = np.asarray(gmm["position_angstrom"].transpose("gaussian", "xyz").sel(xyz=["x", "y", "z"]).values)
    amp = np.asarray(gmm["amplitude"].values)
    wid = np.asarray(gmm["width_angstrom"].values)
    keep = np.isfinite(pos).all(-1) & np.isfinite(amp) & np.isfinite(wid)
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a[keep]), dtype=dtype, device=device)  # noqa: E731
    return GmmTensors(as_t(pos), as_t(amp), as_t(wid))
