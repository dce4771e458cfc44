"""Run a stage's notebook through papermill and keep the executed copy in ``phi/``.

The CLI and ``sendit run`` call :func:`run_stage`; the notebooks call
:func:`open_batch` in their first code cell, so both paths resolve the batch
layout and settings the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import StageError
from .layout import BatchLayout
from .resources import shipped
from .settings import Settings, load_settings


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

    Returns
    -------
    tuple of (BatchLayout, Settings)
    """
    from . import synthetic

    if not str(batch_dir):
        batch_dir = synthetic.demo_batch()
    if not str(work_dir):
        work_dir = synthetic.demo_root() / "work"
    settings = load_settings(params_files, overrides)
    layout = BatchLayout.for_batch(batch_dir, work_dir)
    layout.check_source()
    return layout.ensure(), settings


def run_stage(
    stage: Stage,
    layout: BatchLayout,
    *,
    params_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Execute one stage notebook for one batch with papermill.

    Parameters
    ----------
    stage : Stage
        Which notebook.
    layout : BatchLayout
        The batch; the executed notebook goes to ``phi/notebooks/``.
    params_files, overrides
        Passed to the notebook's ``parameters`` cell, which resolves settings
        with :func:`~sendit_helpers.settings.load_settings`.
    extra : mapping, optional
        Further stage-specific notebook parameters.

    Returns
    -------
    Path
        The executed notebook.

    Raises
    ------
    StageError
        When a cell fails; names the cell and the exception type, not its
        message (which may quote identifying values), and the executed
        notebook to open.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    layout.ensure()
    layout.notebooks_dir.mkdir(mode=0o700, exist_ok=True)
    output = layout.notebooks_dir / stage.notebook
    parameters: dict[str, Any] = {
        "batch_dir": str(layout.source),
        "work_dir": str(layout.work),
        "params_files": [str(Path(p).resolve()) for p in params_files],
        "overrides": dict(overrides or {}),
    }
    parameters.update(extra or {})
    try:
        pm.execute_notebook(
            str(stage.source()),
            str(output),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(layout.phi),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        raise StageError(
            f"stage {stage} failed for batch {layout.name} in cell {exc.exec_count} "
            f"({exc.ename}); open the executed notebook {output} to see why"
        ) from None
    return output
