"""Notebook views: HTML summaries, plotly figures, widgets (the only layer importing them).

* :mod:`~gmmsession.viz.html`: HTML of sessions, steps, history and patches, and the notebook
  progress line of long steps (registered with the session layer on import);
* :mod:`~gmmsession.viz.viewmodels`: what the views show, as numpy and dicts (slices,
  isosurface levels, GMM scatter, latent coordinates, progress text);
* :mod:`~gmmsession.viz.widgets`: ipywidgets + plotly ``FigureWidget`` views behind
  ``s.show_map()``, ``s.show_gmm()``, ``p.show()`` and ``h.show()`` (imported only when built:
  ``import gmmsession`` stays light).
"""

from gmmsession.viz.figures import fsc_figure, gmm_figure, patches_figure, step_fsc_figure
from gmmsession.viz.html import history_html, register, session_html, step_html

register()

__all__ = ["fsc_figure", "gmm_figure", "patches_figure", "step_fsc_figure", "session_html", "history_html", "step_html", "register"]
