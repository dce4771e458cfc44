"""The real-world harness itself: corpora found, dciodvfy compared output against input."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests import realworld


def test_pydicom_test_files_include_dicomdir_tree() -> None:
    files = realworld.pydicom_test_files()
    names = {p.name for p in files}
    assert {"CT_small.dcm", "examples_overlay.dcm", "image_dfl.dcm", "DICOMDIR"} <= names
    assert any("dicomdirtests" in p.parts for p in files)


def test_deid_data_installed(deid_data: Path) -> None:
    files = realworld.deid_data_files()
    assert {p.parent.name for p in files} >= {"dicom-cookies", "humans", "ultrasounds", "animals"}
    assert len(files) >= 13


def test_new_dciodvfy_errors_ignores_values_and_finds_removed_type2(tmp_path: Path) -> None:
    source = realworld.pydicom_test_dir() / "CT_small.dcm"
    ds = pydicom.dcmread(source)
    ds.PatientName = "SOMEONE^ELSE"  # a changed value is not a new error
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234"
    same = tmp_path / "same.dcm"
    ds.save_as(same)
    assert realworld.new_dciodvfy_errors(source, same) == []
    del ds.PatientID
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    assert realworld.new_dciodvfy_errors(source, broken) == [
        "Error - Missing attribute Type 2 Required Element=<PatientID> Module=<Patient>"
    ]
    many = realworld.new_dciodvfy_errors_many([(source, same), (source, broken)])
    assert list(many) == [broken]
