"""An HTML page in headless Chromium (through Playwright): what it shows, what failed, its layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

VIEWPORT = {"width": 1400, "height": 900}  # the screen the table overflowed

LAYOUT = """() => ({viewport: innerWidth, scrollWidth: document.documentElement.scrollWidth,
    wrap: document.querySelector('.table-wrap').getBoundingClientRect().right,
    headers: Array.from(document.querySelectorAll('table.runs th'), th => [th.className, th.textContent,
        th.getBoundingClientRect().left, th.getBoundingClientRect().right]),
    titles: Array.from(document.querySelectorAll('td.run a'), a => a.getAttribute('title'))})"""


def chromium() -> str:
    """The Chromium executable ($RESVAE_CHROMIUM, else chromium on the PATH); skips the test without one."""
    path = os.environ.get("RESVAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: install Debian's chromium or set RESVAE_CHROMIUM")
    return path


def open_in_chromium(html: Path, screenshot: Path) -> tuple[list[str], list[str], list, dict]:
    """(console errors and failed requests, the table's first cells, [src, complete, naturalWidth]
    of every image, the table's `LAYOUT`) of `html` in headless Chromium at 1,400 x 900 px, and its
    screenshot in `screenshot`; skips the test where no browser runs."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"], timeout=30_000)
        except Exception as e:  # any launch failure means no usable browser here
            pytest.skip(f"Chromium at {executable} does not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"failed request: {r.url} {r.failure}"))
            page.goto(html.as_uri(), wait_until="load")
            first_cells = page.locator("table.runs tbody tr td.run").all_inner_texts()
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
            )
            layout = page.evaluate(LAYOUT)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    with Image.open(screenshot) as shot:
        assert shot.size == (VIEWPORT["width"], VIEWPORT["height"])
    return errors, first_cells, images, layout
