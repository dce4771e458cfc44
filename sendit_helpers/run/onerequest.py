"""A notebook's code cells in one execute request: the client's side (issue 15).

The warm kernels' papermill client (:func:`~sendit_helpers.run.runner.run_stage`
with :class:`~sendit_helpers.run.runner.WarmKernels`) sends one request that
runs every code cell in the kernel (:func:`~sendit_helpers.run.cellrunner.run_cells`)
instead of one request per cell, and fills the notebook from the records that
come back, as papermill and nbclient would have filled it cell by cell:
outputs, cell numbers, nbclient's ``execution`` timings and papermill's cell
metadata (``start_time``, ``end_time``, ``duration``, ``status``,
``exception``), the first failing cell marked failed and the cells after it
left pending, so that papermill's own ``raise_for_execution_errors`` finds the
error and writes its error cell as before.  The executed notebook is still
written during the run (papermill's ``save``, which the runner keeps sparse).
"""

from __future__ import annotations

import datetime
import importlib
from queue import Empty
from typing import Any

from sendit_helpers.run.cellrunner import MIMETYPE

#: Seconds between two checks that the kernel is alive while no message comes.
ALIVE_EVERY = 1.0


def runs(cell: Any, skip_tag: str = "skip-execution") -> bool:
    """Whether nbclient would execute ``cell``: code, not blank, not tagged ``skip_tag``."""
    return bool(
        cell.cell_type == "code"
        and cell.source.strip()
        and skip_tag not in cell.metadata.get("tags", [])
    )


def fits(client: Any) -> bool:
    """Whether the notebook of ``client`` (a papermill notebook client) can run in one request.

    Not when a cell may need the kernel's event loop (top-level ``await``), nor
    when the client has a cell timeout, error names it lets pass or cell hooks:
    those run cell by cell as before.
    """
    if client.timeout or client.timeout_func is not None or client.allow_error_names:
        return False
    hooks = ("on_cell_start", "on_cell_execute", "on_cell_complete", "on_cell_executed",
             "on_cell_error")  # fmt: skip
    if any(getattr(client, hook, None) is not None for hook in hooks):
        return False
    cells = [c for c in client.nb.cells if runs(c, client.skip_cells_with_tag)]
    return not any("await" in cell.source or "async" in cell.source for cell in cells)


def driver(sources: list[str], may_fail: list[bool]) -> str:
    """The code of the one request: :func:`~sendit_helpers.run.cellrunner.run_cells`."""
    return (
        "__import__('sendit_helpers.run.cellrunner', fromlist=['run_cells'])"
        f".run_cells({sources!r}, {may_fail!r})\n"
    )


def execute(client: Any) -> None:
    """Run the code cells of ``client``'s notebook in its kernel with one request.

    Parameters
    ----------
    client : papermill.clientwrap.PapermillNotebookClient
        With its kernel client started (``client.kc``) and its notebook
        manager (``client.nb_man``).

    Raises
    ------
    nbclient.exceptions.DeadKernelError
        The kernel died.
    RuntimeError
        The request itself failed (not one of the cells).
    """
    from nbclient.util import run_sync

    run_sync(_execute)(client)


class _Filler:
    """Fills the notebook of a client from the records of :func:`cellrunner.run_cells`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.nb = client.nb
        self.manager = client.nb_man
        tag = client.skip_cells_with_tag
        self.runnable = [i for i, cell in enumerate(self.nb.cells) if runs(cell, tag)]
        self.may_fail = [
            not client.force_raise_errors
            and (
                client.allow_errors
                or "raises-exception" in self.nb.cells[i].metadata.get("tags", [])
            )
            for i in self.runnable
        ]
        self.next = 0  # the first cell whose papermill metadata is not filled yet
        self.failed = False
        self.last = datetime.datetime.now(datetime.UTC)

    def in_flight(self) -> int:
        """The notebook index of the code cell running now (or the next one)."""
        following = [i for i in self.runnable if i >= self.next]
        return following[0] if following else len(self.nb.cells) - 1

    def passed(self, upto: int, when: datetime.datetime) -> None:
        """Cells before ``upto`` that do not run (markdown, blank): run at ``when``."""
        for index in range(self.next, upto):
            meta = self.nb.cells[index].metadata.papermill
            meta["start_time"] = meta["end_time"] = when.isoformat()
            meta["duration"] = 0.0
            meta["status"] = self.manager.COMPLETED
            meta["exception"] = False
        self.next = max(self.next, upto)

    def record(self, record: dict[str, Any]) -> None:
        """Apply one cell's record: outputs, number, timings, status."""
        from_dict: Any = importlib.import_module("nbformat").from_dict

        k = int(record["cell"])
        index = self.runnable[k]
        start = _utc(record["start"])
        end = _utc(record["end"])
        self.passed(index, start)
        cell = self.nb.cells[index]
        cell.outputs = [from_dict(out) for out in record["outputs"]]
        cell.execution_count = record["execution_count"]
        if self.client.record_timing:
            cell.metadata["execution"] = {
                "iopub.status.busy": _z(start),
                "iopub.execute_input": _z(start),
                "shell.execute_reply": _z(end),
                "iopub.status.idle": _z(end),
            }
        for j, outputs in record["updates"]:
            self.nb.cells[self.runnable[int(j)]].outputs = [from_dict(out) for out in outputs]
        meta = cell.metadata.papermill
        meta["start_time"] = start.isoformat()
        meta["status"] = self.manager.RUNNING
        meta["exception"] = False
        if not record["ok"] and not self.may_fail[k]:
            self.failed = True
            self.manager.cell_exception(cell, cell_index=index)
        meta["end_time"] = end.isoformat()
        meta["duration"] = (end - start).total_seconds()
        if meta["status"] != self.manager.FAILED:
            meta["status"] = self.manager.COMPLETED
        self.next = index + 1
        self.last = end
        self.manager.save()

    def finish(self) -> None:
        """The cells after the last code cell (none after a failed one: papermill stops)."""
        if not self.failed:
            self.passed(len(self.nb.cells), self.last)

    def stopped(self) -> None:
        """The kernel stopped: the cell that ran ends as papermill ends it (``cell_complete``)."""
        index = self.in_flight()
        self.passed(index, self.last)
        if index >= self.next:
            cell = self.nb.cells[index]
            self.manager.cell_start(cell, index)
            self.manager.cell_complete(cell, index)
            self.next = index + 1


async def _execute(client: Any) -> None:
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import ensure_async

    filler = _Filler(client)
    sources = [client.nb.cells[i].source for i in filler.runnable]
    kc = client.kc
    msg_id = kc.execute(
        driver(sources, filler.may_fail), silent=True, store_history=False, stop_on_error=True
    )
    problem = ""
    while True:
        try:
            msg = await ensure_async(kc.iopub_channel.get_msg(timeout=ALIVE_EVERY))
        except Empty:
            if not await ensure_async(kc.is_alive()):
                filler.stopped()
                raise DeadKernelError("Kernel died") from None
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msg_type = msg["msg_type"]
        content = msg["content"]
        if msg_type == "status":
            if content["execution_state"] == "idle":
                break
        elif msg_type == "display_data" and MIMETYPE in content["data"]:
            filler.record(content["data"][MIMETYPE])
        elif msg_type.startswith("comm"):
            client.handle_comm_msg([], msg, filler.in_flight())
        elif msg_type == "error":
            problem = str(content.get("ename", "error"))
    reply = await client.async_wait_for_reply(msg_id)
    if problem or reply is None or reply["content"].get("status") != "ok":
        filler.stopped()
        raise RuntimeError(f"the notebook's cells could not be run in one request ({problem})")
    filler.finish()


def _tags(cell: Any) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(float(seconds), datetime.UTC)


def _z(when: datetime.datetime) -> str:
    """A time as nbclient writes its ``execution`` timings."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
