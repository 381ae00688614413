"""View models: what the notebook views show, as plain numpy and dicts (no widget or plotting library).

The widgets of :mod:`gmmsession.viz.widgets` are thin views over these functions, and the
tests assert on their output without a browser. Conventions of the session layer: volumes
are ``(z, y, x)`` arrays, coordinates in Å with 0 at voxel ``box // 2``, Gaussian positions
``(x, y, z)`` in Å.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "AXES",
    "axis_coords_angstrom",
    "slice_view",
    "orthogonal_slices",
    "isosurface_levels",
    "isosurface_grid",
    "gmm_scatter",
    "patch_overlay",
    "latent_view",
    "latent_point",
    "progress_view",
]

AXES = ("z", "y", "x")
# Axis sliced -> (image rows, image columns) of the slice, as names of the volume's axes.
_SLICE_PLANE = {"z": ("y", "x"), "y": ("z", "x"), "x": ("z", "y")}


def _volume(volume: Any) -> np.ndarray:
    arr = np.asarray(getattr(volume, "values", volume), dtype=np.float32)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"volume must be cubic (box, box, box) in (z, y, x) order, got shape {arr.shape}")
    return arr


def axis_coords_angstrom(box_size: int, pixel_size_angstrom: float) -> np.ndarray:
    """(box,) voxel coordinates along one axis, Å, 0 at voxel ``box // 2``."""
    return (np.arange(box_size) - box_size // 2) * float(pixel_size_angstrom)


def slice_view(volume: Any, axis: str, index: int, pixel_size_angstrom: float = 1.0, mask: Any = None) -> dict[str, Any]:
    """One orthogonal slice of a ``(z, y, x)`` volume.

    Parameters
    ----------
    volume : (box, box, box) array or DataArray, ``(z, y, x)``.
    axis : ``"z"``, ``"y"`` or ``"x"``, the axis held at ``index``.
    index : voxel index along ``axis`` (0 .. box - 1).
    pixel_size_angstrom : voxel size (Å) of the coordinates.
    mask : optional (box, box, box) mask on the same grid; its slice is returned as ``mask``.

    Returns
    -------
    dict with ``axis``, ``index``, ``position_angstrom`` (of the slice), ``image`` (box, box)
    with rows along ``rows`` and columns along ``columns`` (axis names), ``row_angstrom`` and
    ``column_angstrom`` (box,) coordinates, ``mask`` ((box, box) or None).
    """
    vol = _volume(volume)
    if axis not in _SLICE_PLANE:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    box = vol.shape[0]
    if not 0 <= int(index) < box:
        raise ValueError(f"index must be in 0..{box - 1} for a box of {box}, got {index}")
    index = int(index)
    take = AXES.index(axis)
    m = None if mask is None else _volume(mask)
    if m is not None and m.shape != vol.shape:
        raise ValueError(f"mask has shape {m.shape}, the volume {vol.shape}")
    coords = axis_coords_angstrom(box, pixel_size_angstrom)
    rows, columns = _SLICE_PLANE[axis]
    return {
        "axis": axis, "index": index, "position_angstrom": float(coords[index]),
        "image": np.take(vol, index, axis=take), "rows": rows, "columns": columns,
        "row_angstrom": coords, "column_angstrom": coords,
        "mask": None if m is None else np.take(m, index, axis=take),
    }


def orthogonal_slices(volume: Any, index: dict[str, int] | None = None, pixel_size_angstrom: float = 1.0,
                      mask: Any = None) -> dict[str, dict[str, Any]]:
    """The three orthogonal slices ``{"z": ..., "y": ..., "x": ...}`` (see :func:`slice_view`),
    at ``index[axis]`` (default the centre voxel ``box // 2``)."""
    vol = _volume(volume)
    index = {a: vol.shape[0] // 2 for a in AXES} | (index or {})
    return {a: slice_view(vol, a, index[a], pixel_size_angstrom, mask) for a in AXES}


def isosurface_levels(volume: Any) -> dict[str, float]:
    """Range and default of an isosurface level for ``volume``.

    Returns ``{"min", "max", "step", "default"}``: the volume's value range, a slider step of
    1/100 of it, and a default level at the mean plus 3 standard deviations (typically
    the molecule's envelope in a box with solvent), clipped inside the range.
    """
    vol = _volume(volume)
    finite = vol[np.isfinite(vol)]
    if finite.size == 0:
        raise ValueError("the volume has no finite value")
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else 1.0
    default = float(np.clip(finite.mean() + 3.0 * finite.std(), lo + 0.01 * span, hi - 0.01 * span)) if hi > lo else lo
    return {"min": lo, "max": hi, "step": span / 100.0, "default": default}


def isosurface_grid(volume: Any, pixel_size_angstrom: float = 1.0, max_size: int = 48) -> dict[str, np.ndarray]:
    """Flattened grid for an isosurface renderer, binned down to at most ``max_size`` voxels a side.

    Returns ``{"x", "y", "z", "value"}``, each (n,) (coordinates in Å of the binned voxel
    centres, values the bin means) and ``"bin"`` (voxels per bin along each axis).
    """
    vol = _volume(volume)
    box = vol.shape[0]
    b = max(1, int(np.ceil(box / max_size)))
    n = box // b
    v = vol[: n * b, : n * b, : n * b].reshape(n, b, n, b, n, b).mean(axis=(1, 3, 5))
    c = (np.arange(n) * b + (b - 1) / 2.0 - box // 2) * float(pixel_size_angstrom)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return {"x": x.ravel(), "y": y.ravel(), "z": z.ravel(), "value": v.ravel(), "bin": b}


def gmm_scatter(gmm: Any, half: int | None = 1, *, max_marker_size: float = 16.0, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Scatter data of a GMM: centres, colour = amplitude, marker size proportional to width.

    Parameters
    ----------
    gmm : dataset like :attr:`Session.gmm` (dims ``[half,] gaussian, xyz``) with
        ``position_angstrom``, ``amplitude``, ``width_angstrom``.
    half : the half to show where the dataset has halves.
    max_marker_size : marker size (px) of the widest Gaussian.
    labels : optional (gaussian,) integers (e.g. patch labels) carried along as ``labels``.

    Returns
    -------
    dict with ``x``, ``y``, ``z`` (Å), ``amplitude``, ``width_angstrom``, ``size`` (px, at
    least 2), ``index`` (Gaussian indices) and ``labels``, padding rows (NaN) left out.
    """
    g = gmm.sel(half=half) if "half" in gmm.dims else gmm
    pos = np.asarray(g["position_angstrom"].transpose("gaussian", "xyz").sel(xyz=["x", "y", "z"]).values, dtype=float)
    amp = np.asarray(g["amplitude"].values, dtype=float)
    wid = np.asarray(g["width_angstrom"].values, dtype=float)
    keep = np.isfinite(pos).all(-1) & np.isfinite(amp) & np.isfinite(wid)
    wmax = float(wid[keep].max()) if keep.any() and wid[keep].max() > 0 else 1.0
    return {
        "x": pos[keep, 0], "y": pos[keep, 1], "z": pos[keep, 2], "amplitude": amp[keep], "width_angstrom": wid[keep],
        "size": np.maximum(max_marker_size * wid[keep] / wmax, 2.0), "index": np.flatnonzero(keep),
        "labels": None if labels is None else np.asarray(labels)[keep],
    }


def patch_overlay(patches: Any) -> list[dict[str, Any]]:
    """One dict per patch of a :class:`~gmmsession.session.patches.Patches`: ``name``, its
    clustered Gaussian centres ``x``, ``y``, ``z`` (Å), ``centre`` (3,) and ``radius_angstrom``."""
    lay = patches.layout
    pts = np.asarray(patches.points_angstrom, dtype=float)
    out = []
    for i in range(lay.k):
        sel = pts[np.asarray(lay.labels) == i]
        out.append({"name": f"patch {i}", "x": sel[:, 0], "y": sel[:, 1], "z": sel[:, 2],
                    "centre": np.asarray(lay.centres_angstrom[i], dtype=float), "radius_angstrom": float(lay.radii_angstrom[i])})
    return out


def latent_view(latent: np.ndarray, mean: np.ndarray, directions: np.ndarray, pcs: tuple[int, int] = (1, 2)) -> dict[str, np.ndarray]:
    """Latent points projected on two principal directions (1-based ``pcs``).

    ``latent`` (n, d), ``mean`` (d,), ``directions`` (d, d) as rows. Returns ``{"pc_a", "pc_b"}``
    (n,) coordinates (for ``d == 1`` the second is zero).
    """
    z = np.asarray(latent, dtype=float) - np.asarray(mean, dtype=float)[None, :]
    comps = np.asarray(directions, dtype=float)
    a = z @ comps[pcs[0] - 1]
    b = z @ comps[pcs[1] - 1] if pcs[1] <= comps.shape[0] else np.zeros_like(a)
    return {"pc_a": a, "pc_b": b}


def latent_point(mean: np.ndarray, directions: np.ndarray, variances: np.ndarray, pc: int, t: float) -> np.ndarray:
    """(d,) latent point ``t`` standard deviations along principal direction ``pc`` (1-based) from the mean."""
    var = np.asarray(variances, dtype=float)
    if not 1 <= pc <= var.size:
        raise ValueError(f"pc must be in 1..{var.size}, got {pc}")
    return np.asarray(mean, dtype=float) + float(t) * np.sqrt(max(var[pc - 1], 0.0)) * np.asarray(directions, dtype=float)[pc - 1]


def progress_view(done: int, total: int, elapsed_s: float, desc: str, unit: str = "particle",
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a progress display shows: fraction, rate, remaining time and the step's own numbers.

    ``info`` may carry ``iteration`` and ``n_iter`` and ``resolution_angstrom`` (the last
    finished iteration's); other entries are shown as ``key value``. Returns a dict with
    ``fraction`` (0..1), ``rate`` (units/s), ``remaining_s`` (None when unknown) and ``text``.
    """
    info = dict(info or {})
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    remaining = (total - done) / rate if rate > 0 and total >= done else None
    parts = [desc]
    if "iteration" in info:
        it = info.pop("iteration")
        n_iter = info.pop("n_iter", None)
        parts.append(f"iteration {it}/{n_iter}" if n_iter else f"iteration {it}")
    parts.append(f"{done:,}/{total:,} {unit}s")
    parts.append(f"{rate:,.1f} {unit}s/s")
    if remaining is not None and done < total:
        parts.append(f"{remaining:.0f} s left")
    res = info.pop("resolution_angstrom", None)
    if res is not None:
        parts.append(f"resolution {float(res):.2f} Å")
    parts.extend(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
    return {"fraction": fraction, "rate": rate, "remaining_s": remaining, "text": " · ".join(parts)}
