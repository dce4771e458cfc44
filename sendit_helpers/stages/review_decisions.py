"""The review stage's decisions: the append-only log and decisions files.

For each quarantined image (an *item*, :mod:`~sendit_helpers.stages.review_items`)
a reviewer decides:

``release``
    the pixels carry no identifying text; release the image as it is.
``scrub``
    black out one or more rectangles (on every frame), then release it.
``keep``
    it stays in quarantine and is never released.

Decisions are appended to ``phi/review/decisions.csv`` (:class:`DecisionLog`) the
moment they are made (flushed and fsynced); the last decision per item wins, so a
review can be interrupted and resumed.  Without the widgets, a decisions file
(``REVIEW_DECISIONS`` / ``--decisions``) is checked by :func:`read_decisions_csv`
and appended by :func:`replay_decisions`.  Carrying the decisions out is
:func:`sendit_helpers.stages.review.apply_decisions`'s.
"""

from __future__ import annotations

import csv
import getpass
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from sendit_helpers.core.errors import ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid.scrub import Box, check_box
from sendit_helpers.stages.review_items import item_names, load_items, table_rows

__all__ = [
    "CSV_COLUMNS",
    "LOG_COLUMNS",
    "Decision",
    "DecisionLog",
    "pending_count",
    "read_decisions_csv",
    "replay_decisions",
    "reviewer_name",
]

#: Columns of ``phi/review/decisions.csv``.
LOG_COLUMNS = ["item", "decision", "x", "y", "width", "height", "reviewer", "time"]
#: Columns of a non-interactive decisions file.
CSV_COLUMNS = ["item", "decision", "x", "y", "width", "height"]
_BOX_FIELDS = ("x", "y", "width", "height")


class Decision(StrEnum):
    """What becomes of one quarantined image."""

    RELEASE = "release"
    """No identifying text in the pixels: release the image as it is."""
    SCRUB = "scrub"
    """Black out the given rectangles on every frame, then release."""
    KEEP = "keep"
    """Keep it in quarantine; never release it."""


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
        for row in table_rows(self.history()):
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
            for r in table_rows(self.current())
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
    known = {} if items is None else {r.item: r for r in table_rows(items)}
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


def replay_decisions(
    layout: BatchLayout,
    path: str | os.PathLike[str],
    reviewer: str = "",
    items: pd.DataFrame | None = None,
) -> int:
    """Check a decisions file and append its decisions to the log.

    Decisions equal to the ones already in force are not appended again, so
    replaying the same file twice changes nothing.  ``items``:
    :func:`load_items` of the batch as it is now (read when not given).

    Returns
    -------
    int
        How many decisions were appended.
    """
    wanted = read_decisions_csv(path, load_items(layout) if items is None else items)
    log = DecisionLog(layout, reviewer)
    now = log.decisions()
    new = [
        (r.item, r.decision, r.boxes)
        for r in table_rows(wanted)
        if r.item not in now
        or now[r.item][0] != r.decision
        or not _boxes_equal(now[r.item][1], r.boxes)
    ]
    log.record_many(new)
    return len(new)
