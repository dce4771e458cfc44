"""Review stage: a person decides what becomes of each quarantined image.

De-identification holds the images the pixel screen flagged in
``phi/quarantine/<entity>/<name>.dcm`` (header already de-identified, pixels
untouched).  For each one — an *item*, named by its de-identified file name as
in ``disposition.csv``'s ``output_name`` — a reviewer decides:

``release``
    the pixels carry no identifying text; release the image as it is.
``scrub``
    black out one or more rectangles (on every frame), then release it.
``keep``
    it stays in quarantine and is never released.

Decisions are appended to ``phi/review/decisions.csv`` the moment they are
made (flushed and fsynced); the last decision per item wins, so a review can
be interrupted and resumed.  :func:`apply_decisions` then moves released and
scrubbed images into ``release/``, updates ``cleaned``/``entities`` and the
disposition table, and re-runs the leak gate.  Applying is idempotent: the
original quarantined file of every released item is kept in
``phi/review/originals/`` so that applying again (or after a change of mind)
always starts from the untouched pixels.

The interactive user interface of this stage is
:class:`sendit_helpers.stages.reviewer.Reviewer`; it records decisions with
:class:`DecisionLog` and carries them out with :func:`apply_decisions`, as the
command line and a decisions file do.
"""

from __future__ import annotations

import csv
import functools
import getpass
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pydicom
from pydicom.dataset import Dataset

from sendit_helpers.core import disposition, memory
from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.errors import ReviewError, SenditError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import cleaned, leakgate, ocr
from sendit_helpers.deid.scrub import Box, boxes_from_coordinates, check_box, scrub_pixels
from sendit_helpers.stages import release

__all__ = [
    "ApplyResult",
    "Box",
    "Decision",
    "DecisionLog",
    "apply_decisions",
    "auto_scrub_ocr",
    "item_file",
    "load_items",
    "originals_dir",
    "pending_count",
    "read_decisions_csv",
    "replay_decisions",
    "reviewer_name",
    "scrub_pixels",
    "status",
    "waiting_message",
]

#: Columns of ``phi/review/decisions.csv``.
LOG_COLUMNS = ["item", "decision", "x", "y", "width", "height", "reviewer", "time"]
#: Columns of a non-interactive decisions file.
CSV_COLUMNS = ["item", "decision", "x", "y", "width", "height"]
#: Header fields always shown beside the rule that flagged an image.
TRIGGER_FIELDS = (
    "Modality",
    "BurnedInAnnotation",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
)
AWAITING = "pixel screen flagged possible burned-in PHI; awaiting review"
#: Reviewer name of the scrubs :func:`apply_decisions` makes itself when ``AUTO_SCRUB_OCR`` is on.
AUTO_OCR_REVIEWER = "auto-ocr"
_CONDITION_FIELD = re.compile(
    r"\b(?:contains|notcontains|equals|notequals|empty|missing|present|startswith|endswith)\s+([A-Za-z][A-Za-z0-9]*)"
)
_BOX_FIELDS = ("x", "y", "width", "height")


class Decision(StrEnum):
    """What becomes of one quarantined image."""

    RELEASE = "release"
    """No identifying text in the pixels: release the image as it is."""
    SCRUB = "scrub"
    """Black out the given rectangles on every frame, then release."""
    KEEP = "keep"
    """Keep it in quarantine; never release it."""


def _tuples(table: pd.DataFrame) -> list[Any]:
    """Rows as named tuples (typed loosely: columns vary)."""
    return list(table.itertuples(index=False))


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name."""
    return [{str(k): v for k, v in row.items()} for row in table.to_dict("records")]


# ------------------------------------------------------------------ items
def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def _int(value: Any, default: int = 0) -> int:
    text = _text(value).strip()
    try:
        return int(float(text)) if text else default
    except ValueError:
        return default


def _triggers(reason: str, header: Mapping[str, Any]) -> dict[str, str]:
    """The header values that made the rule fire (de-identified values, as released)."""
    fields = list(dict.fromkeys([*TRIGGER_FIELDS, *_CONDITION_FIELD.findall(reason)]))
    return {name: _text(header.get(name)) or "(absent)" for name in fields}


def _quarantined_table(layout: BatchLayout, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``quarantined.parquet``; only those of ``columns`` it has, when given."""
    path = layout.held_table
    if not path.exists():
        raise ReviewError(
            f"{path} is missing; run `sendit deidentify` on batch {layout.name} first "
            "(or call sendit_helpers.run.upstream.ensure_deidentified)"
        )
    if columns is None:
        return pd.read_parquet(path)
    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in dict.fromkeys(columns) if c in present])


#: The quarantined-table columns :func:`_item_row` reads (besides the trigger fields).
_ITEM_SOURCE_COLUMNS = (
    "name",
    "entity_id",
    "item_id",
    "path",
    "Rows",
    "Columns",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Modality",
    "NumberOfFrames",
    "PhotometricInterpretation",
)
#: The ``files.parquet`` columns :func:`_item_row` reads from a screen row.
_SCREEN_COLUMNS = ("source_path", "reason_screen", "coordinates", "group", "label")


ITEM_COLUMNS = [
    "item",
    "entity",
    "item_id",
    "path",
    "source_path",
    "series",
    "series_uid",
    "series_number",
    "series_description",
    "instance",
    "modality",
    "rows",
    "columns",
    "frames",
    "photometric",
    "group",
    "label",
    "reason",
    "suggested",
    "triggers",
    "ocr_boxes",
    "held_by",
]
#: ``held_by`` of an item the leak gate holds (a value found in it); else the pixel screen.
HELD_BY_GATE = "leak gate"
HELD_BY_SCREEN = "pixel screen"


def load_items(layout: BatchLayout) -> pd.DataFrame:
    """Every quarantined image of the batch, one row per item, in series order.

    Parameters
    ----------
    layout : BatchLayout
        A batch that has been de-identified.

    Returns
    -------
    pandas.DataFrame
        Columns ``item`` (de-identified file name), ``entity``, ``item_id``,
        ``path`` (relative to the quarantine folder), ``source_path``,
        ``series`` (``"<SeriesNumber> — <SeriesDescription>"``), ``series_uid``,
        ``series_number``, ``series_description``, ``instance``, ``modality``,
        ``rows``, ``columns``, ``frames``, ``photometric``, the rule's ``group``,
        ``label`` and ``reason``, ``suggested`` (list of :class:`Box` from the
        recipe's coordinates) and ``triggers`` (dict of the header fields the
        rule looks at and their de-identified values) and ``ocr_boxes`` (list of
        :class:`Box`, the text the OCR screen found, from ``phi/inspect/ocr.parquet``;
        they are part of ``suggested`` too), and ``held_by``: :data:`HELD_BY_GATE`
        for an image the leak gate holds (its ``label`` is the field a removed
        value was found in, ``reason`` the gate's, ``triggers`` field and
        category, never the value), else :data:`HELD_BY_SCREEN`.

    Raises
    ------
    ReviewError
        When the batch has not been de-identified yet.
    """
    screens = _screen_table(layout)
    reasons: list[Any] = (
        list(screens["reason_screen"].dropna().unique()) if "reason_screen" in screens else []
    )
    triggers = [name for reason in reasons for name in _CONDITION_FIELD.findall(str(reason))]
    # Only the columns the items use: a row of every header column costs ~30 KB per item.
    held = _quarantined_table(layout, [*_ITEM_SOURCE_COLUMNS, *TRIGGER_FIELDS, *triggers])
    if held.empty:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    source_of = _sources_by_name(layout, {_text(name) for name in held["name"]})
    ocr_boxes = ocr.boxes_by_source(ocr.load(layout))
    gate = {row.path: row for row in _tuples(release.gate_held(layout))}
    rows = []
    for start in range(0, len(held), _RECORD_ROWS):  # a slice at a time: fewer dicts at once
        for record in _records(held.iloc[start : start + _RECORD_ROWS]):
            source = source_of.get(_text(record.get("name")), "")
            screen = _screen_of(screens, source)
            row = _item_row(record, source, screen, ocr_boxes.get(source, []))
            found = gate.get(row["path"])
            if found is not None:
                row |= {
                    "group": HELD_BY_GATE,
                    "label": found.field,
                    "reason": found.reason,
                    "triggers": {"found in": found.field, "value removed from": found.category},
                    "held_by": HELD_BY_GATE,
                }
            rows.append(row)
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    del rows, held, screens, source_of
    items = items.sort_values(
        ["series_number", "series_uid", "instance", "item"], kind="stable"
    ).reset_index(drop=True)
    memory.release_unused()
    return items


#: Rows of the quarantined table turned into dicts at a time by :func:`load_items`.
_RECORD_ROWS = 256


def _sources_by_name(layout: BatchLayout, names: set[str] | None = None) -> dict[str, str]:
    """``output_name -> source_path`` of the files of the disposition table with an output.

    Only the two columns are read; with ``names``, only those outputs are kept.
    """
    table = disposition.read(layout, ["source_path", "output_name"])
    return {
        name: src
        for src, name in zip(table["source_path"], table["output_name"], strict=True)
        if name and (names is None or name in names)
    }


def item_names(layout: BatchLayout) -> list[str]:
    """The ``item`` column of :func:`load_items` (in file order), reading only the names.

    Raises
    ------
    ReviewError
        When the batch has not been de-identified yet.
    """
    held = _quarantined_table(layout, ["name"])
    return [_text(name) for name in held["name"]] if "name" in held else []


def _screen_table(layout: BatchLayout) -> pd.DataFrame:
    """The inspect stage's ``files.parquet`` indexed by ``source_path`` (empty when absent)."""
    path = layout.inspect_dir / "files.parquet"
    if not path.exists():
        return pd.DataFrame()
    present = set(pq.read_schema(path).names)
    columns = [c for c in _SCREEN_COLUMNS if c in present]
    return pd.read_parquet(path, columns=columns).set_index("source_path")


def _screen_of(screens: pd.DataFrame, source: str) -> Mapping[str, Any]:
    """The pixel screen's row of one source file (rule, reason, coordinates), or ``{}``."""
    if not source or source not in screens.index:
        return {}
    return {str(key): value for key, value in screens.loc[source].to_dict().items()}


def _coordinates(screen: Mapping[str, Any]) -> list[Any]:
    """The recipe coordinates the rule gives (``[[x0, y0, x1, y1], ...]``; ``[]`` if unreadable)."""
    try:
        found: list[Any] = json.loads(_text(screen.get("coordinates")) or "[]")
    except json.JSONDecodeError:
        return []
    return found


def _series_label(number: str, description: str) -> str:
    """``"<SeriesNumber> — <SeriesDescription>"`` (``?`` for a missing number)."""
    return f"{number or '?'} — {description}" if description else f"{number or '?'}"


def _item_row(
    record: Mapping[str, Any],
    source: str,
    screen: Mapping[str, Any],
    ocr_found: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """One row of :func:`load_items` from a quarantined row, its screen row and OCR boxes."""
    n_rows, n_cols = _int(record.get("Rows")), _int(record.get("Columns"))
    reason = _text(screen.get("reason_screen"))
    number = _text(record.get("SeriesNumber"))
    description = _text(record.get("SeriesDescription"))
    found = boxes_from_coordinates(ocr_found, n_cols, n_rows)
    suggested = boxes_from_coordinates(_coordinates(screen), n_cols, n_rows)
    suggested += [b for b in found if b not in suggested]
    return {
        "item": _text(record.get("name")),
        "entity": _text(record.get("entity_id")),
        "item_id": _text(record.get("item_id")),
        "path": _text(record.get("path")),
        "source_path": source,
        "series": _series_label(number, description),
        "series_uid": _text(record.get("SeriesInstanceUID")) or f"series {number}",
        "series_number": _int(number, -1),
        "series_description": description,
        "instance": _int(record.get("InstanceNumber"), 0),
        "modality": _text(record.get("Modality")),
        "rows": n_rows,
        "columns": n_cols,
        "frames": _int(record.get("NumberOfFrames"), 1) or 1,
        "photometric": _text(record.get("PhotometricInterpretation")),
        "group": _text(screen.get("group")),
        "label": _text(screen.get("label")),
        "reason": reason,
        "suggested": suggested,
        "triggers": _triggers(reason, record),
        "ocr_boxes": found,
        "held_by": HELD_BY_SCREEN,
    }


# ------------------------------------------------------------------ the log
def reviewer_name(settings: Mapping[str, Any] | None = None) -> str:
    """``REVIEWER`` from the settings, else the login name."""
    name = typed(settings or {}).review.reviewer.strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _boxes_equal(a: Sequence[Box], b: Sequence[Box]) -> bool:
    return [tuple(x) for x in a] == [tuple(x) for x in b]


class DecisionLog:
    """The append-only log ``phi/review/decisions.csv``.

    Each decision is one *event*: one row, or one row per rectangle of a
    scrub, all with the same ``time``.  Rows are written, flushed and fsynced
    the moment a decision is made.  The last event per item wins; reopening
    the log resumes where the review stopped.

    Parameters
    ----------
    target : BatchLayout or path-like
        The batch (its ``phi/review/decisions.csv``) or a log file.
    reviewer : str, optional
        Name written with each decision (default: :func:`reviewer_name`).
    """

    def __init__(self, target: BatchLayout | str | os.PathLike[str], reviewer: str = "") -> None:
        if isinstance(target, BatchLayout):
            self.path = target.review_dir / "decisions.csv"
        else:
            self.path = Path(target)
        self.reviewer = reviewer or reviewer_name()
        self.skipped = 0
        """Malformed rows ignored when reading (e.g. a line torn by a crash)."""
        self._last_time = ""
        if self.path.exists():
            history = self.history()
            if not history.empty:
                self._last_time = str(history["time"].max())

    # -- writing
    def _next_time(self) -> str:
        now = datetime.now(UTC)
        if self._last_time:
            last = datetime.fromisoformat(self._last_time)
            if now <= last:
                now = last + timedelta(microseconds=1)
        self._last_time = now.isoformat(timespec="microseconds")
        return self._last_time

    def _append(self, rows: list[list[str]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if new:
            writer.writerow(LOG_COLUMNS)
        elif not self.path.read_bytes().endswith(b"\n"):
            buffer.write("\n")  # a line torn by a crash stays alone
        writer.writerows(rows)
        with self.path.open("a", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())

    def _rows(
        self, item: str, decision: Decision, boxes: Sequence[Box], reviewer: str, time: str
    ) -> list[list[str]]:
        if decision == Decision.SCRUB and boxes:
            return [
                [
                    item,
                    str(decision),
                    str(b.x),
                    str(b.y),
                    str(b.width),
                    str(b.height),
                    reviewer,
                    time,
                ]
                for b in boxes
            ]
        return [[item, str(decision), "", "", "", "", reviewer, time]]

    def record(
        self, item: str, decision: Decision | str, boxes: Sequence[Box] = (), *, reviewer: str = ""
    ) -> str:
        """Append one decision and make it durable at once.

        Parameters
        ----------
        item : str
            The de-identified file name.
        decision : Decision or str
            ``release``, ``scrub`` or ``keep``.
        boxes : sequence of Box
            The rectangles of a scrub (ignored for release and keep).
        reviewer : str, optional
            Overrides the log's reviewer for this decision.

        Returns
        -------
        str
            The decision's time stamp (ISO 8601, UTC, microseconds).
        """
        return self.record_many([(item, decision, boxes)], reviewer=reviewer)

    def record_many(
        self, decisions: Iterable[tuple[str, Decision | str, Sequence[Box]]], *, reviewer: str = ""
    ) -> str:
        """Append several decisions (e.g. a series) in one durable write; return the last time."""
        rows: list[list[str]] = []
        time = ""
        for item, text, boxes in decisions:
            decision = _decision(text)
            if decision == Decision.SCRUB and not boxes:
                raise ReviewError(
                    f"scrub of {item} needs at least one rectangle (x, y, width, height); "
                    "add one, or decide release or keep"
                )
            time = self._next_time()
            rows += self._rows(item, decision, boxes, reviewer or self.reviewer, time)
        if rows:
            self._append(rows)
        return time

    # -- reading
    def history(self) -> pd.DataFrame:
        """Every well-formed row of the log, in file order (columns :data:`LOG_COLUMNS`)."""
        self.skipped = 0
        if not self.path.exists():
            return pd.DataFrame(columns=LOG_COLUMNS)
        good = []
        with self.path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            for row in reader:
                if not row:
                    continue
                if header == LOG_COLUMNS and _well_formed(row):
                    good.append(row)
                else:
                    self.skipped += 1
        return pd.DataFrame(good, columns=LOG_COLUMNS)

    def current(self) -> pd.DataFrame:
        """The decision in force per item (its last event).

        Returns
        -------
        pandas.DataFrame
            Columns ``item``, ``decision`` (:class:`Decision`), ``boxes`` (list
            of :class:`Box`, empty unless scrub), ``reviewer``, ``time``; one
            row per decided item, in the order they were first decided.
        """
        latest: dict[str, dict[str, Any]] = {}
        for row in _tuples(self.history()):
            event = latest.get(row.item)
            if event is None or event["time"] != row.time:
                event = {
                    "item": row.item,
                    "decision": Decision(row.decision),
                    "boxes": [],
                    "reviewer": row.reviewer,
                    "time": row.time,
                }
                latest[row.item] = event
            if row.x != "":
                event["boxes"].append(Box(int(row.x), int(row.y), int(row.width), int(row.height)))
        return pd.DataFrame(
            list(latest.values()), columns=["item", "decision", "boxes", "reviewer", "time"]
        )

    def decisions(self) -> dict[str, tuple[Decision, list[Box], str]]:
        """``item -> (decision, boxes, reviewer)`` for every decided item."""
        return {
            r.item: (Decision(r.decision), list(r.boxes), r.reviewer)
            for r in _tuples(self.current())
        }


def _well_formed(row: Sequence[str]) -> bool:
    """Whether a row of the log has every column, a known decision, whole numbers and a time."""
    if len(row) != len(LOG_COLUMNS) or row[1] not in Decision.__members__.values():
        return False
    try:
        datetime.fromisoformat(row[7])
        [int(v) for v in row[2:6] if v != ""]
    except ValueError:
        return False
    return True


def _decision(text: Decision | str) -> Decision:
    try:
        return Decision(str(text).strip().lower())
    except ValueError:
        choices = ", ".join(str(d) for d in Decision)
        raise ReviewError(f"decision {text!r} is not one of {choices}") from None


def pending_count(layout: BatchLayout) -> int:
    """How many quarantined images still wait for a decision."""
    names = pd.Series(item_names(layout), dtype=object)
    decided = set(DecisionLog(layout).current()["item"])
    return int((~names.isin(decided)).sum())


# ------------------------------------------------------------------ decisions file
def _line_error(path: Path, line: int, problem: str) -> ReviewError:
    return ReviewError(f"decisions file {path}, line {line}: {problem}")


def read_decisions_csv(
    path: str | os.PathLike[str], items: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Read and check a non-interactive decisions file.

    The file has the header ``item, decision, x, y, width, height``; one row
    per item, or several rows for several rectangles of one scrub.  ``x``,
    ``y``, ``width`` and ``height`` stay empty for release and keep; a scrub
    without a rectangle uses the rule's suggested boxes.

    Parameters
    ----------
    path : path-like
        The CSV file.
    items : pandas.DataFrame, optional
        :func:`load_items` of the batch; when given, unknown items and
        rectangles outside the image are errors.

    Returns
    -------
    pandas.DataFrame
        One row per item: ``item``, ``decision`` (:class:`Decision`),
        ``boxes`` (list of :class:`Box`), ``line`` (first line of the item).

    Raises
    ------
    ReviewError
        Naming the file, the line and the fix, for a missing file or column,
        an unknown item, a bad decision, a malformed or outside rectangle, or
        contradicting decisions for one item.
    """
    path = Path(path)
    if not path.is_file():
        raise ReviewError(
            f"decisions file {path} does not exist; check REVIEW_DECISIONS / --decisions"
        )
    known = {} if items is None else {r.item: r for r in _tuples(items)}
    found: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        index = _header_index(path, next(reader, []))
        for number, raw in enumerate(reader, start=2):
            if not any(cell.strip() for cell in raw):
                continue
            cell = {name: (raw[i].strip() if i < len(raw) else "") for name, i in index.items()}
            item, decision, box = _read_line(path, number, cell, known)
            _merge_line(path, number, found, item, decision, box)
    for entry in found.values():
        _fill_suggested(path, entry, known, required=items is not None)
    return pd.DataFrame(list(found.values()), columns=["item", "decision", "boxes", "line"])


def _header_index(path: Path, first: Sequence[str]) -> dict[str, int]:
    """``column -> position`` of the decisions file's columns; item and decision must be there."""
    header = [h.strip().lower() for h in first]
    missing = [c for c in ("item", "decision") if c not in header]
    if missing:
        raise _line_error(
            path,
            1,
            f"the header lacks {', '.join(missing)}; "
            f"the first line must be {','.join(CSV_COLUMNS)}",
        )
    return {name: header.index(name) for name in CSV_COLUMNS if name in header}


def _read_line(
    path: Path, number: int, cell: Mapping[str, str], known: Mapping[str, Any]
) -> tuple[str, Decision, Box | None]:
    """Check one line of a decisions file: ``(item, decision, rectangle or None)``."""
    item, text = cell.get("item", ""), cell.get("decision", "").lower()
    if not item:
        raise _line_error(
            path, number, "the item column is empty; give the de-identified file name"
        )
    if known and item not in known:
        example = next(iter(known))
        raise _line_error(
            path,
            number,
            f"item {item!r} is not a quarantined image of this batch; "
            f"use a name from phi/deidentify/quarantined.parquet (e.g. {example})",
        )
    if text not in Decision.__members__.values():
        choices = ", ".join(str(d) for d in Decision)
        raise _line_error(
            path,
            number,
            f"decision {text!r} is not one of {choices}; fix the decision column",
        )
    decision = Decision(text)
    box = _parse_box(path, number, cell)
    if box is not None and decision != Decision.SCRUB:
        raise _line_error(
            path,
            number,
            f"a rectangle is only meaningful for scrub, not {decision}; "
            "empty x, y, width and height or change the decision to scrub",
        )
    if box is not None and item in known:
        problem = check_box(box, int(known[item].columns), int(known[item].rows))
        if problem:
            raise _line_error(path, number, f"item {item}: {problem}")
    return item, decision, box


def _merge_line(
    path: Path,
    number: int,
    found: dict[str, dict[str, Any]],
    item: str,
    decision: Decision,
    box: Box | None,
) -> None:
    """Add a checked line to ``found`` (one entry per item); one decision per item."""
    entry = found.setdefault(
        item, {"item": item, "decision": decision, "boxes": [], "line": number}
    )
    if entry["decision"] != decision:
        raise _line_error(
            path,
            number,
            f"item {item} is {decision} here but {entry['decision']} on line "
            f"{entry['line']}; give one decision per item",
        )
    if box is not None and box not in entry["boxes"]:
        entry["boxes"].append(box)


def _fill_suggested(
    path: Path, entry: dict[str, Any], known: Mapping[str, Any], *, required: bool
) -> None:
    """Give a scrub without rectangles the rule's suggested boxes (needed when ``required``)."""
    if entry["decision"] != Decision.SCRUB or entry["boxes"]:
        return
    suggested = list(known[entry["item"]].suggested) if entry["item"] in known else []
    if required and not suggested:
        raise _line_error(
            path,
            entry["line"],
            f"scrub of {entry['item']} has no rectangle and the rule "
            "suggests none; fill x, y, width and height",
        )
    entry["boxes"] = suggested


def _parse_box(path: Path, number: int, cell: Mapping[str, str]) -> Box | None:
    values = [cell.get(name, "") for name in _BOX_FIELDS]
    if not any(values):
        return None
    if not all(values):
        raise _line_error(
            path, number, "a rectangle needs all of x, y, width and height; fill all four or none"
        )
    try:
        return Box(*(int(v) for v in values))
    except ValueError:
        raise _line_error(
            path, number, "x, y, width and height must be whole numbers of pixels"
        ) from None


def replay_decisions(layout: BatchLayout, path: str | os.PathLike[str], reviewer: str = "") -> int:
    """Check a decisions file and append its decisions to the log.

    Decisions equal to the ones already in force are not appended again, so
    replaying the same file twice changes nothing.

    Returns
    -------
    int
        How many decisions were appended.
    """
    wanted = read_decisions_csv(path, load_items(layout))
    log = DecisionLog(layout, reviewer)
    now = log.decisions()
    new = [
        (r.item, r.decision, r.boxes)
        for r in _tuples(wanted)
        if r.item not in now
        or now[r.item][0] != r.decision
        or not _boxes_equal(now[r.item][1], r.boxes)
    ]
    log.record_many(new)
    return len(new)


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


def originals_dir(layout: BatchLayout) -> Path:
    """Where the untouched files of released items are kept (``phi/review/originals``)."""
    return layout.review_dir / "originals"


def item_file(layout: BatchLayout, relative: str) -> Path:
    """The untouched file of an item: in quarantine, or among the originals once released."""
    held = layout.quarantine / relative
    return held if held.exists() else originals_dir(layout) / relative


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
        for row in _tuples(items)
        if row.item not in decided and row.ocr_boxes
    ]
    log.record_many(todo)
    return [item for item, _, _ in todo]


def apply_decisions(
    layout: BatchLayout, settings: Mapping[str, Any], *, auto_ocr: bool | None = None
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
    items = load_items(layout)
    cfg = typed(settings)
    if cfg.review.auto_scrub_ocr if auto_ocr is None else auto_ocr:
        auto_scrub_ocr(layout, items)
    decided = DecisionLog(layout).decisions()
    done = _Outcomes()
    for item in _tuples(items):
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
        policy=leakgate.load_policy(layout),
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
