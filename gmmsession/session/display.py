"""How session objects display in a notebook, without importing any widget library here.

The viz layer registers renderers for session types (dependency inversion keeps the layers
one-way: session never imports viz):

* HTML renderers (``_repr_html_``); without one, objects show as preformatted plain text;
* interactive views by name (``"map"``, ``"gmm"``, ``"latent"``), built by
  :meth:`Session.show_map`, :meth:`Session.show_gmm` and :meth:`Heterogeneity.show`;
* a progress display for notebooks; outside notebooks (or without one) the session's steps
  use a ``tqdm.auto`` bar.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

__all__ = ["register_html_renderer", "html_for", "register_view", "build_view", "register_progress", "progress_display"]

_RENDERERS: dict[type, Callable[[Any], str]] = {}
_VIEWS: dict[str, Callable[..., Any]] = {}
# factory(total, desc, unit) -> (set_done, close), or None where it does not apply (not in a notebook).
_PROGRESS: list[Callable[[int, str, str], Any]] = []


def register_html_renderer(cls: type, renderer: Callable[[Any], str]) -> None:
    """Use ``renderer(obj) -> str`` for the HTML display of instances of ``cls``."""
    _RENDERERS[cls] = renderer


def html_for(obj: Any) -> str:
    """HTML for ``obj``: a registered renderer, else its ``repr`` as escaped plain text."""
    for cls in type(obj).__mro__:
        renderer = _RENDERERS.get(cls)
        if renderer is not None:
            return renderer(obj)
    return f"<pre>{html.escape(repr(obj))}</pre>"


def register_view(name: str, builder: Callable[..., Any]) -> None:
    """Use ``builder(*args, **kwargs)`` for the interactive view ``name`` (replaces an earlier one)."""
    _VIEWS[name] = builder


def build_view(name: str, *args: Any, **kwargs: Any) -> Any:
    """The interactive view ``name`` built by its registered builder."""
    builder = _VIEWS.get(name)
    if builder is None:
        raise RuntimeError(f"no {name!r} view registered: `import gmmsession.viz` (done by `import gmmsession`) registers them")
    return builder(*args, **kwargs)


def register_progress(factory: Callable[[int, str, str], Any]) -> None:
    """Use ``factory(total, desc, unit) -> (set_done, close) | None`` for progress displays
    (None: not applicable here, the next factory or ``tqdm.auto`` is used). Idempotent per factory."""
    if factory not in _PROGRESS:
        _PROGRESS.append(factory)


def progress_display(total: int, desc: str, unit: str) -> tuple[Callable[..., None], Callable[[], None]] | None:
    """``(set_done, close)`` of the first registered progress display that applies, else None."""
    for factory in _PROGRESS:
        out = factory(total, desc, unit)
        if out is not None:
            return out
    return None
