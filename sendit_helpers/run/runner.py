"""Run a stage's notebook through papermill and keep the executed copy in ``phi/``.

The CLI and ``sendit run`` call :func:`run_stage`; the notebooks call
:func:`open_batch` in their first code cell, so both paths resolve the batch
layout and settings the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from sendit_helpers.core.errors import StageError, os_error_from_text, os_error_line, reduce_message
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.resources import shipped
from sendit_helpers.core.settings import Settings, load_settings

#: Seconds a notebook kernel may take to start: generous, since batches running in
#: parallel on a small, busy machine start several kernels at once.
KERNEL_START_TIMEOUT = 300


class Stage(StrEnum):
    """The pipeline stages, in order."""

    INSPECT = "inspect"
    DEIDENTIFY = "deidentify"
    REVIEW = "review"
    UPLOAD = "upload"
    QUERY = "query"

    @property
    def notebook(self) -> str:
        """File name of the stage's notebook."""
        return _NOTEBOOKS[self]

    def source(self) -> Path:
        """The committed (output-free) notebook."""
        return shipped(f"notebooks/{self.notebook}")


_NOTEBOOKS = {
    Stage.INSPECT: "01_inspect.ipynb",
    Stage.DEIDENTIFY: "02_deidentify.ipynb",
    Stage.REVIEW: "03_review_phi.ipynb",
    Stage.UPLOAD: "04_upload.ipynb",
    Stage.QUERY: "05_query.ipynb",
}


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
    from sendit_helpers.samples import synthetic

    if not str(batch_dir):
        batch_dir = synthetic.demo_batch()
    if not str(work_dir):
        work_dir = synthetic.demo_root() / "work"
    settings = load_settings(params_files, overrides)
    _whole_cells()
    layout = BatchLayout.for_batch(batch_dir, work_dir)
    layout.check_source()
    layout.ensure().secure_phi()  # also when the notebook runs outside `sendit`
    return layout, settings


def _whole_cells() -> None:
    """Tables in the notebooks (and their reports) show whole paths and reasons, not ``...``."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)


def run_stage(
    stage: Stage,
    layout: BatchLayout,
    *,
    params_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    html: bool = True,
    lock: bool = True,
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
        return _execute(stage, layout, params_files, overrides, extra, html)
    # no stage may rewrite release/ while another reads or uploads it
    with pipeline.batch_lock(layout, timeout=pipeline.LOCK_TIMEOUT):
        return _execute(stage, layout, params_files, overrides, extra, html)


def _execute(
    stage: Stage,
    layout: BatchLayout,
    params_files: Sequence[str | os.PathLike[str]],
    overrides: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    html: bool,
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
    try:
        pm.execute_notebook(
            str(stage.source()),
            str(output),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(layout.phi),
            progress_bar=False,
            log_output=False,
            kernel_manager_class=_logging_kernel_manager(output.with_suffix(".kernel.log")),
            start_timeout=KERNEL_START_TIMEOUT,
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
        failure = StageError(
            f"stage {stage} failed for batch {layout.name}: the kernel stopped "
            f"({type(exc).__name__}); see {output.with_suffix('.kernel.log')} and {output}"
        )
    try:
        if html and output.exists():
            try:
                export_html(output)
            except Exception as exc:  # noqa: BLE001 - nbconvert/jinja raise anything; reported below
                why = (
                    os_error_line(exc, near=layout.notebooks_dir)
                    if isinstance(exc, OSError)
                    else type(exc).__name__
                )
                if failure is None:
                    raise StageError(
                        f"stage {stage} ran for batch {layout.name} but its HTML copy could not "
                        f"be written ({why}); the executed notebook {output} is complete: open "
                        "it instead, or rerun to retry the copy"
                    ) from None
                failure = StageError(
                    f"{failure} (its HTML copy could not be written either: {why})"
                )
    finally:
        layout.secure_phi()
    if failure is not None:
        raise failure
    return output


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
    nbconvert: Any = importlib.import_module("nbconvert")

    from sendit_helpers.run.report import prepare

    nb = prepare(nbformat.read(str(notebook), as_version=4), notebook)
    quiet = logging.getLogger("sendit.html")
    quiet.setLevel(logging.ERROR)  # nbconvert warns about images without alt text
    exporter = nbconvert.HTMLExporter(
        log=quiet, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    for url in (
        "widget_renderer_url",
        "require_js_url",
        "mathjax_url",
        "mermaid_js_url",
        "mermaid_layout_elk_js_url",
    ):
        if exporter.has_trait(url):
            setattr(exporter, url, "")
    body, _resources = exporter.from_notebook_node(nb)
    target = notebook.with_suffix(".html")
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.replace(tmp, target)
    return target


def _logging_kernel_manager(log_path: Path) -> type[Any]:
    """A kernel manager class whose kernel writes its stdout/stderr to ``log_path``.

    Keeps kernel warnings out of the terminal (and the ``sendit run`` progress
    bar) but on record in ``phi/`` beside the notebook.
    """
    from jupyter_client.manager import AsyncKernelManager

    class LoggingKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                kw["stdout"] = fh
                kw["stderr"] = fh
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggingKernelManager
