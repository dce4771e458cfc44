"""Review stage: carry out the decisions on the quarantined images.

De-identification holds the images the pixel screen flagged in
``phi/quarantine/<entity>/<name>.dcm`` (header already de-identified, pixels
untouched); the leak gate holds there those it found a removed value in.  The
stage has three parts: the *items* (:mod:`~sendit_helpers.stages.review_items`:
what is quarantined and why), the *decisions* on them
(:mod:`~sendit_helpers.stages.review_decisions`: release, scrub or keep, an
append-only log, decisions files) and, here, *applying* them.

:func:`apply_decisions` moves released and scrubbed images into ``release/``,
updates ``cleaned``/``entities`` (through :mod:`~sendit_helpers.stages.release`)
and the disposition table, and re-runs the leak gate.  Applying is idempotent:
the original quarantined file of every released item is kept in
``phi/review/originals/`` so that applying again (or after a change of mind)
always starts from the untouched pixels.

The interactive user interface of this stage is
:class:`sendit_helpers.stages.reviewer.Reviewer`; it records decisions with
:class:`~sendit_helpers.stages.review_decisions.DecisionLog` and carries them
out with :func:`apply_decisions`, as the command line and a decisions file do.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from sendit_helpers.core import disposition, memory
from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.errors import ReviewError, SenditError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import cleaned, gatepolicy, leakgate
from sendit_helpers.deid.scrub import Box, scrub_pixels
from sendit_helpers.stages import release
from sendit_helpers.stages.review_decisions import Decision, DecisionLog, pending_count
from sendit_helpers.stages.review_items import (
    HELD_BY_GATE,
    item_names,
    load_items,
    originals_dir,
    table_rows,
)

__all__ = [
    "AUTO_OCR_REVIEWER",
    "AWAITING",
    "ApplyResult",
    "Box",
    "apply_decisions",
    "auto_scrub_ocr",
    "scrub_pixels",
    "status",
    "waiting_message",
]

AWAITING = "pixel screen flagged possible burned-in PHI; awaiting review"
#: Reviewer name of the scrubs :func:`apply_decisions` makes itself when ``AUTO_SCRUB_OCR`` is on.
AUTO_OCR_REVIEWER = "auto-ocr"


# ------------------------------------------------------------------ applying
@dataclass
class ApplyResult:
    """What :func:`apply_decisions` did."""

    released: list[str]
    """Items released as they are."""
    scrubbed: list[str]
    """Items scrubbed and released."""
    kept: list[str]
    """Items kept in quarantine by decision."""
    undecided: list[str]
    """Items still waiting for a decision (they stay in quarantine)."""
    layout: BatchLayout
    entities: pd.DataFrame
    dispositions: pd.DataFrame
    gate: leakgate.GateReport | None = None
    errors: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    """Items decided release or scrub that the leak gate held again (a value still found)."""

    @functools.cached_property
    def cleaned(self) -> pd.DataFrame:
        """The released images' table (``release/cleaned.parquet``), read on first use."""
        return pd.read_parquet(self.layout.cleaned_table)

    @property
    def counts(self) -> pd.Series:
        """Items per outcome."""
        return pd.Series(
            {
                "released as is": len(self.released),
                "scrubbed and released": len(self.scrubbed),
                "kept in quarantine": len(self.kept),
                "undecided": len(self.undecided),
                "held by the leak gate": len(self.held),
            }
        )

    def summary(self) -> str:
        """One line for people."""
        gate = f"; leak gate passed on {self.gate.files} files" if self.gate is not None else ""
        held = f", {len(self.held)} held again by the leak gate" if self.held else ""
        return (
            f"{len(self.released)} released as is, {len(self.scrubbed)} scrubbed and released, "
            f"{len(self.kept)} kept, {len(self.undecided)} undecided{held}{gate}"
        )


def _atomic_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _write_dataset(ds: Dataset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, target)


def _prune(root: Path) -> None:
    """Remove empty entity folders below ``root``."""
    if root.exists():
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()


def _scrub_file(source: Path, target: Path, boxes: Sequence[Box]) -> dict[str, Any]:
    ds = pydicom.dcmread(source)
    scrub_pixels(ds, boxes)
    _write_dataset(ds, target)
    return cleaned.flatten(ds)


def auto_scrub_ocr(layout: BatchLayout, items: pd.DataFrame | None = None) -> list[str]:
    """Decide *scrub* for every undecided item in which the OCR screen found text.

    The rectangles are the item's suggested boxes: the OCR boxes and, when the
    rule that flagged it gives some, the recipe's coordinates.  The decisions
    are written to the log by reviewer :data:`AUTO_OCR_REVIEWER`, like a
    person's; a later decision by a person wins as usual.

    Parameters
    ----------
    layout : BatchLayout
        A de-identified batch.
    items : pandas.DataFrame, optional
        :func:`load_items` of the batch (read when not given).

    Returns
    -------
    list of str
        The items decided now.
    """
    items = load_items(layout) if items is None else items
    log = DecisionLog(layout, AUTO_OCR_REVIEWER)
    decided = log.decisions()
    todo = [
        (row.item, Decision.SCRUB, list(row.suggested))
        for row in table_rows(items)
        if row.item not in decided and row.ocr_boxes
    ]
    log.record_many(todo)
    return [item for item, _, _ in todo]


def apply_decisions(
    layout: BatchLayout,
    settings: Mapping[str, Any],
    *,
    auto_ocr: bool | None = None,
    items: pd.DataFrame | None = None,
) -> ApplyResult:
    """Carry out the decisions in force and re-run the leak gate.

    ``release`` and ``scrub`` items go to ``release/<entity>/<name>`` (scrubbed
    pixels blacked out); ``keep`` and undecided items stay in
    ``phi/quarantine/``.  ``release/cleaned.parquet``, ``entities.parquet``
    and ``phi/disposition.csv`` are updated.  Applying twice gives the same
    result; a changed decision is carried out from the untouched original.

    Parameters
    ----------
    layout : BatchLayout
        A de-identified batch.
    settings : mapping
        Resolved settings (``UPLOAD_AGENT``, ``WORKERS``, ``AUTO_SCRUB_OCR``).
    auto_ocr : bool, optional
        Before applying, decide *scrub* for the undecided items in which the
        OCR screen found text (:func:`auto_scrub_ocr`, reviewer
        :data:`AUTO_OCR_REVIEWER`).  Default: the ``AUTO_SCRUB_OCR`` setting;
        the interactive reviewer passes False.
    items : pandas.DataFrame, optional
        :func:`load_items` of the batch as it is now (read when not given), e.g.
        the items a :class:`~sendit_helpers.stages.review_notebook.ReviewSession`
        has just read.

    Returns
    -------
    ApplyResult

    The leak gate runs again on ``release/``: an item it still finds a value
    in goes back to quarantine (:func:`.release.hold_for_gate`, from its
    untouched original) and is listed in :attr:`ApplyResult.held`.

    Raises
    ------
    ReviewError
        When a scrub cannot be carried out (the item stays quarantined and
        the error names it).
    LeakError
        When the leak gate finds a value it cannot hold.
    """
    items = load_items(layout) if items is None else items
    cfg = typed(settings)
    if cfg.review.auto_scrub_ocr if auto_ocr is None else auto_ocr:
        auto_scrub_ocr(layout, items)
    decided = DecisionLog(layout).decisions()
    done = _Outcomes()
    for item in table_rows(items):
        decision, boxes, who = decided.get(item.item, (None, [], ""))
        if decision is None or decision == Decision.KEEP:
            _hold(layout, item, decision, who, done)
        else:
            _release(layout, item, decision, boxes, who, done)
    _prune(layout.release)
    _prune(layout.quarantine)
    out = set(done.released) | set(done.scrubbed)
    agent = cfg.upload.agent
    entities = release.rewrite_tables(
        layout, agent, items["item"].astype(str).tolist(), out, done.headers
    )
    memory.release_unused()
    table = disposition.update(layout, [r for r in done.rows if r.source_path])
    result = ApplyResult(
        done.released,
        done.scrubbed,
        done.kept,
        done.undecided,
        layout,
        entities,
        table,
        None,
        done.errors,
    )
    result.gate = leakgate.run_gate(
        layout,
        leakgate.load_values(layout),
        workers=cfg.run.workers or 1,
        policy=gatepolicy.load_policy(layout),
        hold=functools.partial(
            release.hold_for_gate, layout, settings, originals=originals_dir(layout)
        ),
    )
    if result.gate.held:
        back = {h.path.rsplit("/", 1)[-1] for h in result.gate.held}
        result.held = [i for i in [*done.released, *done.scrubbed] if i in back]
        result.released = [i for i in done.released if i not in back]
        result.scrubbed = [i for i in done.scrubbed if i not in back]
        result.dispositions = disposition.read(layout)
        result.entities = pd.read_parquet(layout.entities_table)
    passed = [path for path in items["path"].astype(str) if (layout.release / path).is_file()]
    release.forget_gate_held(layout, passed)
    if done.errors:
        first = next(iter(done.errors.items()))
        raise ReviewError(
            f"{len(done.errors)} item(s) could not be applied and stay quarantined, "
            f"e.g. {first[0]}: {first[1]}; "
            "change their decision (e.g. keep) or fix the cause, then apply again"
        )
    return result


@dataclass
class _Outcomes:
    """What applying has done so far, item by item (gathered into an :class:`ApplyResult`)."""

    released: list[str] = field(default_factory=list)
    scrubbed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    """``item -> why`` it could not be released."""
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``item -> cleaned row`` of each scrubbed file (its pixel attributes changed)."""
    rows: list[Row] = field(default_factory=list)
    """The new disposition rows."""


def _item_paths(layout: BatchLayout, item: Any) -> tuple[Path, Path, Path]:
    """An item's file in quarantine, among the originals, and in ``release/``."""
    return (
        layout.quarantine / item.path,
        originals_dir(layout) / item.path,
        layout.release / item.path,
    )


def _release(
    layout: BatchLayout,
    item: Any,
    decision: Decision,
    boxes: Sequence[Box],
    who: str,
    done: _Outcomes,
) -> None:
    """Release (``decision`` release) or scrub and release one item, from its original.

    The original is kept first; when releasing fails, the item goes back to
    quarantine and the error is noted in ``done.errors``.
    """
    held, original, out = _item_paths(layout, item)
    if held.exists():
        _atomic_copy(held, original)
    if not original.exists():
        done.errors[item.item] = f"{held} is missing; run `sendit deidentify` again for this batch"
        return
    try:
        if decision == Decision.SCRUB:
            done.headers[item.item] = _scrub_file(original, out, boxes)
        else:
            _atomic_copy(original, out)
    except (ReviewError, *READ_ERRORS, RuntimeError) as exc:
        done.errors[item.item] = str(exc) if isinstance(exc, SenditError) else type(exc).__name__
        out.unlink(missing_ok=True)
        if not held.exists():
            _atomic_copy(original, held)
        reason = f"review: {decision} by {who} failed; still quarantined"
        done.rows.append(Row(item.source_path, Disposition.QUARANTINED, reason, item.item))
        return
    held.unlink(missing_ok=True)
    if decision == Decision.SCRUB:
        done.scrubbed.append(item.item)
        n = len(boxes)
        reason = f"review: scrubbed {n} rectangle{'s' if n != 1 else ''} by {who}"
    else:
        done.released.append(item.item)
        reason = f"review: released as is by {who}"
    done.rows.append(Row(item.source_path, Disposition.RELEASED, reason, item.item))


def _hold(
    layout: BatchLayout, item: Any, decision: Decision | None, who: str, done: _Outcomes
) -> None:
    """Keep one item (``decision`` keep, or undecided) in quarantine, restoring it if released."""
    held, original, out = _item_paths(layout, item)
    if not held.exists() and original.exists():
        _atomic_copy(original, held)
    out.unlink(missing_ok=True)
    if decision == Decision.KEEP:
        done.kept.append(item.item)
        reason = f"{disposition.KEPT_BY_REVIEW} by {who}"
    else:
        done.undecided.append(item.item)
        reason = item.reason if item.held_by == HELD_BY_GATE else AWAITING
    done.rows.append(Row(item.source_path, Disposition.QUARANTINED, reason, item.item))


# ------------------------------------------------------------------ notebook helpers
def status(layout: BatchLayout) -> pd.DataFrame:
    """Decision counts of the quarantined images: release, scrub, keep, undecided."""
    current = DecisionLog(layout).decisions()
    counts = {str(d): 0 for d in Decision} | {"undecided": 0}
    for item in item_names(layout):
        counts[str(current[item][0]) if item in current else "undecided"] += 1
    return pd.DataFrame({"decision": list(counts), "images": list(counts.values())})


def waiting_message(layout: BatchLayout) -> str:
    """``"N images still wait for a decision"``."""
    n = pending_count(layout)
    return f"{n} image{'s' if n != 1 else ''} still wait{'s' if n == 1 else ''} for a decision"
