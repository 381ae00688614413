"""``import gmmsession`` stays light: plotly and scikit-learn (about 1 s each to import) load
only when a figure is drawn or a K-means runs (CLI start-up, notebook kernels, Dask workers)."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_plotly_or_sklearn():
    code = "import sys, gmmsession; print(sorted(m for m in ('plotly', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
