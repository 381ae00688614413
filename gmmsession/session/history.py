"""Session history: one record per step, with exact parameters, versions, timing and metrics."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["StepRecord", "History", "environment_versions", "Timer", "change_histogram"]


def change_histogram(values: Any, n_bins: int = 30) -> tuple[list[int], list[float]]:
    """Counts and bin edges of per-particle pose changes (angles or shifts) for a step record:
    ``n_bins`` equal bins from 0 to the 99th percentile; larger values are counted in the last
    bin, so one outlier does not squash the histogram (the paper's Fig. S6 view)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    top = float(np.percentile(v, 99)) if v.size else 0.0
    top = top if top > 0 else (float(v.max()) if v.size and v.max() > 0 else 1.0)
    counts, edges = np.histogram(np.minimum(v, top), bins=n_bins, range=(0.0, top))
    return counts.astype(int).tolist(), edges.tolist()


def environment_versions() -> dict[str, str]:
    """Versions of gmmsession and the libraries whose behaviour a result depends on."""
    import numpy
    import torch
    import xarray

    from gmmsession._version import __version__

    return {
        "gmmsession": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "xarray": xarray.__version__,
        "python": platform.python_version(),
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, paths and tuples."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class StepRecord:
    """One session step.

    Attributes
    ----------
    name : step name, e.g. ``"reconstruct"``.
    params : the exact parameters the step ran with.
    started_utc : ISO timestamp.
    duration_s : wall time in seconds.
    versions : library versions (:func:`environment_versions`).
    metrics : scalar results, e.g. ``{"resolution_angstrom": 3.4}``.
    curves : named curves (lists of floats), e.g. FSC per shell.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    started_utc: str = ""
    duration_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepRecord":
        return cls(**{k: d[k] for k in ("name", "params", "started_utc", "duration_s", "versions", "metrics", "curves") if k in d})

    def __repr__(self) -> str:
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.metrics.items())
        return f"<Step {self.name} ({self.duration_s:.1f} s){': ' + m if m else ''}>"

    def _repr_html_(self) -> str:
        from gmmsession.session.display import html_for

        return html_for(self)


class History:
    """An append-only list of :class:`StepRecord`, displayed as a table in notebooks."""

    def __init__(self, records: list[StepRecord] | None = None) -> None:
        self._records: list[StepRecord] = list(records or [])

    def append(self, record: StepRecord) -> None:
        self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self._records)

    def __getitem__(self, i: int) -> StepRecord:
        return self._records[i]

    def last(self, name: str | None = None) -> StepRecord | None:
        """The most recent record (with this name, if given)."""
        for r in reversed(self._records):
            if name is None or r.name == name:
                return r
        return None

    def to_json(self) -> str:
        return json.dumps([r.to_dict() for r in self._records])

    @classmethod
    def from_json(cls, text: str) -> "History":
        return cls([StepRecord.from_dict(d) for d in json.loads(text)])

    def to_dataframe(self):
        """One row per step: name, start, duration and the scalar metrics."""
        import pandas as pd

        rows = [{"step": r.name, "started_utc": r.started_utc, "duration_s": r.duration_s, **r.metrics} for r in self._records]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        if not self._records:
            return "History: (empty)"
        return "History:\n" + "\n".join(f"  {i}: {r!r}" for i, r in enumerate(self._records))

    def _repr_html_(self) -> str:
        from gmmsession.session.display import html_for

        return html_for(self)


class Timer:
    """Context manager measuring wall time and the UTC start of a step."""

    def __enter__(self) -> "Timer":
        self.started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.perf_counter()
        self.duration_s = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.duration_s = time.perf_counter() - self._t0
