"""The de-identify stage's tables: cleaned rows, the PHI lookup and the gate's values.

Built from the per-file outcomes, in memory (:func:`cleaned_table`,
:func:`lookup_table`, :func:`gate_values`) or spooled a chunk at a time
under ``phi/deidentify/spool/`` as the workers produce them
(:func:`spool_chunk`) and written part by part (:func:`write_cleaned`,
:func:`write_lookup`, :func:`spooled_gate_values`, :func:`spooled_written`),
so a batch's rows are never all in memory together.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sendit_helpers.core import spoolfiles
from sendit_helpers.deid import gaterecord, gatewritten
from sendit_helpers.stages import release
from sendit_helpers.stages.engine import (
    Outcome,
)


def _cleaned_rows(outcomes: Sequence[Outcome], released: bool) -> list[dict[str, Any]]:
    """The cleaned-table rows of the released (or quarantined) images among ``outcomes``."""
    return [
        {
            "name": o.job.name,
            "entity_id": o.job.entity_id,
            "item_id": o.job.item_id,
            "path": f"{o.job.entity_id}/{o.job.name}",
            **o.cleaned,
        }
        for o in outcomes
        if not o.error and o.job.quarantined != released
    ]


def _lookup_rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The lookup-table rows of ``outcomes``: one ``(file)`` row per job, then its replacements."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        j = o.job
        common = {"entity_id": j.entity_id, "item_id": j.item_id, "jitter_days": j.jitter_days}
        rows.append(
            {"source_path": j.source_path, "field": "(file)", "original": j.source_path}
            | {"new": j.name}
            | common
        )
        rows.extend(
            {"source_path": j.source_path, "field": f, "original": old, "new": new} | common
            for f, old, new in o.lookup
        )
    return rows


def cleaned_table(outcomes: Sequence[Outcome], released: bool = True) -> pd.DataFrame:
    """One row per written image: name, entity, item, path and de-identified header fields."""
    table = pd.DataFrame(_cleaned_rows(outcomes, released))
    if table.empty:  # typed, so that Arrow reads string columns back (not null ones)
        table = pd.DataFrame(columns=["name", "entity_id", "item_id", "path"])
    return table.astype("string")


def lookup_table(outcomes: Sequence[Outcome]) -> pd.DataFrame:
    """PHI lookup: source path and original IDs/UIDs -> new names and values, date offset."""
    rows = _lookup_rows(outcomes)
    return pd.DataFrame(rows).astype({"jitter_days": "int64"}) if rows else pd.DataFrame()


def gate_values(outcomes: Sequence[Outcome], batch_name: str) -> dict[str, str]:
    """Every identifying value removed anywhere in the batch: value -> category."""
    values: dict[str, str] = {}
    for o in outcomes:
        for value, category in o.removed.items():
            values.setdefault(value, category)
    values.setdefault(batch_name, "batch folder name")
    return values


# ------------------------------------------------------------------ spooled tables
#: Spool part kinds: the released images' cleaned rows, the quarantined ones', the lookup
#: rows, the removed values (value, category; first category per value in the chunk).
SPOOL_KINDS = ("cleaned", "held", "lookup", "removed", "written")
#: Outcomes spooled at a time by :func:`finish` when they still hold their rows.
SPOOL_CHUNK = 256
_LOOKUP_COLUMNS = ("source_path", "field", "original", "new", "entity_id", "item_id")


def _string_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of string columns, columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table({c: pa.array([row.get(c) for row in rows], pa.string()) for c in columns})


def spool_chunk(outcomes: Sequence[Outcome], spool: Path) -> list[Outcome]:
    """Write the rows and removed values of ``outcomes`` to one spool part; return them slimmed.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Consecutive outcomes of a batch (one chunk); those already spooled
        (:attr:`Outcome.part` set) pass through unchanged.
    spool : Path
        The spool folder; created if missing.  Each call writes up to three
        Arrow files ``<part>.<kind>.arrow`` (:data:`SPOOL_KINDS`, :mod:`.spoolfiles`) under a fresh
        part name, so a chunk run twice (a retried Dask task) leaves an
        unused part rather than a mixed one.

    Returns
    -------
    list of Outcome
        The same outcomes without their cleaned and lookup rows and removed
        values, naming the part.
    """
    fresh = [o for o in outcomes if not o.part]
    if not fresh:
        return list(outcomes)
    part = uuid.uuid4().hex
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    tables = {
        "cleaned": _cleaned_rows(fresh, released=True),
        "held": _cleaned_rows(fresh, released=False),
        "lookup": _lookup_rows(fresh),
    }
    removed: dict[str, str] = {}
    for o in fresh:
        for value, category in o.removed.items():
            removed.setdefault(value, category)
    for kind, rows in tables.items():
        if not rows:
            continue
        table = _string_table(rows) if kind != "lookup" else _lookup_arrow(rows)
        spoolfiles.write_part(table, spool / f"{part}.{kind}{spoolfiles.SUFFIX}")
    if removed:
        table = pa.table(
            {
                "value": pa.array(list(removed), pa.string()),
                "category": pa.array(list(removed.values()), pa.string()),
            }
        )
        spoolfiles.write_part(table, spool / f"{part}.removed{spoolfiles.SUFFIX}")
    kept = [o.written for o in fresh if o.written is not None]
    if kept:
        spoolfiles.write_part(_written_arrow(kept), spool / f"{part}.written{spoolfiles.SUFFIX}")
    return [
        o
        if o.part
        else Outcome(
            o.job, o.error, pixel_span=o.pixel_span, implementation=o.implementation, part=part
        )
        for o in outcomes
    ]


def _written_arrow(items: Sequence[gatewritten.Written]) -> pa.Table:
    """:class:`gatewritten.Written` items as an Arrow table (one row each)."""
    entries = [item.entry for item in items]
    return pa.table(
        {
            "path": pa.array([item.path for item in items], pa.string()),
            "sha256": pa.array([e[0] for e in entries], pa.string()),
            **{
                name: pa.array([e[i] for e in entries], pa.uint64())
                for i, name in enumerate(("size", "mtime_ns", "ctime_ns", "inode"), start=1)
            },
            "header": pa.array([item.header for item in items], pa.binary()),
            "tail": pa.array([item.tail for item in items], pa.binary()),
            "kind": pa.array([str(item.kind) for item in items], pa.string()),
        }
    )


def spooled_written(outcomes: Sequence[Outcome], spool: Path) -> Iterator[gatewritten.Written]:
    """The :class:`gatewritten.Written` of spooled outcomes, read part by part from the spool."""
    for path in _spooled(outcomes, spool, "written"):
        table = spoolfiles.read_part(path).to_pydict()
        for i, rel in enumerate(table["path"]):
            entry: gaterecord.FileEntry = (
                table["sha256"][i],
                table["size"][i],
                table["mtime_ns"][i],
                table["ctime_ns"][i],
                table["inode"][i],
            )
            yield gatewritten.Written(
                rel, entry, table["header"][i], table["tail"][i], gatewritten.Tail(table["kind"][i])
            )
    yield from (o.written for o in outcomes if o.written is not None)


def spooled_gate_values(
    outcomes: Sequence[Outcome], spool: Path, batch_name: str
) -> dict[str, str]:
    """:func:`gate_values` of spooled outcomes, read part by part from the spool.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    batch_name : str
        The batch folder's name, itself an identifying value.

    Returns
    -------
    dict of str to str
        Every identifying value removed anywhere in the batch -> its category
        (the first one met, in job order).
    """
    values: dict[str, str] = {}
    for path in _spooled(outcomes, spool, "removed"):
        table = spoolfiles.read_part(path)
        for value, category in zip(
            table.column("value").to_pylist(), table.column("category").to_pylist(), strict=True
        ):
            values.setdefault(value, category)
    for o in outcomes:
        for value, category in o.removed.items():
            values.setdefault(value, category)
    values.setdefault(batch_name, "batch folder name")
    return values


def _lookup_arrow(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Lookup rows as an Arrow table (string columns, ``jitter_days`` int64)."""
    arrays = {c: pa.array([row[c] for row in rows], pa.string()) for c in _LOOKUP_COLUMNS}
    arrays["jitter_days"] = pa.array([row["jitter_days"] for row in rows], pa.int64())
    return pa.table(arrays)


def _spooled(outcomes: Sequence[Outcome], spool: Path, kind: str) -> list[Path]:
    """The spool files of one kind that belong to ``outcomes``, in outcome order."""
    names = dict.fromkeys(o.part for o in outcomes if o.part)
    paths = (spool / f"{name}.{kind}{spoolfiles.SUFFIX}" for name in names)
    return [path for path in paths if path.exists()]


def write_cleaned(outcomes: Sequence[Outcome], spool: Path, out: Path, released: bool) -> None:
    """Write the ``cleaned`` (or ``quarantined``) table of spooled outcomes, part by part.

    The file holds the same columns, values and pandas metadata as
    ``cleaned_table(outcomes, released).to_parquet(out, index=False)`` would,
    without the whole table ever being in memory.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    out : Path
        The Parquet file to write.
    released : bool
        The released images' table, or the quarantined ones'.
    """
    release.write_cleaned(_spooled(outcomes, spool, "cleaned" if released else "held"), out)


def write_lookup(outcomes: Sequence[Outcome], spool: Path, out: Path) -> None:
    """Write the PHI lookup table of spooled outcomes, part by part (as :func:`lookup_table`).

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    out : Path
        The Parquet file to write.
    """
    parts = _spooled(outcomes, spool, "lookup")
    if not parts:
        lookup_table([]).to_parquet(out, index=False)
        return
    like = pd.DataFrame([dict.fromkeys(_LOOKUP_COLUMNS, "x") | {"jitter_days": 0}])
    like = like.astype({"jitter_days": "int64"})
    release.combine_parts(parts, out, pa.Schema.from_pandas(like, preserve_index=False))


def parquet_head(path: Path, n: int) -> pd.DataFrame:
    """``pandas.read_parquet(path).head(n)``, reading only the first ``n`` rows.

    Parameters
    ----------
    path : Path
        A Parquet file written by pandas (its index not stored).
    n : int
        How many rows.

    Returns
    -------
    pandas.DataFrame
        The first ``n`` rows, with the dtypes the pandas metadata gives.
    """
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    batches = source.iter_batches(batch_size=max(n, 1)) if n > 0 else iter(())
    first = next(batches, None)
    table = pa.Table.from_batches([] if first is None else [first], schema=schema)
    head: pd.DataFrame = table.slice(0, max(n, 0)).to_pandas()
    return head
