"""HTML copies of executed notebooks read as reports: header, no code, final progress values."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pydicom
import pytest

from sendit_helpers import __version__
from sendit_helpers.deid import plots
from sendit_helpers.run.htmlexport import offline
from sendit_helpers.run.runner import export_html, open_batch

BAR = {
    "bar": {
        "model_name": "HBoxModel",
        "state": {"children": ["IPY_MODEL_d", "IPY_MODEL_p", "IPY_MODEL_n"]},
    },
    "d": {"model_name": "HTMLModel", "state": {"value": "inspect: 100%"}},
    "p": {"model_name": "FloatProgressModel", "state": {"value": 18.0, "max": 18.0}},
    "n": {"model_name": "HTMLModel", "state": {"value": "\u200718/18\u2007[00:05&lt;00:00]"}},
    "line": {"model_name": "HTMLModel", "state": {"value": "<b>3 of 7 decided</b>"}},
    "ui": {"model_name": "VBoxModel", "state": {"children": []}},
}


def _view(model_id: str, fallback: str) -> dict[str, object]:
    return nbformat.v4.new_output(
        "display_data",
        data={
            "application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2},
            "text/plain": fallback,
        },
    )


def _executed(folder: Path, failed: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("layout, settings = open_batch(batch_dir, work_dir)")
    code.outputs = [
        _view("bar", "inspect:   0%|          | 0/18"),
        _view("line", "HTML(value='')"),
        _view("ui", "VBox(children=(...))"),
    ]
    if failed:
        code.outputs.append(
            nbformat.v4.new_output("error", ename="ReviewError", evalue="x", traceback=[])
        )
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · Inspect a batch"), code]
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": BAR, "version_major": 2}
    }
    nb.metadata["papermill"] = {
        "parameters": {"batch_dir": "/data/export/" + "x" * 120, "overrides": {"WORKERS": 2}},
        "start_time": "2026-12-03T10:00:00+00:00",
        "end_time": "2026-12-03T10:00:09+00:00",
        "exception": failed,
    }
    path = folder / "b7" / "phi" / "notebooks" / "01_inspect.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def test_report_header_final_progress_and_no_code(tmp_path: Path) -> None:
    text = export_html(_executed(tmp_path)).read_text()
    assert "sendit · inspect · batch b7" in text
    assert "status</th><td>done" in text and "2026-12-03T10:00:09+00:00" in text
    assert f"sendit-notebooks {__version__}" in text
    assert f"pydicom {pydicom.__version__}" in text
    assert "/data/export/" + "x" * 120 in text and "WORKERS=2" in text  # one summary, whole
    assert "open_batch(batch_dir" not in text  # code left out
    assert "inspect: 100%|██████████| 18/18 [00:05&lt;00:00]" in text
    assert "0/18" not in text
    assert "<b>3 of 7 decided</b>" in text and "interactive widget" in text
    assert "widget-state+json" not in text


def test_report_of_a_failed_run(tmp_path: Path) -> None:
    assert "status</th><td>failed" in export_html(_executed(tmp_path, failed=True)).read_text()


def test_tables_and_titles_are_not_cut(tmp_path: Path) -> None:
    source = tmp_path / "in" / "b1"
    source.mkdir(parents=True)
    (source / "x.txt").write_text("x")
    open_batch(source, tmp_path / "work")
    long = "/data/" + "y" * 200
    assert long in pd.DataFrame({"path": [long]}).to_html()
    fig = plots.montage([], [], 64, "series 3 — " + "A VERY LONG SERIES DESCRIPTION " * 4)
    title = fig._suptitle.get_text()  # noqa: SLF001 - the drawn title
    assert "\n" in title


def test_montage_png_draws_thumbnails_and_reasons(tmp_path: Path) -> None:
    import io

    from PIL import Image
    from pydicom.data import get_testdata_file

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    ct = str(get_testdata_file("CT_small.dcm"))
    short = Image.open(io.BytesIO(plots.montage_png([ct, broken], ["#1", "! #2"], 64, "s")))
    long = Image.open(
        io.BytesIO(plots.montage_png([ct], ["#1"], 64, "A VERY LONG SERIES DESCRIPTION " * 4))
    )
    assert short.format == "PNG" and short.width > 2 * 64
    assert long.height > Image.open(io.BytesIO(plots.montage_png([ct], ["#1"], 64, "s"))).height
    grey = np.asarray(short.convert("L"))
    assert grey[:, : 64 + 6].std() > 10  # the CT thumbnail is drawn, not a blank cell


def _as_soup_writes(page: str) -> str:
    """``page`` parsed and written again as nbconvert's last step does (BeautifulSoup)."""
    from bs4 import BeautifulSoup

    return str(BeautifulSoup(page, features="html.parser"))


def test_html_copy_is_what_nbconvert_writes(tmp_path: Path) -> None:
    """The copy's exporter (markdown rendered once per thread, the notebook checked once and
    not deep-copied, the BeautifulSoup step's attributes added in place) writes the document
    a plain nbconvert HTML exporter does, from its caches too: written by BeautifulSoup, it
    is nbconvert's page byte for byte."""
    import re

    import nbconvert

    from sendit_helpers.run.report import prepare

    path = _executed(tmp_path)
    nb = nbformat.read(path, as_version=4)
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    pictured = nbformat.v4.new_markdown_cell("## Figure\n\n![dot](attachment:dot.png)")
    pictured.attachments = {"dot.png": {"image/png": png}}
    import base64
    import io

    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 255, (48, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    big = base64.b64encode(buffer.getvalue()).decode()  # set aside (long), png is not
    nb.cells[1].outputs.append(nbformat.v4.new_output("display_data", data={"image/png": big}))
    unclosed = nbformat.v4.new_markdown_cell("<div class='note'>\n\nleft *open*")
    nb.cells += [pictured, nbformat.v4.new_markdown_cell("# 01 · Inspect a batch"), unclosed]
    nbformat.write(nb, path)
    copies = [export_html(path).read_text() for _ in range(3)]
    plain = offline(
        nbconvert.HTMLExporter(
            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
        )
    )
    expected, _ = plain.from_notebook_node(prepare(nbformat.read(path, as_version=4), path))

    def same_header_id(text: str) -> str:  # the header cell is new (a random id) each time
        return re.sub(r'id="cell-id=[0-9a-f]{8}"', 'id="cell-id=header"', text, count=1)

    assert "data:image/png;base64," + png in expected and len(big) > 2000
    assert "data:image/png;base64," + big in expected
    assert [same_header_id(_as_soup_writes(c)) for c in copies] == [same_header_id(expected)] * 3
    assert all(len(c) == len(copies[0]) for c in copies)
    assert 'tabindex="0"' in copies[0] and f'alt="{_NO_ALT}"' in copies[0]


_NO_ALT = "No description has been provided for this image"


def _nbconvert_step(page: str) -> str:
    """nbconvert 7's ``HTMLExporter`` last step, as it is written there."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page, features="html.parser")
    for elem in soup.select("img:not([alt])"):
        elem.attrs["alt"] = _NO_ALT
    for elem in soup.select(".jp-Notebook div.jp-Cell-inputWrapper"):
        elem.attrs["tabindex"] = "0"
    for elem in soup.select(".jp-Notebook div.jp-OutputArea-output"):
        elem.attrs["tabindex"] = "0"
    return str(soup)


@pytest.mark.parametrize(
    "body",
    [
        '<img src="a.png"><img alt="" src="b.png"><IMG SRC=c.png /><img src="d.png"/>',
        '<div class="jp-Cell-inputWrapper">before the notebook</div>'
        '<main class="jp-Notebook x"><div class="a jp-OutputArea-output b" tabindex="-1">x</div>'
        "<div class='jp-Cell-inputWrapper'>y</div><div class=jp-OutputArea-output>z</div></main>",
        '<main class="jp-Notebook"><!-- <img src="x"> <div class="jp-OutputArea-output"> -->'
        '<script>var s = "<img src=y>";</script><style>div > img { }</style>'
        '<div title="a > b" class="jp-OutputArea-output">w</div>'
        '<p>1 < 2 <img title=\'q"> \' src="z"></p></main>',
    ],
)
def test_soup_step_adds_what_nbconvert_adds(body: str) -> None:
    """``htmlexport.soup_step`` marks the tags nbconvert's BeautifulSoup step marks (images
    without alt text, cell wrappers and outputs below ``.jp-Notebook``), passing over
    comments, scripts and styles: BeautifulSoup writes both pages the same."""
    from sendit_helpers.run.htmlexport import soup_step

    page = f"<!DOCTYPE html>\n<html><head><title>t</title></head><body>{body}</body></html>"
    marked = soup_step(page)
    assert _as_soup_writes(marked) == _nbconvert_step(page)
    assert marked != page


def test_html_copy_after_the_warm_up_is_the_same(tmp_path: Path) -> None:
    """A thread's exporter made ahead with a throw-away page (``htmlexport.warm_up``)
    writes the same copy as one made by the copy itself."""
    import re
    import threading

    from sendit_helpers.run.htmlexport import warm_up

    path = _executed(tmp_path)
    pages: dict[bool, str] = {}

    def copy(warm: bool) -> None:  # each in a new thread: a new exporter
        if warm:
            warm_up()
        pages[warm] = export_html(path).read_text()

    for warm in (False, True):
        thread = threading.Thread(target=copy, args=(warm,))
        thread.start()
        thread.join()

    def same_header_id(text: str) -> str:  # the header cell is new (a random id) each time
        return re.sub(r'id="cell-id=[0-9a-f]{8}"', 'id="cell-id=header"', text, count=1)

    assert set(pages) == {False, True}
    assert same_header_id(pages[True]) == same_header_id(pages[False])
    assert "Warm-up" not in pages[True] and "throw away" not in pages[True]


def test_nbformat_loads_without_the_iri_grammars() -> None:
    """jsonschema (under nbformat) would build rfc3987_syntax's lark grammars at import,
    seconds before the first notebook: a process that runs notebooks declines them."""
    import subprocess
    import sys

    code = (
        "import sys; from sendit_helpers.run import runner; import nbformat, nbconvert; "
        "print(sys.modules.get('rfc3987_syntax') is None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
