"""Figures: FSC curves as plotly figures (interactive) and as inline SVG (static HTML)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["fsc_figure", "step_fsc_curves", "step_fsc_figure", "fsc_svg"]

_PALETTE = ("#999999", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def fsc_figure(*curves: xr.DataArray, names: list[str] | None = None, threshold: float = 0.143) -> go.Figure:
    """FSC curves (from :meth:`Session.fsc`) against spatial frequency, labelled in Å.

    Masked results also show their unmasked and phase-randomised curves.
    """
    fig = go.Figure()
    names = names or [f"FSC {i + 1}" for i in range(len(curves))]
    for curve, name in zip(curves, names):
        res = curve["resolution_angstrom"].values
        freq = np.where(np.isfinite(res) & (res > 0), 1.0 / np.where(res > 0, res, 1), 0.0)
        label = f"{name} ({curve.attrs.get('resolution_angstrom', float('nan')):.2f} Å)"
        fig.add_trace(go.Scatter(x=freq, y=curve.values, mode="lines", name=label))
        for extra in ("fsc_unmasked", "fsc_masked", "fsc_randomized"):
            if extra in curve.coords:
                fig.add_trace(go.Scatter(x=freq, y=curve[extra].values, mode="lines", name=f"{name}: {extra[4:]}", line={"dash": "dot"}))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "grey"})
    fig.update_layout(xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC", yaxis_range=[-0.1, 1.05], template="plotly_white")
    return fig


def _as_float(v: object) -> float:
    return float(v)  # history stores inf as the string "inf", which float() reads


def step_fsc_curves(step) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, spatial frequency 1/Å, FSC)`` for each FSC curve a step record holds.

    Reads ``curves["shell_resolution_angstrom"]`` and the curves named ``fsc_start``,
    ``fsc_iteration_<i>`` and ``fsc`` (the order they were recorded in). Empty when the step has
    no per-shell resolution (e.g. ``reconstruct``).
    """
    if "shell_resolution_angstrom" not in step.curves:
        return []
    res = np.array([_as_float(v) for v in step.curves["shell_resolution_angstrom"]])
    freq = np.where(np.isfinite(res) & (res > 0), 1.0 / np.where(res > 0, res, 1.0), 0.0)
    out = []
    for name, values in step.curves.items():
        if name == "fsc_start":
            label = "start"
        elif name.startswith("fsc_iteration_"):
            label = "iteration " + name[len("fsc_iteration_"):]
        elif name == "fsc":
            label = "final"
        else:
            continue
        out.append((label, freq, np.array([_as_float(v) for v in values])))
    return out


def step_fsc_figure(step, threshold: float = 0.143) -> go.Figure:
    """Plotly figure of a step's FSC curves (start, every iteration, final)."""
    fig = go.Figure()
    for i, (label, freq, fsc) in enumerate(step_fsc_curves(step)):
        dash = "dot" if label in ("start", "final") else None
        fig.add_trace(go.Scatter(x=freq, y=fsc, mode="lines", name=label, line={"dash": dash, "color": _PALETTE[i % len(_PALETTE)]}))
    fig.add_hline(y=threshold, line={"dash": "dash", "color": "grey"})
    fig.update_layout(title=step.name, xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC", yaxis_range=[-0.1, 1.05],
                      template="plotly_white")
    return fig


def fsc_svg(*curves: tuple[str, np.ndarray, np.ndarray], width: int = 360, height: int = 220, threshold: float = 0.143) -> str:
    """A small static SVG plot of ``(label, frequency, fsc)`` curves with a legend and the threshold line."""
    if not curves:
        return ""
    left, right, top, bottom = 40, 90, 10, 30
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
        dash = " stroke-dasharray='3 2'" if label in ("start", "final") else ""
        parts.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1.5'{dash}/>")
        ly = top + 12 * (i + 1)
        parts.append(f"<line x1='{left + w + 6}' x2='{left + w + 20}' y1='{ly - 3}' y2='{ly - 3}' stroke='{color}' stroke-width='2'{dash}/>")
        parts.append(f"<text x='{left + w + 23}' y='{ly}'>{html.escape(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)
