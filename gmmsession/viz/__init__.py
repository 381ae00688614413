"""Notebook views: HTML summaries, plotly figures, widgets (the only layer importing them)."""

from gmmsession.viz.figures import fsc_figure, gmm_figure, patches_figure, step_fsc_figure
from gmmsession.viz.html import history_html, register, session_html, step_html

register()

__all__ = ["fsc_figure", "gmm_figure", "patches_figure", "step_fsc_figure", "session_html", "history_html", "step_html", "register"]
