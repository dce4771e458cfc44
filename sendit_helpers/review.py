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
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from . import cleaned, deidentify, disposition, leakgate, ocr
from .dicomio import READ_ERRORS
from .disposition import Disposition, Row
from .errors import LeakError, ReviewError, SenditError
from .layout import BatchLayout
from .scrub import Box, boxes_from_coordinates, check_box, scrub_pixels

__all__ = [
    "ApplyResult",
    "Box",
    "Decision",
    "DecisionLog",
    "Reviewer",
    "apply_decisions",
    "auto_scrub_ocr",
    "ensure_deidentified",
    "item_file",
    "load_items",
    "originals_dir",
    "pending_count",
    "preview_png",
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


def _quarantined_table(layout: BatchLayout) -> pd.DataFrame:
    path = layout.deid_dir / "quarantined.parquet"
    if not path.exists():
        raise ReviewError(
            f"{path} is missing; run `sendit deidentify` on batch {layout.name} first "
            "(or call review.ensure_deidentified)"
        )
    return pd.read_parquet(path)


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
]


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
        they are part of ``suggested`` too).

    Raises
    ------
    ReviewError
        When the batch has not been de-identified yet.
    """
    held = _quarantined_table(layout)
    if held.empty:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    table = disposition.read(layout)
    source_of = {
        name: src
        for src, name in zip(table["source_path"], table["output_name"], strict=True)
        if name
    }
    ocr_boxes = ocr.boxes_by_source(ocr.load(layout))
    files_path = layout.inspect_dir / "files.parquet"
    files = (
        pd.read_parquet(files_path).set_index("source_path")
        if files_path.exists()
        else pd.DataFrame()
    )
    rows = []
    for record in _records(held):
        name = _text(record.get("name"))
        source = source_of.get(name, "")
        screen: Mapping[str, Any] = (
            files.loc[source].to_dict() if source and source in files.index else {}
        )
        n_rows, n_cols = _int(record.get("Rows")), _int(record.get("Columns"))
        reason = _text(screen.get("reason_screen"))
        try:
            coordinates = json.loads(_text(screen.get("coordinates")) or "[]")
        except json.JSONDecodeError:
            coordinates = []
        number = _text(record.get("SeriesNumber"))
        description = _text(record.get("SeriesDescription"))
        found = boxes_from_coordinates(ocr_boxes.get(source, []), n_cols, n_rows)
        suggested = boxes_from_coordinates(coordinates, n_cols, n_rows)
        suggested += [b for b in found if b not in suggested]
        rows.append(
            {
                "item": name,
                "entity": _text(record.get("entity_id")),
                "item_id": _text(record.get("item_id")),
                "path": _text(record.get("path")),
                "source_path": source,
                "series": f"{number or '?'} — {description}" if description else f"{number or '?'}",
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
            }
        )
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    return items.sort_values(
        ["series_number", "series_uid", "instance", "item"], kind="stable"
    ).reset_index(drop=True)


# ------------------------------------------------------------------ the log
def reviewer_name(settings: Mapping[str, Any] | None = None) -> str:
    """``REVIEWER`` from the settings, else the login name."""
    name = str((settings or {}).get("REVIEWER") or "").strip()
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
                if (
                    header != LOG_COLUMNS
                    or len(row) != len(LOG_COLUMNS)
                    or row[1] not in Decision.__members__.values()
                ):
                    self.skipped += 1
                    continue
                try:
                    datetime.fromisoformat(row[7])
                    [int(v) for v in row[2:6] if v != ""]
                except ValueError:
                    self.skipped += 1
                    continue
                good.append(row)
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


def _decision(text: Decision | str) -> Decision:
    try:
        return Decision(str(text).strip().lower())
    except ValueError:
        choices = ", ".join(str(d) for d in Decision)
        raise ReviewError(f"decision {text!r} is not one of {choices}") from None


def pending_count(layout: BatchLayout) -> int:
    """How many quarantined images still wait for a decision."""
    items = load_items(layout)
    decided = set(DecisionLog(layout).current()["item"])
    return int((~items["item"].isin(decided)).sum())


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
    choices = ", ".join(str(d) for d in Decision)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("item", "decision") if c not in header]
        if missing:
            raise _line_error(
                path,
                1,
                f"the header lacks {', '.join(missing)}; "
                f"the first line must be {','.join(CSV_COLUMNS)}",
            )
        index = {name: header.index(name) for name in CSV_COLUMNS if name in header}
        found: dict[str, dict[str, Any]] = {}
        for number, raw in enumerate(reader, start=2):
            if not any(cell.strip() for cell in raw):
                continue
            cell = {name: (raw[i].strip() if i < len(raw) else "") for name, i in index.items()}
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
    for entry in found.values():
        if entry["decision"] == Decision.SCRUB and not entry["boxes"]:
            suggested = list(known[entry["item"]].suggested) if entry["item"] in known else []
            if items is not None and not suggested:
                raise _line_error(
                    path,
                    entry["line"],
                    f"scrub of {entry['item']} has no rectangle and the rule "
                    "suggests none; fill x, y, width and height",
                )
            entry["boxes"] = suggested
    return pd.DataFrame(list(found.values()), columns=["item", "decision", "boxes", "line"])


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
    cleaned: pd.DataFrame
    entities: pd.DataFrame
    dispositions: pd.DataFrame
    gate: leakgate.GateReport | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> pd.Series:
        """Items per outcome."""
        return pd.Series(
            {
                "released as is": len(self.released),
                "scrubbed and released": len(self.scrubbed),
                "kept in quarantine": len(self.kept),
                "undecided": len(self.undecided),
            }
        )

    def summary(self) -> str:
        """One line for people."""
        gate = f"; leak gate passed on {self.gate.files} files" if self.gate is not None else ""
        return (
            f"{len(self.released)} released as is, {len(self.scrubbed)} scrubbed and released, "
            f"{len(self.kept)} kept, {len(self.undecided)} undecided{gate}"
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

    Raises
    ------
    ReviewError
        When a scrub cannot be carried out (the item stays quarantined and
        the error names it).
    LeakError
        When the leak gate finds an identifying value in ``release/``.
    """
    items = load_items(layout)
    if settings.get("AUTO_SCRUB_OCR", False) if auto_ocr is None else auto_ocr:
        auto_scrub_ocr(layout, items)
    decided = DecisionLog(layout).decisions()
    originals = originals_dir(layout)
    released: list[str] = []
    scrubbed: list[str] = []
    kept: list[str] = []
    undecided: list[str] = []
    errors: dict[str, str] = {}
    headers: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    for item in _tuples(items):
        held, original = layout.quarantine / item.path, originals / item.path
        out = layout.release / item.path
        decision, boxes, who = decided.get(item.item, (None, [], ""))
        if decision in (Decision.RELEASE, Decision.SCRUB):
            if held.exists():
                _atomic_copy(held, original)
            if not original.exists():
                errors[item.item] = (
                    f"{held} is missing; run `sendit deidentify` again for this batch"
                )
                continue
            try:
                if decision == Decision.SCRUB:
                    headers[item.item] = _scrub_file(original, out, boxes)
                else:
                    _atomic_copy(original, out)
            except (ReviewError, *READ_ERRORS, RuntimeError) as exc:
                errors[item.item] = str(exc) if isinstance(exc, SenditError) else type(exc).__name__
                out.unlink(missing_ok=True)
                if not held.exists():
                    _atomic_copy(original, held)
                rows.append(
                    Row(
                        item.source_path,
                        Disposition.QUARANTINED,
                        f"review: {decision} by {who} failed; still quarantined",
                        item.item,
                    )
                )
                continue
            held.unlink(missing_ok=True)
            if decision == Decision.SCRUB:
                scrubbed.append(item.item)
                n = len(boxes)
                reason = f"review: scrubbed {n} rectangle{'s' if n != 1 else ''} by {who}"
            else:
                released.append(item.item)
                reason = f"review: released as is by {who}"
            rows.append(Row(item.source_path, Disposition.RELEASED, reason, item.item))
        else:
            if not held.exists() and original.exists():
                _atomic_copy(original, held)
            out.unlink(missing_ok=True)
            if decision == Decision.KEEP:
                kept.append(item.item)
                rows.append(
                    Row(
                        item.source_path,
                        Disposition.QUARANTINED,
                        f"review: kept in quarantine by {who}",
                        item.item,
                    )
                )
            else:
                undecided.append(item.item)
                rows.append(Row(item.source_path, Disposition.QUARANTINED, AWAITING, item.item))
    _prune(layout.release)
    _prune(layout.quarantine)
    cleaned, entities = _update_tables(
        layout, settings, items, set(released) | set(scrubbed), headers
    )
    table = disposition.update(layout, [r for r in rows if r.source_path])
    result = ApplyResult(
        released, scrubbed, kept, undecided, cleaned, entities, table, None, errors
    )
    result.gate = leakgate.run_gate(
        layout, leakgate.load_values(layout), workers=int(settings.get("WORKERS", 1) or 1)
    )
    if errors:
        first = next(iter(errors.items()))
        raise ReviewError(
            f"{len(errors)} item(s) could not be applied and stay quarantined, "
            f"e.g. {first[0]}: {first[1]}; "
            "change their decision (e.g. keep) or fix the cause, then apply again"
        )
    return result


def _update_tables(
    layout: BatchLayout,
    settings: Mapping[str, Any],
    items: pd.DataFrame,
    out: set[str],
    headers: Mapping[str, dict[str, Any]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rewrite ``cleaned`` (deidentify's rows plus the released items) and ``entities``."""
    path = layout.release / "cleaned.parquet"
    cleaned = (
        pd.read_parquet(path)
        if path.exists()
        else pd.DataFrame(columns=["name", "entity_id", "item_id", "path"])
    )
    base = cleaned[~cleaned["name"].isin(set(items["item"]))]
    held = _quarantined_table(layout)
    add = _records(held[held["name"].isin(out)])
    for record in add:
        header = headers.get(str(record["name"]))
        if header is not None:
            for key in [k for k in record if k not in ("name", "entity_id", "item_id", "path")]:
                record[key] = header.get(key)
    extra = pd.DataFrame(add, columns=held.columns)
    frames = [f for f in (base, extra) if not f.empty]
    table = pd.concat(frames, ignore_index=True) if frames else base
    table = table.astype("string") if not table.empty else table
    table = (
        table.sort_values("path", kind="stable").reset_index(drop=True)
        if not table.empty
        else table
    )
    table.to_parquet(path, index=False)
    entities = deidentify.entities_table(table, str(settings.get("UPLOAD_AGENT", "")))
    entities.to_parquet(layout.release / "entities.parquet", index=False)
    return table, entities


# ------------------------------------------------------------------ notebook helpers
def ensure_deidentified(layout: BatchLayout, settings: Mapping[str, Any]) -> bool:
    """De-identify the batch when it has not been yet (the demo batch on first use).

    Never re-runs an existing de-identification (that would clear ``release/``
    and the review's results).

    Returns
    -------
    bool
        True when de-identification ran now.
    """
    if (layout.deid_dir / "quarantined.parquet").exists():
        return False
    deidentify.deidentify_batch(layout, settings)
    return True


def status(layout: BatchLayout) -> pd.DataFrame:
    """Decision counts of the quarantined images: release, scrub, keep, undecided."""
    items = load_items(layout)
    current = DecisionLog(layout).decisions()
    counts = {str(d): 0 for d in Decision} | {"undecided": 0}
    for item in items["item"]:
        counts[str(current[item][0]) if item in current else "undecided"] += 1
    return pd.DataFrame({"decision": list(counts), "images": list(counts.values())})


def waiting_message(layout: BatchLayout) -> str:
    """``"N images still wait for a decision"``."""
    n = pending_count(layout)
    return f"{n} image{'s' if n != 1 else ''} still wait{'s' if n == 1 else ''} for a decision"


# ------------------------------------------------------------------ pictures
_BOX_COLOUR = np.array([1.0, 0.15, 0.15], dtype=np.float32)
_SUGGEST_COLOUR = np.array([1.0, 0.8, 0.0], dtype=np.float32)


def _draw(
    image: npt.NDArray[np.floating[Any]],
    boxes: Sequence[Box],
    colour: npt.NDArray[np.float32],
    fill: bool,
) -> npt.NDArray[np.float32]:
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
    rgb = np.asarray(rgb, dtype=np.float32).copy()
    rows, cols = rgb.shape[:2]
    edge = max(1, min(rows, cols) // 200)
    for b in boxes:
        x0, y0 = max(0, b.x), max(0, b.y)
        x1, y1 = min(cols, b.x + b.width), min(rows, b.y + b.height)
        if x1 <= x0 or y1 <= y0:
            continue
        if fill:
            rgb[y0:y1, x0:x1] = rgb[y0:y1, x0:x1] * 0.15
        rgb[y0 : y0 + edge, x0:x1] = colour
        rgb[max(y0, y1 - edge) : y1, x0:x1] = colour
        rgb[y0:y1, x0 : x0 + edge] = colour
        rgb[y0:y1, max(x0, x1 - edge) : x1] = colour
    return rgb


def _png(image: npt.NDArray[np.floating[Any]], max_size: int = 640) -> bytes:
    import matplotlib.pyplot as plt

    step = max(1, int(np.ceil(max(image.shape[:2]) / max_size)))
    buffer = io.BytesIO()
    data = np.clip(image[::step, ::step], 0, 1)
    plt.imsave(buffer, data, cmap="gray" if data.ndim == 2 else None, vmin=0, vmax=1, format="png")
    return buffer.getvalue()


def preview_png(
    ds: Dataset,
    boxes: Sequence[Box] = (),
    suggested: Sequence[Box] = (),
    *,
    frame: int = 0,
    center: float | None = None,
    width: float | None = None,
) -> bytes:
    """The image rendered as PNG, with the rectangles to scrub drawn (darkened, red edge)."""
    from .plots import render

    image = render(ds, frame, center, width)
    if boxes or suggested:
        image = _draw(image, [b for b in suggested if b not in boxes], _SUGGEST_COLOUR, False)
        image = _draw(image, boxes, _BOX_COLOUR, True)
    return _png(image)


# ------------------------------------------------------------------ the reviewer
_KEYS = {
    "release": "r",
    "scrub": "s",
    "keep": "k",
    "release-series": "R",
    "scrub-series": "S",
    "keep-series": "K",
    "next": "n",
    "prev": "p",
    "add-box": "b",
    "apply": "a",
}
_ACCESS_JS = """
(function () {
  const keys = %s;
  function tag() {
    for (const [name, key] of Object.entries(keys)) {
      document.querySelectorAll('.sendit-' + name).forEach(function (el) {
        const button = el.tagName === 'BUTTON' ? el : el.querySelector('button');
        if (button && !button.accessKey) { button.accessKey = key.toLowerCase(); }
      });
    }
  }
  tag();
  new MutationObserver(tag).observe(document.body, {childList: true, subtree: true});
})();
"""


class Reviewer:
    """The review user interface (ipywidgets): series montages, one image, decisions.

    Every decision is saved the moment it is made (:class:`DecisionLog`);
    "Apply decisions" calls :func:`apply_decisions`.  Widgets carry stable CSS
    classes (``sendit-release``, ``sendit-scrub``, ``sendit-keep``,
    ``sendit-release-series`` …, ``sendit-box-x`` …, ``sendit-add-box``,
    ``sendit-apply``, ``sendit-progress``, ``sendit-item``, ``sendit-series``,
    ``sendit-command``) for keyboard shortcuts and browser tests.

    Parameters
    ----------
    layout : BatchLayout
        A de-identified batch.
    settings : mapping
        Resolved settings (``REVIEWER``, ``MONTAGE_MAX_IMAGES``, ``THUMBNAIL_SIZE``, ...).
    reviewer : str, optional
        Name written with each decision (default ``REVIEWER`` or the login name).
    """

    def __init__(
        self, layout: BatchLayout, settings: Mapping[str, Any], reviewer: str = ""
    ) -> None:
        import ipywidgets as w

        self.layout = layout
        self.settings = settings
        self.items = load_items(layout)
        self.log = DecisionLog(layout, reviewer or reviewer_name(settings))
        self.decided = self.log.decisions()
        self.boxes: dict[str, list[Box]] = {}
        self.index = 0
        self._montages: dict[str, bytes] = {}
        self._dataset: tuple[str, Dataset] | None = None
        self._busy = False
        series = list(
            dict.fromkeys(zip(self.items["series_uid"], self.items["series"], strict=True))
        )
        labels: dict[str, str] = {}
        for uid, name in series:
            count = int((self.items["series_uid"] == uid).sum())
            labels[uid] = f"series {name} ({count} image{'s' if count != 1 else ''})"

        def button(text: str, name: str, tip: str, style: str = "") -> Any:
            key = _KEYS.get(name, "")
            b = w.Button(
                description=text, tooltip=f"{tip} (Alt+{key})" if key else tip, button_style=style
            )
            b.add_class(f"sendit-{name}")
            return b

        def labelled(widget: Any, name: str) -> Any:
            widget.add_class(f"sendit-{name}")
            return widget

        self.progress = labelled(w.HTML(), "progress")
        self.message = labelled(w.HTML(), "message")
        self.series_select = labelled(
            w.Dropdown(
                options=[(labels[u], u) for u, _ in series],
                description="Series",
                layout=w.Layout(width="520px"),
            ),
            "series",
        )
        self.montage = labelled(
            w.Image(format="png", layout=w.Layout(max_width="900px")), "montage"
        )
        self.series_info = labelled(w.HTML(), "series-info")
        self.release_series = button(
            "Release series",
            "release-series",
            "release every image of this series as it is",
            "success",
        )
        self.scrub_series = button(
            "Scrub series",
            "scrub-series",
            "scrub the rectangles on every image of this series",
            "warning",
        )
        self.keep_series = button(
            "Keep series", "keep-series", "keep every image of this series in quarantine", "danger"
        )
        self.image = labelled(w.Image(format="png", layout=w.Layout(width="512px")), "image")
        self.item_label = labelled(w.HTML(), "item")
        self.details = labelled(w.HTML(), "details")
        self.center = labelled(
            w.FloatSlider(description="Level", continuous_update=False, readout_format=".0f"),
            "level",
        )
        self.width = labelled(
            w.FloatSlider(
                description="Window", continuous_update=False, min=1, readout_format=".0f"
            ),
            "window",
        )
        self.frame = labelled(
            w.IntSlider(description="Frame", min=0, max=0, continuous_update=False), "frame"
        )
        self.box_x = labelled(
            w.BoundedIntText(description="x", min=0, max=100000, layout=w.Layout(width="130px")),
            "box-x",
        )
        self.box_y = labelled(
            w.BoundedIntText(description="y", min=0, max=100000, layout=w.Layout(width="130px")),
            "box-y",
        )
        self.box_w = labelled(
            w.BoundedIntText(
                description="w", value=1, min=1, max=100000, layout=w.Layout(width="130px")
            ),
            "box-w",
        )
        self.box_h = labelled(
            w.BoundedIntText(
                description="h", value=1, min=1, max=100000, layout=w.Layout(width="130px")
            ),
            "box-h",
        )
        for widget in (self.box_x, self.box_y, self.box_w, self.box_h):
            widget.style.description_width = "20px"
        self.add_box = button("Add box", "add-box", "add the rectangle x, y, w, h to this image")
        self.clear_boxes = button("Clear boxes", "clear-boxes", "remove this image's rectangles")
        self.box_list = labelled(w.HTML(), "boxes")
        self.release = button("Release", "release", "release this image as it is", "success")
        self.scrub = button("Scrub", "scrub", "black out the rectangles, then release", "warning")
        self.keep = button("Keep", "keep", "keep this image in quarantine", "danger")
        self.prev = button("◀ Previous", "prev", "previous image")
        self.next = button("Next ▶", "next", "next image")
        self.next_open = button("Next undecided", "next-undecided", "next image without a decision")
        self.command = labelled(
            w.Text(
                placeholder="keys + Enter: r release · s scrub · k keep · R/S/K whole series "
                "· n next · p previous · b X Y W H add box · a apply",
                continuous_update=False,
                layout=w.Layout(width="640px"),
            ),
            "command",
        )
        self.apply_button = button(
            "Apply decisions",
            "apply",
            "move released/scrubbed images to release/ and re-run the leak gate",
            "primary",
        )
        self.apply_result = labelled(w.HTML(), "apply-result")

        self.release.on_click(lambda _b: self.decide(Decision.RELEASE))
        self.scrub.on_click(lambda _b: self.decide(Decision.SCRUB))
        self.keep.on_click(lambda _b: self.decide(Decision.KEEP))
        self.release_series.on_click(lambda _b: self.decide_series(Decision.RELEASE))
        self.scrub_series.on_click(lambda _b: self.decide_series(Decision.SCRUB))
        self.keep_series.on_click(lambda _b: self.decide_series(Decision.KEEP))
        self.prev.on_click(lambda _b: self.go(self.index - 1))
        self.next.on_click(lambda _b: self.go(self.index + 1))
        self.next_open.on_click(lambda _b: self.go_undecided())
        self.add_box.on_click(
            lambda _b: self.add(
                Box(self.box_x.value, self.box_y.value, self.box_w.value, self.box_h.value)
            )
        )
        self.clear_boxes.on_click(lambda _b: self.clear())
        self.apply_button.on_click(lambda _b: self.apply())
        self.series_select.observe(self._on_series, names="value")
        for slider in (self.center, self.width, self.frame):
            slider.observe(lambda _c: self._redraw(), names="value")
        self.command.observe(self._on_command, names="value")

        series_box = w.VBox(
            [
                w.HTML("<b>Series</b> — pick a series; its flagged images are shown together."),
                self.series_select,
                self.series_info,
                self.montage,
                w.HBox([self.release_series, self.scrub_series, self.keep_series]),
            ]
        )
        image_box = w.VBox(
            [
                self.item_label,
                w.HBox([self.image, w.VBox([self.details, self.center, self.width, self.frame])]),
                w.HBox(
                    [self.box_x, self.box_y, self.box_w, self.box_h, self.add_box, self.clear_boxes]
                ),
                self.box_list,
                w.HBox([self.prev, self.release, self.scrub, self.keep, self.next, self.next_open]),
                self.command,
            ]
        )
        self.widget = w.VBox(
            [
                w.HBox([self.progress, self.message]),
                series_box,
                w.HTML("<hr>"),
                image_box,
                w.HTML("<hr>"),
                w.HBox([self.apply_button, self.apply_result]),
            ]
        )
        self.widget.add_class("sendit-reviewer")
        if self.items.empty:
            self.message.value = "No image is quarantined in this batch: nothing to review."
            for b in (
                self.release,
                self.scrub,
                self.keep,
                self.release_series,
                self.scrub_series,
                self.keep_series,
            ):
                b.disabled = True
        else:
            self.go(0)
        self._update_progress()

    # -- display
    def show(self) -> None:
        """Display the reviewer (and the access-key helper) in a notebook."""
        from IPython.display import Javascript, display

        display(self.widget)  # type: ignore[no-untyped-call]
        display(Javascript(_ACCESS_JS % json.dumps(_KEYS)))  # type: ignore[no-untyped-call]

    def _ipython_display_(self) -> None:
        self.show()

    # -- state
    @property
    def current(self) -> Any:
        """The row of :attr:`items` shown now."""
        return _tuples(self.items.iloc[[self.index]])[0]

    def _update_progress(self) -> None:
        total = len(self.items)
        done = sum(1 for item in self.items["item"] if item in self.decided)
        self.progress.value = f"<b>{done} of {total} decided</b>"

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#1b5e20"
        self.message.value = f"<span style='color:{colour}'>{_escape(text)}</span>"

    def _boxes_of(self, row: Any) -> list[Box]:
        if row.item not in self.boxes:
            decided = self.decided.get(row.item)
            start = decided[1] if decided and decided[0] == Decision.SCRUB else list(row.suggested)
            self.boxes[row.item] = list(start)
        return self.boxes[row.item]

    def _ds(self, row: Any) -> Dataset:
        if self._dataset is None or self._dataset[0] != row.item:
            self._dataset = (row.item, pydicom.dcmread(item_file(self.layout, row.path)))
        return self._dataset[1]

    # -- navigation
    def go(self, index: int) -> None:
        """Show image ``index`` (clamped to the list)."""
        if self.items.empty:
            return
        self.index = max(0, min(index, len(self.items) - 1))
        row = self.current
        self._busy = True
        try:
            if self.series_select.value != row.series_uid:
                self.series_select.value = row.series_uid
            self._show_series(row.series_uid)
            self._set_window(row)
        finally:
            self._busy = False
        self._redraw()

    def go_undecided(self) -> None:
        """Show the next image without a decision (wrapping around)."""
        n = len(self.items)
        for step in range(1, n + 1):
            index = (self.index + step) % n
            if self.items.iloc[index]["item"] not in self.decided:
                self.go(index)
                return
        self._say("Every image has a decision. Press Apply decisions.")

    def select(self, item: str) -> None:
        """Show the image named ``item``."""
        matches = np.flatnonzero(self.items["item"].to_numpy() == item)
        if not len(matches):
            raise ReviewError(f"{item} is not a quarantined image of batch {self.layout.name}")
        self.go(int(matches[0]))

    def _on_series(self, change: Mapping[str, Any]) -> None:
        if self._busy or change.get("new") is None:
            return
        matches = np.flatnonzero(self.items["series_uid"].to_numpy() == change["new"])
        if len(matches):
            self.go(int(matches[0]))

    def _show_series(self, uid: str) -> None:
        from .plots import montage

        group = self.items[self.items["series_uid"] == uid]
        first = group.iloc[0]
        self.series_info.value = (
            f"{len(group)} flagged image(s), {_escape(first['modality'])}; rule: "
            f"<i>{_escape(first['label'])}</i> ({_escape(first['group'])})"
        )
        if uid not in self._montages:
            import matplotlib.pyplot as plt

            limit = int(self.settings.get("MONTAGE_MAX_IMAGES", 16) or 16)
            chosen = group.iloc[
                np.unique(
                    np.linspace(0, len(group) - 1, min(limit, len(group))).round().astype(int)
                )
            ]
            paths = [item_file(self.layout, p) for p in chosen["path"]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fig = montage(
                    paths,
                    [f"#{n}" for n in chosen["instance"]],
                    int(self.settings.get("THUMBNAIL_SIZE", 128) or 128),
                    "",
                )
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            plt.close(fig)
            self._montages[uid] = buffer.getvalue()
        self.montage.value = self._montages[uid]
        self.montage.layout.width = f"{min(8, len(group)) * 150 + 40}px"

    def _set_window(self, row: Any) -> None:
        ds = self._ds(row)
        colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
        self.center.disabled = self.width.disabled = colour
        self.frame.max = max(0, int(row.frames) - 1)
        self.frame.value = 0
        if colour:
            return
        try:
            data = ds.pixel_array.astype(np.float32)
        except (*READ_ERRORS, RuntimeError):
            return
        slope, intercept = (
            float(ds.get("RescaleSlope", 1) or 1),
            float(ds.get("RescaleIntercept", 0) or 0),
        )
        lo, hi = float(data.min()) * slope + intercept, float(data.max()) * slope + intercept
        hi = hi if hi > lo else lo + 1
        p1, p99 = (float(v) * slope + intercept for v in np.percentile(data, (1, 99)))
        self.center.min, self.center.max = -1e9, 1e9
        self.width.max = 1e9
        self.center.min, self.center.max = lo, hi
        self.width.max = max(2.0, hi - lo) * 2
        self.center.step = self.width.step = max((hi - lo) / 256, 0.01)
        self.center.value = (p1 + p99) / 2
        self.width.value = max(p99 - p1, 1.0)

    def _redraw(self) -> None:
        if self._busy or self.items.empty:
            return
        row = self.current
        boxes = self._boxes_of(row)
        ds = self._ds(row)
        colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
        try:
            self.image.value = preview_png(
                ds,
                boxes,
                row.suggested,
                frame=self.frame.value,
                center=None if colour else self.center.value,
                width=None if colour else self.width.value,
            )
        except (*READ_ERRORS, RuntimeError) as exc:
            self._say(f"cannot draw {row.item}: {type(exc).__name__}", error=True)
        decision = self.decided.get(row.item)
        state = (
            f"decided: <b>{decision[0]}</b> by {_escape(decision[2])}"
            if decision
            else "<b>no decision yet</b>"
        )
        self.item_label.value = (
            f"<b>{self.index + 1} / {len(self.items)}</b> · "
            f"<code class='sendit-item-name'>{_escape(row.item)}</code>"
            f" · series {_escape(row.series)} #{row.instance} · {row.columns}×{row.rows} · {state}"
        )
        triggers = "".join(
            f"<tr><td>{_escape(k)}</td><td>{_escape(v)}</td></tr>" for k, v in row.triggers.items()
        )
        self.details.value = (
            f"<b>Rule</b>: {_escape(row.label)} <i>({_escape(row.group)})</i><br>"
            f"<small>{_escape(row.reason)}</small><table>{triggers}</table>"
        )
        shown = ", ".join(str(b) for b in boxes) or "none (enter x, y, w, h and press Add box)"
        hint = (
            " · rule suggests: " + ", ".join(str(b) for b in row.suggested) if row.suggested else ""
        )
        self.box_list.value = f"Rectangles to scrub: {_escape(shown)}{_escape(hint)}"

    # -- actions
    def add(self, box: Box) -> None:
        """Add a rectangle to the image shown (and redraw)."""
        row = self.current
        problem = check_box(box, int(row.columns), int(row.rows))
        if problem:
            self._say(problem, error=True)
            return
        boxes = self._boxes_of(row)
        if box not in boxes:
            boxes.append(box)
        self._say(f"rectangle {box} added to {row.item}; press Scrub to save the decision")
        self._redraw()

    def clear(self) -> None:
        """Remove the rectangles of the image shown."""
        self.boxes[self.current.item] = []
        self._redraw()

    def _record(self, decisions: list[tuple[str, Decision, Sequence[Box]]]) -> None:
        self.log.record_many(decisions)
        for item, decision, boxes in decisions:
            self.decided[item] = (decision, list(boxes), self.log.reviewer)
        self._update_progress()

    def decide(self, decision: Decision | str) -> None:
        """Decide for the image shown, save at once, and move to the next image."""
        decision = Decision(decision)
        row = self.current
        boxes = list(self._boxes_of(row)) if decision == Decision.SCRUB else []
        if decision == Decision.SCRUB and not boxes:
            self._say(
                f"{row.item}: enter a rectangle (x, y, w, h) and press Add box before Scrub",
                error=True,
            )
            return
        self._record([(row.item, decision, boxes)])
        self._say(
            f"{row.item}: {decision} saved" + (f" ({len(boxes)} rectangle(s))" if boxes else "")
        )
        if self.index < len(self.items) - 1:
            self.go(self.index + 1)
        else:
            self._redraw()

    def decide_series(self, decision: Decision | str) -> None:
        """Decide for every image of the series shown, in one durable write.

        A series scrub uses the rectangles of the image shown (or, when it has
        none, each image's suggested boxes); every rectangle must fit every image.
        """
        decision = Decision(decision)
        row = self.current
        group = self.items[self.items["series_uid"] == row.series_uid]
        shown = list(self._boxes_of(row))
        batch: list[tuple[str, Decision, Sequence[Box]]] = []
        for other in _tuples(group):
            boxes: list[Box] = []
            if decision == Decision.SCRUB:
                boxes = shown or list(other.suggested)
                problems = [
                    p
                    for p in (check_box(b, int(other.columns), int(other.rows)) for b in boxes)
                    if p
                ]
                if not boxes or problems:
                    self._say(
                        f"{other.item}: "
                        + (problems[0] if problems else "no rectangle to scrub; add one first"),
                        error=True,
                    )
                    return
                self.boxes[other.item] = list(boxes)
            batch.append((other.item, decision, boxes))
        self._record(batch)
        self._say(f"series {row.series}: {decision} saved for {len(batch)} image(s)")
        after = np.flatnonzero(self.items["series_uid"].to_numpy() == row.series_uid).max() + 1
        self.go(int(after) if after < len(self.items) else self.index)

    def apply(self) -> ApplyResult | None:
        """Apply the decisions in force (see :func:`apply_decisions`) and show the outcome."""
        self.apply_result.value = "applying…"
        try:
            result = apply_decisions(self.layout, self.settings, auto_ocr=False)
        except (ReviewError, LeakError) as exc:
            self.apply_result.value = f"<span style='color:#b00020'>{_escape(str(exc))}</span>"
            return None
        self.apply_result.value = (
            f"<b>Applied:</b> {_escape(result.summary())}. {_escape(waiting_message(self.layout))}."
        )
        self._say("decisions applied")
        return result

    def _on_command(self, change: Mapping[str, Any]) -> None:
        text = str(change.get("new") or "").strip()
        if not text:
            return
        actions: dict[str, Callable[[], object]] = {
            "r": lambda: self.decide(Decision.RELEASE),
            "s": lambda: self.decide(Decision.SCRUB),
            "k": lambda: self.decide(Decision.KEEP),
            "R": lambda: self.decide_series(Decision.RELEASE),
            "S": lambda: self.decide_series(Decision.SCRUB),
            "K": lambda: self.decide_series(Decision.KEEP),
            "n": lambda: self.go(self.index + 1),
            "p": lambda: self.go(self.index - 1),
            "a": self.apply,
        }
        parts = text.split()
        try:
            if parts[0] == "b" and len(parts) == 5:
                self.add(Box(*(int(v) for v in parts[1:])))
            elif text in actions:
                actions[text]()
            else:
                self._say(f"unknown command {text!r}; see the hint in the box", error=True)
        except ValueError:
            self._say("b needs four whole numbers: b X Y W H", error=True)
        finally:
            self.command.value = ""


def _escape(text: Any) -> str:
    import html

    return html.escape(str(text))
