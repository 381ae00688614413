"""Real-browser checks: the system's headless Chromium driven by Playwright.

Playwright's own browser download (``playwright install``) is not used: the tests launch
Debian's ``chromium`` (or the executable named by ``GMMSESSION_CHROMIUM``) and skip, saying
why, where Playwright or Chromium is missing. Every page is opened offline: requests other
than ``file:``, ``data:``, ``blob:`` and the local Voilà server are aborted and recorded, so
a figure that needs a CDN shows up as a failure here rather than as a blank plot on a
workshop laptop without network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_executable() -> str | None:
    """The Chromium to drive: ``$GMMSESSION_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on the PATH."""
    explicit = os.environ.get("GMMSESSION_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium():
    """A function opening a headless Chromium (a context manager); skips where Playwright or Chromium is absent.

    The browser is launched inside the test body, after any notebook has been executed:
    Playwright's sync API and nbclient's event loop are never active at the same time.
    """
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (`pip install playwright`; the system Chromium is used)")
    exe = chromium_executable()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: `apt-get install chromium`; or set GMMSESSION_CHROMIUM)")

    @contextlib.contextmanager
    def launch() -> Iterator[Any]:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()

    return launch


@dataclass
class PageLog:
    """What a page reported while it was open."""

    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions and unhandled rejections
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, source URL)
    blocked: list[str] = field(default_factory=list)  # requests aborted because they would leave the machine

    def js_errors(self) -> list[str]:
        """Page errors and console errors, less the "Failed to load resource" of requests this test blocked."""
        own = [text for text, url in self.console_errors if not (url in self.blocked and text.startswith("Failed to load resource"))]
        return self.page_errors + own


def open_page(browser: Any, url: str, *, local_prefixes: tuple[str, ...] = ()) -> tuple[Any, PageLog]:
    """A new 1200x900 page logging errors, with every request off this machine aborted; then ``goto(url)``."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    log = PageLog()
    page.on("pageerror", lambda err: log.page_errors.append(f"{err.name}: {err.message}" if err.name else str(err)))
    page.on("console", lambda msg: log.console_errors.append((msg.text, msg.location.get("url", "")))
            if msg.type == "error" else None)
    allowed = ("file:", "data:", "blob:") + local_prefixes

    def route(r: Any) -> None:
        if r.request.url.startswith(allowed):
            r.continue_()
        else:
            log.blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url, timeout=120_000)
    return page, log


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to ``$GMMSESSION_BROWSER_ARTIFACTS`` when set (for CI artefacts); it stays in tmp_path anyway."""
    dest = os.environ.get("GMMSESSION_BROWSER_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / Path(path).name)
