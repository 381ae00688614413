"""Live widgets in JupyterLab 4 and Notebook 7: a notebook opened in a real Jupyter front end on
127.0.0.1, all cells run through the front end's own "run all cells" command, ``s.show_map()``'s z
slider moved in headless Chromium (arrow keys in JupyterLab, a mouse drag in Notebook 7, whose
command-mode shortcuts take the arrow keys: see ``_move_z_slider``), the z slice image re-drawn by the
kernel and compared pixel by pixel with the map the notebook saved.

The notebook, the pixel check and the server helpers are the Voilà test's
(``test_voila_widgets.py``); only the front end differs. Each server runs with its own
configuration, settings and workspace directories under ``tmp_path``, so a user's JupyterLab
settings or a saved workspace cannot change what the test sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import open_page
from tests.browser.test_voila_widgets import (
    NOTEBOOK_CELLS,
    READOUTS,
    SLICE_PIXELS,
    SLICE_PX,
    _free_port,
    check_z_slice_follows_its_slider,
    _listening_addresses,
    _stop,
    _wait,
    _wait_for_port,
)

pytestmark = pytest.mark.browser

# The app object is exposed (``expose_app_in_browser``) so the test runs all cells through the front end's
# own command registry, as the "Run > Run All Cells" menu does.
RUN_ALL = """async () => {
  const app = window.jupyterapp;
  if (!app) return 'no window.jupyterapp';
  const panel = app.shell.currentWidget;
  if (!panel || !panel.sessionContext) return 'no notebook panel';
  await panel.sessionContext.ready;
  await app.commands.execute('notebook:run-all-cells');
  return 'ok';
}"""

FRONT_ENDS = {
    # name: (command, notebook path in the URL, options of its own)
    "jupyterlab": ("jupyter-lab", "lab/tree/map.ipynb",
                   ["--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
                    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]),
    "notebook7": ("jupyter-notebook", "notebooks/map.ipynb", ["--JupyterNotebookApp.expose_app_in_browser=True"]),
}


# Notebook 7.6.5 throws this on the first interaction with any notebook (a "1+1" cell run with Shift+Enter
# does it too, with no widget on the page): loading the ``@jupyterlab/notebook-extension:panel`` settings fires
# the shortcuts plugin's ``pluginChanged`` handler, which reads ``plugins[id].schema`` of a plugin the
# registry has not got. It is Notebook's own, in ``notebook_core.*.js``, and is tolerated there only.
KNOWN_ERRORS = {"notebook7": {"TypeError: Cannot read properties of undefined (reading 'schema')"}}


def _move_z_slider(page, front_end: str, *, from_index: int, to_index: int, size: int) -> None:
    """Move the z slider: arrow keys on its handle in JupyterLab, a mouse drag of the handle in Notebook 7.

    Notebook 7 handles key presses in the capture phase, before the slider sees them, and binds ArrowLeft /
    ArrowRight (``notebook:move-cursor-heading-above-or-collapse`` / ``...-below-or-expand``) and ArrowUp /
    ArrowDown to the notebook's command-mode selector ``.jp-Notebook.jp-mod-commandMode:not(.jp-mod-readWrite)
    :focus``, which a focused slider handle inside an output matches: the arrows never reach the slider there
    (ipywidgets 8 does not mark its views ``data-lm-suppress-shortcuts``). JupyterLab handles them in the bubbling
    phase, after the slider has taken them.
    """
    handle = page.locator(".widget-slider .noUi-handle").nth(0)
    if front_end == "jupyterlab":
        handle.focus()
        key = "ArrowLeft" if to_index < from_index else "ArrowRight"
        for _ in range(abs(to_index - from_index)):
            handle.press(key)
        return
    base = page.locator(".widget-slider .noUi-base").nth(0).bounding_box()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + (to_index - from_index) / (size - 1) * base["width"], y, steps=6)
    page.mouse.up()


def _command(name: str) -> str | None:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.is_file() else shutil.which(name)


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_front_end_slider_updates_the_slice_image(chromium, tmp_path, front_end):
    package = "jupyterlab" if front_end == "jupyterlab" else "notebook"
    pytest.importorskip(package, reason=f"{package} is not installed (`pip install jupyterlab notebook`)")
    if front_end == "notebook7":
        import notebook

        if int(notebook.__version__.split(".")[0]) < 7:
            pytest.skip(f"notebook {notebook.__version__} is not Notebook 7")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    command_name, nb_path, options = FRONT_ENDS[front_end]
    command = _command(command_name)
    if command is None:
        pytest.skip(f"the {command_name} command is not on the PATH")
    root = tmp_path / "root"
    root.mkdir()
    nb = new_notebook(cells=[new_code_cell(src) for src in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "map.ipynb")

    # JupyterLab's "Would you like to get notified about official Jupyter news?" toast is answered "no".
    notification = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false"}')
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    port = _free_port()
    log_path = tmp_path / f"{front_end}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [command, "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}", *options, *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_port(proc, port, log_path)
            addresses = _listening_addresses(port)
            assert addresses <= {"127.0.0.1"}, f"{front_end} listens on {addresses}, not only on 127.0.0.1"
            url = f"http://127.0.0.1:{port}"
            with chromium() as browser:
                page, log = open_page(browser, f"{url}/{nb_path}",
                                      local_prefixes=(url + "/", f"ws://127.0.0.1:{port}/"))
                stacks: list[str] = []  # the page errors' stacks, for the failure message
                page.on("pageerror", lambda err: stacks.append(err.stack or ""))
                page.wait_for_function("() => window.jupyterapp && document.querySelectorAll('.jp-Notebook .jp-Cell').length >= 2",
                                       timeout=60_000)
                status = page.evaluate(RUN_ALL)
                assert status == "ok", f"could not run all cells in {front_end}: {status}"
                # The kernel simulates and reconstructs, then the widgets arrive in the second cell's output.
                try:
                    page.wait_for_function(
                        "() => document.querySelectorAll('img.gmmsession-slice').length === 3"
                        " && document.querySelectorAll('.widget-slider').length >= 3", timeout=90_000)
                except Exception:
                    page.screenshot(path=str(tmp_path / f"{front_end}_timeout.png"), full_page=True)
                    outputs = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)")
                    raise AssertionError(f"no slice widgets in {front_end}; outputs: {outputs}; JavaScript errors: "
                                         f"{log.js_errors()}; blocked: {log.blocked}")
                page.locator("img.gmmsession-slice-z").scroll_into_view_if_needed()
                assert _wait(page, f"() => ({SLICE_PIXELS})() !== null", 20_000), "the z slice image did not load"
                assert page.evaluate(READOUTS)[:3] == ["10", "10", "10"]  # the central slices of a 20-pixel box
                average = np.load(root / "average.npy")
                check_z_slice_follows_its_slider(
                    page, average, lambda: _move_z_slider(page, front_end, from_index=10, to_index=7, size=SLICE_PX),
                    tmp_path / f"{front_end}_map.png", log, front_end)
        finally:
            _stop(proc)

    known = KNOWN_ERRORS.get(front_end, set())
    assert all("/static/notebook/notebook_core." in st for st in stacks if any(st.startswith(k) for k in known)), stacks
    assert [e for e in log.page_errors if e not in known] == [], (
        f"uncaught JavaScript errors in {front_end}: {log.page_errors}; stacks: {stacks}")
    # Chromium also logs an uncaught page error to the console, with its message alone.
    assert [e for e in log.js_errors() if e not in known] == [], (
        f"JavaScript errors in {front_end}: {log.js_errors()}; blocked: {log.blocked}")
    assert log.blocked == [], f"{front_end} asked for resources off this machine: {log.blocked}"
