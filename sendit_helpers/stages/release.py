"""release/: the cleaned and entities tables, rows added and removed, the leak gate's hold.

The one owner of the product ``release/`` besides the image files themselves:

- ``release/cleaned.parquet`` (:attr:`BatchLayout.cleaned_table`), one row per released
  image, every column a string; de-identify writes it (:func:`write_cleaned`), the
  leak gate's hold moves rows out (:func:`move_to_held`), review rewrites it with the
  items it released (:func:`rewrite_tables`);
- ``release/entities.parquet`` (:attr:`BatchLayout.entities_table`), one row per entity,
  always derived from the cleaned table (:func:`entities_table`, :func:`write_entities`);
- the gate hand-off: :func:`hold_for_gate` is the leak gate's ``hold`` for both stages,
  ``phi/deidentify/gate_held.csv`` (:func:`gate_held`, :func:`forget_gate_held`) lists the
  files it holds for review;
- :func:`clear_outputs` empties release/ and the quarantine before a de-identification.

Stages call these; no stage imports another for them.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core import disposition, spoolfiles
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import leakgate

#: The columns every cleaned row has (the rest are the de-identified header fields).
CLEANED_KEYS = ["name", "entity_id", "item_id", "path"]


# ------------------------------------------------------------------ cleaned and entities
def write_cleaned(parts: Sequence[Path], out: Path) -> None:
    """Write a cleaned table (``cleaned`` or ``quarantined``) from spooled parts, part by part.

    The file holds the same columns, values and pandas metadata as the parts'
    rows concatenated into one all-string pandas table written with
    ``to_parquet(out, index=False)``, without the whole table ever being in memory.

    Parameters
    ----------
    parts : sequence of Path
        Spool parts of cleaned rows (:mod:`~sendit_helpers.core.spoolfiles`; Arrow
        or Parquet files), in order (string columns).
    out : Path
        The Parquet file to write (:attr:`BatchLayout.cleaned_table` or
        :attr:`BatchLayout.held_table`).
    """
    if not parts:
        pd.DataFrame(columns=CLEANED_KEYS).astype("string").to_parquet(out, index=False)
        return
    names = dict.fromkeys(name for path in parts for name in spoolfiles.part_names(path))
    combine_parts(parts, out, string_schema(tuple(names)))


@functools.lru_cache(maxsize=64)
def string_schema(names: tuple[str, ...]) -> pa.Schema:
    """The Arrow schema (with pandas metadata) of an all-string pandas table with ``names``.

    What ``pa.Schema.from_pandas`` gives for a table of these columns, every one
    of pandas' ``string`` dtype, without an index. It depends on the names only,
    so it is built once per process for each set of columns (most batches share
    one) and shared: a schema is immutable.

    Parameters
    ----------
    names : tuple of str
        The columns, in order (repeated names count once).

    Returns
    -------
    pyarrow.Schema
    """
    like = pd.DataFrame({name: pd.array(["x"], dtype="string") for name in names})
    return pa.Schema.from_pandas(like, preserve_index=False)


def combine_parts(parts: Sequence[Path], out: Path, schema: pa.Schema) -> None:
    """Write ``parts`` one after another into ``out`` with ``schema`` (missing columns null)."""
    tmp = out.with_name(f".{out.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for path in parts:
            table = spoolfiles.read_part(path)
            at = {name: i for i, name in enumerate(table.column_names)}  # one lookup per column
            columns = [
                table.column(at[f.name]).cast(f.type)
                if f.name in at
                else pa.nulls(table.num_rows, f.type)
                for f in schema
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            del table, columns
    os.replace(tmp, out)


def entities_table(cleaned: pd.DataFrame, agent: str) -> pd.DataFrame:
    """One row per entity: ``id, PatientSex, PatientAge, IMAGE_COUNT, UPLOAD_AGENT``."""
    columns = ["id", "PatientSex", "PatientAge", "IMAGE_COUNT", "UPLOAD_AGENT"]
    if cleaned.empty:
        return pd.DataFrame(columns=columns)
    table = cleaned.reindex(columns=["entity_id", "PatientSex", "PatientAge", "name"])
    grouped = table.groupby("entity_id", sort=True)
    out = pd.DataFrame(
        {
            "id": list(grouped.groups),
            "PatientSex": grouped["PatientSex"].first().to_list(),
            "PatientAge": grouped["PatientAge"].first().to_list(),
            "IMAGE_COUNT": grouped["name"].size().astype("int64").to_list(),
        }
    )
    out["UPLOAD_AGENT"] = agent
    return out[columns]


def entities_of(cleaned: Path, agent: str) -> pd.DataFrame:
    """:func:`entities_table` of a written cleaned table, reading only the columns it needs.

    Parameters
    ----------
    cleaned : Path
        A cleaned table.
    agent : str
        The ``UPLOAD_AGENT`` column's value.

    Returns
    -------
    pandas.DataFrame
        One row per entity.
    """
    present = set(pq.read_schema(cleaned).names)
    wanted = [c for c in ("entity_id", "PatientSex", "PatientAge", "name") if c in present]
    table = pd.read_parquet(cleaned, columns=wanted) if wanted else pd.DataFrame()
    return entities_table(table, agent)


def write_entities(layout: BatchLayout, agent: str) -> pd.DataFrame:
    """Write ``release/entities.parquet`` from ``release/cleaned.parquet``; return it.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    agent : str
        The ``UPLOAD_AGENT`` column's value.

    Returns
    -------
    pandas.DataFrame
        The entities table written.
    """
    entities = entities_of(layout.cleaned_table, agent)
    entities.to_parquet(layout.entities_table, index=False)
    return entities


def clear_outputs(layout: BatchLayout) -> None:
    """Remove earlier release/ and quarantine files, so a rerun leaves exactly what it writes."""
    for root in (layout.release, layout.quarantine):
        if root.exists():
            for path in sorted(root.rglob("*"), reverse=True):
                if path.is_file():
                    path.unlink()
                elif path.is_dir():
                    path.rmdir()


# ------------------------------------------------------------------ the gate hand-off
#: ``phi/deidentify/gate_held.csv``: the files the leak gate holds, one row each.
GATE_HELD_FILE = "gate_held.csv"
GATE_HELD_COLUMNS = ["path", "field", "category", "reason"]


def gate_held(layout: BatchLayout) -> pd.DataFrame:
    """The files the leak gate holds in quarantine now (columns :data:`GATE_HELD_COLUMNS`).

    Parameters
    ----------
    layout : BatchLayout
        The batch.

    Returns
    -------
    pandas.DataFrame
        One row per held file still in ``phi/quarantine/``: its path
        (``<entity>/<name>``), the field a value was found in, the value's
        category and the disposition reason (never the value).
    """
    path = layout.deid_dir / GATE_HELD_FILE
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in GATE_HELD_COLUMNS})
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    present = table["path"].map(lambda rel: (layout.quarantine / rel).is_file())
    return table[present.astype(bool)].reset_index(drop=True)


def _write_gate_held(layout: BatchLayout, table: pd.DataFrame) -> None:
    path = layout.deid_dir / GATE_HELD_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    table[GATE_HELD_COLUMNS].to_csv(tmp, index=False)
    os.replace(tmp, path)


def _string_columns(table: pa.Table) -> pa.Table:
    """``table`` with every column a string, and the pandas metadata of an all-string frame."""
    schema = string_schema(tuple(table.column_names))
    columns = [column.cast(pa.string()) for column in table.columns]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_table(table: pa.Table, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(_string_columns(table), tmp)
    os.replace(tmp, out)


def move_to_held(layout: BatchLayout, names: Sequence[str]) -> None:
    """Move the cleaned rows of ``names`` from ``release/cleaned.parquet`` to the quarantined table.

    A row already in ``quarantined.parquet`` (an item review released) is not added twice.
    """
    cleaned_path = layout.cleaned_table
    held_path = layout.held_table
    wanted = pa.array(sorted(set(names)), pa.string())
    cleaned = pq.read_table(cleaned_path)
    moving = pc.is_in(cleaned.column("name").cast(pa.string()), value_set=wanted)
    moved = cleaned.filter(moving)
    _write_table(cleaned.filter(pc.invert(moving)), cleaned_path)
    held = pq.read_table(held_path) if held_path.exists() else None
    if held is not None and held.num_rows:
        names = held.column("name").cast(pa.string())
        there = pc.is_in(moved.column("name").cast(pa.string()), value_set=names)
        moved = moved.filter(pc.invert(there))
        if not moved.num_rows:
            return
        moved = pa.concat_tables(
            [_string_columns(held), _string_columns(moved)], promote_options="default"
        )
    _write_table(moved, held_path)


def hold_for_gate(
    layout: BatchLayout,
    settings: Mapping[str, Any],
    held: Sequence[leakgate.Held],
    originals: Path | None = None,
) -> set[str]:
    """Move the released files the leak gate found values in to quarantine (the gate's ``hold``).

    Each file goes from ``release/<entity>/<name>`` to ``phi/quarantine/<entity>/<name>``
    (from ``originals`` instead, when the untouched file of a reviewed item is kept
    there), its cleaned row from ``release/cleaned.parquet`` to
    ``phi/deidentify/quarantined.parquet``; ``entities.parquet`` is rewritten, the
    disposition becomes ``quarantined`` with the gate's reason (field and category,
    never the value), and ``phi/deidentify/gate_held.csv`` lists the file for review.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    settings : mapping
        Resolved settings (``UPLOAD_AGENT``).
    held : sequence of leakgate.Held
        The files to hold.
    originals : Path, optional
        Where review keeps the untouched files of the items it released.

    Returns
    -------
    set of str
        The paths held; a path that is not a released image of this batch is left
        (the gate then fails).
    """
    table = disposition.read(layout, ["source_path", "disposition", "output_name"])
    released = table[table["disposition"] == str(Disposition.RELEASED)]
    source_of = dict(zip(released["output_name"], released["source_path"], strict=True))
    rows: list[Row] = []
    done: list[leakgate.Held] = []
    for entry in held:
        name = entry.path.rsplit("/", 1)[-1]
        out = layout.release / entry.path
        if "/" not in entry.path or name not in source_of or not out.is_file():
            continue
        target = layout.quarantine / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        original = None if originals is None else originals / entry.path
        if original is not None and original.is_file():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(original, tmp)
            os.replace(tmp, target)
            out.unlink()
        else:
            os.replace(out, target)
        rows.append(Row(source_of[name], Disposition.QUARANTINED, entry.reason, name))
        done.append(entry)
    if not done:
        return set()
    for folder in sorted({(layout.release / e.path).parent for e in done}, reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    move_to_held(layout, [e.path.rsplit("/", 1)[-1] for e in done])
    write_entities(layout, typed(settings).upload.agent)
    disposition.update(layout, rows)
    new = pd.DataFrame(
        [(e.path, e.field, e.category, e.reason) for e in done], columns=GATE_HELD_COLUMNS
    )
    path = layout.deid_dir / GATE_HELD_FILE
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else new.iloc[:0]
    _write_gate_held(layout, pd.concat([old[~old["path"].isin(new["path"])], new]))
    return {e.path for e in done}


def forget_gate_held(layout: BatchLayout, paths: Sequence[str]) -> None:
    """Drop ``paths`` from ``gate_held.csv`` (review released them and the gate passed them)."""
    path = layout.deid_dir / GATE_HELD_FILE
    if not path.exists() or not paths:
        return
    old = pd.read_csv(path, dtype=str, keep_default_na=False)
    _write_gate_held(layout, old[~old["path"].isin(list(paths))])


# ------------------------------------------------------------------ review's rows
def rewrite_tables(
    layout: BatchLayout,
    agent: str,
    held: Sequence[str],
    out: set[str],
    headers: Mapping[str, dict[str, Any]],
) -> pd.DataFrame:
    """Rewrite ``cleaned`` (de-identify's rows plus the released items) and ``entities``.

    Review's hand-off: ``held`` names every quarantined item (their rows leave
    ``cleaned``), ``out`` the items review releases now (their rows come from the
    quarantined table, a scrubbed one's header from ``headers``).

    ``cleaned.parquet`` becomes the rows of no quarantined item plus the rows of
    the items in ``out``, every column a string, sorted by ``path`` (stable).
    The rows stay in Arrow, their header fields dictionary-encoded, and are
    written a slice at a time: the table never exists in its pandas form (one
    Python string per cell) nor decoded whole.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    agent : str
        The ``UPLOAD_AGENT`` of the entities table.
    held : sequence of str
        Every quarantined item's name.
    out : set of str
        The items released (as they are or scrubbed).
    headers : mapping
        ``item -> cleaned row`` of each scrubbed file.

    Returns
    -------
    pandas.DataFrame
        The new ``entities`` table (also written).
    """
    path = layout.cleaned_table
    extra = _released_rows(layout, out, headers)
    base = read_coded(path) if path.exists() else None
    if base is not None:
        gone = pa.array(list(dict.fromkeys(str(name) for name in held)), pa.string())
        names = base.column("name").cast(pa.string())  # an empty table's may be null-typed
        base = base.filter(pc.invert(pc.is_in(names, value_set=gone)))
    if base is None or (base.num_rows == 0 and extra.empty):
        none = pd.DataFrame(columns=CLEANED_KEYS)
        empty = none if base is None else pq.read_schema(path).empty_table().to_pandas()
        table = sorted_strings(empty, extra)
        table.to_parquet(path, index=False)
    else:
        table = write_sorted_strings(base, extra, path)
    entities = entities_table(table, agent)
    entities.to_parquet(layout.entities_table, index=False)
    return entities


#: The cleaned columns :func:`entities_table` reads.
_ENTITY_SOURCE_COLUMNS = ("entity_id", "PatientSex", "PatientAge", "name")
#: Rows written at a time by :func:`write_sorted_strings`.
_WRITE_ROWS = 512
_CODED = pa.dictionary(pa.int32(), pa.string())


def read_coded(path: Path) -> pa.Table:
    """A cleaned table, every column but ``name`` and ``path`` dictionary-encoded."""
    names = pq.read_schema(path).names
    return pq.read_table(path, read_dictionary=[c for c in names if c not in ("name", "path")])


def _coded(table: pa.Table) -> pa.Table:
    """``table`` with string columns (``name`` and ``path`` plain, the rest dictionary-encoded)."""
    fields = [
        pa.field(n, pa.string() if n in ("name", "path") else _CODED) for n in table.column_names
    ]
    return table.replace_schema_metadata(None).cast(pa.schema(fields))


def write_sorted_strings(base: pa.Table, extra: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Write :func:`sorted_strings` of ``base`` and ``extra`` to ``path`` via Arrow.

    The file holds what ``sorted_strings(base.to_pandas(), extra).to_parquet(path,
    index=False)`` would; ``base`` (from :func:`read_coded`) has at least one row
    or ``extra`` is not empty.

    Returns
    -------
    pandas.DataFrame
        The table's columns that :func:`entities_table` reads.
    """
    parts = [_coded(base)] if base.num_rows else []
    if not extra.empty:
        parts.append(_coded(pa.Table.from_pandas(extra.astype("string"), preserve_index=False)))
    table = pa.concat_tables(parts, promote_options="default")
    table = table.take(pc.sort_indices(table, sort_keys=[("path", "ascending")]))
    schema = string_schema(tuple(table.column_names))
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, table.num_rows, _WRITE_ROWS):
            writer.write_table(table.slice(start, _WRITE_ROWS).cast(schema))
    os.replace(tmp, path)
    wanted = [c for c in _ENTITY_SOURCE_COLUMNS if c in table.column_names]
    narrow = string_schema(tuple(wanted))
    columns: pd.DataFrame = table.select(wanted).cast(narrow).to_pandas()
    return columns


def _released_rows(
    layout: BatchLayout, out: set[str], headers: Mapping[str, dict[str, Any]]
) -> pd.DataFrame:
    """The cleaned rows of the items in ``out`` (a scrubbed one's header from ``headers``).

    ``quarantined.parquet`` is read a batch of rows at a time, keeping only those rows.
    """
    if not out:
        return pd.DataFrame()
    source = pq.ParquetFile(layout.held_table)
    wanted = pa.array(sorted(out), pa.string())
    kept = [
        batch.filter(pc.is_in(batch.column("name"), value_set=wanted))
        for batch in source.iter_batches(batch_size=_BATCH_ROWS)
    ]
    held = pa.Table.from_batches(kept, schema=source.schema_arrow).to_pandas()
    add = [{str(k): v for k, v in row.items()} for row in held.to_dict("records")]
    for record in add:
        header = headers.get(str(record["name"]))
        if header is not None:
            for key in [k for k in record if k not in ("name", "entity_id", "item_id", "path")]:
                record[key] = header.get(key)
    return pd.DataFrame(add, columns=held.columns)


#: Rows of ``quarantined.parquet`` read at a time by :func:`_released_rows`.
_BATCH_ROWS = 512


def sorted_strings(base: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``base`` and ``extra`` in one table of strings, sorted by ``path``."""
    frames = [f for f in (base, extra) if not f.empty]
    table = pd.concat(frames, ignore_index=True) if frames else base
    if table.empty:
        return table
    return table.astype("string").sort_values("path", kind="stable").reset_index(drop=True)
