"""HTML views of sessions, steps and history (registered with the session layer on import)."""

from __future__ import annotations

import html
from typing import Any

from gmmsession.session.display import register_html_renderer
from gmmsession.session.history import History, StepRecord
from gmmsession.session.patches import Patches
from gmmsession.session.session import Session
from gmmsession.viz.figures import fsc_svg, step_fsc_curves

__all__ = ["session_html", "history_html", "step_html", "register"]

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"


def _table(rows: list[tuple[str, Any]], title: str) -> str:
    body = "".join(
        f"<tr><th style='text-align:left;padding:2px 8px'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left;padding:2px 8px'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table style='{_STYLE}'>{body}</table></div>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def session_html(session: Session) -> str:
    """Summary table of a session: particles, optics groups, half sets, box, pixel size, last steps."""
    out = _table(list(session.summary().items()), "gmmsession.Session")
    if len(session.history):
        out += history_html(session.history)
    return out


def step_html(step: StepRecord) -> str:
    """A step's metrics and parameters; with FSC curves (e.g. ``refine_global``) also an FSC plot
    per iteration (inline SVG: no JavaScript, so it survives saving and offline workshops) and
    a per-iteration table."""
    rows = [("duration (s)", step.duration_s), *step.metrics.items(), *(("param " + k, v) for k, v in step.params.items())]
    out = _table(rows, f"Step: {step.name}")
    curves = step_fsc_curves(step)
    if curves:
        out = f"<div style='display:flex;gap:16px;align-items:flex-start'>{fsc_svg(*curves)}{out}</div>"
    iterations = _iteration_table(step)
    return out + iterations


def _iteration_table(step: StepRecord) -> str:
    keys = [k for k in step.curves if k.startswith("iteration_")]
    if not keys:
        return ""
    n = len(step.curves[keys[0]])
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(h)}</th>" for h in ["iteration", *(k[len("iteration_"):] for k in keys)])
    rows = "".join(
        "<tr>" + f"<td style='padding:2px 8px'>{i + 1}</td>"
        + "".join(f"<td style='padding:2px 8px'>{html.escape(_fmt(_iteration_value(k, step.curves[k][i])))}</td>" for k in keys)
        + "</tr>"
        for i in range(n)
    )
    return f"<div><b>Iterations</b><table style='{_STYLE}'><tr>{head}</tr>{rows}</table></div>"


def _iteration_value(key: str, value: Any) -> Any:
    return bool(value) if key == "iteration_improved" else value


def history_html(history: History) -> str:
    head = "".join(f"<th style='padding:2px 8px'>{h}</th>" for h in ("#", "step", "started (UTC)", "s", "metrics"))
    rows = "".join(
        f"<tr><td style='padding:2px 8px'>{i}</td><td style='padding:2px 8px'>{html.escape(r.name)}</td>"
        f"<td style='padding:2px 8px'>{html.escape(r.started_utc)}</td><td style='padding:2px 8px'>{r.duration_s:.1f}</td>"
        f"<td style='padding:2px 8px'>{html.escape(', '.join(f'{k}={_fmt(v)}' for k, v in r.metrics.items()))}</td></tr>"
        for i, r in enumerate(history)
    )
    return f"<div><b>History</b><table style='{_STYLE}'><tr>{head}</tr>{rows}</table></div>"


def patches_html(patches: Patches) -> str:
    """The patch table (centre, radius, Gaussians, resolution before/after); ``patches_figure(p)`` shows them in 3D."""
    table = patches.summary()
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(str(h))}</th>" for h in ["patch", *table.columns])
    rows = "".join(
        "<tr>" + f"<td style='padding:2px 8px'>{i}</td>"
        + "".join(f"<td style='padding:2px 8px'>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for i, row in zip(table.index, table.itertuples(index=False))
    )
    note = "<div style='font-size:11px'>3D view: <code>gmmsession.viz.patches_figure(p)</code></div>"
    return f"<div><b>Patches (k={patches.k})</b><table style='{_STYLE}'><tr>{head}</tr>{rows}</table>{note}</div>"


def register() -> None:
    """Register the HTML renderers with the session layer (idempotent)."""
    register_html_renderer(Patches, patches_html)
    register_html_renderer(Session, session_html)
    register_html_renderer(History, history_html)
    register_html_renderer(StepRecord, step_html)
