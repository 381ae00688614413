"""HTML views of sessions, steps and history (registered with the session layer on import)."""

from __future__ import annotations

import html
import sys
import time
from typing import Any

from gmmsession.session.display import register_html_renderer, register_progress, register_view
from gmmsession.session.history import History, StepRecord
from gmmsession.session.patches import Patches
from gmmsession.session.session import Session
from gmmsession.viz.figures import fsc_svg, histogram_svg, step_change_histograms, step_fsc_curves, step_gmm_fit_curves
from gmmsession.viz.viewmodels import progress_view

__all__ = ["session_html", "history_html", "step_html", "NotebookProgress", "register"]

_LAST_STEPS = 5  # steps listed in the session summary (the whole history: ``s.history``)

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
    """Compact summary of a session: particles, half sets, optics groups, box, pixel size, GMM
    size, current resolution (from the history: no FSC is computed to display) and the last
    steps. Plain HTML without scripts, so it stays in a saved notebook."""
    out = _table([(k, v) for k, v in session.summary().items() if k != "last steps"], "gmmsession.Session")
    if len(session.history):
        out += history_html(session.history, last=_LAST_STEPS)
    return out


def step_html(step: StepRecord) -> str:
    """A step's metrics and parameters; with FSC curves (e.g. ``refine_global``) also an FSC plot
    per iteration (inline SVG: no JavaScript, so it survives saving and offline workshops) and
    a per-iteration table."""
    rows = [("duration (s)", step.duration_s), *step.metrics.items(), *(("param " + k, v) for k, v in step.params.items())]
    out = _table(rows, f"Step: {step.name}")
    curves = step_fsc_curves(step)
    if curves:
        out = f"<div style='display:flex;gap:16px;align-items:flex-start'><div style='flex:none'>{fsc_svg(*curves)}</div>{out}</div>"
    fits = step_gmm_fit_curves(step)
    if fits:
        out += ("<div><b>Each half's GMM against its half map</b> (FSC per iteration; 0.5 line)"
                f"<br>{fsc_svg(*fits, threshold=0.5, width=420)}</div>")
    hists = "".join(histogram_svg(title, step_change_histograms(step, key)) for key, title in
                    (("angle_change_deg", "angle change per particle (°)"), ("shift_change_angstrom", "shift change per particle (Å)")))
    if hists:
        out += f"<div style='display:flex;gap:16px'>{hists}</div>"
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


def history_html(history: History, last: int | None = None) -> str:
    """The steps of a history (the ``last`` ones only when given) with their metrics."""
    records = list(history)
    start = 0 if last is None else max(len(records) - last, 0)
    head = "".join(f"<th style='padding:2px 8px'>{h}</th>" for h in ("#", "step", "started (UTC)", "s", "metrics"))
    rows = "".join(
        f"<tr><td style='padding:2px 8px'>{i}</td><td style='padding:2px 8px'>{html.escape(r.name)}</td>"
        f"<td style='padding:2px 8px'>{html.escape(r.started_utc)}</td><td style='padding:2px 8px'>{r.duration_s:.1f}</td>"
        f"<td style='padding:2px 8px'>{html.escape(', '.join(f'{k}={_fmt(v)}' for k, v in r.metrics.items()))}</td></tr>"
        for i, r in enumerate(records) if i >= start
    )
    title = "History" if start == 0 else f"Last {len(records) - start} of {len(records)} steps (all: <code>s.history</code>)"
    return f"<div><b>{title}</b><table style='{_STYLE}'><tr>{head}</tr>{rows}</table></div>"


def patches_html(patches: Patches) -> str:
    """The patch table (centre, radius, Gaussians, resolution before/after); ``patches_figure(p)`` shows them in 3D."""
    table = patches.summary()
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(str(h))}</th>" for h in ["patch", *table.columns])
    rows = "".join(
        "<tr>" + f"<td style='padding:2px 8px'>{i}</td>"
        + "".join(f"<td style='padding:2px 8px'>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for i, row in zip(table.index, table.itertuples(index=False))
    )
    note = "<div style='font-size:11px'>3D view: <code>p.show()</code> (or <code>gmmsession.viz.patches_figure(p)</code>)</div>"
    return f"<div><b>Patches (k={patches.k})</b><table style='{_STYLE}'><tr>{head}</tr>{rows}</table>{note}</div>"


class NotebookProgress:
    """Progress of a session step in a notebook: one HTML line updated in place (iteration,
    count, rate, time left, resolution), at most every ``min_interval_s``.

    Plain HTML (no widget), so a notebook saved afterwards shows the final line and it works
    in JupyterLab, Notebook 7 and VS Code alike. ``update(n_done, **info)`` and ``close()``
    are the ``(set_done, close)`` pair that :func:`gmmsession.session.session._progress_bar` hands out.
    """

    def __init__(self, total: int, desc: str, unit: str = "particle", *, min_interval_s: float = 0.25, display: Any = None) -> None:
        if display is None:
            from IPython.display import display
        self.total, self.desc, self.unit, self.min_interval_s = int(total), desc, unit, float(min_interval_s)
        self.done = 0
        self.info: dict[str, Any] = {}
        self._start = self._shown = time.perf_counter()
        self._handle = display({"text/html": self.html(), "text/plain": self.text()}, raw=True, display_id=True)

    def view(self) -> dict[str, Any]:
        return progress_view(self.done, self.total, time.perf_counter() - self._start, self.desc, self.unit, self.info)

    def text(self) -> str:
        return self.view()["text"]

    def html(self, finished: bool = False) -> str:
        v = self.view()
        colour = "#2ca02c" if finished else "#1f77b4"
        return (f"<div style='font:12px monospace;display:flex;align-items:center;gap:8px'>"
                f"<div style='width:160px;height:10px;border:1px solid #bbb'><div style='width:{100 * v['fraction']:.1f}%;"
                f"height:100%;background:{colour}'></div></div><span>{html.escape(v['text'])}"
                f"{' · done in %.1f s' % (time.perf_counter() - self._start) if finished else ''}</span></div>")

    def update(self, n_done: int, **info: Any) -> None:
        self.done = int(n_done)
        self.info.update(info)
        now = time.perf_counter()
        if now - self._shown >= self.min_interval_s or self.done >= self.total:
            self._shown = now
            self._refresh(False)

    def close(self) -> None:
        self._refresh(True)

    def _refresh(self, finished: bool) -> None:
        if self._handle is not None:
            self._handle.update({"text/html": self.html(finished), "text/plain": self.text()}, raw=True)


def _in_notebook_kernel() -> bool:
    """Running in a Jupyter kernel (JupyterLab, Notebook, VS Code), judged without importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def notebook_progress(total: int, desc: str, unit: str) -> tuple[Any, Any] | None:
    """The progress display the session uses in a notebook kernel (None elsewhere: tqdm.auto)."""
    if not _in_notebook_kernel():
        return None
    bar = NotebookProgress(total, desc, unit)
    return bar.update, bar.close


def _map_view(*args: Any, **kwargs: Any) -> Any:
    from gmmsession.viz.widgets import map_view  # ipywidgets and plotly load here, not with gmmsession

    return map_view(*args, **kwargs)


def _gmm_view(*args: Any, **kwargs: Any) -> Any:
    from gmmsession.viz.widgets import gmm_view

    return gmm_view(*args, **kwargs)


def _latent_view(*args: Any, **kwargs: Any) -> Any:
    from gmmsession.viz.widgets import latent_view

    return latent_view(*args, **kwargs)


def register() -> None:
    """Register the HTML renderers, interactive views and notebook progress with the session layer (idempotent)."""
    register_html_renderer(Patches, patches_html)
    register_html_renderer(Session, session_html)
    register_html_renderer(History, history_html)
    register_html_renderer(StepRecord, step_html)
    register_view("map", _map_view)
    register_view("gmm", _gmm_view)
    register_view("latent", _latent_view)
    register_progress(notebook_progress)
