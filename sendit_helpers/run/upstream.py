"""Make a stage's upstream stages current before it runs (stages never run each other).

A stage function (``inspect.inspect_batch``, ``deidentify.deidentify_batch``, ...)
does its own work only; what it needs from the stages before it is made current
here, by the pipeline and the notebooks that may be opened on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.stages import deidentify as deidentify_stage
from sendit_helpers.stages import inspect
from sendit_helpers.stages.deidentify import DeidResult

__all__ = ["deidentify", "ensure_deidentified", "ensure_inspected"]


def ensure_inspected(layout: BatchLayout, settings: Mapping[str, Any]) -> bool:
    """Inspect the batch when its inspect outputs are missing or older than its inputs.

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
    if inspect.is_current(layout):
        return False
    inspect.inspect_batch(layout, settings)
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
