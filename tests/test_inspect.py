"""Inspect stage: discovery, tables, QA summary, screening, dispositions, bad input."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers import disposition, inspect
from sendit_helpers.dicomio import probe
from sendit_helpers.errors import BatchError
from sendit_helpers.layout import BatchLayout
from sendit_helpers.runner import open_batch
from sendit_helpers.settings import Settings, load_settings

QUIET = {"PROGRESS": False}


def _snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


def test_inspect_batch_tables_and_dispositions(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    before = _snapshot(layout.source)
    result = inspect.inspect_batch(layout, settings)
    assert _snapshot(layout.source) == before, "inspect modified its input"
    files = inspect.discover(layout.source)
    table = disposition.read(layout)
    assert sorted(table["source_path"]) == sorted(str(p) for p in files)
    counts = disposition.counts(table)
    assert counts["non_dicom"] == 2 and counts["error"] == 1
    assert set(table.loc[table["disposition"] != "pending", "reason"]) >= {"empty file (0 bytes)"}
    truncated = table[table["disposition"] == "error"]["reason"].iloc[0]
    assert truncated.startswith("truncated file: pixel data is")
    assert result.summary["series"] == len(result.series) >= 3
    assert result.summary["total_bytes"] == int(result.files["size_bytes"].sum())
    assert {"SeriesNumber", "SeriesDescription", "images"} <= set(result.series.columns)
    for name in ("files.parquet", "series.parquet", "dates.parquet", "summary.json"):
        assert (layout.inspect_dir / name).exists()
    assert pd.read_parquet(layout.inspect_dir / "files.parquet").shape[0] == len(result.files)


def test_pixel_screen_flags_burned_in_images(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    result = inspect.inspect_batch(layout, settings)
    flagged = result.flagged
    assert set(
        result.files.loc[result.files["BurnedInAnnotation"] == "YES", "relative_path"]
    ) <= set(flagged["relative_path"])
    assert flagged["label"].notna().all() and flagged["group"].notna().all()
    ultrasound = result.files[result.files["Modality"] == "US"]
    assert len(ultrasound) >= 2 and ultrasound["flagged"].all(), (
        "header-silent US must go to review"
    )


def test_phi_folder_is_owner_only(opened: tuple[BatchLayout, Settings]) -> None:
    layout, _ = opened
    assert stat.S_IMODE(layout.phi.stat().st_mode) == 0o700


def test_montage_written(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    result = inspect.inspect_batch(layout, settings)
    paths = inspect.montages(result, settings)
    assert len(paths) == result.files[result.files["has_pixels"]]["SeriesInstanceUID"].nunique()
    assert all(p.parent == layout.inspect_dir and p.stat().st_size > 1000 for p in paths)


def test_workers_give_same_table(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    paths = inspect.discover(layout.source) * 5
    one = inspect.read_all(paths, workers=1, progress=False)
    two = inspect.read_all(paths, workers=2, progress=False)
    assert one == two


def test_missing_and_empty_batch(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"does not exist or is not a folder"):
        open_batch(tmp_path / "nope", tmp_path / "work", [], QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match=r"is empty; it holds no files"):
        open_batch(tmp_path / "empty", tmp_path / "work", [], QUIET)


def test_pydicom_test_files_all_accounted(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    batch = tmp_path / "pydicom_files"
    for index, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        target = batch / f"sub{index % 4}" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    layout = BatchLayout.for_batch(batch, tmp_path / "work")
    settings = load_settings(overrides=QUIET, environ={})
    result = inspect.inspect_batch(layout, settings)
    table = result.dispositions
    assert len(table) == len(inspect.discover(batch)) >= 80
    assert table["disposition"].isin(["pending", "error", "non_dicom"]).all()
    assert (table.loc[table["disposition"] != "pending", "reason"] != "").all()
    by_name = {
        Path(p).name: d for p, d in zip(table["source_path"], table["disposition"], strict=True)
    }
    assert by_name["MR_small_bigendian.dcm"] == "pending"
    assert by_name["rtplan.dcm"] == "pending"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("CT_small.dcm", "dicom"),
        ("MR_small_bigendian.dcm", "dicom"),
        ("JPEG2000.dcm", "dicom"),
        ("rtplan.dcm", "dicom"),
        ("ExplVR_BigEndNoMeta.dcm", "dicom"),
        ("SC_rgb_jpeg.dcm", "dicom"),
        ("MR_truncated.dcm", "error"),
        ("no_meta.dcm", "non_dicom"),
    ],
)
def test_probe_odd_files(name: str, kind: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    assert probe(path).kind == kind


def test_probe_text_and_empty(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("hello, this is not DICOM at all\n" * 10)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert probe(text).kind == "non_dicom"
    assert probe(empty).reason == "empty file (0 bytes)"


def test_probe_meta_less_dataset(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw.dcm"
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert raw.read_bytes()[:4] == b"\x08\x00\x05\x00"
    found = probe(raw)
    assert found.kind == "dicom" and "no DICOM preamble" in found.reason
