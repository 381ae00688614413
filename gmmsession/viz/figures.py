"""Figures: FSC curves, map slices, GMMs, patches, latent space and pose changes as plotly figures,
and FSC curves as inline SVG (static HTML)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "fsc_figure", "step_fsc_curves", "step_fsc_figure", "fsc_svg", "patches_figure", "gmm_figure", "map_slices_figure",
    "latent_figure", "pose_change_figure",
]

_PALETTE = ("#999999", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def fsc_figure(
    *curves: xr.DataArray, names: list[str] | None = None, threshold: float = 0.143, components: bool = True
) -> go.Figure:
    """FSC curves (from :meth:`Session.fsc`) against spatial frequency, labelled in Å.

    With ``components`` (default), masked results also show their unmasked, masked and
    phase-randomised curves (dotted); without, one trace per curve (e.g. one per stage).
    """
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    fig = go.Figure()
    names = names or [f"FSC {i + 1}" for i in range(len(curves))]
    for curve, name in zip(curves, names):
        res = curve["resolution_angstrom"].values
        freq = np.where(np.isfinite(res) & (res > 0), 1.0 / np.where(res > 0, res, 1), 0.0)
        label = f"{name} ({curve.attrs.get('resolution_angstrom', float('nan')):.2f} Å)"
        fig.add_trace(go.Scatter(x=freq, y=curve.values, mode="lines", name=label))
        for extra in ("fsc_unmasked", "fsc_masked", "fsc_randomized"):
            if components and extra in curve.coords:
                fig.add_trace(go.Scatter(x=freq, y=curve[extra].values, mode="lines", name=f"{name}: {extra[4:]}", line={"dash": "dot"}))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "grey"})
    fig.update_layout(xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC", yaxis_range=[-0.1, 1.05], template="plotly_white")
    return fig


def _as_float(v: object) -> float:
    return float(v)  # history stores inf as the string "inf", which float() reads


def _step_frequencies(step) -> np.ndarray | None:
    """Spatial frequency (1/Å) of each FSC shell of a step record (0 at shell 0), or None."""
    if "shell_resolution_angstrom" not in step.curves:
        return None
    res = np.array([_as_float(v) for v in step.curves["shell_resolution_angstrom"]])
    return np.where(np.isfinite(res) & (res > 0), 1.0 / np.where(res > 0, res, 1.0), 0.0)


def step_fsc_curves(step) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, spatial frequency 1/Å, FSC)`` for each FSC curve a step record holds.

    Reads ``curves["shell_resolution_angstrom"]`` and the curves named ``fsc_start``,
    ``fsc_iteration_<i>`` and ``fsc`` (the order they were recorded in), and for focused and
    patch refinement their ``fsc_focus_*`` counterparts (labelled "focus ..."). Empty when the
    step has no per-shell resolution (e.g. ``reconstruct``).
    """
    freq = _step_frequencies(step)
    if freq is None:
        return []
    out = []
    for name, values in step.curves.items():
        prefix = "focus " if name.startswith("fsc_focus") else ""
        base = "fsc" + name[len("fsc_focus"):] if prefix else name
        if base == "fsc_start":
            label = "start"
        elif base.startswith("fsc_iteration_"):
            label = "iteration " + base[len("fsc_iteration_"):]
        elif base == "fsc":
            label = "final"
        else:
            continue
        out.append((prefix + label, freq, np.array([_as_float(v) for v in values])))
    return out


def step_fsc_figure(step, threshold: float = 0.143) -> go.Figure:
    """Plotly figure of a step's FSC curves (start, every iteration, final)."""
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    fig = go.Figure()
    for i, (label, freq, fsc) in enumerate(step_fsc_curves(step)):
        dash = "dot" if label.split()[-1] in ("start", "final") else None
        fig.add_trace(go.Scatter(x=freq, y=fsc, mode="lines", name=label, line={"dash": dash, "color": _PALETTE[i % len(_PALETTE)]}))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "grey"})
    fig.update_layout(title=step.name, xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC", yaxis_range=[-0.1, 1.05],
                      template="plotly_white")
    return fig


def step_gmm_fit_curves(step) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, spatial frequency 1/Å, FSC)`` between each half's fitted GMM and its half map,
    per iteration (``gmm_fit_fsc_half<h>_iteration_<i>`` curves of a refinement step)."""
    freq = _step_frequencies(step)
    if freq is None:
        return []
    out = []
    for name, values in step.curves.items():
        if name.startswith("gmm_fit_fsc_half"):
            half, it = name[len("gmm_fit_fsc_half"):].split("_iteration_")
            fsc = np.array([_as_float(v) for v in values])[: freq.size]
            out.append((f"half {half}, it. {it}", freq[: fsc.size], fsc))
    return out


def crossing_resolution(freq: np.ndarray, fsc: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) of the last shell before the curve first drops below ``threshold``
    (None when it never does, or drops at once)."""
    below = np.flatnonzero((np.arange(fsc.size) >= 1) & np.isfinite(fsc) & (fsc < threshold))
    if below.size == 0 or below[0] < 2 or freq[below[0] - 1] <= 0:
        return None
    return float(1.0 / freq[below[0] - 1])


def fsc_svg(*curves: tuple[str, np.ndarray, np.ndarray], width: int = 360, height: int = 220, threshold: float = 0.143,
            resolution_labels: bool = True) -> str:
    """A small static SVG plot of ``(label, frequency, fsc)`` curves with a legend and the threshold
    line; with ``resolution_labels`` each legend entry also gives where its curve crosses the threshold."""
    if not curves:
        return ""
    if resolution_labels:
        curves = tuple((f"{label} {r:.2f} Å" if (r := crossing_resolution(f, c, threshold)) else label, f, c) for label, f, c in curves)
    left, right, top, bottom = 40, 120 if resolution_labels else 90, 10, 30
    fmax = max(float(np.max(f)) for _, f, _ in curves) or 1.0
    w, h = width - left - right, height - top - bottom

    def x(f: float) -> float:
        return left + w * f / fmax

    def y(v: float) -> float:
        return top + h * (1.05 - min(max(v, -0.1), 1.05)) / 1.15

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' style='font:10px sans-serif'>",
             f"<rect x='{left}' y='{top}' width='{w}' height='{h}' fill='none' stroke='#ccc'/>",
             f"<line x1='{left}' x2='{left + w}' y1='{y(threshold):.1f}' y2='{y(threshold):.1f}' stroke='#888' stroke-dasharray='4 3'/>",
             f"<line x1='{left}' x2='{left + w}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#ddd'/>"]
    for v in (0.0, 0.5, 1.0):
        parts.append(f"<text x='{left - 4}' y='{y(v) + 3:.1f}' text-anchor='end'>{v:g}</text>")
    for frac in (0.25, 0.5, 0.75, 1.0):
        f = frac * fmax
        parts.append(f"<text x='{x(f):.1f}' y='{top + h + 12}' text-anchor='middle'>{1 / f:.1f}</text>")
    parts.append(f"<text x='{left + w / 2}' y='{height - 4}' text-anchor='middle'>resolution (Å)</text>")
    for i, (label, freq, fsc) in enumerate(curves):
        color = _PALETTE[i % len(_PALETTE)]
        ok = np.isfinite(fsc)
        pts = " ".join(f"{x(float(a)):.1f},{y(float(b)):.1f}" for a, b in zip(freq[ok], fsc[ok]))
        dash = " stroke-dasharray='3 2'" if label.startswith(("start", "final", "focus start", "focus final")) else ""
        parts.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1.5'{dash}/>")
        ly = top + 12 * (i + 1)
        parts.append(f"<line x1='{left + w + 6}' x2='{left + w + 20}' y1='{ly - 3}' y2='{ly - 3}' stroke='{color}' stroke-width='2'{dash}/>")
        parts.append(f"<text x='{left + w + 23}' y='{ly}'>{html.escape(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def step_change_histograms(step, key: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, bin edges, counts)`` per iteration of a step record's per-particle pose-change
    histograms (``key``: ``"angle_change_deg"`` or ``"shift_change_angstrom"``; recorded by
    refine_global, focused and patch refinement). Empty when the step has none."""
    out = []
    prefix = f"{key}_hist_iteration_"
    for name, counts in step.curves.items():
        if name.startswith(prefix):
            it = name[len(prefix):]
            edges = step.curves.get(f"{key}_edges_iteration_{it}")
            if edges is not None:
                out.append((f"iteration {it}", np.asarray(edges, dtype=float), np.asarray(counts, dtype=float)))
    return out


def histogram_svg(title: str, histograms: list[tuple[str, np.ndarray, np.ndarray]], width: int = 300, height: int = 200) -> str:
    """A small static SVG of ``(label, edges, counts)`` histograms drawn as outlines on one axis."""
    if not histograms:
        return ""
    left, right, top, bottom = 36, 80, 16, 30
    w, h = width - left - right, height - top - bottom
    xmax = max(float(e[-1]) for _, e, _ in histograms) or 1.0
    cmax = max(float(c.max()) for _, _, c in histograms if c.size) or 1.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' style='font:10px sans-serif'>",
             f"<text x='{left}' y='11'>{html.escape(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{w}' height='{h}' fill='none' stroke='#ccc'/>",
             f"<text x='{left - 4}' y='{top + 8}' text-anchor='end'>{cmax:.0f}</text>",
             f"<text x='{left - 4}' y='{top + h}' text-anchor='end'>0</text>"]
    for frac in (0.0, 0.5, 1.0):
        parts.append(f"<text x='{left + w * frac:.1f}' y='{top + h + 12}' text-anchor='middle'>{frac * xmax:.3g}</text>")
    for i, (label, edges, counts) in enumerate(histograms):
        color = _PALETTE[(i + 1) % len(_PALETTE)]
        pts = []
        for a, b, c in zip(edges[:-1], edges[1:], counts):
            y = top + h * (1 - c / cmax)
            pts += [f"{left + w * a / xmax:.1f},{y:.1f}", f"{left + w * b / xmax:.1f},{y:.1f}"]
        parts.append(f"<polyline points='{' '.join(pts)}' fill='none' stroke='{color}' stroke-width='1.3'/>")
        ly = top + 12 * (i + 1)
        parts.append(f"<line x1='{left + w + 6}' x2='{left + w + 20}' y1='{ly - 3}' y2='{ly - 3}' stroke='{color}' stroke-width='2'/>")
        parts.append(f"<text x='{left + w + 23}' y='{ly}'>{html.escape(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


_GMM_HALF_SYMBOLS = ("circle", "diamond", "square", "cross")


def gmm_figure(gmm: xr.Dataset, half: int | None = None, color: str = "amplitude", *, max_marker_size: float = 20.0) -> go.Figure:
    """3D scatter of a GMM's Gaussian centres (plotly), one trace per half.

    Parameters
    ----------
    gmm : dataset of :attr:`Session.gmm` (dims ``half``, ``gaussian``, ``xyz``) or a single GMM
        (dims ``gaussian``, ``xyz``): ``position_angstrom`` (Å, from voxel ``box // 2``),
        ``amplitude``, ``width_angstrom`` (Å).
    half : 1 or 2 to show one half's GMM; None shows every half (one trace each).
    color : name of a per-Gaussian variable (dims ``[half,] gaussian``) that colours the markers,
        on one colour scale shared by the halves. Default ``"amplitude"``.
    max_marker_size : marker size (px) of the widest Gaussian shown; sizes are proportional to
        ``width_angstrom`` (at least 2 px).

    Returns
    -------
    plotly ``Figure`` with one ``Scatter3d`` trace per half shown, named ``"half <h>"``; axes
    titled in Å; hover text gives the half, the Gaussian index, its amplitude and width.
    Padding rows (NaN, where the halves have different numbers of Gaussians) are left out.

    Raises
    ------
    ValueError
        If ``gmm`` lacks a GMM variable, ``color`` names no per-Gaussian variable, or ``half``
        is not one of the dataset's halves.
    """
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    missing = [v for v in ("position_angstrom", "amplitude", "width_angstrom") if v not in gmm]
    if missing:
        raise ValueError(f"not a GMM dataset: missing variables {missing}")
    per_gaussian = [str(name) for name, v in gmm.data_vars.items() if "gaussian" in v.dims and set(v.dims) <= {"half", "gaussian"}]
    if color not in per_gaussian:
        raise ValueError(f"color must name a per-Gaussian variable of the GMM dataset, one of {per_gaussian}; got {color!r}")
    has_halves = "half" in gmm.dims
    available = [int(h) for h in gmm["half"].values] if has_halves else []
    if half is not None:
        if not has_halves:
            raise ValueError(f"the GMM dataset has no half dimension, got half={half}")
        if half not in available:
            raise ValueError(f"half must be one of {available} (or None for all), got {half}")
    shown = ([half] if half is not None else available) if has_halves else [None]

    parts = []
    for h in shown:
        g = gmm.sel(half=h) if h is not None else gmm
        pos = np.asarray(g["position_angstrom"].transpose("gaussian", "xyz").sel(xyz=["x", "y", "z"]).values, dtype=float)
        amp = np.asarray(g["amplitude"].values, dtype=float)
        wid = np.asarray(g["width_angstrom"].values, dtype=float)
        col = np.asarray(g[color].transpose("gaussian").values, dtype=float)
        keep = np.isfinite(pos).all(-1) & np.isfinite(amp) & np.isfinite(wid)
        parts.append((h, np.asarray(g["gaussian"].values)[keep], pos[keep], amp[keep], wid[keep], col[keep]))

    widths = np.concatenate([p[4] for p in parts])
    colors = np.concatenate([p[5] for p in parts])
    wmax = float(widths.max()) if widths.size and widths.max() > 0 else 1.0
    finite = colors[np.isfinite(colors)]
    cmin, cmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    color_label = f"{color} ({gmm[color].attrs['units']})" if "units" in gmm[color].attrs else color

    fig = go.Figure()
    for i, (h, index, pos, amp, wid, col) in enumerate(parts):
        label = f"half {h}" if h is not None else "GMM"
        extra = color not in ("amplitude", "width_angstrom")  # the colour variable's value joins the hover text
        text = [
            f"{label}, Gaussian {int(j)}<br>amplitude {a:.4g}<br>width {w:.2f} Å" + (f"<br>{color} {c:.4g}" if extra else "")
            for j, a, w, c in zip(index, amp, wid, col)
        ]
        fig.add_trace(go.Scatter3d(
            x=pos[:, 0], y=pos[:, 1], z=pos[:, 2], mode="markers", name=label, text=text,
            hovertemplate="%{text}<br>(%{x:.1f}, %{y:.1f}, %{z:.1f}) Å<extra></extra>",
            marker={"size": np.maximum(max_marker_size * wid / wmax, 2.0), "color": col, "colorscale": "Viridis",
                    "cmin": cmin, "cmax": cmax, "showscale": i == 0, "colorbar": {"title": {"text": color_label}},
                    "symbol": _GMM_HALF_SYMBOLS[i % len(_GMM_HALF_SYMBOLS)], "opacity": 0.8, "line": {"width": 0}},
        ))
    fig.update_layout(
        title="GMM: " + "; ".join(f"{t.name}: {len(t.x)} Gaussians" if h is not None else f"{len(t.x)} Gaussians"
                                  for t, (h, *_) in zip(fig.data, parts)),
        scene={"xaxis_title": "x (Å)", "yaxis_title": "y (Å)", "zaxis_title": "z (Å)", "aspectmode": "data"},
        legend={"x": 0.0, "y": 1.0}, template="plotly_white",
    )
    return fig


def patches_figure(patches) -> go.Figure:
    """3D scatter of the Gaussian centres coloured by patch (a ``Session.patches(k)`` object),
    with each patch's centre marked and its mask radius in the hover text."""
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    lay = patches.layout
    pts = np.asarray(patches.points_angstrom)
    fig = go.Figure()
    for i in range(lay.k):
        sel = pts[lay.labels == i]
        color = _PALETTE[(i + 1) % len(_PALETTE)]
        fig.add_trace(go.Scatter3d(x=sel[:, 0], y=sel[:, 1], z=sel[:, 2], mode="markers", name=f"patch {i}",
                                   marker={"size": 2, "color": color, "opacity": 0.6}))
        c, r = lay.centres_angstrom[i], float(lay.radii_angstrom[i])
        fig.add_trace(go.Scatter3d(x=[c[0]], y=[c[1]], z=[c[2]], mode="markers+text", text=[str(i)], showlegend=False,
                                   marker={"size": 8, "color": color, "symbol": "diamond"},
                                   hovertext=[f"patch {i}: centre ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) Å, radius {r:.1f} Å"],
                                   hoverinfo="text"))
    fig.update_layout(scene={"xaxis_title": "x (Å)", "yaxis_title": "y (Å)", "zaxis_title": "z (Å)", "aspectmode": "data"},
                      template="plotly_white", title=f"{lay.k} patches")
    return fig


def map_slices_figure(volume: np.ndarray | xr.DataArray, pixel_size_angstrom: float, title: str = "map") -> go.Figure:
    """The three central orthogonal slices of a map as heatmaps, side by side.

    Parameters
    ----------
    volume : (z, y, x) map (array or DataArray), e.g. ``s.half_maps.mean("half")``.
    pixel_size_angstrom : voxel size (Å); the axes are in Å from voxel 0.
    title : figure title.

    Returns
    -------
    plotly ``Figure`` with three ``Heatmap`` traces named ``"z = <c>"`` (the y-x plane),
    ``"y = <c>"`` (z-x) and ``"x = <c>"`` (z-y), ``c = n // 2`` the central voxel of that axis,
    on one grey scale (the map's minimum to maximum).

    Raises
    ------
    ValueError
        If ``volume`` is not 3-D or ``pixel_size_angstrom`` is not positive.
    """
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    from plotly.subplots import make_subplots

    vol = np.asarray(volume, dtype=float)
    if vol.ndim != 3:
        raise ValueError(f"volume must be a (z, y, x) map, got shape {vol.shape}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    nz, ny, nx = vol.shape
    cz, cy, cx = nz // 2, ny // 2, nx // 2
    ax = [np.arange(n) * pixel_size_angstrom for n in vol.shape]  # z, y, x in Å
    slices = [  # (name, image rows x cols, row axis, column axis, row label, column label)
        (f"z = {cz}", vol[cz], ax[1], ax[2], "y (Å)", "x (Å)"),
        (f"y = {cy}", vol[:, cy], ax[0], ax[2], "z (Å)", "x (Å)"),
        (f"x = {cx}", vol[:, :, cx], ax[0], ax[1], "z (Å)", "y (Å)"),
    ]
    finite = vol[np.isfinite(vol)]
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[f"central slice {name}" for name, *_ in slices], horizontal_spacing=0.06)
    for i, (name, image, rows, cols, row_label, col_label) in enumerate(slices, start=1):
        fig.add_trace(go.Heatmap(z=image, x=cols, y=rows, name=name, colorscale="Greys", reversescale=True, zmin=zmin, zmax=zmax,
                                 showscale=i == 3, hovertemplate=f"{col_label[0]} %{{x:.1f}} Å, {row_label[0]} %{{y:.1f}} Å<br>"
                                 "density %{z:.3g}<extra>" + name + "</extra>"), row=1, col=i)
        fig.update_xaxes(title_text=col_label, row=1, col=i)
        fig.update_yaxes(title_text=row_label, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def latent_figure(
    latent: np.ndarray | xr.DataArray, halves: np.ndarray, color: np.ndarray | None = None, color_label: str = "",
) -> go.Figure:
    """Each half's latent points on its own first two principal components (PC1 vs PC2).

    The halves' networks are trained separately, so their latent spaces are not comparable:
    each half gets its own panel and its own PCA
    (:func:`~gmmsession.algorithms.heterogeneity.latent_pca`).

    Parameters
    ----------
    latent : (n, latent_dim) latent vectors (e.g. ``s.latent``).
    halves : (n,) half set of each particle (1 or 2).
    color : optional (n,) value per particle that colours the points (e.g. the simulator's true
        hinge angle), on one colour scale shared by the halves.
    color_label : the colour bar's title (with units).

    Returns
    -------
    plotly ``Figure`` with one ``Scatter`` trace (SVG: no WebGL needed) per half present, named ``"half <h>"``, x = PC1
    and y = PC2 (zeros when ``latent_dim`` is 1); the axis titles give each PC's share of the
    variance.

    Raises
    ------
    ValueError
        If the shapes disagree.
    """
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    from plotly.subplots import make_subplots

    from gmmsession.algorithms.heterogeneity import latent_pca

    z = np.asarray(latent, dtype=float)
    halves = np.asarray(halves)
    if z.ndim != 2 or halves.shape != (z.shape[0],):
        raise ValueError(f"need latent (n, d) and halves (n,), got {z.shape} and {halves.shape}")
    col = None if color is None else np.asarray(color, dtype=float)
    if col is not None and col.shape != (z.shape[0],):
        raise ValueError(f"color must have one value per particle ({z.shape[0]},), got {col.shape}")
    shown = [int(h) for h in np.unique(halves)]
    fig = make_subplots(rows=1, cols=max(len(shown), 1), subplot_titles=[f"half {h}" for h in shown])
    cmin, cmax = (float(np.nanmin(col)), float(np.nanmax(col))) if col is not None and np.isfinite(col).any() else (0.0, 1.0)
    for i, h in enumerate(shown, start=1):
        sel = halves == h
        mean, comps, var = latent_pca(z[sel])
        pcs = (z[sel] - mean) @ comps.T
        pc2 = pcs[:, 1] if pcs.shape[1] > 1 else np.zeros(len(pcs))
        share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
        marker: dict = {"size": 4, "opacity": 0.7}
        if col is not None:
            marker.update(color=col[sel], colorscale="RdBu", cmin=cmin, cmax=cmax, showscale=i == 1,
                          colorbar={"title": {"text": color_label}})
        fig.add_trace(go.Scatter(x=pcs[:, 0], y=pc2, mode="markers", name=f"half {h}", marker=marker,
                                   text=None if col is None else [f"{color_label} {v:.3g}" for v in col[sel]]), row=1, col=i)
        fig.update_xaxes(title_text=f"PC1 ({100 * share[0]:.0f} % of the variance)", row=1, col=i)
        fig.update_yaxes(title_text=f"PC2 ({100 * share[1]:.0f} %)" if len(share) > 1 else "PC2 (none: latent_dim 1)", row=1, col=i)
    fig.update_layout(title="latent space", template="plotly_white", showlegend=False)  # the panel titles name the halves
    return fig


def pose_change_figure(changes: dict[str, tuple[np.ndarray, np.ndarray]], *, n_bins: int = 40) -> go.Figure:
    """Histograms of the per-particle pose changes of each stage (the paper's Fig. S6).

    Parameters
    ----------
    changes : ``{stage name: (angle change (n,) in degrees, shift change (n,) in Å)}``, e.g.
        from :func:`gmmsession.viz.report.pose_changes` of the poses before and after a stage.
    n_bins : histogram bins per panel.

    Returns
    -------
    plotly ``Figure``: two panels (rotation change in degrees, shift change in Å), one
    ``Histogram`` trace per stage in each (named by the stage, overlaid; the shift traces share
    the legend entry of their stage). Stages with no particles are left out.
    """
    import plotly.graph_objects as go  # imported here: plotly takes ~1 s to import
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["rotation change", "shift change"])
    for i, (name, (angle, shift)) in enumerate(changes.items()):
        angle, shift = np.asarray(angle, dtype=float), np.asarray(shift, dtype=float)
        if angle.shape != shift.shape or angle.ndim != 1:
            raise ValueError(f"stage {name!r}: need angle and shift changes of the same shape (n,), got {angle.shape} and {shift.shape}")
        if not angle.size:
            continue
        color = _PALETTE[(i + 1) % len(_PALETTE)]
        for col, values, unit in ((1, angle, "deg"), (2, shift, "Å")):
            fig.add_trace(go.Histogram(x=values, name=name, legendgroup=name, showlegend=col == 1, nbinsx=n_bins, opacity=0.6,
                                       marker={"color": color}, hovertemplate=f"{name}: %{{x}} {unit}, %{{y}} particles<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="angle between the poses before and after (deg)", row=1, col=1)
    fig.update_xaxes(title_text="in-plane shift change (Å)", row=1, col=2)
    fig.update_yaxes(title_text="particles", row=1, col=1)
    fig.update_layout(barmode="overlay", title="pose changes per particle", template="plotly_white")
    return fig
