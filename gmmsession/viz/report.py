"""A self-contained HTML report of a session's processing (what ``gmmsession demo`` writes).

:func:`session_report_html` is pure: it takes the session, the stages that were run (each with
its timing, its FSC and the particles' pose changes) and a few facts, and returns one HTML
string with plotly.js embedded once, so the file opens offline (no CDN, no network). The caller
writes it (the CLI does so atomically).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from gmmsession.viz.figures import (
    fsc_figure,
    gmm_figure,
    latent_figure,
    map_slices_figure,
    patches_figure,
    pose_change_figure,
    step_fsc_figure,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["ReportStage", "pose_changes", "session_report_html", "REPORT_SECTIONS"]

#: The report's sections (HTML ids, in order); every one but ``summary`` holds one figure when its data exist.
REPORT_SECTIONS = ("summary", "fsc", "iterations", "map", "gmm", "patches", "latent", "poses")


@dataclass(frozen=True)
class ReportStage:
    """One processing stage as the report shows it.

    Attributes
    ----------
    name : short label ("global refinement", ...).
    seconds : wall time of the stage (s).
    fsc : the session's gold-standard FSC after the stage (:meth:`Session.fsc`, usually masked),
        or None where the stage changed no map.
    pose_change : ``(angle (n,) in degrees, shift (n,) in Å)`` per particle, between the poses
        before and after the stage (:func:`pose_changes`), or None where no pose changed.
    note : one line on what the stage did (shown in the summary table).
    """

    name: str
    seconds: float
    fsc: xr.DataArray | None = None
    pose_change: tuple[np.ndarray, np.ndarray] | None = None
    note: str = ""


def pose_changes(before: xr.Dataset, after: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle pose change between two particle tables of the same particles.

    Parameters
    ----------
    before, after : ``Session.particles`` datasets (``rot_deg``, ``tilt_deg``, ``psi_deg``,
        ``origin_x_angstrom``, ``origin_y_angstrom`` over ``particle``), same length and order.

    Returns
    -------
    angle_deg : (n,) geodesic angle between the two rotations (degrees).
    shift_angstrom : (n,) length of the in-plane origin change (Å).
    """
    import torch

    from gmmsession.kernels.conventions import euler_relion_to_matrix
    from gmmsession.kernels.rotations import geodesic_angle_deg

    if before.sizes["particle"] != after.sizes["particle"]:
        raise ValueError(f"not the same particles: {before.sizes['particle']} before, {after.sizes['particle']} after")

    def rotations(p: xr.Dataset) -> torch.Tensor:
        euler = np.stack([p[c].values for c in ("rot_deg", "tilt_deg", "psi_deg")], axis=1).astype(np.float64)
        return euler_relion_to_matrix(torch.as_tensor(euler))

    angle = geodesic_angle_deg(rotations(before), rotations(after)).numpy()
    dx = after["origin_x_angstrom"].values - before["origin_x_angstrom"].values
    dy = after["origin_y_angstrom"].values - before["origin_y_angstrom"].values
    return np.asarray(angle, dtype=float), np.hypot(dx, dy).astype(float)


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.note { color: #555; } nav a { margin-right: 12px; }
"""

_TITLES = {
    "summary": "Summary", "fsc": "FSC per stage", "iterations": "Global refinement, per iteration", "map": "Map",
    "gmm": "GMM", "patches": "Patches", "latent": "Latent space", "poses": "Pose changes",
}


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{_fmt(v)}</td>" if isinstance(v, (int, float, np.number)) else f"<td>{_fmt(v)}</td>"
                         for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(fig: go.Figure, div_id: str, height: int = 480) -> str:
    import plotly.io as pio

    fig.update_layout(height=height, margin={"t": 60, "b": 50, "l": 60, "r": 20})
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, default_height=f"{height}px",
                       config={"displaylogo": False, "responsive": True})


def _resolution(curve: xr.DataArray | None) -> float:
    return float(curve.attrs.get("resolution_angstrom", float("nan"))) if curve is not None else float("nan")


def session_report_html(
    session: Any,
    stages: list[ReportStage],
    *,
    facts: dict[str, Any] | None = None,
    latent_color: np.ndarray | None = None,
    latent_color_label: str = "",
    title: str = "gmmsession report",
    intro: str = "",
    map_volume: xr.DataArray | np.ndarray | None = None,
    map_label: str = "half-map average (unfiltered)",
) -> str:
    """One self-contained HTML page (plotly.js embedded once) describing a session's processing.

    Parameters
    ----------
    session : the :class:`~gmmsession.Session` at the end of the processing: its half maps,
        GMM, ``last_patches``, ``latent`` and ``history`` are shown where present.
    stages : the stages in the order run (timings, FSC after each, per-particle pose changes).
    facts : extra rows of the summary table (label -> value), e.g. the simulation's parameters.
    latent_color, latent_color_label : optional per-particle values (e.g. the true hinge angle,
        in the session's particle order) colouring the latent-space scatter.
    title, intro : page heading and an introductory paragraph (plain text).
    map_volume, map_label : the (z, y, x) map the map section shows and what it is; default the
        average of the session's half maps.

    Returns
    -------
    str : the HTML document. Sections (ids :data:`REPORT_SECTIONS`): summary table; FSC curves
    of every stage that has one; the per-iteration FSC and medians of the last global
    refinement; central orthogonal slices of the half-map average; the GMM; the patches; the
    latent space; histograms of the per-particle pose changes. A section whose data are absent
    says so instead of holding a figure.
    """
    from plotly.offline import get_plotlyjs

    px = session.pixel_size_angstrom
    sections: dict[str, tuple[str, str]] = {}  # id -> (description html, figure html)

    rows = [["particles", int(session.particles.sizes["particle"])], ["box (px)", session.box_size], ["pixel size (Å)", px]]
    rows += [[k, v] for k, v in (facts or {}).items()]
    stage_rows = [[st.name, st.seconds, _resolution(st.fsc), st.note] for st in stages]
    total = sum(st.seconds for st in stages)
    stage_rows.append(["total of the stages above", total, _resolution(next((st.fsc for st in reversed(stages) if st.fsc is not None), None)), ""])
    sections["summary"] = (_table(["", "value"], rows) + _table(["stage", "time (s)", "resolution, FSC 0.143 (Å)", "what it did"],
                                                                   stage_rows), "")

    with_fsc = [st for st in stages if st.fsc is not None]
    if with_fsc:
        fig = fsc_figure(*[st.fsc for st in with_fsc], names=[st.name for st in with_fsc], components=False)
        fig.update_layout(title="gold-standard FSC after each stage")
        sections["fsc"] = ("<p class='note'>The half maps' gold-standard FSC after each stage (resolution at FSC 0.143 in the "
                           "legend); the dashed line is 0.143.</p>", _figure_html(fig, "fig-fsc"))

    step = session.history.last("refine_global")
    if step is not None:
        fig = step_fsc_figure(step)
        n_iter = sum(name.startswith("fsc_iteration_") for name in step.curves)  # this step's iterations: the last records
        its = [r for r in session.history if r.name == "refine_global_iteration"][-n_iter:] if n_iter else []
        table = _table(["iteration", "resolution (Å)", "improved", "median angle change (deg)", "median shift change (Å)", "time (s)"],
                       [[r.params.get("iteration"), r.metrics.get("resolution_angstrom"), str(r.metrics.get("improved")),
                         r.metrics.get("median_angle_change_deg"), r.metrics.get("median_shift_change_angstrom"), r.duration_s]
                        for r in its])
        sections["iterations"] = ("<p class='note'>FSC at the start, after every iteration and at the end (the session keeps the "
                                  "best iteration); the per-iteration medians come from the session's history.</p>" + table,
                                  _figure_html(fig, "fig-iterations"))

    if map_volume is None and session.half_maps is not None:
        map_volume = session.half_maps.mean("half")
    if map_volume is not None:
        fig = map_slices_figure(np.asarray(map_volume), px, title=f"{map_label}, central slices")
        sections["map"] = (f"<p class='note'>The {html.escape(map_label)}: central orthogonal slices.</p>",
                           _figure_html(fig, "fig-map", height=420))

    if session.gmm is not None:
        sections["gmm"] = ("<p class='note'>Gaussian centres of both halves' GMMs: colour = amplitude, size = width.</p>",
                           _figure_html(gmm_figure(session.gmm), "fig-gmm", height=600))

    patches = getattr(session, "last_patches", None)
    if patches is not None:
        summary = patches.summary()
        cols = [c for c in ("radius_angstrom", "n_gaussians", "origin", "start_resolution_angstrom", "resolution_angstrom") if c in summary]
        table = _table(["patch", *cols], [[i, *(summary.loc[i, c] for c in cols)] for i in summary.index])
        sections["patches"] = ("<p class='note'>The GMM's Gaussians clustered into patches, each refined with its soft spherical "
                               "mask; added patches (e.g. a focused refinement) have no clustered Gaussians.</p>" + table,
                               _figure_html(patches_figure(patches), "fig-patches", height=600))

    latent = session.latent
    if latent is not None:
        fig = latent_figure(latent.values, session.particles["half"].values, latent_color, latent_color_label)
        sections["latent"] = ("<p class='note'>Each half's latent points on its own first two principal components"
                              + (f", coloured by {html.escape(latent_color_label)}" if latent_color is not None else "") + ".</p>",
                              _figure_html(fig, "fig-latent", height=450))

    moved = {st.name: st.pose_change for st in stages if st.pose_change is not None and np.any(np.asarray(st.pose_change) > 0)}
    unchanged = [st.name for st in stages if st.pose_change is not None and st.name not in moved]
    if moved or unchanged:
        note = (f" Poses unchanged: {html.escape(', '.join(unchanged))} (a refinement keeps its starting poses when no "
                "iteration improves the FSC)." if unchanged else "")
        sections["poses"] = ("<p class='note'>Per particle: the angle between its rotation before and after each stage, and the "
                             "length of its origin change (the paper's Fig. S6). Computed from the particle tables before and "
                             "after the stage; for the patches, each patch's refined poses against the starting poses "
                             f"(one entry per particle and patch).{note}</p>",
                             _figure_html(pose_change_figure(moved), "fig-poses", height=420) if moved else "")

    body = []
    for sid in REPORT_SECTIONS:
        text, fig_html = sections.get(sid, ("<p class='note'>Not run in this session.</p>", ""))
        body.append(f"<section id='{sid}'><h2>{_TITLES[sid]}</h2>{text}{fig_html}</section>")
    nav = "".join(f"<a href='#{sid}'>{_TITLES[sid]}</a>" for sid in REPORT_SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>" + (f"<p>{html.escape(intro)}</p>" if intro else "") + f"<nav>{nav}</nav>"
        + "".join(body) + "</body></html>\n"
    )
