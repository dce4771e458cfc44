"""The review stage's items: the quarantined images a person decides on.

De-identification holds the images the pixel screen flagged (and the leak gate
holds those a removed value was found in) in ``phi/quarantine/<entity>/<name>.dcm``,
header already de-identified, pixels untouched.  Each one is an *item*, named by
its de-identified file name as in ``disposition.csv``'s ``output_name``.
:func:`load_items` lists them with what a reviewer needs to decide: the rule
that flagged the image and the header values that made it fire, the suggested
rectangles (the recipe's coordinates and the OCR screen's text), and who holds
it (:data:`HELD_BY_SCREEN` or :data:`HELD_BY_GATE`).  :func:`item_file` finds an
item's untouched file, in quarantine or, once released, among the originals
(:func:`originals_dir`).

Decisions on the items are :mod:`~sendit_helpers.stages.review_decisions`';
carrying them out is :mod:`~sendit_helpers.stages.review`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core import disposition, memory
from sendit_helpers.core.errors import ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import ocr
from sendit_helpers.deid.scrub import boxes_from_coordinates
from sendit_helpers.stages import release

__all__ = [
    "HELD_BY_GATE",
    "HELD_BY_SCREEN",
    "ITEM_COLUMNS",
    "TRIGGER_FIELDS",
    "item_file",
    "item_names",
    "load_items",
    "originals_dir",
    "table_rows",
]

#: Header fields always shown beside the rule that flagged an image.
TRIGGER_FIELDS = (
    "Modality",
    "BurnedInAnnotation",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
)
_CONDITION_FIELD = re.compile(
    r"\b(?:contains|notcontains|equals|notequals|empty|missing|present|startswith|endswith)\s+([A-Za-z][A-Za-z0-9]*)"
)


def table_rows(table: pd.DataFrame) -> list[Any]:
    """Rows of a table (the items, a decision log ...) as named tuples.

    Parameters
    ----------
    table : pandas.DataFrame
        Any table.

    Returns
    -------
    list
        One named tuple per row, in order (typed loosely: columns vary).
    """
    return list(table.itertuples(index=False))


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


def _quarantined_table(layout: BatchLayout, columns: Sequence[str] | None = None) -> pa.Table:
    """``quarantined.parquet`` (Arrow); only those of ``columns`` it has, when given."""
    path = layout.held_table
    if not path.exists():
        raise ReviewError(
            f"{path} is missing; run `sendit deidentify` on batch {layout.name} first "
            "(or call sendit_helpers.run.upstream.ensure_deidentified)"
        )
    return _read_arrow(path, columns)


def _read_arrow(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A Parquet table (only those of ``columns`` it has, when given), read through one
    :class:`pyarrow.parquet.ParquetFile`: schema and rows from one open, no dataset set-up,
    and no pandas form (the items take every value through :func:`_text`)."""
    source = pq.ParquetFile(path)
    if columns is not None:
        present = set(source.schema_arrow.names)
        columns = [c for c in dict.fromkeys(columns) if c in present]
    return source.read(columns=columns)


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
        [r for r in pc.unique(screens.column("reason_screen")).to_pylist() if r is not None]
        if "reason_screen" in screens.column_names
        else []
    )
    triggers = [name for reason in reasons for name in _CONDITION_FIELD.findall(str(reason))]
    # Only the columns the items use: a row of every header column costs ~30 KB per item.
    held = _quarantined_table(layout, [*_ITEM_SOURCE_COLUMNS, *TRIGGER_FIELDS, *triggers])
    if held.num_rows == 0:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    source_of = _sources_by_name(layout, {_text(name) for name in held.column("name").to_pylist()})
    screen_of = _screens_of(screens, set(source_of.values()))
    ocr_boxes = ocr.boxes_by_source(ocr.load(layout))
    gate = {row.path: row for row in table_rows(release.gate_held(layout))}
    rows = []
    for batch in held.to_batches(max_chunksize=_RECORD_ROWS):  # fewer dicts at once
        for record in batch.to_pylist():
            source = source_of.get(_text(record.get("name")), "")
            screen = screen_of.get(source, {}) if source else {}
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
    del rows, held, screens, source_of, screen_of
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
    path = layout.held_table
    if not path.exists():
        _quarantined_table(layout)  # raises the error that says what to run
    source = pq.ParquetFile(path)
    if "name" not in source.schema_arrow.names:
        return []
    return [_text(name) for name in source.read(columns=["name"]).column(0).to_pylist()]


def _screen_table(layout: BatchLayout) -> pa.Table:
    """The inspect stage's ``files.parquet``, the columns the items read (empty when absent)."""
    path = layout.inspect_dir / "files.parquet"
    if not path.exists():
        return pa.table({})
    return _read_arrow(path, _SCREEN_COLUMNS)


def _screens_of(screens: pa.Table, sources: set[str]) -> dict[str, dict[str, Any]]:
    """``source_path ->`` the pixel screen's row (rule, reason, coordinates) of ``sources``."""
    if "source_path" not in screens.column_names or not sources:
        return {}
    paths = screens.column("source_path").cast(pa.string())
    wanted = pc.is_in(paths, value_set=pa.array(sorted(sources), pa.string()))
    found: dict[str, dict[str, Any]] = {}
    for row in screens.filter(wanted).to_pylist():
        found.setdefault(str(row.pop("source_path")), {str(k): v for k, v in row.items()})
    return found


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


def originals_dir(layout: BatchLayout) -> Path:
    """Where the untouched files of released items are kept (``phi/review/originals``)."""
    return layout.review_dir / "originals"


def item_file(layout: BatchLayout, relative: str) -> Path:
    """The untouched file of an item: in quarantine, or among the originals once released."""
    held = layout.quarantine / relative
    return held if held.exists() else originals_dir(layout) / relative
