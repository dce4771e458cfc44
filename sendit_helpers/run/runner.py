"""Run a stage's notebook through papermill and keep the executed copy in ``phi/``.

The CLI and ``sendit run`` call :func:`run_stage`; the notebooks call
:func:`open_batch` in their first code cell, so both paths resolve the batch
layout and settings the same way.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sendit_helpers.core.errors import StageError, os_error_from_text, os_error_line, reduce_message
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings, load_settings
from sendit_helpers.run import kernels
from sendit_helpers.run.kernels import KERNELS_DIR as KERNELS_DIR  # the kernels' logs
from sendit_helpers.run.kernels import WARM_KERNEL_USES as WARM_KERNEL_USES
from sendit_helpers.run.kernels import WarmKernel as WarmKernel
from sendit_helpers.run.kernels import WarmKernels as WarmKernels
from sendit_helpers.run.kernels import warm_kernels as warm_kernels
from sendit_helpers.run.stages import Stage as Stage  # declared in run.stages

# nbformat (which papermill and nbconvert import) imports jsonschema, and jsonschema imports
# rfc3987_syntax whenever it is installed (jupyter_server's jupyter-events brings it): that
# module builds some forty lark grammars as it is imported, 1 to 5 s of CPU before this
# process can start its first notebook.  sendit never checks the "iri" formats it serves
# (nbformat validates without format checks), so it is not imported here: jsonschema then
# leaves those two formats unchecked, as it does when the package is not installed.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

#: Seconds a notebook kernel may take to start: generous, since batches running in
#: parallel on a small, busy machine start several kernels at once.
KERNEL_START_TIMEOUT = 300
#: papermill engine name of :func:`_register_engine`.
_ENGINE = "sendit"
#: Seconds between two writes of an executed notebook while its cells run (it is also
#: written when it starts, when a cell fails and at the end).
SAVE_EVERY = 5.0


def open_batch(
    batch_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    params_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> tuple[BatchLayout, Settings]:
    """Resolve a batch's layout and settings and create its work folders.

    An empty ``batch_dir`` means the demo sample batch (generated on first use)
    and an empty ``work_dir`` the demo work folder, so every notebook runs
    as it is.

    It also sets pandas to show whole cells (paths and reasons are not cut
    with ``...`` in the notebooks and their reports).

    Returns
    -------
    tuple of (BatchLayout, Settings)
    """
    if not str(batch_dir) or not str(work_dir):
        from sendit_helpers.samples import synthetic  # only for the demo batch

        if not str(batch_dir):
            batch_dir = synthetic.demo_batch()
        if not str(work_dir):
            work_dir = synthetic.demo_root() / "work"
    settings = load_settings(params_files, overrides)
    _whole_cells()
    _figures_drawn_once()
    layout = BatchLayout.for_batch(batch_dir, work_dir)
    layout.check_source()
    layout.ensure().secure_phi()  # also when the notebook runs outside `sendit`
    return layout, settings


def _whole_cells() -> None:
    """Tables in the notebooks (and their reports) show whole paths and reasons, not ``...``."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)


def _figures_drawn_once() -> None:
    """In a notebook, figures are drawn once, not twice: no tight bounding box.

    The inline backend's default (``bbox_inches="tight"``) draws every figure a
    second time to measure it; the notebooks' figures already fit
    (``tight_layout``), and the second draw was about half of each figure cell's
    time.  Nothing changes outside IPython.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        shell.run_line_magic("config", "InlineBackend.print_figure_kwargs = {'bbox_inches': None}")


def run_stage(
    stage: Stage,
    layout: BatchLayout,
    *,
    params_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    html: bool = True,
    lock: bool = True,
    copies: HtmlCopies | None = None,
) -> Path:
    """Execute one stage notebook for one batch with papermill, holding the batch lock.

    The executed notebook, an offline-readable HTML copy of it and the
    kernel's own log go to ``phi/notebooks/`` (``NN_stage.ipynb``,
    ``NN_stage.html``, ``NN_stage.kernel.log``), also when a cell fails.

    Parameters
    ----------
    stage : Stage
        Which notebook.
    layout : BatchLayout
        The batch; the executed notebook goes to ``phi/notebooks/``.
    params_files, overrides
        Passed to the notebook's ``parameters`` cell, which resolves settings
        with :func:`~sendit_helpers.core.settings.load_settings`.
    extra : mapping, optional
        Further stage-specific notebook parameters (e.g. ``interactive=False``
        for the review notebook).
    html : bool
        Also write the HTML copy (:func:`export_html`).
    lock : bool
        Hold the batch lock (``phi/stages/.lock``, :func:`~sendit_helpers.run.pipeline.batch_lock`)
        while the notebook runs, so that no two stages run on one batch at once.  Only a
        caller already holding it (``sendit run``) passes ``False``.
    copies : HtmlCopies, optional
        Write the HTML copy of a notebook that succeeded in the background
        (:class:`HtmlCopies`; the caller waits for it); without it, before returning.

    Returns
    -------
    Path
        The executed notebook.

    Raises
    ------
    StageError
        When a cell fails or the kernel dies: the cause in one line, then the
        executed notebook and the cell.  The cause is the exception's message
        when it is a :class:`~sendit_helpers.core.errors.SenditError` (their
        messages never carry values), otherwise its PHI-safe reduction
        (:func:`~sendit_helpers.core.errors.reduce_message`: type, tags, VR).
    LockError
        Another process holds the batch (``phi/stages/.lock``) for longer than
        ``pipeline.LOCK_TIMEOUT`` seconds.
    """
    from sendit_helpers.run import pipeline

    layout.ensure()
    if not lock:
        return _execute(stage, layout, params_files, overrides, extra, html, copies)
    # no stage may rewrite release/ while another reads or uploads it
    with pipeline.batch_lock(layout, timeout=pipeline.LOCK_TIMEOUT):
        return _execute(stage, layout, params_files, overrides, extra, html, copies)


def _execute(
    stage: Stage,
    layout: BatchLayout,
    params_files: Sequence[str | os.PathLike[str]],
    overrides: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    html: bool,
    copies: HtmlCopies | None = None,
) -> Path:
    """:func:`run_stage` once the batch lock is held."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    layout.notebooks_dir.mkdir(mode=0o700, exist_ok=True)
    output = notebook_path(stage, layout)
    parameters: dict[str, Any] = {
        "batch_dir": str(layout.source),
        "work_dir": str(layout.work),
        "params_files": [str(Path(p).resolve()) for p in params_files],
        "overrides": dict(overrides or {}),
    }
    parameters.update(extra or {})
    failure: StageError | None = None
    # A report of an earlier run must not pass for this one's, whatever happens below.
    output.with_suffix(".html").unlink(missing_ok=True)
    _register_engine()
    pool = kernels.active()
    warm = pool.lease(output) if pool is not None else None
    engine: dict[str, Any] = (
        {"warm": warm, "cwd_in_kernel": str(layout.phi)}
        if warm is not None
        else {
            "cwd": str(layout.phi),
            "kernel_manager_class": kernels.logging_kernel_manager(
                output.with_suffix(".kernel.log")
            ),
        }
    )
    try:
        pm.execute_notebook(
            str(stage.source()),
            str(output),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            start_timeout=KERNEL_START_TIMEOUT,
            engine_name=_ENGINE,
            **engine,
        )
    except PapermillExecutionError as exc:
        cause = os_error_from_text(exc.ename, exc.evalue)
        if cause is not None and _names_input(cause, layout):
            cause.filename = None  # an input's name may identify: the notebook shows it
        failure = StageError(
            f"stage {stage} failed for batch {layout.name}: "
            + (
                reduce_message(str(exc.ename), str(exc.evalue or ""))
                if cause is None
                else os_error_line(cause, near=layout.root)
            )
            + f"; executed notebook: {output} (cell {exc.exec_count})"
        )
    except (DeadKernelError, CellTimeoutError, RuntimeError, TimeoutError) as exc:
        if warm is not None:
            warm.broken = True  # the next notebook of this thread gets a fresh kernel
        failure = StageError(
            f"stage {stage} failed for batch {layout.name}: the kernel stopped "
            f"({type(exc).__name__}); see {output.with_suffix('.kernel.log')} and {output}"
        )
    try:
        if html and output.exists():
            if failure is None and copies is not None:
                copies.add(stage, layout, output)  # written while the next notebook runs
                return output
            try:
                _copier().submit(export_html, output).result()  # the process's one exporter
            except Exception as exc:  # noqa: BLE001 - nbconvert/jinja raise anything; reported below
                if failure is None:
                    raise _copy_failed(stage, layout, output, exc) from None
                failure = StageError(
                    f"{failure} (its HTML copy could not be written either: {_why(exc, layout)})"
                )
    finally:
        layout.secure_phi()
    if failure is not None:
        raise failure
    return output


def _why(exc: Exception, layout: BatchLayout) -> str:
    """Why an HTML copy failed, in a few words (never a value)."""
    if isinstance(exc, OSError):
        return os_error_line(exc, near=layout.notebooks_dir)
    return type(exc).__name__


def _copy_failed(stage: Stage, layout: BatchLayout, output: Path, exc: Exception) -> StageError:
    return StageError(
        f"stage {stage} ran for batch {layout.name} but its HTML copy could not "
        f"be written ({_why(exc, layout)}); the executed notebook {output} is complete: open "
        "it instead, or rerun to retry the copy"
    )


def _html_copy(stage: Stage, layout: BatchLayout, output: Path) -> None:
    """:func:`export_html` of ``output`` for :class:`HtmlCopies` (in its thread)."""
    try:
        export_html(output)
    except Exception as exc:  # noqa: BLE001 - nbconvert/jinja raise anything; reported by wait()
        raise _copy_failed(stage, layout, output, exc) from None
    finally:
        layout.secure_phi()


_COPIER: list[concurrent.futures.ThreadPoolExecutor] = []
_COPIER_LOCK = threading.Lock()


def _copier() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread of this process that writes deferred HTML copies (its exporter,
    with its templates, is built once)."""
    with _COPIER_LOCK:
        if not _COPIER:
            _COPIER.append(
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sendit-html")
            )
        return _COPIER[0]


def warm_html() -> None:
    """Have the thread that writes the HTML copies make its exporter now (in the background).

    :func:`~sendit_helpers.run.htmlexport.warm_up` runs on that thread while the
    caller goes on (the runner calls this as a pool's first notebook's cells are
    sent, so it overlaps the kernel's work); every copy of
    this process is then written by that thread's exporter.  A warm-up that
    fails is logged (its type only); the copies still try and report their own
    failure.
    """
    from sendit_helpers.run.htmlexport import warm_up

    _copier().submit(warm_up).add_done_callback(_warm_up_failed)


def _warm_up_failed(future: concurrent.futures.Future[None]) -> None:
    """Log a failed :func:`warm_html` (the exception's type: never a value)."""
    exc = future.exception()
    if exc is not None:
        logging.getLogger(__name__).warning(
            "HTML copies: making the exporter ahead failed (%s); each copy tries again",
            type(exc).__name__,
        )


class HtmlCopies:
    """The HTML copies of one batch's notebooks, written while its next notebook runs.

    ``sendit run`` passes one to :func:`run_stage` for each batch: a notebook that
    succeeded is handed to a background thread for its HTML copy
    (:func:`export_html`) and the next stage starts at once; a failed notebook's
    copy is still written before :func:`run_stage` returns.  :meth:`wait` before
    the batch lock is let go.  The stage's stamp is written when its notebook
    succeeded (the next stage's notebook reads it); a run killed before the copy
    was written leaves a complete executed notebook, and the next run writes the
    missing copy when it skips the stage
    (:func:`~sendit_helpers.run.pipeline.run_batch`).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Stage, concurrent.futures.Future[None]]] = []

    def add(self, stage: Stage, layout: BatchLayout, output: Path) -> None:
        """Write the HTML copy of ``output`` (``stage``'s executed notebook) in the background."""
        self._pending.append((stage, _copier().submit(_html_copy, stage, layout, output)))

    def wait(self) -> tuple[Stage, StageError] | None:
        """Wait for every copy; the first failure's stage and error (None when all were written).

        Never raises: the caller decides whether a failed copy fails the batch.
        """
        pending, self._pending = self._pending, []
        first: tuple[Stage, StageError] | None = None
        for stage, future in pending:
            try:
                future.result()
            except StageError as exc:
                first = first or (stage, exc)
        return first


def _names_input(exc: OSError, layout: BatchLayout) -> bool:
    """True when ``exc`` names a path inside the batch's input folder."""
    if not exc.filename:
        return False
    return Path(os.fsdecode(exc.filename)).is_relative_to(layout.source)


def notebook_path(stage: Stage, layout: BatchLayout) -> Path:
    """Where :func:`run_stage` keeps the executed notebook of ``stage``."""
    return layout.notebooks_dir / stage.notebook


def export_html(notebook: Path) -> Path:
    """Write an offline-readable HTML copy beside an executed notebook.

    A report for people (:func:`report.prepare <sendit_helpers.run.report.prepare>`):
    code cells' inputs are left out, a header says batch, stage, status, start
    and end, versions and the parameters, and widgets show what they showed
    last (a progress bar its final count) instead of their frozen plain-text
    fallback; the widget state itself (``metadata.widgets``, which needs the
    widget JavaScript from the network) is dropped.  No script is loaded from the network (no
    require.js, MathJax, Mermaid or widget renderer URLs), so opening a copy that shows
    PHI contacts nobody.  Written atomically (temporary file, then rename),
    owner-only like everything in ``phi/``.

    Parameters
    ----------
    notebook : Path
        An executed ``.ipynb``.

    Returns
    -------
    Path
        The ``.html`` file.
    """
    nbformat: Any = importlib.import_module("nbformat")

    from sendit_helpers.run.htmlexport import exporter
    from sendit_helpers.run.report import prepare

    nb = prepare(nbformat.read(str(notebook), as_version=4), notebook)
    body, _resources = exporter().from_notebook_node(nb)
    target = notebook.with_suffix(".html")
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.replace(tmp, target)
    return target


# ------------------------------------------------------------------ warm kernels
#: Run silently in a warm kernel right after each notebook (while the runner writes the
#: executed notebook and its HTML copy): a clean namespace and no figure of that notebook.
_RESET = "__import__('sendit_helpers.run.cellrunner', fromlist=['reset_kernel']).reset_kernel()\n"
#: Run silently in a warm kernel before each notebook (after the reset of the one before
#: has been confirmed): cell numbers from 1 and the batch's phi/ as working folder.
_PREPARE = "get_ipython().execution_count = 1\n__import__('os').chdir({cwd!r})\n"


def _register_engine() -> None:
    """Register papermill's engine for sendit's notebooks (again: it only sets a name).

    It differs from papermill's own (``nbclient``) in two ways.  The executed
    notebook is written when the notebook starts, when a cell fails, once at the end
    (by papermill after the engine returns; by the engine when the kernel dies) and
    during long cells at most every
    :data:`SAVE_EVERY` seconds, not before and after every cell: papermill's
    per-cell writes (each one validated) cost more than a small batch's work.
    And given ``warm`` (a :class:`WarmKernel`), it runs the notebook in that kept
    kernel through the kernel's one client session (no new client, no wait for the
    kernel to be ready), leaves the kernel running and sends it :data:`_RESET` at once,
    so the kernel clears its namespace while the notebook is written and exported; the
    next notebook confirms that reset, then sets the cell counter and working folder
    (:data:`_PREPARE`) before its first cell; then all its code cells run with one
    execute request (:mod:`~sendit_helpers.run.onerequest`) unless the pool says otherwise.
    """
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    from sendit_helpers.run import onerequest

    class SparseSaves(NotebookExecutionManager):  # type: ignore[misc]
        _last = 0.0
        _written_next = False

        def save(self, **kwargs: Any) -> None:
            if self._written_next:
                return
            now = time.monotonic()
            if self._last and now - self._last < SAVE_EVERY:
                return
            self._last = now
            super().save(**kwargs)

        def cell_exception(self, cell: Any, cell_index: Any = None, **kwargs: Any) -> None:
            self._last = 0.0  # the failing cell's outputs are written at once
            super().cell_exception(cell, cell_index, **kwargs)

        def notebook_complete(self, *, written_next: bool = False, **kwargs: Any) -> None:
            # written_next: papermill writes the notebook right after (its final write, or
            # the one with the error cell), the same bytes this write would have written
            self._last = 0.0
            self._written_next = written_next
            try:
                super().notebook_complete(**kwargs)
            finally:
                self._written_next = False

    class WarmClient(PapermillNotebookClient):  # type: ignore[misc]
        cwd_in_kernel = ""
        warm: WarmKernel | None = None

        def execute(self, **kwargs: Any) -> Any:
            # papermill's own, minus a new client: the warm kernel's session is kept
            self.reset_execution_trackers()
            with self.setup_kernel(**kwargs):
                self.kc.allow_stdin = False
                self.papermill_execute_cells()
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                self.set_widgets_metadata()
            return self.nb

        def papermill_execute_cells(self) -> None:
            warm = self.warm
            if warm is not None and warm.pending:
                self._ok(warm.pending)  # the reset sent after the last notebook
                warm.pending = ""
            self._ok(
                self.kc.execute(
                    _PREPARE.format(cwd=self.cwd_in_kernel), silent=True, store_history=False
                )
            )
            pool = kernels.active()
            if pool is not None and pool.first_html():
                warm_html()  # the HTML exporter is made while the kernel works
            if warm is not None and warm.one_request and onerequest.fits(self):
                onerequest.execute(self)  # every code cell in one request
            else:
                super().papermill_execute_cells()

        def _ok(self, msg_id: str) -> None:
            reply = self.wait_for_reply(msg_id)
            if reply is None or reply["content"].get("status") != "ok":
                raise RuntimeError("the warm kernel could not be reset")

    class Engine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_notebook(
            cls,
            nb: Any,
            kernel_name: str,
            output_path: str | None = None,
            progress_bar: bool = True,
            log_output: bool = False,
            autosave_cell_every: int = 30,
            **kwargs: Any,
        ) -> Any:
            nb_man = SparseSaves(
                nb,
                output_path=output_path,
                progress_bar=progress_bar,
                log_output=log_output,
                autosave_cell_every=autosave_cell_every,
            )
            nb_man.notebook_start()
            ran = False
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
                ran = True
            finally:
                nb_man.cleanup_pbar()
                # after an error (the kernel died) papermill writes nothing more: written here
                nb_man.notebook_complete(written_next=ran)
            return nb_man.nb

        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man: Any,
            kernel_name: str,
            log_output: bool = False,
            stdout_file: Any = None,
            stderr_file: Any = None,
            start_timeout: int = 60,
            execution_timeout: int | None = None,
            **kwargs: Any,
        ) -> Any:
            warm: WarmKernel | None = kwargs.pop("warm", None)
            cwd = kwargs.pop("cwd_in_kernel", "")
            if warm is None:
                return super().execute_managed_notebook(
                    nb_man,
                    kernel_name,
                    log_output=log_output,
                    stdout_file=stdout_file,
                    stderr_file=stderr_file,
                    start_timeout=start_timeout,
                    execution_timeout=execution_timeout,
                    **kwargs,
                )
            client = WarmClient(
                nb_man,
                km=warm.km,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=logging.getLogger("papermill"),
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )
            client.cwd_in_kernel = cwd
            client.warm = warm
            client.kc = warm.kc  # None for a new kernel: its first notebook starts the session
            try:
                result = client.execute(cwd=cwd)
            finally:
                warm.kc = client.kc  # also when it failed: the kernel's replacement stops it
            # the kernel resets itself while this notebook is written and exported; the next
            # notebook confirms it before its first cell
            warm.pending = warm.kc.execute(_RESET, silent=True, store_history=False)
            return result

    papermill_engines.register(_ENGINE, Engine)
