"""Run a notebook's code cells inside its IPython kernel, all with one execute request.

Run through papermill and nbclient, every code cell is its own execute request:
a round trip to the kernel, five or more messages, each output validated on the
client side, about 14 ms of a small machine per cell even for ``x + 1``: most of
a small batch's notebook time.  A warm kernel (:class:`~sendit_helpers.run.runner.WarmKernels`)
instead gets one request that calls :func:`run_cells`, which runs the cells one
after the other in the kernel, as the kernel would run them one request at a time
(``run_cell(source, store_history=True)``: cell numbers, ``Out``, ``_``, figures
drawn at the end of each cell, the ``;`` that hides a result), and captures what
each cell shows as the notebook outputs nbclient would have made of the kernel's
messages: the same messages are caught on their way out of the kernel, so
streams, displays, results, errors, ``clear_output`` and display updates come
out the same.

After each cell, its record goes to the client as one ``display_data`` of the
private type :data:`MIMETYPE` (:func:`~sendit_helpers.run.onerequest.execute`
fills the notebook with it), so a notebook killed halfway keeps the outputs of
its finished cells.  The cells stop at the first one that fails, as papermill
stops, unless that cell may fail (nbclient's ``raises-exception`` tag).  Widget
messages (comms) are not caught: they reach the client as they always do.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sendit_helpers.core.errors import SenditError

#: The private type of the ``display_data`` that carries one cell's record to the client.
MIMETYPE = "application/vnd.sendit.cell+json"

#: The modules the stage notebooks import in their first code cell (and ``open_batch``'s):
#: :func:`preload` imports them as a warm kernel starts (``tests/test_warm_kernels.py``
#: keeps this list in step with the notebooks).
PRELOAD = (
    "sendit_helpers.core.disposition",
    "sendit_helpers.deid.plots",
    "sendit_helpers.run.runner",
    "sendit_helpers.run.upstream",
    "sendit_helpers.stages.deidentify",
    "sendit_helpers.stages.inspect",
    "sendit_helpers.stages.release",
    "sendit_helpers.stages.review_notebook",
    "sendit_helpers.stages.upload",
)

#: Messages that become (or change) a cell's outputs; everything else goes out as usual.
CAPTURED = frozenset(
    {"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"}
)


class CellOutputs:
    """The outputs of a notebook's cells, built from the kernel's output messages.

    What nbclient's ``process_message`` does on the client: one output per
    ``stream``, ``display_data``, ``execute_result`` and ``error`` message;
    ``clear_output`` (also delayed, ``wait=True``); a display with a
    ``display_id`` updated wherever it was shown, also in an earlier cell.

    Attributes
    ----------
    cells : list of list of dict
        Each started cell's outputs (nbformat v4 output dicts), in order.
    touched : set of int
        Earlier cells whose outputs a display update changed since
        :meth:`start` (their outputs are sent again).
    """

    def __init__(self) -> None:
        self.cells: list[list[dict[str, Any]]] = []
        self.touched: set[int] = set()
        self._displays: dict[str, dict[int, list[int]]] = {}
        self._clear_next = False

    def start(self) -> None:
        """Begin the next cell (no outputs yet)."""
        self.cells.append([])
        self.touched = set()
        self._clear_next = False

    def message(self, msg_type: str, content: dict[str, Any]) -> None:
        """Apply one kernel message of type ``msg_type`` to the current cell's outputs.

        Parameters
        ----------
        msg_type : str
            One of :data:`CAPTURED` (others are ignored).
        content : dict
            The message content.
        """
        index = len(self.cells) - 1
        outputs = self.cells[index]
        transient = content.get("transient")
        display_id = transient.get("display_id") if transient else None
        if display_id and msg_type in ("execute_result", "display_data", "update_display_data"):
            self._update(display_id, content)
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_next = True
            else:
                outputs.clear()
                self._forget(index)
            return
        out = _output(msg_type, content)
        if out is None:
            return
        if self._clear_next:
            outputs.clear()
            self._forget(index)
            self._clear_next = False
        if display_id:
            self._displays.setdefault(display_id, {}).setdefault(index, []).append(len(outputs))
        outputs.append(out)

    def _update(self, display_id: str, content: dict[str, Any]) -> None:
        shown = self._displays.get(display_id)
        if shown is None:
            return
        current = len(self.cells) - 1
        for index, positions in shown.items():
            for position in positions:
                output = self.cells[index][position]
                output["data"] = content["data"]
                output["metadata"] = content["metadata"]
            if positions and index != current:
                self.touched.add(index)

    def _forget(self, index: int) -> None:
        for shown in self._displays.values():
            if index in shown:
                shown[index] = []


def _output(msg_type: str, content: dict[str, Any]) -> dict[str, Any] | None:
    """The nbformat v4 output of a message (nbformat's ``output_from_msg``, unvalidated)."""
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "display_data":
        return {
            "output_type": "display_data",
            "data": content["data"],
            "metadata": content["metadata"],
        }
    if msg_type == "execute_result":
        return {
            "output_type": "execute_result",
            "data": content["data"],
            "metadata": content["metadata"],
            "execution_count": content["execution_count"],
        }
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content["ename"],
            "evalue": content["evalue"],
            "traceback": content["traceback"],
        }
    return None


class _Catcher:
    """Catch the kernel session's output messages while a cell runs (see :func:`run_cells`)."""

    def __init__(self, session: Any, outputs: CellOutputs) -> None:
        self.session = session
        self.outputs = outputs
        self.send = session.send  # the bound method: messages not caught go out through it
        self.active = False
        self.lock = threading.Lock()

    def __call__(
        self,
        stream: Any,
        msg_or_type: dict[str, Any] | str,
        content: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        msg_type = (
            msg_or_type["header"]["msg_type"] if isinstance(msg_or_type, dict) else msg_or_type
        )
        if not self.active or msg_type not in CAPTURED:
            return self.send(stream, msg_or_type, content, parent, *args, **kwargs)
        if isinstance(msg_or_type, dict):
            msg = msg_or_type
        else:
            msg = self.session.msg(msg_type, content, parent=parent)
        with self.lock:  # streams are sent from the kernel's IO thread
            self.outputs.message(msg_type, msg["content"])
        return msg


def _handed_over(socket: Any, timeout: float = 5.0) -> None:
    """Wait until the kernel's IO thread has passed what was sent on ``socket`` to ZMQ."""
    thread = getattr(socket, "io_thread", None)
    if thread is None:
        return
    done = threading.Event()
    thread.schedule(done.set)
    done.wait(timeout)


def run_cells(sources: Sequence[str], may_fail: Sequence[bool] = ()) -> int:
    """Run code cells in this IPython kernel and send each one's record to the client.

    Each cell runs with ``run_cell(source, store_history=True)``, so it gets the
    kernel's next cell number (the client sets it to 1 first).  What it shows
    is caught (see the module docstring); when it ends, its record goes out as
    one ``display_data`` of type :data:`MIMETYPE`::

        {"cell": k, "execution_count": n, "outputs": [...], "start": t0, "end": t1,
         "ok": bool, "updates": [[j, outputs of cell j], ...]}

    with ``k`` the position in ``sources``, ``t0``/``t1`` seconds since the epoch
    and ``updates`` the earlier cells whose displays this cell updated.

    Parameters
    ----------
    sources : sequence of str
        The code cells, in order (none empty, none needing top-level ``await``).
    may_fail : sequence of bool
        For each cell, whether the next cells still run when it fails (missing
        means no).

    Returns
    -------
    int
        How many cells ran.

    Raises
    ------
    SenditError
        Not in an IPython kernel.
    """
    from IPython import get_ipython

    shell = get_ipython()
    publisher: Any = getattr(shell, "display_pub", None)
    session = getattr(publisher, "session", None)
    if shell is None or session is None:
        raise SenditError("run_cells runs inside an IPython kernel (ipykernel), not here")
    outputs = CellOutputs()
    catcher = _Catcher(session, outputs)
    parent = publisher.parent_header
    topic = publisher.topic
    socket = publisher.pub_socket
    previous = vars(session).get("send")
    session.send = catcher
    ran = 0
    try:
        for index, source in enumerate(sources):
            outputs.start()
            count = shell.execution_count
            start = time.time()
            catcher.active = True
            try:
                result = shell.run_cell(source, store_history=True)
            finally:
                sys.stdout.flush()  # as the kernel does after each request
                sys.stderr.flush()
                catcher.active = False
            end = time.time()
            ran += 1
            with catcher.lock:
                record = {
                    "cell": index,
                    "execution_count": count,
                    "outputs": outputs.cells[index],
                    "start": start,
                    "end": end,
                    "ok": bool(result.success),
                    "updates": [[j, outputs.cells[j]] for j in sorted(outputs.touched)],
                }
                content = {"data": {MIMETYPE: record}, "metadata": {}, "transient": {}}
            catcher.send(socket, "display_data", content, parent, ident=topic)
            # handed to ZMQ, which sends it within milliseconds: a kernel that dies in the
            # next cell has sent this one unless it is killed within them
            _handed_over(socket)
            if not result.success and not (index < len(may_fail) and may_fail[index]):
                break
    finally:
        if previous is None:
            del session.send  # the class's method again
        else:
            session.send = previous
    return ran


def reset_kernel() -> None:
    """Clear a warm kernel between two notebooks: namespace, open figures, and a frozen heap.

    ``%reset -f`` empties the namespace (what the next notebook must not see)
    and closes any matplotlib figure left open.  What is left after it is what
    the kernel keeps for every later notebook (modules, classes, the helpers'
    caches: some 150,000 objects once pandas, pyarrow and pydicom are
    imported), and it is then frozen
    (:func:`~sendit_helpers.core.memory.freeze_kept`).  IPython's reset runs
    two full garbage collections, and each went through all of those objects:
    70-130 ms per notebook on a small machine, as much as a small batch's
    de-identification.  Frozen, a collection (IPython's, or Python's own during
    the next notebook's work) goes through only what the last notebook made.
    Frozen objects are still freed when nothing refers to them; a reference
    cycle among them that a later notebook lets go is not, until the kernel is
    replaced (after :data:`~sendit_helpers.run.kernels.WARM_KERNEL_USES`
    notebooks, or once it holds :data:`~sendit_helpers.run.kernels.WARM_KERNEL_MAX_RSS`),
    which bounds what that can hold.
    """
    from IPython import get_ipython

    from sendit_helpers.core import memory

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("reset", "-f")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    memory.freeze_kept()  # after the reset's collections: everything left is in use


def preload() -> None:
    """Import :data:`PRELOAD` and freeze the heap: run by a warm kernel as it starts.

    The kernel does the stage notebooks' imports (about 0.9 s of CPU) and loads
    the OCR screen's Tesseract library
    (:func:`~sendit_helpers.deid.tesseract.load_library`, about 0.1 s) before it
    answers its client, while the command that started it imports its own
    modules; the first notebook then finds them loaded.  Frozen
    (:func:`~sendit_helpers.core.memory.freeze_kept`), the modules' objects are
    not gone through again by the first notebook's garbage collections.  It
    binds no name in the namespace.
    """
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from sendit_helpers.core import memory
    from sendit_helpers.deid import tesseract

    tesseract.load_library()  # the OCR screen's reader, made ahead (when the library loads)
    memory.freeze_kept()
