"""Spool parts: the rows a chunk of work hands to the stage, as Arrow IPC files.

The inspect and de-identify stages write each chunk's rows to a part under
``phi/.../spool/`` and read the parts back, in order, to build their tables.
A part lives for seconds and is read whole by the same machine, so it is an
Arrow IPC file (no encoding, no compression: writing and reading one takes a
tenth of a Parquet file's time, which a small batch pays per table).  Parquet
parts (``.parquet``) are still read, for callers that hand over Parquet files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

#: The suffix of a part this module writes.
SUFFIX = ".arrow"


def write_part(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` (Arrow IPC), all or nothing (a temporary file, then a rename).

    Parameters
    ----------
    table : pyarrow.Table
        The rows.
    path : Path
        The part to write (its folder exists); by convention its name ends in :data:`SUFFIX`.

    Returns
    -------
    Path
        ``path``.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(os.fspath(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return path


def read_part(path: Path) -> pa.Table:
    """The table of a part: Arrow IPC, or Parquet when the name ends in ``.parquet``.

    Parameters
    ----------
    path : Path
        A part written by :func:`write_part` (or a Parquet file).

    Returns
    -------
    pyarrow.Table
    """
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as part:  # not read_table: its dataset set-up costs more
            return part.read()
    with pa.OSFile(os.fspath(path), "rb") as source:
        return ipc.open_file(source).read_all()


def part_names(path: Path) -> list[str]:
    """The column names of a part (as :func:`read_part` reads it), without reading its rows.

    Parameters
    ----------
    path : Path
        A part written by :func:`write_part` (or a Parquet file).

    Returns
    -------
    list of str
    """
    if path.suffix == ".parquet":
        return list(pq.read_schema(path).names)
    with pa.OSFile(os.fspath(path), "rb") as source:
        return list(ipc.open_file(source).schema.names)
