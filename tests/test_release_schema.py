"""The all-string table schema of release's cleaned tables, built once per set of columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sendit_helpers.stages import release


def test_string_schema_is_what_pandas_writes() -> None:
    names = ("name", "entity_id", "item_id", "path", "PatientSex", "StudyDate")
    like = pd.DataFrame([dict.fromkeys(names, "x")]).astype("string")
    expected = pa.Schema.from_pandas(like, preserve_index=False)
    assert release.string_schema(names).equals(expected, check_metadata=True)
    assert release.string_schema(names) is release.string_schema(names)
    narrow = pa.Schema.from_pandas(like[["name", "path"]], preserve_index=False)
    assert release.string_schema(("name", "path")).equals(narrow, check_metadata=True)


def test_write_cleaned_matches_pandas_with_different_columns(tmp_path: Path) -> None:
    one = pd.DataFrame({"name": ["a"], "path": ["x/a"], "Modality": ["CT"]}).astype("string")
    two = pd.DataFrame({"name": ["b"], "path": ["x/b"], "Rows": ["512"]}).astype("string")
    parts = [tmp_path / "1.parquet", tmp_path / "2.parquet"]
    one.to_parquet(parts[0], index=False)
    two.to_parquet(parts[1], index=False)
    for _ in range(2):  # the second write reuses the schema built by the first
        release.write_cleaned(parts, tmp_path / "cleaned.parquet")
        expected = pd.concat([one, two], ignore_index=True).astype("string")
        expected.to_parquet(tmp_path / "expected.parquet", index=False)
        got = pq.read_table(tmp_path / "cleaned.parquet")
        want = pq.read_table(tmp_path / "expected.parquet")
        assert got.equals(want) and got.schema.equals(want.schema, check_metadata=True)
