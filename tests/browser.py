"""A real browser for tests: Debian's `chromium` driven by Playwright (its own browser download
is not reachable here). Without chromium the test is skipped on a workstation but fails in CI
(CI=true), where .ci/run installs it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def browser_page(width: int = 1300, height: int = 1000) -> Iterator:
    """A Playwright page of a headless chromium; JavaScript errors collect in `page.errors`."""
    if not Path(CHROMIUM).exists():
        message = "no chromium: `apt-get install chromium` (Debian) for the browser tests"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []
            page.on("pageerror", lambda err: page.errors.append(str(err)))
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    """With CNNEXP_SCREENSHOTS=<folder> (e.g. docs), the page is saved there as <name>.png:
    how the README's screenshots are made, from the same steps the test checks."""
    folder = os.environ.get("CNNEXP_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"))
