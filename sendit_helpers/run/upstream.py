"""Make a stage's upstream stages current before it runs (stages never run each other).

A stage function (``inspect.inspect_batch``, ``deidentify.deidentify_batch``, ...)
does its own work only; what it needs from the stages before it is made current
here, by the pipeline and the notebooks that may be opened on their own.  Whether
a stage is current is decided by its stamp, as for ``sendit run``
(:func:`sendit_helpers.run.pipeline.is_current`), and a stage run here writes its
stamp (:func:`sendit_helpers.run.pipeline.write_stamp`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.run import pipeline
from sendit_helpers.run.stages import Stage
from sendit_helpers.stages import deidentify as deidentify_stage
from sendit_helpers.stages import inspect
from sendit_helpers.stages.deidentify import DeidResult

__all__ = ["deidentify", "ensure_deidentified", "ensure_inspected"]


def ensure_inspected(layout: BatchLayout, settings: Mapping[str, Any]) -> bool:
    """Inspect the batch unless its inspect stamp is current.

    Current means what :func:`sendit_helpers.run.pipeline.is_current` means for
    ``sendit run`` (same inputs, settings, notebook), without requiring inspect's own
    executed notebook: ``sendit inspect`` or ``sendit run`` ran it, or this function
    did before.  When inspect runs here, the stamps of inspect and every later stage
    are removed first and inspect's stamp is written after it succeeded.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    settings : mapping
        Resolved settings.

    Returns
    -------
    bool
        True when inspect ran now.
    """
    resolved = typed(settings)
    if pipeline.is_current(Stage.INSPECT, layout, resolved, outputs=False, notebook=False):
        return False
    pipeline.clear_stamps(layout, Stage.INSPECT)
    began = time.perf_counter()
    inspect.inspect_batch(layout, settings)
    pipeline.write_stamp(
        layout, Stage.INSPECT, resolved, time.perf_counter() - began, notebook=False
    )
    return True


def ensure_deidentified(layout: BatchLayout, settings: Mapping[str, Any]) -> bool:
    """De-identify the batch when it has not been yet (the demo batch on first use).

    Never re-runs an existing de-identification (that would clear ``release/``
    and the review's results).

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    settings : mapping
        Resolved settings.

    Returns
    -------
    bool
        True when de-identification ran now.
    """
    if layout.held_table.exists():
        return False
    deidentify(layout, settings)
    return True


def deidentify(layout: BatchLayout, settings: Mapping[str, Any]) -> DeidResult:
    """Make inspect current (:func:`ensure_inspected`), then run the de-identify stage.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    settings : mapping
        Resolved settings.

    Returns
    -------
    DeidResult
        What :func:`sendit_helpers.stages.deidentify.deidentify_batch` returns.
    """
    ensure_inspected(layout, settings)
    return deidentify_stage.deidentify_batch(layout, settings)
