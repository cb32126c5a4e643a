"""Open a local HTML report in a real browser with every outside request blocked.

Debian's chromium driven by Playwright (never `playwright install`: no browser download). A test
that needs it skips cleanly only where neither is installed; anything the page tries to fetch from
the network is aborted and recorded, so a test can assert the page asked for nothing remote.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str:
    """The system chromium, or a pytest skip saying how to get one."""
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    pytest.skip("no chromium installed (Debian: apt-get install -y chromium)")
    raise AssertionError("unreachable")


@dataclass
class OfflinePage:
    """A loaded page plus what it tried to fetch from outside and any script errors."""
    page: Any
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def eval(self, script: str) -> Any:
        return self.page.evaluate(script)


@contextmanager
def offline_browser() -> Iterator[Any]:
    """A headless chromium (Playwright browser object); skips when chromium or Playwright is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_offline(browser: Any, html: Path, screenshot: Path | None = None) -> OfflinePage:
    """Load `html` from disk; any non-file request is aborted and listed in `.blocked`."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    loaded = OfflinePage(page)

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            loaded.blocked.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: loaded.errors.append(str(e)))
    page.on("requestfailed", lambda r: loaded.failed.append(r.url))
    page.goto(Path(html).resolve().as_uri())
    page.wait_for_load_state("load")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    return loaded
