"""A notebook's code cells in one execute request (issue 15): the same executed notebook.

Warm kernels run every code cell of a notebook with one request
(:mod:`sendit_helpers.run.cellrunner`, :mod:`sendit_helpers.run.onerequest`);
the executed notebook must be the one papermill makes cell by cell (sources,
outputs, cell numbers, papermill's status per cell, the error cell), for the
four stage notebooks and for a notebook that prints, draws, shows tables,
widgets and display updates, and fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from sendit_helpers.core.errors import StageError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.run.cellrunner import CellOutputs
from sendit_helpers.run.pipeline import PIPELINE, run_batch
from sendit_helpers.run.runner import Stage, WarmKernels, notebook_path, run_stage
from sendit_helpers.samples import synthetic
from tests.helpers_cli import TINY, stage_notebook

#: What differs between two runs of one notebook: times, widget model ids, and which
#: released image an upload manifest's row names (uploads end in any order).
_VARYING = re.compile(r"\d{4}-\d\d-\d\d[T ][\d:.+Z]+|[0-9a-f]{32}|IR[0-9a-f]+_\d+_\d+\.dcm")


def _executed(path: Path) -> list[Any]:
    """An executed notebook without its times: what both paths must write the same."""
    nb = json.loads(path.read_text())
    cells = [
        (
            cell["cell_type"],
            cell["source"],
            cell.get("execution_count"),
            cell.get("outputs"),
            sorted(cell["metadata"].get("execution", {})),
            {k: cell["metadata"].get("papermill", {}).get(k) for k in ("status", "exception")},
        )
        for cell in nb["cells"]
    ]
    meta = {k: v for k, v in nb["metadata"].items() if k not in ("papermill", "widgets")}
    if "widgets" in nb["metadata"]:  # their ids are random, their order too; a rate varies
        states = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        meta["widgets"] = sorted(state["model_name"] for state in states.values())
    meta["papermill.exception"] = nb["metadata"]["papermill"]["exception"]
    return json.loads(_VARYING.sub("T", json.dumps([cells, meta], sort_keys=True)))


def _rows_in_any_order(executed: list[Any]) -> list[Any]:
    """Outputs' lines sorted: the upload manifest's rows come in the order uploads end."""
    for cell in executed[0]:
        for out in cell[3] or []:
            for key, value in out.get("data", {}).items():
                out["data"][key] = sorted(value) if isinstance(value, list) else value
    return executed


@pytest.mark.slow
def test_stage_notebooks_equal_one_request_or_cell_by_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four stages of a tiny batch write the same notebooks either way (each run in
    a new work folder of the same name, with the same site secret)."""
    monkeypatch.setenv("SENDIT_SITE_SECRET", "6f6e652d72657175657374")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # inline figures, as in ``sendit run``
    folder = tmp_path / "in" / "b"
    synthetic.make_batch(folder, TINY)
    work = tmp_path / "work"
    layout = BatchLayout.for_batch(folder, work)
    seen: dict[bool, list[Any]] = {}
    for one in (False, True):
        with WarmKernels(work, one_request=one):
            status = run_batch(layout, PIPELINE, [], {"PROGRESS": False})
        assert status.status == "done", status.detail
        seen[one] = [_rows_in_any_order(_executed(notebook_path(s, layout))) for s in PIPELINE]
        work.rename(tmp_path / f"work-{one}")
    for a, b in zip(seen[True], seen[False], strict=True):
        assert a == b


_CELLS = [
    "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3, 2]);",
    "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
    "from IPython.display import Markdown, clear_output, display\n"
    "shown = display(Markdown('*first*'), display_id=True)\n"
    "print('cleared')\nclear_output()\nprint('kept')\nclear_output(wait=True)\n"
    "display(Markdown('after a delayed clear'))",
    "shown.update(Markdown('*updated*'))\n6 * 7",
    "",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='steps'):\n    pass",
    "x = _ + 1\nx",
    "raise ValueError('the cell went wrong')",
    "print('never runs')",
]


def _notebook(path: Path, cells: list[str]) -> Path:
    code = [nbformat.v4.new_code_cell(source) for source in cells]
    md = nbformat.v4.new_markdown_cell
    return stage_notebook(path, [md("# A notebook"), *code, md("the end")])


@pytest.mark.slow
def test_prints_figures_tables_widgets_and_a_failing_cell_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams, a figure, a DataFrame, display updates and clears, a tqdm widget, ``_``
    and a failing cell: the same executed notebook and the same stage error either way."""
    monkeypatch.delenv("MPLBACKEND", raising=False)  # inline figures, as in ``sendit run``
    folder = tmp_path / "in" / "b"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    source = _notebook(tmp_path / "many.ipynb", _CELLS)
    monkeypatch.setattr(Stage, "source", lambda self: source)
    seen: dict[bool, tuple[str, list[Any]]] = {}
    for one in (False, True):
        with WarmKernels(tmp_path / "work", one_request=one):
            with pytest.raises(StageError, match=r"failed for batch b: ValueError") as err:
                run_stage(Stage.INSPECT, layout, html=False)
        seen[one] = (str(err.value), _executed(notebook_path(Stage.INSPECT, layout)))
    assert seen[True] == seen[False]
    message, (cells, meta) = seen[True]
    assert message.endswith("(cell 10)")
    assert "widgets" in meta  # the tqdm bar's widget state
    outputs = {"".join(cell[1]): cell[3] for cell in cells}
    assert [out["output_type"] for out in outputs[_CELLS[1]]] == ["display_data"]
    assert outputs[_CELLS[4]][-1]["data"] == {"text/plain": ["42"]}
    statuses = [c[5]["status"] for c in cells]
    assert statuses[-2:] == ["pending", "pending"], "cells after the failing one ran"


def test_cell_outputs_as_nbclient_builds_them() -> None:
    """Streams, clears (also delayed) and display updates, in an earlier cell too."""
    outputs = CellOutputs()
    outputs.start()
    shown = {"data": {"text/plain": "1"}, "metadata": {}, "transient": {"display_id": "d"}}
    outputs.message("display_data", shown)
    outputs.message("stream", {"name": "stdout", "text": "a\n"})
    outputs.start()
    outputs.message("stream", {"name": "stdout", "text": "gone\n"})
    outputs.message("clear_output", {"wait": True})
    outputs.message("update_display_data", {**shown, "data": {"text/plain": "2"}})
    assert outputs.cells[1] == [{"output_type": "stream", "name": "stdout", "text": "gone\n"}]
    outputs.message("execute_result", {"data": {"text/plain": "3"}, "metadata": {},
                                       "execution_count": 2})  # fmt: skip
    assert outputs.cells[0][0]["data"] == {"text/plain": "2"} and outputs.touched == {0}
    assert outputs.cells[1] == [
        {
            "output_type": "execute_result",
            "data": {"text/plain": "3"},
            "metadata": {},
            "execution_count": 2,
        }  # fmt: skip
    ]
    outputs.message("error", {"ename": "ValueError", "evalue": "v", "traceback": ["t"]})
    outputs.message("clear_output", {"wait": False})
    assert outputs.cells == [[outputs.cells[0][0], outputs.cells[0][1]], []]


@pytest.mark.slow
def test_a_dead_kernel_is_a_stage_error_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel killed in the middle of the one request: "the kernel stopped", the cells
    that ran keep their outputs (written as the engine ends), and the next notebook gets a
    fresh kernel (its notebook written once, complete, after the engine)."""
    folder = tmp_path / "in" / "b"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    # killed a moment into the next cell, as the OOM killer kills a working kernel: a
    # record handed to ZMQ is on the wire a few milliseconds later, and a kernel killed
    # within them loses it (seen once in CI when the kill came at once)
    dying = _notebook(
        tmp_path / "dying.ipynb",
        ["print('before')", "import os, time\ntime.sleep(0.5)\nos.kill(os.getpid(), 9)"],
    )
    fine = _notebook(tmp_path / "fine.ipynb", ["print('fine')"])
    with WarmKernels(tmp_path / "work"):
        monkeypatch.setattr(Stage, "source", lambda self: dying)
        with pytest.raises(StageError, match=r"the kernel stopped \(DeadKernelError\)"):
            run_stage(Stage.INSPECT, layout, html=False)
        cells = json.loads(notebook_path(Stage.INSPECT, layout).read_text())["cells"]
        assert "".join(cells[3]["outputs"][0]["text"]) == "before\n"
        monkeypatch.setattr(Stage, "source", lambda self: fine)
        run_stage(Stage.INSPECT, layout, html=False)
    written = json.loads(notebook_path(Stage.INSPECT, layout).read_text())
    cells = written["cells"]
    assert "".join(cells[3]["outputs"][0]["text"]) == "fine\n" and cells[3]["execution_count"] == 3
    # written once at the end, by papermill, with what the end of the notebook records
    assert written["metadata"]["papermill"]["duration"] is not None
    assert {c["metadata"]["papermill"]["status"] for c in cells} == {"completed"}
