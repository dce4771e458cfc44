"""05_query in a real browser: JupyterLab runs it, a local-store link opens through its file route.

The Jupyter root holds the local store (``LOCAL_STORAGE_DIR``) and, one folder
down, the query notebook; the kernel finds the running server's root by itself
(:func:`sendit_helpers.stages.query.jupyter_root`).  Clicking a result's link downloads
exactly the stored file from ``<base_url>files/...``.  A screenshot is kept under
``$SENDIT_TEST_ARTIFACTS`` (default ``<temp dir>/sendit-test-artifacts``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import pytest

from sendit_helpers.stages.upload import upload_batch
from tests.conftest_servers import build_release

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # about a minute: JupyterLab starts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_query.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update"]  # fmt: skip
ARTIFACTS = Path(
    os.environ.get("SENDIT_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "sendit-test-artifacts"
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parameterized(target: Path, params: dict[str, Any]) -> None:
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nbformat.write(parameterize_notebook(load_notebook_node(str(NOTEBOOK)), params), target)


def test_local_store_link_opens_in_jupyterlab(
    tmp_path: Path, upload_settings: dict[str, Any]
) -> None:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; run make test (it installs chromium)")
    root = tmp_path / "lab"
    store = root / "store"
    layout = build_release(tmp_path, entities=3, images=2)
    layout.source.mkdir(parents=True, exist_ok=True)
    (layout.source / "input.dcm").write_bytes(b"")  # open_batch wants a non-empty batch folder
    settings = {**upload_settings, "LOCAL_STORAGE_DIR": str(store)}
    upload_batch(layout, settings, progress=False)
    served = root / "nb" / "query.ipynb"  # not at the root: links must not depend on where it is
    served.parent.mkdir(parents=True)
    _parameterized(
        served,
        {"batch_dir": str(layout.source), "work_dir": str(layout.work),
         "overrides": {"LOCAL_STORAGE_DIR": str(store)}, "body_part": "chest"},
    )  # fmt: skip
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),  # the kernel finds the server's info here
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    command = [
        str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
        f"--port={port}", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
        f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    shots = ARTIFACTS / "query-jupyterlab"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"jupyter lab exited; see {tmp_path / 'lab.log'}"
            try:
                with urllib.request.urlopen(base + "api/status", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, f"no answer; see {tmp_path / 'lab.log'}"
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                page.set_default_timeout(60_000)
                page.goto(base + "lab/tree/nb/query.ipynb")
                page.locator(".jp-Notebook .jp-Cell").first.wait_for()
                page.wait_for_function(
                    "() => (document.querySelector('#jp-main-statusbar') || {innerText: ''})"
                    ".innerText.includes('Idle')"
                )
                page.locator('[data-command="notebook:restart-run-all"]').first.click()
                page.locator(".jp-Dialog-button.jp-mod-accept").click()
                link = page.locator("table.sendit-links a[download]").first
                link.wait_for()
                link.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "01-results-with-links.png"), full_page=True)
                print(f"screenshot: {shots / '01-results-with-links.png'}")
                name = "IR661f31_5_1.dcm"  # the first CHEST image (tests/conftest_servers)
                stored = store / "sendit" / "IR661f31" / name
                assert link.inner_text() == str(stored)
                # JupyterLab rewrites a local link to its file route (asynchronously)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('table.sendit-links a[download]')]"
                    ".every(a => a.href.includes('/files/'))",
                    timeout=15_000,
                )
                href = link.evaluate("a => a.href")
                assert href.partition("?")[0] == f"{base}files/store/sendit/IR661f31/{name}"
                with page.expect_download() as info:
                    link.click()
                got = Path(info.value.path())
                assert got.read_bytes() == stored.read_bytes()
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
