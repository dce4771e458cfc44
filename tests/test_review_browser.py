"""The reviewer in a real browser: Voilà and JupyterLab serve 03_review_phi, Chromium drives it.

Each test draws a rectangle with the mouse on an image with burned-in text and
checks it black in the preview, decides with the keyboard, and checks
``phi/review/decisions.csv``.  In Voilà the rectangle also becomes a site
``%filter`` rule, and the next batch from the same scanner opens with it
suggested; in JupyterLab the keys never reach the notebook (same cells, same
types) and the saved notebook reopens without widget errors and lands on the
first undecided image.

A screenshot of each step is kept under ``$SENDIT_TEST_ARTIFACTS`` (default
``<temp dir>/sendit-test-artifacts``), one folder per test; the paths are printed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import nbformat
import numpy as np
import pydicom
import pytest

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import inspect, review_items
from sendit_helpers.stages.review import Box
from sendit_helpers.stages.review_decisions import Decision, DecisionLog
from sendit_helpers.stages.reviewer_keys import KEYS

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
STARTUP_TIMEOUT = 60.0
ARTIFACTS = Path(
    os.environ.get("SENDIT_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "sendit-test-artifacts"
)
#: Where to drag on the burned-in OT image (256 x 256): over its first lines of text.
DRAG = Box(4, 4, 120, 36)
#: True once the progress line reads "<n> of ...".
SHOWN = "name => document.querySelector('.sendit-item-name').innerText === name"
DECIDED = "n => document.querySelector('.sendit-progress').innerText.trim().startsWith(n + ' of')"


@dataclass
class Site:
    """A de-identified batch and the review notebook parameterized for it."""

    layout: BatchLayout
    notebook: Path
    tmp: Path


class Shots:
    """Numbered full-page screenshots of one test under :data:`ARTIFACTS`."""

    def __init__(self, name: str) -> None:
        self.folder = ARTIFACTS / name
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.taken: list[Path] = []

    def __call__(self, page: Any, what: str, show: str = "") -> None:
        """Screenshot ``page`` as step ``what``, scrolled to the element ``show`` first."""
        if show:
            page.locator(show).first.scroll_into_view_if_needed()
        path = self.folder / f"{len(self.taken) + 1:02d}-{what}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        print(f"screenshot: {path}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tool(name: str) -> Path:
    found = Path(sys.executable).with_name(name)
    if not found.exists():
        pytest.fail(f"{found} is missing; run make test (it installs the test extras)")
    return found


def _notebook(target: Path, source: Path, work: Path, site_filters: Path) -> None:
    """The review notebook parameterized for the batch ``source``, written to ``target``."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))
    overrides = {"REVIEWER": "browser-test", "PROGRESS": False, "SITE_FILTERS": str(site_filters)}
    nb = parameterize_notebook(
        nb, {"batch_dir": str(source), "work_dir": str(work), "overrides": overrides}
    )
    nbformat.write(nb, target)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A de-identified synthetic batch and ``site/review.ipynb`` parameterized for it.

    The site filter file (``SITE_FILTERS``) is ``<tmp>/params/site-filters.deid``.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; run make test (it installs chromium)")
    source = tmp_path / "in" / "b1"
    synthetic.make_batch(source)
    layout, settings = open_batch(source, tmp_path / "work", [], {"PROGRESS": False})
    upstream.deidentify(layout, settings)
    served = tmp_path / "site" / "review.ipynb"
    served.parent.mkdir()
    _notebook(served, source, tmp_path / "work", tmp_path / "params" / "site-filters.deid")
    return Site(layout, served, tmp_path)


@contextmanager
def _serve(command: list[str], probe: str, site: Site, name: str) -> Iterator[None]:
    """Run a notebook server until the test ends; wait until ``probe`` answers."""
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        JUPYTER_RUNTIME_DIR=str(site.tmp / f"{name}-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(site.tmp / f"{name}-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(site.tmp / f"{name}-workspaces"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    settings = site.tmp / f"{name}-settings" / "@jupyterlab"
    for plugin, values in {
        "docmanager-extension/plugin": {"autosave": False},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log_path = site.tmp / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        command, cwd=site.notebook.parent, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{name} did not answer within {STARTUP_TIMEOUT:.0f} s; see {log_path}"
                    )
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def voila(site: Site) -> Iterator[str]:
    """Voilà serving the folder of the review notebook: its base URL (``voila/render/<name>``)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [
        str(_tool("voila")),
        str(site.notebook.parent),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--VoilaConfiguration.show_tracebacks=True",
    ]
    with _serve(command, url + "voila/static/voila.js", site, "voila"):
        yield url


@pytest.fixture
def lab(site: Site) -> Iterator[str]:
    """JupyterLab serving the folder of the review notebook: the notebook's URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    command = [
        str(_tool("jupyter")),
        "lab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--IdentityProvider.token=",
        f"--ServerApp.root_dir={site.notebook.parent}",
    ]
    with _serve(command, base + "api/status", site, "lab"):
        yield base + "lab/tree/review.ipynb"


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)


def _drag_box(page: Any, box: Box, columns: int) -> None:
    """Draw ``box`` (source pixels of an image ``columns`` wide) with the mouse."""
    image = page.locator(".sendit-draw img").first
    image.scroll_into_view_if_needed()
    where = image.bounding_box()
    scale = where["width"] / columns
    x0, y0 = where["x"] + box.x * scale, where["y"] + box.y * scale
    x1, y1 = x0 + box.width * scale, y0 + box.height * scale
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('.sendit-boxes').innerText.includes('to scrub: x=')"
    )


def _assert_black_in_preview(page: Any, box: Box, columns: int) -> None:
    """The preview shows ``box`` black (a margin inside it; the text around it stays)."""
    page.wait_for_timeout(300)  # the new preview PNG has to arrive
    preview = page.locator(".sendit-preview").first
    image = mpimg.imread(io.BytesIO(preview.screenshot()), format="png")[..., :3]
    scale = image.shape[1] / columns
    inside = image[
        int((box.y + 3) * scale) : int((box.y + box.height - 3) * scale),
        int((box.x + 3) * scale) : int((box.x + box.width - 3) * scale),
    ]
    assert inside.size and float(inside.max()) < 0.05, "the drawn rectangle is not black"
    assert float(image.max()) > 0.5, "the rest of the preview should stay visible"


def _focus_reviewer(page: Any) -> None:
    page.locator(".sendit-progress").first.click()
    page.wait_for_function(
        "() => document.querySelector('.sendit-reviewer').contains(document.activeElement)"
    )


def _near(found: Box, wanted: Box, slack: int = 3) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(found, wanted, strict=True))


def _check_scrubbed(layout: BatchLayout, item: str, box: Box) -> None:
    path = review_items.load_items(layout).set_index("item").loc[item, "path"]
    original = pydicom.dcmread(review_items.originals_dir(layout) / path).pixel_array
    cleaned = pydicom.dcmread(layout.release / path).pixel_array
    inside = (slice(box.y, box.y + box.height), slice(box.x, box.x + box.width))
    assert original[inside].any() and not cleaned[inside].any()
    below = (slice(box.y + box.height + 30, None), slice(None))
    assert np.array_equal(original[below], cleaned[below])


def _next_batch(site: Site) -> str:
    """A second batch from the same scanner, inspected (site rules included) and
    de-identified, served as ``site/next.ipynb``: the name of its OT image."""
    source = site.tmp / "in" / "b2"
    synthetic.make_batch(source, batchspec.BatchSpec(seed=2))
    site_filters = site.tmp / "params" / "site-filters.deid"
    overrides = {"PROGRESS": False, "SITE_FILTERS": str(site_filters), "OCR_SCREEN": "off"}
    layout, settings = open_batch(source, site.tmp / "work", [], overrides)
    inspect.inspect_batch(layout, settings)
    upstream.deidentify(layout, settings)
    _notebook(site.notebook.with_name("next.ipynb"), source, site.tmp / "work", site_filters)
    items = review_items.load_items(layout)
    return str(items.loc[items["modality"] == "OT", "item"].iloc[0])


def test_draw_and_decide_with_keys_in_voila(site: Site, voila: str) -> None:
    from playwright.sync_api import sync_playwright

    layout = site.layout
    items = review_items.load_items(layout)
    ct = items[items["modality"] == "CT"]
    ot = items[items["modality"] == "OT"].iloc[0]
    us = list(items.loc[items["modality"] == "US", "item"])
    shots = Shots("voila")
    started = time.monotonic()
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(30_000)
            page.goto(voila + "voila/render/review.ipynb")
            page.locator(".sendit-progress").wait_for()
            assert page.locator(".sendit-progress").inner_text().startswith(
                f"0 of {len(items)} decided"
            )
            assert page.locator("button.sendit-release").inner_text() == "Release (r)"
            shots(page, "opened")
            _focus_reviewer(page)
            page.keyboard.press(KEYS["release-series"])
            page.wait_for_function(DECIDED, arg=len(ct))
            page.wait_for_function(SHOWN, arg=ot["item"])
            _drag_box(page, DRAG, int(ot["columns"]))
            _assert_black_in_preview(page, DRAG, int(ot["columns"]))
            shots(page, "drawn-and-black-in-preview")
            page.keyboard.press(KEYS["make-rule"])
            page.wait_for_function(
                "() => document.querySelector('.sendit-message').innerText.includes('written to')"
            )
            shots(page, "rule-made", ".sendit-message")
            page.keyboard.press(KEYS["scrub"])
            page.wait_for_function(DECIDED, arg=len(ct) + 1)
            page.keyboard.press(KEYS["keep-series"])  # both ultrasound images
            page.wait_for_function(DECIDED, arg=len(items))
            page.keyboard.press(KEYS["apply"])
            page.wait_for_function(
                "() => document.querySelector('.sendit-apply-result').innerText.includes('Applied')"
            )
            shots(page, "applied")
            drawn = DecisionLog(layout).current().set_index("item").loc[ot["item"], "boxes"][0]

            # the next batch from the same scanner arrives with the rectangle suggested
            nxt = _next_batch(site)
            page.goto(voila + "voila/render/next.ipynb")
            page.locator(".sendit-progress").wait_for()
            _focus_reviewer(page)
            page.keyboard.press(KEYS["release-series"])
            page.wait_for_function(SHOWN, arg=nxt)
            page.wait_for_function(
                "box => document.querySelector('.sendit-suggestions').innerText.includes(box)",
                arg=str(drawn),
            )
            assert page.locator(".sendit-draw svg rect").count() >= 1
            shots(page, "next-batch-arrives-with-the-rule-suggested", ".sendit-item")
            page.locator("button.sendit-accept-one").first.click()
            page.wait_for_function(
                "box => document.querySelector('.sendit-boxes').innerText"
                ".includes('scrub: ' + box)",
                arg=str(drawn),
            )
            _assert_black_in_preview(page, drawn, int(ot["columns"]))
            shots(page, "suggestion-accepted-black-in-preview", ".sendit-item")
        finally:
            browser.close()
    print(f"{time.monotonic() - started:.1f} s in the browser")

    current = DecisionLog(layout).current().set_index("item")
    assert set(current["reviewer"]) == {"browser-test"}
    assert (current.loc[list(ct["item"]), "decision"] == Decision.RELEASE).all()
    assert (current.loc[us, "decision"] == Decision.KEEP).all()
    assert current.loc[ot["item"], "decision"] == Decision.SCRUB
    (drawn,) = current.loc[ot["item"], "boxes"]
    assert _near(drawn, DRAG), f"drew {DRAG}, the log has {drawn}"
    _check_scrubbed(layout, ot["item"], drawn)
    gaterecord.require_pass(layout)


def _cells(page: Any) -> list[str]:
    """The type of each cell of the open notebook, in order."""
    found: list[str] = page.eval_on_selector_all(
        ".jp-Notebook .jp-Cell",
        "cells => cells.map(c => c.classList.contains('jp-CodeCell') ? 'code'"
        " : c.classList.contains('jp-MarkdownCell') ? 'markdown' : 'raw')",
    )
    return found


def _run_all(page: Any) -> None:
    """Restart the kernel and run every cell (once the kernel is idle)."""
    page.wait_for_function(
        "() => (document.querySelector('#jp-main-statusbar') || {innerText: ''})"
        ".innerText.includes('Idle')"
    )
    page.locator('[data-command="notebook:restart-run-all"]').first.click()
    page.locator(".jp-Dialog-button.jp-mod-accept").click()


def test_keys_stay_in_the_reviewer_in_jupyterlab(site: Site, lab: str) -> None:
    from playwright.sync_api import sync_playwright

    layout = site.layout
    items = review_items.load_items(layout)
    ct = items[items["modality"] == "CT"]
    ot = items[items["modality"] == "OT"].iloc[0]
    us = list(items.loc[items["modality"] == "US", "item"])
    cells = [cell.cell_type for cell in nbformat.read(site.notebook, as_version=4).cells]
    shots = Shots("jupyterlab")
    started = time.monotonic()
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(lab)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            _run_all(page)
            page.locator(".sendit-progress").wait_for()
            page.wait_for_function(DECIDED, arg=0)
            assert _cells(page) == cells
            shots(page, "run", ".sendit-progress")
            _focus_reviewer(page)
            page.keyboard.press(KEYS["release-series"])
            page.wait_for_function(DECIDED, arg=len(ct))
            # JupyterLab's single-letter shortcuts (change type, delete, move, edit mode, ...)
            for key in ("m", "d", "d", "j", "l", "o", "3", "Enter", "Shift+Enter"):
                page.keyboard.press(key)
            page.wait_for_timeout(300)
            assert _cells(page) == cells, "a key reached JupyterLab's notebook shortcuts"
            page.wait_for_function(SHOWN, arg=ot["item"])
            _drag_box(page, DRAG, int(ot["columns"]))  # the drawing widget has the focus now
            _assert_black_in_preview(page, DRAG, int(ot["columns"]))
            shots(page, "drawn-and-black-in-preview", ".sendit-item")
            page.keyboard.press(KEYS["scrub"])
            page.wait_for_function(DECIDED, arg=len(ct) + 1)
            page.keyboard.press(KEYS["keep"])  # the first ultrasound image
            page.wait_for_function(DECIDED, arg=len(ct) + 2)
            page.keyboard.press(KEYS["apply"])  # "a": JupyterLab would insert a cell above
            page.wait_for_function(
                "() => document.querySelector('.sendit-apply-result').innerText.includes('Applied')"
            )
            assert _cells(page) == cells, "a key reached JupyterLab's notebook shortcuts"
            shots(page, "keys-pressed-cells-unchanged", ".sendit-apply-result")
            page.locator('[data-command="docmanager:save"]').first.click()
            page.wait_for_timeout(1000)
            page.reload()
            page.locator(".sendit-reviewer").first.wait_for()
            page.wait_for_timeout(1000)
            shots(page, "reopened", ".sendit-reviewer")
            assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
            assert _cells(page) == cells
            _run_all(page)
            page.wait_for_function(DECIDED, arg=len(ct) + 2)
            page.wait_for_function(SHOWN, arg=us[1])
            shots(page, "rerun-lands-on-first-undecided", ".sendit-item")
        finally:
            browser.close()
    print(f"{time.monotonic() - started:.1f} s in the browser")

    current = DecisionLog(layout).current().set_index("item")
    assert len(current) == len(ct) + 2 and set(current["reviewer"]) == {"browser-test"}
    assert (current.loc[list(ct["item"]), "decision"] == Decision.RELEASE).all()
    assert current.loc[us[0], "decision"] == Decision.KEEP
    (drawn,) = current.loc[ot["item"], "boxes"]
    assert current.loc[ot["item"], "decision"] == Decision.SCRUB and _near(drawn, DRAG)
    _check_scrubbed(layout, ot["item"], drawn)
