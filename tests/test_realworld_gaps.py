"""Real-world files that broke the pipeline one by one (issue #11, QA of the hidden check)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.core import disposition
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid.gatepolicy import Policy
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from tests import realworld
from tests.object_kinds import make_object_study

QUIET = {"PROGRESS": False}


def _batch(tmp_path: Path, *names: str) -> Path:
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in names:
        shutil.copy2(str(get_testdata_file(name)), batch / name)
    return batch


def _run(batch: Path, tmp_path: Path) -> BatchLayout:
    layout, settings = open_batch(batch, tmp_path / "work", [], QUIET)
    upstream.deidentify(layout, settings)
    return layout


def _output(layout: BatchLayout, name: str) -> Path:
    hits = [*layout.release.rglob(name), *layout.quarantine.rglob(name)]
    assert len(hits) == 1, name
    return hits[0]


@pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR")
def test_implicit_vr_data_set_under_jpeg_syntax_is_written(tmp_path: Path) -> None:
    """``SC_rgb_jpeg.dcm``: JPEG Baseline meta, implicit-VR data set; written with explicit VRs."""
    batch = _batch(tmp_path, "SC_rgb_jpeg.dcm")
    layout = _run(batch, tmp_path)
    (row,) = disposition.read(layout).itertuples(index=False)
    assert row.disposition in ("released", "quarantined"), row.reason
    assert "TypeError" not in row.reason
    out = _output(layout, row.output_name)
    ds = pydicom.dcmread(out)
    source = pydicom.dcmread(batch / "SC_rgb_jpeg.dcm")
    assert ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert list(ds.ImageType) == list(source.ImageType)
    assert ds.PixelData == source.PixelData
    assert realworld.new_dciodvfy_errors(batch / "SC_rgb_jpeg.dcm", out) == []


@pytest.mark.slow
def test_gsps_descriptors_with_a_planted_name_are_cleaned_and_released(tmp_path: Path) -> None:
    """ContentLabel / ContentDescription / ContentCreatorName / GraphicLayerDescription of a
    GSPS naming the patient: cleaned (a dummy for the Type 1 CS label), the GSPS released."""
    study = make_object_study(tmp_path / "DOE_JOHN")
    ct = pydicom.dcmread(next(p for p in study.folder.rglob("*.dcm") if "objects" not in p.parts))
    name, patient_id = str(ct.PatientName), str(ct.PatientID)
    family = name.split("^")[0].upper()[:16]
    pr = pydicom.dcmread(study.objects["PR"])
    pr.ContentLabel = family
    pr.ContentDescription = f"Annotations for {name.replace('^', ' ')} {patient_id}"
    pr.ContentCreatorName = name
    pr.GraphicLayerSequence[0].GraphicLayerDescription = f"notes {family}"
    pr.save_as(study.objects["PR"], enforce_file_format=True)
    layout = _run(study.folder, tmp_path)
    table = disposition.read(layout).set_index("source_path")
    row = table.loc[str(study.objects["PR"])]
    assert (row["disposition"], row["reason"]) == ("released", "")
    out = _output(layout, row["output_name"])
    data = out.read_bytes().lower()
    for value in (*name.split("^"), patient_id):
        assert value.lower().encode() not in data, value
    ds = pydicom.dcmread(out)
    assert ds.ContentLabel == "ANONYMIZED"  # Type 1 CS emptied by cleaning: a valid dummy
    assert str(ds.ContentDescription).startswith("Annotations for")
    assert realworld.new_dciodvfy_errors(study.objects["PR"], out) == []


def test_pydicom_srs_released_without_their_names(tmp_path: Path) -> None:
    """Three of pydicom's SRs together: code values / concept names are not hits for a
    short ID or a name part, and the observers' and PNAME items' names are cleaned."""
    names = ("reportsi.dcm", "reportsi_with_empty_number_tags.dcm", "test-SR.dcm")
    layout = _run(_batch(tmp_path, *names), tmp_path)
    table = disposition.read(layout)
    assert list(table["disposition"]) == ["released"] * 3, list(table["reason"])
    data = b"".join(p.read_bytes() for p in layout.release.rglob("*.dcm")).lower()
    for value in ("observer^verifying", "riesmeier", "enter text", "last name", "test^s r"):
        assert value.encode() not in data, value


def test_policy_keeps_codes_not_names() -> None:
    policy = Policy.of_values(["SIEMENS"], ["1234", "Person Observer Name", "TEXT", "IHE.10"])
    assert policy.keeps("1234", "StudyID")  # equal to a CodeValue kept in the outputs
    assert policy.keeps("Name", "name part")  # a word of a concept name
    assert policy.keeps("text", "free text")  # the value type TEXT
    assert not policy.keeps("Observer^Name", "name")  # a whole name: always searched
    assert not policy.keeps("Wolfenden", "name part")
    assert not policy.keeps("12345", "PatientID")
    assert not policy.keeps("10", "name part")  # a number is never a code word
