"""Plotly figures: FSC curves."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["fsc_figure"]


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
