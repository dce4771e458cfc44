"""The fast read/write path of the de-identify stage gives what the pydicom path gave."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from sendit_helpers.core import disposition
from sendit_helpers.core.dicomio import read_full
from sendit_helpers.core.errors import LeakError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings, load_settings
from sendit_helpers.deid import cleaned, dicomwrite, gatescan, leakgate
from sendit_helpers.run import upstream
from sendit_helpers.samples import batchspec
from sendit_helpers.stages import engine

CONFIG = engine.WorkerConfig((), True, b"test-secret")
TEST_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "liver_expb_1frame.dcm",
    "rtdose_rle.dcm",
    "examples_overlay.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "MR_small_padded.dcm",
    "image_dfl.dcm",
    "rtdose_expb.dcm",
]


def _job(source: str, output: Path) -> engine.Job:
    return engine.Job(source, str(output), output.name, "ENT", "ITEM", 17, False)


def _reference_flatten(ds: Dataset, prefix: str = "", out: dict[str, Any] | None = None) -> Any:
    """``deidentify.flatten`` as it was (every element converted by pydicom)."""
    out = {} if out is None else out
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.tag.is_private:
            continue
        key = f"{prefix}{elem.keyword or f'{elem.tag.group:04X}{elem.tag.element:04X}'}"
        if elem.VR == "SQ":
            for item in elem.value or []:
                _reference_flatten(item, f"{key}.", out)
            continue
        if elem.VR in cleaned.TABLE_SKIP_VRS or elem.value is None:
            continue
        text = "\\".join(engine.value_strings(elem)) if elem.VM > 1 else str(elem.value)
        text = text[:256]
        out[key] = f"{out[key]} | {text}" if key in out and out[key] != text else text
    return out


def _reference(source: str, job: engine.Job) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """The stage's former per-file path: full read, snapshots, recipe, save_as."""
    ds = read_full(source)
    before = engine.snapshot(ds)
    recipe = engine.load_recipe((), True)
    changes = recipe.apply(ds, engine.job_context(job, CONFIG))
    engine.ensure_meta(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    removed = engine.removed_values(before, ds, changes.removed_text)
    return buffer.getvalue(), removed, _reference_flatten(ds)


def _compare(source: str, tmp_path: Path) -> bool:
    """Fast path vs the reference; returns whether the fast path was taken."""
    job = _job(source, tmp_path / "out" / "new.dcm")
    old_bytes, old_removed, old_row = _reference(source, job)
    outcome = engine.deidentify_file(job, CONFIG)
    assert not outcome.error, outcome.error
    new_bytes = Path(job.output).read_bytes()
    old, new = pydicom.dcmread(io.BytesIO(old_bytes)), pydicom.dcmread(io.BytesIO(new_bytes))
    assert new == old
    assert new.file_meta == old.file_meta
    if "PixelData" in old:
        assert new.PixelData == old.PixelData
    assert outcome.cleaned == old_row
    assert outcome.removed == old_removed or set(outcome.removed) == set(old_removed)
    if outcome.pixel_span is not None:
        start, end, size, _native = outcome.pixel_span
        assert size == end == len(new_bytes)
        original = Path(source).read_bytes()
        assert new_bytes[start:] == original[len(original) - (end - start) :]
    return outcome.pixel_span is not None


@pytest.mark.parametrize("name", TEST_FILES)
def test_fast_path_matches_the_pydicom_path(name: str, tmp_path: Path) -> None:
    source = get_testdata_file(name)
    assert source is not None
    _compare(str(source), tmp_path)


def test_fast_path_bytes_identical_on_generated_batch(
    batch: tuple[Path, batchspec.Planted], tmp_path: Path
) -> None:
    fast = 0
    for path in sorted(batch[0].rglob("*")):
        if not path.is_file():
            continue
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue
        job = _job(str(path), tmp_path / "out" / f"{fast}.dcm")
        old_bytes, old_removed, old_row = _reference(str(path), job)
        outcome = engine.deidentify_file(job, CONFIG)
        if outcome.pixel_span is None:
            continue
        fast += 1
        assert Path(job.output).read_bytes() == old_bytes, path.name
        assert outcome.cleaned == old_row
        assert set(outcome.removed) == set(old_removed)
    assert fast > 5


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _with_trailing(source: Path, target: Path, secret: str) -> None:
    """``source`` with private elements holding ``secret`` after the pixel data."""
    target.write_bytes(
        source.read_bytes()
        + _element(0x7FE10010, b"LO", b"ACME 1.0")
        + _element(0x7FE11001, b"LO", secret.encode().ljust(len(secret) + len(secret) % 2))
    )


def test_trailing_elements_after_pixel_data_are_deidentified(tmp_path: Path) -> None:
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    folder = tmp_path / "trail"
    folder.mkdir()
    _with_trailing(Path(source), folder / "ct.dcm", "SMITHERS^WAYLON")
    assert dicomwrite.split_file((folder / "ct.dcm").read_bytes()) is None  # general path
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    settings = load_settings(overrides={"PROGRESS": False, "QUARANTINE_FLAGGED": False}, environ={})
    upstream.deidentify(layout, settings)
    assert disposition.read(layout)["disposition"].tolist() == ["released"]
    out = next(layout.release.rglob("*.dcm"))
    assert b"smithers" not in out.read_bytes().lower()
    new, old = pydicom.dcmread(out), pydicom.dcmread(source)
    assert new.PixelData == old.PixelData
    assert 0x7FE11001 not in new


def test_gate_catches_a_value_after_the_pixel_data(
    opened: tuple[BatchLayout, Settings], batch: tuple[Path, batchspec.Planted]
) -> None:
    layout, settings = opened
    upstream.deidentify(layout, settings)
    assert leakgate.load_spans(layout), "spans recorded for the gate"
    target = sorted(layout.release.rglob("*.dcm"))[0]
    patient_id = batch[1].values["PatientID"][0]
    copy = target.with_suffix(".orig")
    shutil.move(target, copy)
    _with_trailing(copy, target, f"see {patient_id}")
    copy.unlink()
    with pytest.raises(LeakError, match=r"1 file\(s\)"):
        leakgate.run_gate(layout, leakgate.load_values(layout))
    report = (layout.deid_dir / "leak_report.csv").read_text()
    assert patient_id not in report
    assert target.relative_to(layout.release).as_posix() in report


def test_gate_with_recorded_span_still_scans_pixel_data(
    opened: tuple[BatchLayout, Settings], batch: tuple[Path, batchspec.Planted]
) -> None:
    layout, settings = opened
    upstream.deidentify(layout, settings)
    spans = leakgate.load_spans(layout)
    target = sorted(layout.release.rglob("*.dcm"))[0]
    rel = target.relative_to(layout.release).as_posix()
    start, end, size, _native = spans[rel]
    data = bytearray(target.read_bytes())
    patient_id = batch[1].values["PatientID"][0].encode()
    data[start + 64 : start + 64 + len(patient_id)] = patient_id  # same size: the span still fits
    target.write_bytes(bytes(data))
    assert gatescan.checked_span(bytes(data), spans[rel]) is not None
    with pytest.raises(LeakError):
        leakgate.run_gate(layout, leakgate.load_values(layout))
    assert "PixelData (7FE0,0010)" in (layout.deid_dir / "leak_report.csv").read_text()


def test_stale_span_is_not_trusted(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    upstream.deidentify(layout, settings)
    target = sorted(layout.release.rglob("*.dcm"))[0]
    rel = target.relative_to(layout.release).as_posix()
    start, end, size, native = leakgate.load_spans(layout)[rel]
    data = target.read_bytes()
    assert gatescan.checked_span(data, (start, end, size, native)) == (start, end, native)
    assert gatescan.checked_span(data, (start + 2, end, size, native)) is None
    assert gatescan.checked_span(data + b"\0\0", (start, end, size, native)) is None


def test_prefilter_off_for_values_it_cannot_see() -> None:
    assert gatescan.Scanner.build({"DOE^JOHN": "name"}).prefilter_ok
    assert not gatescan.Scanner.build({"Ωμέγα Δέλτα": "name"}).prefilter_ok


@pytest.mark.parametrize(
    ("value", "vr"),
    [
        (b"DOE^JOHN ", "PN"),
        (b" LEAD\\TRAIL \\", "LO"),
        (b"ORIGINAL\\PRIMARY ", "CS"),
        (b"1.2.840.10008.1.2\x00", "UI"),
        (b"007 ", "IS"),
        (b"1.50\\-2 ", "DS"),
        (b"  free text  ", "LT"),
        (b" AE_TITLE ", "AE"),
        (b"20200101\\20200102", "DA"),
        (b"", "LO"),
    ],
)
def test_element_strings_match_pydicom(value: bytes, vr: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    from pydicom.dataelem import RawDataElement, convert_raw_data_element

    raw = RawDataElement(pydicom.tag.Tag(0x00091010), vr, len(value), value, 0, False, True)
    converted = convert_raw_data_element(raw, encoding=["latin_1"], ds=ds)
    found = dicomwrite.element_strings(value, vr, dicomwrite.text_codec(ds))
    assert found == dicomwrite.item_strings(ds, 0x00091010, converted)[1]


def test_general_path_reports_large_deferred_values(tmp_path: Path) -> None:
    """Values over read_full's defer size are read before the recipe drops them."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    ds = pydicom.dcmread(source)
    comment = "seen by Dr SMITHERS " * 300  # > 4096 bytes: deferred by read_full
    ds.PatientComments = comment
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain)
    trailing = tmp_path / "trailing.dcm"
    _with_trailing(plain, trailing, "WAYLON")
    outcome = engine.deidentify_file(_job(str(trailing), tmp_path / "out.dcm"), CONFIG)
    assert not outcome.error and outcome.pixel_span is None  # the general path
    assert outcome.removed.get(comment.strip()) == "PatientComments"
    assert b"SMITHERS" not in (tmp_path / "out.dcm").read_bytes()
