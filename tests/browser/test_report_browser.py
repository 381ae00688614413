"""Static HTML in a real browser, offline: the demo report and an executed notebook's HTML export.

Each page is opened in headless Chromium with every request off the machine aborted; the test
waits for plotly to draw, asserts that every figure rendered with no JavaScript error and saves
a full-page screenshot in the test's tmp_path (copied to ``$GMMSESSION_BROWSER_ARTIFACTS`` when set).
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.browser.conftest import keep_screenshot, open_page, png_size

pytestmark = pytest.mark.browser

# The smallest demo the CLI runs (about 20 s of CPU): what is checked is the page, not the refinement.
TINY_DEMO = ["--quick", "--quiet", "--n-particles", "40", "--box", "16", "--pixel-size", "4.0", "--n-gaussians", "12",
             "--build-steps", "2", "--gmm-steps", "1"]

RENDERED = ".js-plotly-plot .main-svg"  # plotly.js adds both once a figure is drawn


def _screenshot(page, path) -> None:
    page.screenshot(path=str(path), full_page=True)
    width, height = png_size(path)
    assert width >= 1000 and height >= 600, (width, height)
    # Figures and text compress far worse than a blank page (a blank 1200 x 900 page is under 10 kB).
    assert path.stat().st_size > 50_000, f"{path} is {path.stat().st_size} bytes: nearly blank"
    keep_screenshot(path)


@pytest.fixture(scope="module")
def demo_report(chromium, tmp_path_factory):  # chromium first: no demo run where the test will skip
    from gmmsession.cli import main

    out = tmp_path_factory.mktemp("demo_report")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    return out / "report.html"


def test_demo_report_renders_every_figure_offline(demo_report, chromium, tmp_path):
    page_html = demo_report.read_text(encoding="utf-8")
    sections = dict(re.findall(r"<section id='(\w+)'>(.*?)</section>", page_html, flags=re.S))
    with_figure = [sid for sid, body in sections.items() if "plotly-graph-div" in body]
    assert len(sections) >= 2 and len(with_figure) >= len(sections) - 1, (list(sections), with_figure)  # all but the summary

    with chromium() as browser:
        page, log = open_page(browser, demo_report.as_uri())
        page.wait_for_function(
            "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n", arg=len(with_figure), timeout=60_000)
        for sid in with_figure:
            figure = page.locator(f"section#{sid} .js-plotly-plot")
            assert figure.count() == 1, sid
            assert figure.locator(".main-svg").count() >= 1, f"section {sid}: plotly did not draw"
            box = figure.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 200, (sid, box)
        # Every trace plotly drew is there (no figure fell back to an empty plot).
        n_traces = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d.data.length)")
        assert len(n_traces) == len(with_figure) and min(n_traces) >= 1, n_traces
        _screenshot(page, tmp_path / "demo_report.png")

    assert log.blocked == [], f"the report is not self-contained: it asked for {log.blocked}"
    assert log.js_errors() == []


def _tiny_notebook(folder):
    """Three cells: simulate 40 particles and reconstruct; the session summary; a plotly figure of the map."""
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        # In a kernel plotly's default renderer is the plotly mimetype alone, which JupyterLab draws but an
        # HTML export leaves out; "+notebook" adds the HTML output (plotly.js embedded once) that exports keep.
        new_code_cell("import plotly.io as pio\npio.renderers.default = 'plotly_mimetype+notebook'\n"
                      "import gmmsession as gs\nfrom gmmsession.viz.figures import map_slices_figure\n"
                      "sim = gs.simulate('data', n_particles=40, box_size=20, pixel_size_angstrom=4.0, snr=0.5, seed=1)\n"
                      "s = gs.Session.from_star(sim.particles_star, device='cpu')\n"
                      "_ = s.reconstruct(progress=False)"),
        new_code_cell("s"),
        new_code_cell("map_slices_figure(s.half_maps.mean('half').values, s.pixel_size_angstrom)"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_executed_notebook_html_export_renders_offline(chromium, tmp_path):
    pytest.importorskip("nbconvert", reason="nbconvert is not installed (`pip install nbconvert`)")
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = _tiny_notebook(tmp_path)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    export = tmp_path / "tiny.html"
    export.write_text(body, encoding="utf-8")

    with chromium() as browser:
        page, log = open_page(browser, export.as_uri())
        page.wait_for_selector(RENDERED, timeout=60_000)
        assert page.locator(".js-plotly-plot").count() == 1
        heatmaps = page.evaluate("() => document.querySelector('.js-plotly-plot').data.map(t => t.type)")
        assert heatmaps == ["heatmap"] * 3, heatmaps  # the three central slices
        assert page.locator("text=gmmsession.Session").count() >= 1  # the session's HTML summary
        _screenshot(page, tmp_path / "notebook_export.png")

    # nbconvert's template asks cdnjs for require.js and MathJax; the figure must not need them.
    assert all("cdnjs.cloudflare.com" in url for url in log.blocked), log.blocked
    assert log.js_errors() == []
