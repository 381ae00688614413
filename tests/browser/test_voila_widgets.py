"""Live widgets in a real browser: a notebook served by Voilà on 127.0.0.1, ``s.show_map()`` driven
from the keyboard in headless Chromium, the slice images re-drawn by the kernel.

This is the one test where ipywidgets 8, Voilà and a kernel run together: a z-slice slider moved
with the arrow keys must replace the z slice's ``<img>`` with the map's slice at the new index
(its pixels, read back through a canvas, compared with the map the notebook saved).

The map view's slices are PNG images (``ipywidgets.Image``) and its default view has no plotly
``FigureWidget``: anywidget 0.11's front end gives a widget 2 s to import its module, plotly's
is ~5 MB, and on a loaded machine a FigureWidget that missed that deadline ignored the kernel
("[anywidget] Failed to initialize model."), which made this test fail about half the time when
the slices were plotly heatmaps. The isosurface, built on request, is tested without a browser.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import keep_screenshot, open_page, png_size

pytestmark = pytest.mark.browser

NOTEBOOK_CELLS = [
    "import numpy as np\nimport gmmsession as gs\n"
    "sim = gs.simulate('data', n_particles=40, box_size=20, pixel_size_angstrom=4.0, snr=0.5, seed=1)\n"
    "s = gs.Session.from_star(sim.particles_star, device='cpu')\n"
    "_ = s.reconstruct(progress=False)\n"
    "np.save('average.npy', s.half_maps.mean('half').values)",
    "s.show_map()",
]

SLICE_PX = 20  # the notebook's box
# The z slice's <img>: its src (a blob: URL, new for each image) and, once loaded, the red channel at the
# centre of each enlarged voxel, row by row as in the PNG (row axis up, so the array's last row first).
SLICE_PIXELS = """() => {
  const img = document.querySelector('img.gmmsession-slice-z');
  if (!img || !img.complete || img.naturalWidth === 0) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const f = canvas.width / %d, half = Math.floor(f / 2), rows = [];
  for (let r = 0; r < %d; r++) {
    const row = [];
    for (let c = 0; c < %d; c++) row.push(data[((r * f + half) * canvas.width + c * f + half) * 4]);
    rows.push(row);
  }
  return {src: img.src, width: canvas.width, rows: rows};
}""" % (SLICE_PX, SLICE_PX, SLICE_PX)
READOUTS = "() => [...document.querySelectorAll('.widget-slider .widget-readout')].map(e => e.innerText.trim())"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux /proc); empty where /proc is absent."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def _wait_for_port(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"voila exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    pytest.fail(f"voila did not answer on 127.0.0.1:{port} within {timeout:.0f} s:\n{log.read_text()}")


def _wait(page, condition: str, timeout_ms: int) -> bool:
    """Whether the page's JavaScript ``condition`` became true within the timeout."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, timeout=timeout_ms)
    except PlaywrightTimeout:
        return False
    return True


def _grey(image: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The slice images' grey scale: vmin white, vmax black."""
    return (255 * (1 - np.clip((np.asarray(image, np.float64) - vmin) / (vmax - vmin), 0, 1))).astype(np.uint8)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (Voilà shuts its kernels down), then SIGKILL to its process group if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def check_z_slice_follows_its_slider(page, average: np.ndarray, move, shot: Path, log, where: str) -> None:
    """The z slice image shows ``average[10]``; after ``move()`` takes its slider from 10 to 7 it
    shows ``average[7]`` (grey levels within 2) with the caption ``z = -12.0 Å``; a screenshot is kept."""
    lo, hi = float(average.min()), float(average.max())
    before = page.evaluate(SLICE_PIXELS)
    assert before["width"] >= 200 and before["src"].startswith("blob:")
    np.testing.assert_allclose(np.array(before["rows"])[::-1], _grey(average[10], lo, hi), atol=2)
    move()
    assert page.evaluate(READOUTS)[0] == "7"
    # The kernel answers each step with a new PNG (slices 9, 8, 7), then its caption; wait for the
    # last caption, then for the browser to load the image that came with it.
    changed = _wait(page, f"() => {{ const p = ({SLICE_PIXELS})(); return p !== null && p.src !== {before['src']!r}; }}",
                    20_000)
    captioned = _wait(page, "() => document.body.innerText.includes('z = -12.0 Å')", 20_000)  # 4 Å * (7 - 10)
    expected = _grey(average[7], lo, hi)
    _wait(page, f"() => {{ const p = ({SLICE_PIXELS})(), e = {json.dumps(expected[::-1].tolist())};"
                " return p !== null && p.rows.every((row, r) => row.every((v, c) => Math.abs(v - e[r][c]) <= 2)); }",
          10_000)
    page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)
    assert png_size(shot)[0] >= 1000 and shot.stat().st_size > 20_000
    assert changed and captioned, (
        f"the z slice's image or caption did not change after its slider moved in {where}; JavaScript errors: {log.js_errors()}")
    after = page.evaluate(SLICE_PIXELS)
    np.testing.assert_allclose(np.array(after["rows"])[::-1], expected, atol=2)


def test_voila_slider_updates_the_slice_image(chromium, tmp_path):
    pytest.importorskip("voila", reason="voila is not installed (`pip install voila`)")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    voila = Path(sys.executable).with_name("voila")
    voila = str(voila) if voila.is_file() else shutil.which("voila")
    if voila is None:
        pytest.skip("the voila command is not on the PATH")
    nb = new_notebook(cells=[new_code_cell(src) for src in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "map.ipynb")

    port = _free_port()
    log_path = tmp_path / "voila.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            # Notebook 7's own JupyterLab extension (installed with `notebook`, which the JupyterLab
            # tests need) is not built for Voilà's front end: loaded there it throws "The getter for
            # the shared module is not a function" (@jupyterlab/docregistry). It is no part of what
            # this test checks, so Voilà is told not to load it.
            [voila, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
             "--VoilaConfiguration.extension_denylist=@jupyter-notebook/lab-extension", "map.ipynb"],
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_port(proc, port, log_path)
            addresses = _listening_addresses(port)
            assert addresses <= {"127.0.0.1"}, f"voila listens on {addresses}, not only on 127.0.0.1"
            url = f"http://127.0.0.1:{port}"
            with chromium() as browser:
                page, log = open_page(browser, url + "/", local_prefixes=(url + "/", f"ws://127.0.0.1:{port}/"))
                # Voilà runs the notebook (simulate, reconstruct) before the widgets arrive.
                page.wait_for_function(
                    "() => document.querySelectorAll('img.gmmsession-slice').length === 3"
                    " && document.querySelectorAll('.widget-slider').length >= 3"
                    f" && ({SLICE_PIXELS})() !== null", timeout=120_000)
                assert page.evaluate(READOUTS)[:3] == ["10", "10", "10"]  # the central slices of a 20-pixel box
                assert page.locator(".js-plotly-plot").count() == 0  # no plotly bundle unless the 3D view is asked for
                average = np.load(tmp_path / "average.npy")
                z_handle = page.locator(".widget-slider .noUi-handle").nth(0)

                def press_left_three_times() -> None:
                    z_handle.focus()
                    for _ in range(3):
                        z_handle.press("ArrowLeft")

                check_z_slice_follows_its_slider(page, average, press_left_three_times, tmp_path / "voila_map.png", log, "Voilà")
        finally:
            _stop(proc)

    # Voilà's template asks jsdelivr for Font Awesome (icons only); nothing else may leave the machine.
    assert all("cdn.jsdelivr.net/npm/@fortawesome" in u for u in log.blocked), log.blocked
    assert log.js_errors() == [], f"JavaScript errors in Voilà: {log.js_errors()}"
