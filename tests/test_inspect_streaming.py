"""Inspect streams: rows go to spool parts per chunk, and the tables equal the in-memory ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydicom.datadict import tag_for_keyword

from sendit_helpers.core import disposition, executors, spoolfiles
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings, load_settings
from sendit_helpers.run.runner import open_batch
from sendit_helpers.stages import inspect, inspectread

QUIET = {"PROGRESS": False}


def _spooled(
    folder: Path, spool: Path, *, workers: int = 1, size: int | None = None, **kw: object
) -> tuple[list[Path], pd.DataFrame, pd.DataFrame]:
    """The spool parts, files frame and disposition frame of ``folder`` the streaming way."""
    spool.mkdir()
    names = inspect.discover_names(folder)
    if size is None:
        parts = inspect.spool_all(names, spool, folder, workers=workers, progress=False, **kw)  # type: ignore[arg-type]
    else:  # small chunks: many parts
        from functools import partial

        found = executors.map_chunks(
            partial(
                inspect.spool_chunk,
                filter_recipes=(),
                use_deid=True,
                spool=str(spool),
                source=str(folder),
            ),
            names,
            workers=workers,
            progress=False,
            size=size,
        )
        parts = [spool / n for n in dict.fromkeys(found)]
    rows = inspect.combine_parts(parts)
    return parts, inspect.files_frame(rows, folder), inspect.disposition_frame(rows)


@pytest.mark.parametrize("use_deid", [True, False])
def test_spooled_tables_equal_in_memory_tables(
    tmp_path: Path, pydicom_batch: Path, use_deid: bool
) -> None:
    """Tables of the spooled parts equal files_table / disposition_rows of read_all."""
    folder = pydicom_batch
    rows = inspectread.read_all(inspect.discover(folder), use_deid=use_deid, progress=False)
    expected = inspect.files_table(rows, folder)
    parts, files, table = _spooled(folder, tmp_path / "spool", use_deid=use_deid)
    pd.testing.assert_frame_equal(files, expected)
    pd.testing.assert_frame_equal(
        table.astype(str), disposition.to_frame(inspect.disposition_rows(rows)).astype(str)
    )
    assert len(parts) == 1, "read in this process: one chunk, one part"
    out, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    files.to_parquet(out, index=False)
    expected.to_parquet(old, index=False)
    assert pq.read_schema(out).equals(pq.read_schema(old), check_metadata=True)


def test_rows_written_per_chunk(tmp_path: Path, pydicom_batch: Path) -> None:
    """Each chunk writes one part holding exactly its own files' rows, in file order."""
    folder = pydicom_batch
    names = inspect.discover_names(folder)
    parts, files, _ = _spooled(folder, tmp_path / "spool", workers=2, size=10)
    assert len(parts) == -(-len(names) // 10)
    seen = [p for part in parts for p in spoolfiles.read_part(part).column("source_path")]
    assert [str(p) for p in seen] == names
    rows = inspectread.read_all([Path(n) for n in names], progress=False)
    pd.testing.assert_frame_equal(files, inspect.files_table(rows, folder))


def test_no_dicom_rows(tmp_path: Path) -> None:
    """A chunk without DICOM files misses the DICOM columns; with none at all the table is empty."""
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.txt").write_text("not dicom")
    (folder / "b.bin").write_bytes(b"")
    _, files, table = _spooled(folder, tmp_path / "spool")
    rows = inspectread.read_all(inspect.discover(folder), progress=False)
    pd.testing.assert_frame_equal(files, inspect.files_table(rows, folder))
    assert list(table["disposition"]) == ["non_dicom", "non_dicom"]


def test_inspect_batch_same_outputs_and_spool_removed(
    opened: tuple[BatchLayout, Settings], tmp_path: Path
) -> None:
    """The stage's files table and dispositions are the in-memory ones; the spool is gone."""
    layout, settings = opened
    result = inspect.inspect_batch(layout, {**settings, "OCR_SCREEN": "off"})
    rows = inspectread.read_all(
        inspect.discover(layout.source),
        filter_recipes=[str(inspect.SENDIT_FILTERS)],
        progress=False,
    )
    expected = inspect.files_table(rows, layout.source)
    pd.testing.assert_frame_equal(result.files, expected)
    expected.to_parquet(tmp_path / "expected.parquet", index=False)
    pd.testing.assert_frame_equal(
        inspect.load(layout), pd.read_parquet(tmp_path / "expected.parquet")
    )
    assert not (layout.inspect_dir / "spool").exists()


def test_rerun_keeps_final_dispositions(tmp_path: Path, pydicom_batch: Path) -> None:
    """A second inspect keeps released/quarantined/skipped rows of files still DICOM."""
    folder = pydicom_batch
    layout = BatchLayout.for_batch(folder, tmp_path / "work")
    settings = load_settings(overrides={**QUIET, "OCR_SCREEN": "off"}, environ={})
    first = inspect.inspect_batch(layout, settings)
    pending = first.dispositions[first.dispositions["disposition"] == "pending"]["source_path"]
    done, later = str(pending.iloc[0]), str(pending.iloc[1])
    error = str(first.dispositions.loc[first.dispositions["disposition"] == "error"].iloc[0, 0])
    disposition.update(
        layout,
        [
            disposition.Row(done, disposition.Disposition.RELEASED, "", "x_1_1.dcm"),
            disposition.Row(later, disposition.Disposition.ERROR, "later failure"),
            disposition.Row(error, disposition.Disposition.RELEASED, "", "y.dcm"),
        ],
    )
    table = inspect.inspect_batch(layout, settings).dispositions.set_index("source_path")
    assert tuple(table.loc[done]) == ("released", "", "x_1_1.dcm")
    assert table.loc[later, "disposition"] == "pending", "only final outcomes are kept"
    assert table.loc[error, "disposition"] == "error", "a file now unreadable is an error again"
    assert len(table) == len(first.dispositions)


def test_open_batch_settings_round_trip(tmp_path: Path, pydicom_batch: Path) -> None:
    """inspect_batch through open_batch settings (the notebook's way) leaves no spool."""
    folder = pydicom_batch
    layout, settings = open_batch(folder, tmp_path / "work", [], {**QUIET, "WORKERS": 2})
    inspect.inspect_batch(layout, settings)
    assert not (layout.inspect_dir / "spool").exists()


def test_reader_memo_keeps_few_values_per_field(opened: tuple[BatchLayout, Settings]) -> None:
    """A field unique to every file (SOPInstanceUID) stops filling the memo; values stay right."""
    from pydicom import dcmread

    from sendit_helpers.deid.screening import FieldReader

    layout, _ = opened
    tags = [int(tag_for_keyword(k) or 0) for k in ("SOPInstanceUID", "Modality", "PatientID")]
    small, plain = FieldReader(tags, max_per_tag=2), FieldReader(tags)
    paths = [p for p in inspect.discover(layout.source) if p.suffix == ".dcm"]
    assert len(paths) >= 4
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        assert small.read(ds) == plain.read(ds)
    uids = [key for key in small._memo if key[0] == tags[0]]
    assert len(uids) == 2 < len(paths)


def test_arrow_allocates_with_malloc() -> None:
    """Importing the package picks Arrow's system pool, for child processes too, also when
    pyarrow was imported first; a setting wins."""
    code = "import sendit_helpers, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "system", out.stderr[-500:]
    child = "import sendit_helpers, os; print(os.environ['ARROW_DEFAULT_MEMORY_POOL'])"
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "system", "kernels and workers inherit it"
    first = "import pyarrow as pa, sendit_helpers; print(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", first], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "system", "pyarrow imported first: its pool is moved"
    env["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc" if "jemalloc" in _pools() else "mimalloc"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == env["ARROW_DEFAULT_MEMORY_POOL"], out.stderr[-500:]


def _pools() -> list[str]:
    import pyarrow as pa

    return list(pa.supported_memory_backends())
