"""The leak gate scans released files from their bytes as written (issue #15, Deliver 3)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sendit_helpers.core.errors import LeakError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings
from sendit_helpers.deid import gaterecord, gatescan, gatewritten, leakgate
from sendit_helpers.deid.gatescan import Scanner
from sendit_helpers.deid.gatewritten import Tail
from sendit_helpers.run import upstream
from sendit_helpers.samples import batchspec


def _read_by_gate(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the files the gate reads from disk."""
    read: list[str] = []
    original = gatescan.scan_file_entry

    def spy(
        path: Path, relative: str, scanner: Scanner, span: gatescan.Span | None = None
    ) -> tuple[list[tuple[str, str, str]], gaterecord.FileEntry]:
        read.append(relative)
        return original(path, relative, scanner, span)

    monkeypatch.setattr(leakgate, "scan_file_entry", spy)
    return read


def test_stage_gate_reads_no_released_image_again(
    opened: tuple[BatchLayout, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, settings = opened
    read = _read_by_gate(monkeypatch)
    result = upstream.deidentify(layout, settings)
    images = sorted(p.relative_to(layout.release).as_posix() for p in layout.release.rglob("*.dcm"))
    assert images and result.gate.passed and result.gate.files == len(images) + 2
    assert sorted(read) == ["cleaned.parquet", "entities.parquet"]
    # The digest taken from the bytes as written is the one of the files on disk.
    record = gaterecord.passed_index(layout)
    assert record == gaterecord.release_index(layout)
    assert not (layout.deid_dir / "spool").exists()


def _written_of(layout: BatchLayout, path: Path) -> gatewritten.Written:
    rel = path.relative_to(layout.release).as_posix()
    start, _end, _size, native16 = leakgate.load_spans(layout)[rel]
    data = path.read_bytes()
    return gatewritten.written(
        rel, os.fspath(path), data[:100], memoryview(data)[100:], start, native16
    )


def test_a_file_changed_after_writing_is_read_and_held(
    opened: tuple[BatchLayout, Settings],
    batch: tuple[Path, batchspec.Planted],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout, settings = opened
    upstream.deidentify(layout, settings)
    target = sorted(layout.release.rglob("*.dcm"))[0]
    rel = target.relative_to(layout.release).as_posix()
    item = _written_of(layout, target)
    assert item.kind is Tail.CLEAN16 and item.entry == gaterecord.file_entry(target)
    values = leakgate.load_values(layout)
    read = _read_by_gate(monkeypatch)
    leakgate.run_gate(layout, values, written=[item])
    assert rel not in read and "cleaned.parquet" in read
    # Same size, a value planted in the header, times put back: the ctime tells.
    patient_id = batch[1].values["PatientID"][0]
    data = bytearray(target.read_bytes())
    uid = pydicom.dcmread(target).SOPInstanceUID.encode()
    at = bytes(data).index(uid) + 2  # inside the UID, as one of its parts
    data[at : at + len(patient_id) + 2] = b"." + patient_id.encode() + b"."
    st = target.stat()
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    read.clear()
    with pytest.raises(LeakError, match=r"leak gate failed: 1 identifying value\(s\) found in"):
        leakgate.run_gate(layout, values, written=[item])
    assert rel in read


def test_found_any_agrees_with_find() -> None:
    scanner = Scanner.build(
        {
            "MRN12345": "PatientID",
            "1.2.840.99.7.31": "StudyInstanceUID",
            "20190312": "StudyDate",
            "Doe^John": "name",
            "Saint Elsewhere Hospital": "InstitutionName",
        }
    )
    cases = {
        b"id mrn12345 here": True,
        b"XMRN12345": False,  # inside a longer token
        b"mrn12345-b": True,  # a part of a token
        b"uid 1.2.840.99.7.31.5": False,  # a longer UID: neither the whole nor a part
        b"1.2.840.99.7.31": True,
        b"date_20190312_x": True,
        b"JOHN": True,  # a name part
        b"johnny": False,
        b"at SAINT ELSEWHERE hospital.": True,
        b"saint elsewhere": False,
        b"\x00\x01\xff" * 10: False,
    }
    for data, expected in cases.items():
        assert scanner.found_any(data) is expected, data
        assert bool(scanner.find(data)) is expected, data


def test_written_keeps_text_runs_of_other_pixel_data(tmp_path: Path) -> None:
    scanner = Scanner.build({"Doe^John": "name", "MRN12345": "PatientID"})
    rng = np.random.default_rng(0)
    noise = bytes(rng.integers(0, 9, 4096, dtype=np.uint8))  # no text byte but tab
    header = b"\x00" * 132 + b"header"
    for tail, kind, clean in (
        (noise, Tail.RUNS, True),
        (noise[:999] + b"DOE^JOHN" + noise, Tail.RUNS, False),
        (noise + b"mrn12345" + noise, Tail.RUNS, False),
        (b"abc" * 30000, Tail.FILE, False),  # too much text: the gate reads the file
    ):
        out = tmp_path / "f.dcm"
        out.write_bytes(header + tail)
        item = gatewritten.written("e/f.dcm", os.fspath(out), header, memoryview(tail), 140, False)
        assert item.kind is kind
        assert gatewritten.clean_written(item, scanner) is clean
    # 16-bit native pixel data: a printable word means its text runs are kept
    words = np.array([100, 0x4142, 0x4344, 200], dtype="<u2").tobytes()
    item = gatewritten.written("e/f.dcm", os.fspath(out), header, memoryview(words), 138, True)
    assert item.kind is Tail.RUNS
    quiet = np.array([100, 3000, 0x7F7F, 0x1F41], dtype="<u2").tobytes()
    item = gatewritten.written("e/f.dcm", os.fspath(out), header, memoryview(quiet), 138, True)
    assert item.kind is Tail.CLEAN16 and item.header == header
    # A value with a control character could sit across what the runs leave out.
    odd = Scanner.build({"line one\x01two": "ImageComments"})
    assert not odd.summary_ok
    runs = gatewritten.written("e/f.dcm", os.fspath(out), header, memoryview(noise), 138, False)
    assert runs.kind is Tail.RUNS and not gatewritten.clean_written(runs, odd)


def test_pixel_prefilter_range_check() -> None:
    dark = np.arange(0, 8000, dtype="<u2").tobytes()
    assert not gatescan.native_words_printable(dark)
    assert gatescan.native_words_printable(np.array([0x4142], dtype="<u2").tobytes())
    assert not gatescan.native_words_printable(np.array([0x2080, 0x7F20], dtype="<u2").tobytes())
