"""The reviewer in a real browser: Voilà serves 03_review_phi, Chromium clicks through it.

Releases one whole series, scrubs one image with a typed rectangle, applies,
then checks ``phi/review/decisions.csv``, ``release/`` and the leak gate.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pydicom
import pytest

from sendit_helpers import deidentify, leakgate, review, synthetic
from sendit_helpers.layout import BatchLayout
from sendit_helpers.review import Box, Decision, DecisionLog
from sendit_helpers.runner import open_batch

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_review_phi.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_TIMEOUT = 30.0
BOX = Box(4, 4, 120, 36)
#: True once the progress label reads "<n> of ...".
DECIDED = "n => document.querySelector('.sendit-progress').innerText.trim().startsWith(n + ' of')"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _voila() -> Path:
    found = Path(sys.executable).with_name("voila")
    if not found.exists():
        pytest.fail(
            f"{found} is missing; run make test (it installs the test extras, voila included)"
        )
    return found


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, BatchLayout]]:
    """A de-identified batch and Voilà serving the review notebook for it: (url, layout)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; run make test (it installs chromium)")
    source = tmp_path / "in" / "b1"
    synthetic.make_batch(source)
    layout, settings = open_batch(source, tmp_path / "work", [], {"PROGRESS": False})
    deidentify.deidentify_batch(layout, settings)

    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(
        nb,
        {
            "batch_dir": str(source),
            "work_dir": str(tmp_path / "work"),
            "overrides": {"REVIEWER": "browser-test", "PROGRESS": False},
        },
    )
    served_nb = tmp_path / "site" / "review.ipynb"
    served_nb.parent.mkdir()
    nbformat.write(nb, served_nb)

    port = _free_port()
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = (tmp_path / "voila.log").open("w")
    proc = subprocess.Popen(
        [
            str(_voila()),
            str(served_nb),
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.show_tracebacks=True",
        ],
        cwd=served_nb.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with {proc.returncode}; see {tmp_path / 'voila.log'}")
            try:
                with urllib.request.urlopen(url + "voila/static/voila.js", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"voila did not answer within {STARTUP_TIMEOUT:.0f} s; "
                        f"see {tmp_path / 'voila.log'}"
                    )
                time.sleep(0.2)
        yield url, layout
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_review_in_the_browser(served: tuple[str, BatchLayout], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, layout = served
    items = review.load_items(layout)
    first_series = items[items["series_uid"] == items["series_uid"].iloc[0]]
    total = len(items)
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(30_000)
            page.goto(url)
            progress = page.locator(".sendit-progress")
            progress.wait_for()
            assert progress.inner_text().strip() == f"0 of {total} decided"
            assert page.locator(".sendit-item-name").inner_text() == first_series["item"].iloc[0]

            # one whole series at once
            page.click("button.sendit-release-series")
            page.wait_for_function(
                DECIDED,
                arg=len(first_series),
            )
            # the reviewer moves on to the next series: scrub its first image with a typed rectangle
            page.wait_for_function(
                "last => document.querySelector('.sendit-item-name').innerText !== last",
                arg=str(first_series["item"].iloc[0]),
            )
            scrubbed = page.locator(".sendit-item-name").inner_text()
            assert scrubbed not in set(first_series["item"])
            for name, value in zip(("x", "y", "w", "h"), BOX, strict=True):
                field = page.locator(f".sendit-box-{name} input")
                field.fill(str(value))
                field.press("Enter")
            page.click("button.sendit-add-box")
            page.wait_for_function(
                "box => document.querySelector('.sendit-boxes').innerText.includes(box)",
                arg=f"w={BOX.width} h={BOX.height}",
            )
            page.click("button.sendit-scrub")
            page.wait_for_function(
                DECIDED,
                arg=len(first_series) + 1,
            )
            page.click("button.sendit-apply")
            page.wait_for_function(
                "() => document.querySelector('.sendit-apply-result').innerText.includes('Applied')"
            )
            assert page.locator("button.sendit-release").get_attribute("title")
            print("accesskey:", page.locator("button.sendit-release").get_attribute("accesskey"))
            shot = tmp_path / "review.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot} ({time.monotonic() - started:.1f} s in the browser)")
        finally:
            browser.close()

    current = DecisionLog(layout).current().set_index("item")
    assert set(current.index) == {*first_series["item"], scrubbed}
    assert (current.loc[list(first_series["item"]), "decision"] == Decision.RELEASE).all()
    assert current.loc[scrubbed, "decision"] == Decision.SCRUB
    assert current.loc[scrubbed, "boxes"] == [BOX]
    assert set(current["reviewer"]) == {"browser-test"}

    path = items.set_index("item").loc[scrubbed, "path"]
    for name in first_series["item"]:
        assert (layout.release / items.set_index("item").loc[name, "path"]).is_file()
    original = pydicom.dcmread(review.originals_dir(layout) / path).pixel_array
    cleaned = pydicom.dcmread(layout.release / path).pixel_array
    box = (slice(BOX.y, BOX.y + BOX.height), slice(BOX.x, BOX.x + BOX.width))
    assert original[box].any() and not cleaned[box].any()
    below = (slice(BOX.y + BOX.height + 30, None), slice(None))
    assert np.array_equal(original[below], cleaned[below])
    assert not (layout.quarantine / path).exists()
    leakgate.require_pass(layout)
    shutil.rmtree(tmp_path / "runtime", ignore_errors=True)
