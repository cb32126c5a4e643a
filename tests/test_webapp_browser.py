"""The clinician app in a real browser (Debian chromium driven by Playwright), served by uvicorn on
127.0.0.1: log in, see the upload form, get the error for an empty upload, upload a demo image,
see five diagnoses and the heat map, confirm a diagnosis and find it in the drop folder.

Skipped only where no browser is installed (`.ci/run` installs chromium). Screenshots of each
page go to MEDSCAN_SCREENSHOTS when set (else the test's temporary folder).
"""
from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium installed")]
pytest.importorskip("keras")

import uvicorn  # noqa: E402

from pipelines.webapp.app import create_app  # noqa: E402
from tests.webapp_factories import ADMIN_PASSWORD, image_bytes, project, tiny_adapter  # noqa: E402


@pytest.fixture
def served(tmp_path):
    """The app with a tiny model on a free 127.0.0.1 port, stopped after the test."""
    root, params = project(tmp_path)
    app = create_app(root, params, tiny_adapter(params, size=32), admin_password=ADMIN_PASSWORD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield root, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("MEDSCAN_SCREENSHOTS") or tmp_path / "screens")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_clinician_flow_in_chromium(served, shots, tmp_path):
    root, base = served
    demo = tmp_path / "lesion.jpg"
    demo.write_bytes(image_bytes("JPEG", size=96, seed=3))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 430, "height": 900})   # a phone-sized window
            page.goto(f"{base}/")
            assert page.url.endswith("/login")
            page.screenshot(path=str(shots / "01-login.png"), full_page=True)
            page.fill("#username", "admin")
            page.fill("#password", "wrong-password")
            page.click("button[type=submit] >> text=Log in")
            assert "Wrong user name or password" in page.inner_text("[role=alert]")
            page.screenshot(path=str(shots / "02-login-failed.png"), full_page=True)
            page.fill("#password", ADMIN_PASSWORD)
            page.click("button[type=submit] >> text=Log in")
            page.wait_for_url(f"{base}/upload")
            assert page.get_attribute("#image", "capture") == "environment"
            assert page.locator("#sex option").count() > 2
            page.screenshot(path=str(shots / "03-upload.png"), full_page=True)

            page.click("text=Analyse")                                  # nothing chosen
            assert "No image was uploaded" in page.inner_text("#upload-error")
            page.screenshot(path=str(shots / "04-upload-empty-error.png"), full_page=True)

            page.set_input_files("#image", str(demo))
            page.fill("#age", "55")
            page.select_option("#sex", "male")
            page.select_option("#localization", "back")
            page.click("text=Analyse")
            page.wait_for_selector("#top")
            assert page.locator("tr.diagnosis").count() == 5
            assert "Decision support only" in page.content()
            heat = page.locator("#heatmap")
            heat.scroll_into_view_if_needed()
            page.wait_for_function("document.querySelector('#heatmap').complete")
            assert page.evaluate("document.querySelector('#heatmap').naturalWidth") > 0
            page.screenshot(path=str(shots / "05-result-top5-heatmap.png"), full_page=True)

            page.select_option("#label", "bcc")
            page.click("text=Record diagnosis")
            assert "Basal cell carcinoma (bcc) was recorded" in page.inner_text("#recorded")
            page.screenshot(path=str(shots / "06-confirmed.png"), full_page=True)

            page.goto(f"{base}/admin/users")
            page.screenshot(path=str(shots / "07-admin-users.png"), full_page=True)
        finally:
            browser.close()
    rows = list(csv.DictReader((root / "incoming" / "labels.csv").open()))
    assert [(r["label"], r["age"], r["sex"], r["localization"]) for r in rows] == [("bcc", "55", "male", "back")]
    assert (root / "incoming" / rows[0]["file"]).read_bytes() == demo.read_bytes()
