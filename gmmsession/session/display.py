"""How session objects display in a notebook, without importing any widget library here.

The viz layer registers HTML renderers for session types (dependency inversion keeps the
layers one-way: session never imports viz). Without a renderer, objects show as
preformatted plain text.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

__all__ = ["register_html_renderer", "html_for"]

_RENDERERS: dict[type, Callable[[Any], str]] = {}


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
