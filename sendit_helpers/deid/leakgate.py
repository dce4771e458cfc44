"""The leak gate: nothing leaves ``release/`` unless it was scanned clean.

After de-identification (and again after review) every byte and every file
name under ``release/`` is scanned for every identifying value the recipe
removed (:func:`run_gate`).  The gate holds files, not batches: the files a
value is found in (and the files whose rows of ``cleaned.parquet`` hold one)
are moved to ``phi/quarantine/`` by the stage's ``hold`` function, with a
reason naming the field and the category of the value, never the value
(:class:`Held`); the rest is scanned clean and released.  A report in
``phi/`` names file, field and category.  The gate fails the stage only when
it cannot run, or cannot hold what it found (a value in a table row or file
that belongs to no image).  A pass leaves a record holding a SHA-256 digest
of ``release/``'s contents (:mod:`.gaterecord`); the upload stage requires
that record to match the folder as it is now.

The gate's parts: :mod:`.gatescan` (the scanner, one file's scan),
:mod:`.gatepolicy` (values the recipe's own policy keeps are not searched),
:mod:`.gatewritten` (what de-identification kept of the bytes it wrote, so
nothing is read twice) and :mod:`.gaterecord` (``release/``'s entries and the
record of a pass).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core.errors import GateError, LeakError
from sendit_helpers.core.layout import CLEANED_FILE, BatchLayout
from sendit_helpers.deid.gatepolicy import Policy
from sendit_helpers.deid.gaterecord import (
    FileEntry,
    release_entries,
    release_index,
    release_name,
    signature,
    write_record,
)
from sendit_helpers.deid.gatescan import Scanner, Span, scan_file_entry
from sendit_helpers.deid.gatewritten import Written, clean_written

SPANS_FILE = "pixel_spans.json"


def _scan_chunk(
    items: list[tuple[str, str, Span | None]], scanner: Scanner
) -> tuple[list[tuple[str, str, str]], dict[str, FileEntry]]:
    hits: list[tuple[str, str, str]] = []
    index: dict[str, FileEntry] = {}
    for path, rel, span in items:
        found, index[rel] = scan_file_entry(Path(path), rel, scanner, span)
        hits.extend(found)
    return hits, index


@dataclass
class GateReport:
    """Outcome of one gate run (no values, only where they were found).

    ``passed`` is True when ``release/`` is now clean: every file the gate
    found a value in was held (``held``).
    """

    passed: bool
    files: int
    values_checked: int
    too_short: int
    hits: pd.DataFrame
    report: Path | None = None
    held: list[Held] = field(default_factory=list)
    """The files moved out of ``release/`` to quarantine, with the first place a value was found."""
    kept_by_policy: int = 0
    """Values (and name parts) not searched because the recipe's :class:`Policy` keeps them."""


#: Files at the top of ``release/`` that hold one row per released image.
TABLE_FILES = (CLEANED_FILE,)
#: Tables of ``release/`` whose rows belong to no single image (a hit there cannot be held).
_CATEGORY_TEXT = {
    "name": "a removed name",
    "name part": "part of a removed name",
    "free text": "removed free text",
    "batch folder name": "the batch folder name",
}


@dataclass(frozen=True)
class Held:
    """One file the gate holds: where the first value was found, never the value.

    Attributes
    ----------
    path : str
        ``<entity>/<name>`` relative to ``release/`` (and to the quarantine).
    field : str
        Where the value was found: ``Keyword (gggg,eeee)``, ``file name``,
        or ``cleaned.parquet column <name>``.
    category : str
        What the value was: the keyword of the field it was removed from,
        ``name``, ``name part``, ``free text`` or ``batch folder name``.
    more : int
        How many other places of the file hold a value.
    """

    path: str
    field: str
    category: str
    more: int = 0

    @property
    def reason(self) -> str:
        """The disposition reason: field and category, never the value."""
        what = _CATEGORY_TEXT.get(self.category, f"a removed {self.category} value")
        plural = "s" if self.more != 1 else ""
        others = f" (and {self.more} more place{plural})" if self.more else ""
        return f"{GATE_REASON_PREFIX} {what} found in {self.field}{others}; held for review"


#: The start of the disposition reason of every file the gate holds.
GATE_REASON_PREFIX = "leak gate:"
HoldFunction = Callable[[list[Held]], set[str]]
"""Moves the files given out of ``release/`` (tables and dispositions updated); returns the
paths it held.  The de-identify and review stages each provide one."""


def save_values(layout: BatchLayout, values: Mapping[str, str]) -> Path:
    """Keep the batch's identifying values (PHI) in ``phi/deidentify/`` for later gate runs."""
    path = layout.deid_dir / "gate_values.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(values), ensure_ascii=False))
    return path


def save_spans(layout: BatchLayout, spans: Mapping[str, Span]) -> Path:
    """Record the pixel data span of each written file (``<entity>/<name>`` -> span).

    Kept in ``phi/deidentify/`` (never in ``release/``); the gate uses a span
    only while the file still matches it (:func:`scan_file`).
    """
    path = layout.deid_dir / SPANS_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: list(v) for k, v in sorted(spans.items())}))
    os.replace(tmp, path)
    return path


def load_spans(layout: BatchLayout) -> dict[str, Span]:
    """The spans saved by :func:`save_spans` (empty when there are none or they are unreadable)."""
    path = layout.deid_dir / SPANS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    spans: dict[str, Span] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, list) and len(value) == 4:
                start, end, size, native16 = value
                if all(isinstance(v, int) for v in (start, end, size)):
                    spans[str(key)] = (start, end, size, bool(native16))
    return spans


def load_values(layout: BatchLayout) -> dict[str, str]:
    """The values saved by :func:`save_values`."""
    path = layout.deid_dir / "gate_values.json"
    if not path.exists():
        raise GateError(f"{path} is missing; run `sendit deidentify` on this batch first")
    data: dict[str, str] = json.loads(path.read_text())
    return data


def _chunks(
    items: list[tuple[str, str, Span | None]], n: int
) -> Iterable[list[tuple[str, str, Span | None]]]:
    size = max(1, len(items) // (n * 4) or 1)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _scan_items(
    items: list[tuple[str, str, Span | None]], scanner: Scanner, workers: int
) -> tuple[list[tuple[str, str, str]], dict[str, FileEntry]]:
    """Scan files (in parallel when many), giving hits and entries."""
    if workers > 1 and len(items) >= 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(
                pool.map(_scan_chunk, list(_chunks(items, workers)), [scanner] * len(items))
            )
    else:
        parts = [_scan_chunk(items, scanner)]
    hits = [h for part_hits, _index in parts for h in part_hits]
    index = {rel: entry for _hits, part_index in parts for rel, entry in part_index.items()}
    return hits, index


def _scan_written(
    layout: BatchLayout,
    todo: list[Path],
    written: Iterable[Written],
    scanner: Scanner,
    index: dict[str, FileEntry],
) -> list[Path]:
    """Scan the files of ``todo`` still as written from what was kept; return the rest.

    The entries of the files found clean go into ``index``.
    """
    names = [release_name(layout, p) for p in todo]
    pending = dict(zip(names, todo, strict=True))
    for item in written:
        path = pending.get(item.path)
        if path is None:
            continue
        try:
            unchanged = signature(os.stat(path)) == tuple(item.entry[1:])
        except OSError:
            continue
        if unchanged and clean_written(item, scanner):
            index[item.path] = item.entry
            del pending[item.path]
    return [p for p, rel in zip(todo, names, strict=True) if rel in pending]


def table_rows_hit(path: Path, scanner: Scanner) -> list[tuple[str, str, str]]:
    """``(image path, column, category)`` of every row of a cleaned table holding a value.

    Parameters
    ----------
    path : Path
        A ``cleaned.parquet`` (its ``path`` column names each row's image).
    scanner : Scanner
        The gate's scanner.

    Returns
    -------
    list of (str, str, str)
        One entry per row and column a value was found in, by column order.
    """
    table = pq.read_table(path)
    if "path" not in table.column_names or not table.num_rows:
        return []
    paths = table.column("path").cast(pa.string())
    found: list[tuple[str, str, str]] = []
    for name in table.column_names:
        column = table.column(name).cast(pa.string())
        hits = {}
        for text in pc.unique(column).to_pylist():
            if text:
                where = scanner.find(text.encode("utf-8"))
                if where:
                    hits[text] = where[0][1]
        if not hits:
            continue
        for row_path, text in zip(paths.to_pylist(), column.to_pylist(), strict=True):
            if text in hits and row_path:
                found.append((str(row_path), f"cleaned.parquet column {name}", hits[text]))
    return found


def _to_hold(
    layout: BatchLayout, hits: list[tuple[str, str, str]], scanner: Scanner
) -> dict[str, Held]:
    """The files to hold for ``hits`` (first place per file, in scan order)."""
    places: dict[str, list[tuple[str, str]]] = {}
    for rel, where, category in hits:
        if rel in TABLE_FILES:
            for image, column, found in table_rows_hit(layout.release / rel, scanner):
                places.setdefault(image, []).append((column, found))
        else:
            places.setdefault(rel, []).append((where, category))
    return {
        rel: Held(rel, where[0][0], where[0][1], len(dict.fromkeys(where)) - 1)
        for rel, where in places.items()
    }


#: Columns of ``phi/deidentify/leak_report.csv`` (never the value).
_REPORT_COLUMNS = ["file", "field", "category"]
#: Rounds of holding and scanning again before the gate gives up.
_MAX_ROUNDS = 4


def run_gate(
    layout: BatchLayout,
    values: Mapping[str, str],
    *,
    workers: int = 1,
    policy: Policy | None = None,
    hold: HoldFunction | None = None,
    written: Iterable[Written] = (),
) -> GateReport:
    """Scan ``release/`` for ``values``; hold the files they are found in; record a pass.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    values : mapping of str to str
        Identifying value -> category (:func:`load_values`).
    workers : int
        Processes scanning files (0: one per core).
    policy : Policy, optional
        What the recipe's policy keeps (not searched); default: nothing.
    hold : callable, optional
        Moves files out of ``release/`` (:data:`HoldFunction`).  Without it,
        any hit fails the gate (nothing is moved).
    written : iterable of Written
        What de-identification kept of the files it wrote (:func:`written`):
        a file still as written is scanned from these bytes (and its recorded
        SHA-256 used), not read again; every other file of ``release/`` is read.

    Returns
    -------
    GateReport
        ``passed`` (``release/`` is clean now), the files held and the hits.

    Raises
    ------
    LeakError
        When a value is found and there is no ``hold``, or a hit cannot be held
        (a file that is no image, a table row of no image, or a file still hit
        after holding); the message gives counts and the report path.
    """
    scanner = Scanner.build(values, policy)
    workers = workers or os.cpu_count() or 1
    layout.gate_record.unlink(missing_ok=True)
    spans = load_spans(layout)
    index: dict[str, FileEntry] = {}
    todo, _folders, _odd = release_entries(layout)
    todo = _scan_written(layout, todo, written, scanner, index)
    all_hits: list[tuple[str, str, str]] = []
    held: dict[str, Held] = {}
    report_path = layout.deid_dir / "leak_report.csv"
    earlier = (  # the stage's earlier runs (de-identify, then each review) stay in the report
        pd.read_csv(report_path, dtype=str, keep_default_na=False).reindex(columns=_REPORT_COLUMNS)
        if report_path.exists()
        else pd.DataFrame(columns=_REPORT_COLUMNS)
    )
    for _round in range(_MAX_ROUNDS):
        items: list[tuple[str, str, Span | None]] = []
        for p in todo:
            rel = release_name(layout, p)
            items.append((str(p), rel, spans.get(rel)))
        hits, scanned = _scan_items(items, scanner, workers)
        index.update(scanned)
        _files, folders, odd = release_entries(layout)
        for rel in folders:  # an empty folder's name is in no file's name
            hits += [(rel, "folder name", c) for _o, c in scanner.find(rel.encode("utf-8"))]
        hits += [(rel, "entry type", f"not allowed in release/: {what}") for rel, what in odd]
        if not hits:
            break
        all_hits += hits
        table = pd.DataFrame(all_hits, columns=_REPORT_COLUMNS).drop_duplicates()
        report_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pd.concat([earlier, table]).drop_duplicates().to_csv(report_path, index=False)
        wanted = _to_hold(layout, hits, scanner) if hold is not None else {}
        wanted = {rel: h for rel, h in wanted.items() if rel not in held}
        done = hold(list(wanted.values())) if hold is not None and wanted else set()
        held.update({rel: h for rel, h in wanted.items() if rel in done})
        stuck = sorted({rel for rel, _w, _c in hits if rel not in held and rel not in TABLE_FILES})
        if hold is None or stuck or not done:
            raise LeakError(
                f"leak gate failed: {len(table)} identifying value(s) found in "
                f"{table['file'].nunique()} file(s) of {layout.release}; "
                + (
                    "nothing may be uploaded. "
                    if hold is None
                    else f"{len(stuck) or 'some'} of them cannot be held (no image of this batch "
                    f"owns them, e.g. {(stuck or sorted(set(table['file'])))[0]}); nothing may be "
                    "uploaded. "
                )
                + f"See {report_path} (file, field, category) and fix the recipe, then rerun"
            )
        for rel in done:
            index.pop(rel, None)
        # Scan again what holding changed (the tables) or left new; the rest was scanned clean.
        known = {rel: index.pop(rel) for rel in list(index)}
        current = release_index(layout, known)
        index = {rel: entry for rel, entry in current.items() if known.get(rel) == entry}
        todo = [layout.release / rel for rel in current if rel not in index]
    else:
        raise LeakError(
            f"leak gate failed: values still found in {layout.release} after holding "
            f"{len(held)} file(s); nothing may be uploaded. See {report_path} and fix the "
            "recipe, then rerun"
        )
    table = pd.DataFrame(all_hits, columns=_REPORT_COLUMNS).drop_duplicates()
    write_record(layout, n_files=len(index), n_values=len(scanner), index=index)
    return GateReport(
        True,
        len(index) + len(held),
        len(scanner),
        scanner.too_short,
        table,
        report_path if all_hits else None,
        list(held.values()),
        scanner.kept_by_policy,
    )
