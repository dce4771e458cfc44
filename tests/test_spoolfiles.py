"""Spool parts: Arrow IPC written all or nothing, read back equal; Parquet parts still read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sendit_helpers.core import spoolfiles


def _table() -> pa.Table:
    return pa.table(
        {
            "name": pa.array(["a", None, "c"], pa.string()),
            "size": pa.array([1, 2, None], pa.uint64()),
            "header": pa.array([b"\x00\x01", b"", None], pa.binary()),
        }
    )


def test_part_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / f"p.rows{spoolfiles.SUFFIX}"
    assert spoolfiles.write_part(_table(), path) == path
    assert spoolfiles.read_part(path).equals(_table(), check_metadata=True)
    assert spoolfiles.part_names(path) == ["name", "size", "header"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_parquet_parts_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(_table(), path)
    assert spoolfiles.read_part(path).equals(_table())
    assert spoolfiles.part_names(path) == ["name", "size", "header"]
