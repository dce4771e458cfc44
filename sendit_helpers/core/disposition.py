"""``phi/disposition.csv``: one row per input file and what became of it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd

from sendit_helpers.core.layout import BatchLayout

COLUMNS = ["source_path", "disposition", "reason", "output_name"]


class Disposition(StrEnum):
    """What became of one input file."""

    PENDING = "pending"
    """DICOM, readable, waiting for de-identification."""
    ERROR = "error"
    """Unreadable, truncated or otherwise unusable DICOM; the reason says why."""
    NON_DICOM = "non_dicom"
    """Not a DICOM file (text, empty, other format)."""
    RELEASED = "released"
    """De-identified and written to ``release/``."""
    QUARANTINED = "quarantined"
    """Held in ``phi/quarantine/`` (possible PHI in pixels, or kept by review)."""
    SKIPPED = "skipped"
    """Readable DICOM the recipe chose not to release (e.g. a ``%filter`` blacklist REMOVE)."""


@dataclass(frozen=True)
class Row:
    """One disposition row."""

    source_path: str
    disposition: Disposition
    reason: str = ""
    output_name: str = ""


def to_frame(rows: Iterable[Row]) -> pd.DataFrame:
    """Turn rows into a disposition table with the standard columns."""
    data = [(r.source_path, str(r.disposition), r.reason, r.output_name) for r in rows]
    return pd.DataFrame(data, columns=COLUMNS)


def read(layout: BatchLayout, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a batch's disposition table (empty table when there is none yet).

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    columns : sequence of str, optional
        Read only these of :data:`COLUMNS` (in the table's order); None reads all.

    Returns
    -------
    pandas.DataFrame
        The table (strings; empty cells as ``""``).
    """
    path = layout.disposition_csv
    wanted = COLUMNS if columns is None else [c for c in COLUMNS if c in set(columns)]
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in wanted})
    if columns is None:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=wanted)


def write(layout: BatchLayout, table: pd.DataFrame) -> Path:
    """Write the table atomically, sorted by ``source_path``."""
    table = table[COLUMNS].sort_values("source_path", kind="stable").reset_index(drop=True)
    path = layout.disposition_csv
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def update(layout: BatchLayout, rows: Iterable[Row]) -> pd.DataFrame:
    """Set the disposition of the given source files, keeping every other row."""
    table = read(layout).set_index("source_path")
    new = to_frame(rows).set_index("source_path")
    table = pd.concat([table[~table.index.isin(new.index)], new])
    table = table.reset_index()
    write(layout, table)
    return table


#: Reason prefix of an item a reviewer decided to keep (it no longer waits for a decision).
KEPT_BY_REVIEW = "review: kept in quarantine"


def release_counts(table: pd.DataFrame) -> tuple[int, int]:
    """``(released, waiting)``: files in ``release/``, and quarantined files awaiting a decision.

    Parameters
    ----------
    table : pandas.DataFrame
        A disposition table (:func:`read`).

    Returns
    -------
    tuple of (int, int)
        Released files, and quarantined ones (pixel screen or leak gate) that a
        reviewer has not decided to keep.
    """
    released, _kept, waiting = review_counts(table)
    return released, waiting


def review_counts(table: pd.DataFrame) -> tuple[int, int, int]:
    """``(released, held, waiting)``: files in ``release/``, files a reviewer decided to
    keep in quarantine, and quarantined files still awaiting a decision.

    Parameters
    ----------
    table : pandas.DataFrame
        A disposition table (:func:`read`).

    Returns
    -------
    tuple of (int, int, int)
    """
    if table.empty:
        return 0, 0, 0
    state = table["disposition"].astype(str)
    reason = table["reason"].astype(str) if "reason" in table else pd.Series("", index=table.index)
    released = int((state == str(Disposition.RELEASED)).sum())
    quarantined = state == str(Disposition.QUARANTINED)
    held = int((quarantined & reason.str.startswith(KEPT_BY_REVIEW)).sum())
    return released, held, int(quarantined.sum()) - held


def waiting_line(table: pd.DataFrame) -> str:
    """One line for people: how many images wait for review, and that they are not uploaded.

    ``"No image waits for review."`` when none does.
    """
    waiting = review_counts(table)[2]
    if not waiting:
        return "No image waits for review."
    return (
        f"{waiting} image{'s' if waiting != 1 else ''} wait{'s' if waiting == 1 else ''} for "
        "review in quarantine and will not be uploaded until decided: run 03_review_phi "
        "(sendit review BATCH --work WORK)."
    )


def release_line(table: pd.DataFrame) -> str:
    """``"N released, M waiting"`` for people (see :func:`release_counts`)."""
    released, waiting = release_counts(table)
    return f"{released} released, {waiting} waiting"


def counts(table: pd.DataFrame) -> pd.Series:
    """Number of files per disposition, every disposition listed."""
    order = [str(d) for d in Disposition]
    return table["disposition"].value_counts().reindex(order, fill_value=0)


def first_error(layout: BatchLayout) -> str:
    """``"N file(s) in error, first: <source path>: <reason>"``, or ``""`` when none is.

    The reasons follow the error rule (no values), so the line can be printed.
    """
    table = read(layout, ["source_path", "disposition", "reason"])
    errors = table[table["disposition"] == str(Disposition.ERROR)]
    if errors.empty:
        return ""
    first = errors.sort_values("source_path", kind="stable").iloc[0]
    return f"{len(errors)} file(s) in error, first: {first['source_path']}: {first['reason']}"
