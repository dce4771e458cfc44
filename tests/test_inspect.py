"""Inspect stage: discovery, tables, QA summary, screening, dispositions, bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.core import disposition
from sendit_helpers.core.dicomio import probe
from sendit_helpers.core.errors import BatchError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings, load_settings
from sendit_helpers.run.runner import open_batch
from sendit_helpers.stages import inspect, inspectread

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
    one = inspectread.read_all(paths, workers=1, progress=False)
    two = inspectread.read_all(paths, workers=2, progress=False)
    assert one == two


def test_missing_and_empty_batch(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=r"does not exist or is not a folder"):
        open_batch(tmp_path / "nope", tmp_path / "work", [], QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match=r"is empty; it holds no files"):
        open_batch(tmp_path / "empty", tmp_path / "work", [], QUIET)


def test_pydicom_test_files_all_accounted(tmp_path: Path, pydicom_batch: Path) -> None:
    batch = pydicom_batch
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


def test_probe_unopenable_file_is_an_error(tmp_path: Path) -> None:
    link = tmp_path / "PATIENT_NAME" / "gone.dcm"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "missing.dcm")
    found = probe(link)
    assert found.kind == "error" and found.reason.startswith("cannot open the file")
    assert "PATIENT_NAME" not in found.reason
    row = inspectread.read_one(str(link))
    assert row["kind"] == "error"


def _reference_row(path: str, filters: tuple[str, ...]) -> dict[str, object]:
    """read_one the plain way: Dataset.get per column and Recipe.screen."""
    import json

    found = probe(path)
    row: dict[str, object] = {
        "source_path": path,
        "size_bytes": found.size,
        "kind": found.kind,
        "reason": found.reason,
    }
    ds = found.dataset
    if found.kind != "dicom" or ds is None:
        return row
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    row["transfer_syntax"] = (
        str(tsyntax.name) if tsyntax else "(none: implicit VR little endian assumed)"
    )
    row["has_pixels"] = found.pixel_offset is not None
    row.update({k: inspectread.reference_value(ds, k) for k in inspectread.FIELDS})
    screen = inspectread.screen_recipe(filters, True).screen(ds)
    row.update(
        flagged=bool(screen.flagged),
        group=screen.group,
        label=screen.label,
        reason_screen=screen.reason,
        coordinates=json.dumps([list(c) for c in screen.coordinates]),
    )
    return row


def test_read_one_matches_reference_rows(opened: tuple[BatchLayout, Settings]) -> None:
    layout, _ = opened
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    paths = [str(p) for p in inspect.discover(layout.source)]
    paths += [str(p) for p in sorted(source.rglob("*")) if p.is_file()]
    filters = (str(inspect.SENDIT_FILTERS),)
    for _ in range(2):  # cold, then memoized
        for path in paths:
            assert inspectread.read_one(path, filters) == _reference_row(path, filters), path


def _probe_snapshot(path: Path) -> tuple[object, ...]:
    from sendit_helpers.core.dicomio import probe as probe_

    found = probe_(path)
    ds = found.dataset
    if ds is None:
        return (found.kind, found.reason, found.size, found.pixel_offset)
    return (
        found.kind,
        found.reason,
        found.size,
        found.pixel_offset,
        dict(ds._dict),
        ds.file_meta,
        ds.preamble,
        ds.original_encoding,
        ds.original_character_set,
    )


@pytest.mark.parametrize("head_bytes", [64, 200, 700, 3000, 1 << 16])
def test_probe_from_memory_equals_probe_from_file(
    head_bytes: int,
    opened: tuple[BatchLayout, Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing the first HEAD_BYTES in memory gives what reading the file gives."""
    from sendit_helpers.core import dicomio

    layout, _ = opened
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    paths = inspect.discover(layout.source) + sorted(p for p in source.rglob("*") if p.is_file())
    monkeypatch.setattr(dicomio, "HEAD_BYTES", 0)  # an empty head: always the plain file read
    expected = [_probe_snapshot(p) for p in paths]
    monkeypatch.setattr(dicomio, "HEAD_BYTES", head_bytes)
    for path, want in zip(paths, expected, strict=True):
        assert _probe_snapshot(path) == want, path


def test_ocr_screen_flags_text_the_header_does_not_admit(tmp_path: Path) -> None:
    from sendit_helpers.deid import ocr
    from sendit_helpers.samples import textimages

    folder = tmp_path / "ocr_batch"
    textimages.make_text_images(folder / "text", 2, with_text=True, seed=3)
    textimages.make_text_images(folder / "plain", 2, with_text=False, seed=4)
    layout = BatchLayout.for_batch(folder, tmp_path / "work")
    overrides = {
        **QUIET,
        "OCR_SCREEN": "on",
        "OCR_SAMPLE_PER_SERIES": 0,
        "USE_DEID_FILTERS": False,
        "USE_SENDIT_FILTERS": False,
    }
    result = inspect.inspect_batch(layout, load_settings(overrides=overrides, environ={}))
    files = result.files.set_index("relative_path")
    text = files[files.index.str.startswith("text/")]
    plain = files[files.index.str.startswith("plain/")]
    assert text["flagged"].all() and set(text["label"]) == {ocr.LABEL}
    assert not plain["flagged"].any()
    assert len(ocr.load(layout)) == 4


def test_ocr_auto_without_tesseract_warns(
    opened: tuple[BatchLayout, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytesseract

    layout, _ = opened
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    settings = load_settings(overrides={**QUIET, "OCR_SCREEN": "auto"}, environ={})
    result = inspect.inspect_batch(layout, settings)
    assert any(
        w.startswith("OCR screen skipped:") and "tesseract" in w for w in result.summary["warnings"]
    )


def test_edited_filter_file_is_seen_by_the_next_batch(
    batch: tuple[Path, object], tmp_path: Path
) -> None:
    """The compiled screen is cached per process (a warm kernel), keyed by content, not path."""
    rules = tmp_path / "site.deid"
    overrides = {
        **QUIET,
        "USE_DEID_FILTERS": False,
        "USE_SENDIT_FILTERS": False,
        "OCR_SCREEN": "off",
        "PIXEL_FILTER_RECIPES": [str(rules)],
    }
    labels = []
    for label in ("first rule", "second rule"):
        rules.write_text(
            f"FORMAT dicom\n\n%filter graylist\n\nLABEL {label}\n  contains SOPInstanceUID .\n"
        )
        layout, settings = open_batch(batch[0], tmp_path / f"work-{label[0]}", [], overrides)
        files = inspect.inspect_batch(layout, settings).files
        labels.append(set(files.loc[files["flagged"].astype(bool), "label"]))
    assert labels == [{"first rule"}, {"second rule"}]
    path = str(get_testdata_file("CT_small.dcm"))
    assert inspectread.read_one(path, (str(rules),), False)["label"] == "second rule"
    rules.write_text(rules.read_text().replace("second rule", "third rule"))
    assert inspectread.read_one(path, (str(rules),), False)["label"] == "third rule"
