"""Every notebook in notebooks/ executes top to bottom (small particle counts via an env variable)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("GMMSESSION_NB_PARTICLES", "600")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # The session cell rendered its HTML summary (the viz renderer, not the plain-text fallback).
    htmls = [o["data"].get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o]
    assert any("gmmsession.Session" in h and "<table" in h for h in htmls)


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ must hold at least one notebook"
