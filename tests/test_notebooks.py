"""Every notebook in notebooks/ and tutorials/ executes top to bottom, at the CI size.

The notebooks read two environment variables: ``GMMSESSION_NB_PARTICLES`` (simulated particles)
and ``GMMSESSION_NB_QUICK=1`` (a 32-pixel box at 3 Å, small GMMs, one iteration, few epochs).
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PROCESSING = sorted((ROOT / "notebooks").glob("*.ipynb"))
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
NOTEBOOKS = PROCESSING + TUTORIALS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("GMMSESSION_NB_PARTICLES", "600")
    monkeypatch.setenv("GMMSESSION_NB_QUICK", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # The session cell rendered its HTML summary (the viz renderer, not the plain-text fallback).
    htmls = [o["data"].get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o]
    assert any("gmmsession.Session" in h and "<table" in h for h in htmls)
    # Every plotly figure also carries an HTML rendering (with plotly.js), so a saved notebook shows
    # it where plotly's Jupyter extension is absent (nbconvert, GitHub, a kernel-less viewer).
    figures = [o["data"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert all("Plotly.newPlot" in d.get("text/html", "") for d in figures), f"{path.name}: a figure has no static HTML"


def test_there_are_notebooks():
    assert PROCESSING, "notebooks/ must hold at least one notebook"
    assert TUTORIALS, "tutorials/ must hold at least one notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    """Notebooks are kept without outputs (small diffs; CI makes the outputs)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    filled = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not filled, f"{path.name}: cells {filled} have outputs; clear them before committing"


def test_processing_notebooks_have_a_parameters_cell():
    """Each processing notebook a user copies (03 onwards) starts with an editable parameters cell."""
    for path in (p for p in PROCESSING if int(p.name[:2]) >= 3):
        first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "parameters" in first_code.source and "GMMSESSION_NB_PARTICLES" in first_code.source, path.name
