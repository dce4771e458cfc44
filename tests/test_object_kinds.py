"""Every object kind: SEG, SR (TID 1500), KOS, SC, GSPS and RT Structure Set beside a CT series.

The objects are built by highdicom (RT Structure Set by pydicom) on a generated
CT study with planted identifiers (:mod:`tests.object_kinds`); they go through
the de-identify stage with the images, and then to the targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset

from sendit_helpers.core import disposition
from sendit_helpers.core.errors import LeakError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.stages import deidentify, inspect
from sendit_helpers.stages.upload import upload_batch
from tests import realworld
from tests.object_kinds import TEXT_MRN, TEXT_NAME, ObjectStudy, make_object_study
from tests.servers import OrthancServer
from tests.test_elementcache import _same

QUIET = {"PROGRESS": False}
#: Planted categories that are not identifying by themselves (see test_deidentify).
NOT_SEARCHED = {"file_names", "folder_names", "junk_files", "burned_in_text"}
#: ReferencedSOPClassUID of a study reference (RT Referenced Study Sequence).
_STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> ObjectStudy:
    return make_object_study(tmp_path_factory.mktemp("objects") / "DOE_JOHN_MRN12345")


@pytest.fixture(scope="module")
def done(study: ObjectStudy, tmp_path_factory: pytest.TempPathFactory) -> deidentify.DeidResult:
    layout, settings = open_batch(study.folder, tmp_path_factory.mktemp("work"), [], QUIET)
    return upstream.deidentify(layout, settings)


def _outputs(layout: BatchLayout) -> dict[str, Path]:
    """Source path -> written file (release/ or quarantine/)."""
    table = disposition.read(layout)
    found = {}
    for source, name in zip(table["source_path"], table["output_name"], strict=True):
        if isinstance(name, str) and name:
            hits = [*layout.release.rglob(name), *layout.quarantine.rglob(name)]
            assert len(hits) == 1, name
            found[source] = hits[0]
    return found


def _kind_rows(study: ObjectStudy, layout: BatchLayout) -> dict[str, tuple[str, str]]:
    table = disposition.read(layout).set_index("source_path")
    return {
        kind: (table.loc[str(path), "disposition"], table.loc[str(path), "reason"])
        for kind, path in study.objects.items()
    }


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def test_every_object_kind_released_or_held(
    study: ObjectStudy, done: deidentify.DeidResult
) -> None:
    assert done.gate.passed
    rows = _kind_rows(study, done.layout)
    for kind in ("SEG", "SR", "KO", "PR", "RTSTRUCT"):
        assert rows[kind][0] == "released", (kind, rows[kind])
    # the secondary capture is held by the pixel screen (SC usually carries burned-in text)
    assert rows["SC"][0] == "quarantined" and "pixel screen" in rows["SC"][1]
    table = disposition.read(done.layout)
    assert set(table["disposition"]) <= {"released", "quarantined"}
    names = table["output_name"].tolist()
    assert len(set(names)) == len(names)
    assert any("_SR_91_1.dcm" in n for n in names) and any("_PR_94_1.dcm" in n for n in names)


def test_no_planted_value_reaches_release(study: ObjectStudy, done: deidentify.DeidResult) -> None:
    values = {
        v.lower()
        for k, vs in study.planted.values.items()
        if k not in NOT_SEARCHED
        for v in vs
        if len(v) >= 4
    }
    values |= {v.lower() for v in study.extra}
    values |= {p.lower() for v in study.extra for p in v.split("^")}
    values |= {uid.lower() for uid in study.ct_uids}
    values |= {str(pydicom.dcmread(p).SOPInstanceUID).lower() for p in study.objects.values()}
    values.add(done.layout.name.lower())
    files = [p for p in done.layout.release.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) == 8
    for path in files:
        data = path.read_bytes().lower() + path.relative_to(done.layout.release).as_posix().encode()
        leaked = [v for v in values if v.encode() in data]
        assert not leaked, f"{path.name} leaks {len(leaked)} planted values"


def test_no_output_gains_a_dciodvfy_error(done: deidentify.DeidResult) -> None:
    pairs = [(Path(source), out) for source, out in _outputs(done.layout).items()]
    assert len(pairs) == 9
    assert realworld.new_dciodvfy_errors_many(pairs, workers=2) == {}


def test_references_resolve_to_the_released_objects(done: deidentify.DeidResult) -> None:
    released = [pydicom.dcmread(p) for p in sorted(done.layout.release.rglob("*.dcm"))]
    sops = {str(ds.SOPInstanceUID) for ds in released}
    series = {str(ds.SeriesInstanceUID) for ds in released}
    studies = {str(ds.StudyInstanceUID) for ds in released}
    frames = {str(ds.FrameOfReferenceUID) for ds in released if "FrameOfReferenceUID" in ds}
    assert len(studies) == 1 and len(frames) == 1
    checked = 0
    for ds in released:
        for elem in _walk(ds):
            keyword, value = elem.keyword, str(elem.value)
            if keyword == "ReferencedSOPInstanceUID":
                assert value in sops | studies, (ds.Modality, keyword)
                checked += 1
            elif keyword in ("SeriesInstanceUID", "ReferencedSeriesInstanceUID"):
                assert value in series, (ds.Modality, keyword)
            elif keyword in ("FrameOfReferenceUID", "ReferencedFrameOfReferenceUID"):
                assert value in frames, (ds.Modality, keyword)
            elif keyword == "StudyInstanceUID":
                assert value in studies, (ds.Modality, keyword)
    assert checked >= 20
    by_modality = {str(ds.Modality): ds for ds in released}
    ko = by_modality["KO"]
    evidence = ko.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID in studies
    refs = [
        r.ReferencedSOPInstanceUID
        for r in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    ]
    assert set(refs) <= sops
    seg = by_modality["SEG"]
    assert {
        r.ReferencedSOPInstanceUID
        for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    } <= sops


def _content(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content(item)


def test_structured_content_cleaned_like_the_header(
    study: ObjectStudy, done: deidentify.DeidResult
) -> None:
    outputs = _outputs(done.layout)
    sr = pydicom.dcmread(outputs[str(study.objects["SR"])])
    items = list(_content(sr))
    by_type: dict[str, list[Dataset]] = {}
    for item in items:
        by_type.setdefault(str(item.ValueType), []).append(item)
    assert {"TEXT", "PNAME", "DATE", "UIDREF", "IMAGE", "COMPOSITE", "NUM", "SCOORD"} <= set(
        by_type
    )
    assert {str(i.PersonName) for i in by_type["PNAME"]} == {"ANONYMIZED"}
    comment = next(i for i in by_type["TEXT"] if i.ConceptNameCodeSequence[0].CodeValue == "121106")
    assert "lesion" in comment.TextValue and TEXT_NAME not in comment.TextValue
    assert TEXT_MRN not in comment.TextValue
    lookup = pd.read_parquet(done.layout.deid_dir / "lookup.parquet")
    jitter = int(lookup["jitter_days"].iloc[0])
    date = next(i for i in by_type["DATE"])
    expected = (pd.Timestamp(study.date_item) + pd.Timedelta(days=jitter)).strftime("%Y%m%d")
    assert jitter != 0 and date.Date == expected == sr.StudyDate
    uidref = next(
        i for i in by_type["UIDREF"] if i.ConceptNameCodeSequence[0].CodeValue == "110180"
    )
    assert uidref.UID == sr.StudyInstanceUID
    codes = {c.CodeValue for c in sr.DeidentificationMethodCodeSequence}
    assert "113104" in codes
    measured = next(i for i in by_type["NUM"])
    assert float(measured.MeasuredValueSequence[0].NumericValue) == 64.0

    pr = pydicom.dcmread(outputs[str(study.objects["PR"])])
    text = pr.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert "lesion" in text and TEXT_NAME not in text and TEXT_MRN not in text
    assert "113103" in {c.CodeValue for c in pr.DeidentificationMethodCodeSequence}
    assert not pr.get("ContentCreatorName")

    rt = pydicom.dcmread(outputs[str(study.objects["RTSTRUCT"])])
    assert rt.StructureSetROISequence[0].ROIName == "GTV"
    ko = pydicom.dcmread(outputs[str(study.objects["KO"])])
    description = [i for i in _content(ko) if i.ValueType == "TEXT"]
    assert description and TEXT_NAME not in description[0].TextValue


def test_element_cache_and_engine_agree(study: ObjectStudy, tmp_path: Path) -> None:
    """SEG through the element cache, SR / KOS / GSPS / RT through the engine: the same bytes."""
    handled = {kind: _same(path, tmp_path) for kind, path in study.objects.items()}
    assert handled["SEG"]
    assert not handled["SR"] and not handled["PR"]


def test_local_store_takes_every_object(
    done: deidentify.DeidResult, upload_settings: dict[str, Any]
) -> None:
    manifest = upload_batch(done.layout, upload_settings, progress=False)
    latest = manifest.drop_duplicates("item", keep="last")
    assert (latest["status"] == "verified").sum() == 8


@pytest.mark.servers
def test_orthanc_takes_every_object(
    done: deidentify.DeidResult, orthanc: OrthancServer, upload_settings: dict[str, Any]
) -> None:
    settings = {
        **upload_settings,
        "SEND_TO_ORTHANC": True,
        "ORTHANC_PROTOCOL": "rest",
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_PORT": orthanc.dicom_port,
        "ORTHANC_AE_TITLE": orthanc.aet,
    }
    manifest = upload_batch(done.layout, settings, progress=False)
    latest = manifest.drop_duplicates("item", keep="last")
    assert (latest["status"] == "verified").sum() == 8
    assert orthanc.instance_count() == 8


@pytest.mark.servers
def test_google_takes_every_object(
    done: deidentify.DeidResult, google_env: dict[str, Any], upload_settings: dict[str, Any]
) -> None:
    from google.cloud import datastore

    settings = {**upload_settings, **google_env}
    manifest = upload_batch(done.layout, settings, progress=False)
    latest = manifest.drop_duplicates("item", keep="last")
    assert (latest["status"] == "verified").sum() == 8
    client = datastore.Client(project=google_env["GOOGLE_PROJECT_NAME"])
    images = list(client.query(kind="Image").fetch())
    assert {str(e.get("Modality")) for e in images} >= {"SR", "KO", "PR", "SEG", "RTSTRUCT", "CT"}


#: pydicom test files of each non-image kind (and the deflated image), by name.
PYDICOM_KINDS = {
    "reportsi.dcm": "Basic Text SR",
    "test-SR.dcm": "Comprehensive SR",
    "rtplan.dcm": "RT Plan",
    "rtstruct.dcm": "RT Structure Set",
    "ExplVR_LitEndNoMeta.dcm": "RT Ion Plan",
    "waveform_ecg.dcm": "12-lead ECG",
    "rtdose.dcm": "RT Dose",
    "liver_1frame.dcm": "Segmentation",
    "image_dfl.dcm": "deflated secondary capture",
}


@pytest.mark.slow
def test_pydicom_test_files_every_kind(tmp_path: Path, pydicom_batch: Path) -> None:
    layout, settings = open_batch(pydicom_batch, tmp_path / "work", [], QUIET)
    try:
        upstream.deidentify(layout, settings)
    except LeakError:
        pass  # the gate's precision on these vendor values is another matter (issue 11, point 1)
    table = disposition.read(layout)
    assert len(table) == len(inspect.discover(pydicom_batch))
    assert (table["disposition"] != "pending").all()
    assert (table.loc[table["disposition"] != "released", "reason"].str.len() > 0).all()
    by_name = {Path(p).name: (d, r, o) for p, d, r, o in table.itertuples(index=False)}
    for name in PYDICOM_KINDS:
        state, reason, output = by_name[name]
        assert state == "released" or (state == "quarantined" and reason), (name, state)
    assert "_RTSTRUCT_" in by_name["rtstruct.dcm"][2] and "_SR_" in by_name["test-SR.dcm"][2]
    skipped = table[table["disposition"] == "skipped"]
    assert skipped["reason"].str.contains("DICOMDIR|no SOPClassUID \\(0008,0016\\)").all()
    assert not table["reason"].str.contains("no pixel data").any()
    # dciodvfy cannot read the deflated input; reportsi.dcm's "ReferencedSOPInstanceUID 0"
    # becomes a real UID, which the comparison takes for a new error
    checked = [
        (Path(source), out)
        for source, out in _outputs(layout).items()
        if Path(source).name in PYDICOM_KINDS
        and Path(source).name not in ("image_dfl.dcm", "reportsi.dcm")
    ]
    assert len(checked) == len(PYDICOM_KINDS) - 2
    assert realworld.new_dciodvfy_errors_many(checked, workers=2) == {}
    # the deflated image is read as an image (a secondary capture: held by the pixel screen)
    # and written without the deflate, so the leak gate reads its bytes
    deflated = pydicom.dcmread(
        _outputs(layout)[next(str(p) for p in table["source_path"] if p.endswith("image_dfl.dcm"))]
    )
    source = pydicom.dcmread(next(pydicom_batch.rglob("image_dfl.dcm")))
    assert deflated.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert deflated.PixelData == source.PixelData


def test_encapsulated_pdf_is_held_with_its_reason(study: ObjectStudy, tmp_path: Path) -> None:
    folder = tmp_path / "DOE_PDF"
    ct = next(p for p in sorted(study.folder.rglob("*.dcm")) if "objects" not in p.parts)
    (folder / "ct").mkdir(parents=True)
    (folder / "ct" / "ct.dcm").write_bytes(ct.read_bytes())
    source = pydicom.dcmread(ct)
    pdf = Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        setattr(pdf, keyword, source.data_element(keyword).value)
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.SOPInstanceUID = pydicom.uid.generate_uid()
    pdf.SeriesInstanceUID = pydicom.uid.generate_uid()
    pdf.Modality, pdf.SeriesNumber, pdf.InstanceNumber = "DOC", 7, 1
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4 " + str(source.PatientName).encode() + b"\n%%EOF\n"
    pdf.ensure_file_meta()
    pdf.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pdf.save_as(folder / "report.dcm", enforce_file_format=True)
    layout, settings = open_batch(folder, tmp_path / "work", [], QUIET)
    result = upstream.deidentify(layout, settings)
    assert result.gate.passed
    row = result.dispositions.set_index("source_path").loc[str(folder / "report.dcm")]
    assert row["disposition"] == "quarantined"
    assert row["reason"].startswith("encapsulated PDF: a document of free text")
    held = pydicom.dcmread(next(layout.quarantine.rglob(row["output_name"])))
    assert not held.EncapsulatedDocument and held.PatientName != source.PatientName


def test_dcmtk_sr_is_not_held_for_its_own_implementation_uid(tmp_path: Path) -> None:
    """DCMTK names itself in InstanceCreatorUID (replaced) and ImplementationClassUID (kept)."""
    folder = tmp_path / "sr"
    folder.mkdir()
    source = realworld.pydicom_test_dir() / "test-SR.dcm"
    (folder / "test-SR.dcm").write_bytes(source.read_bytes())
    layout, settings = open_batch(folder, tmp_path / "work", [], QUIET)
    result = upstream.deidentify(layout, settings)
    assert result.gate.passed
    assert result.dispositions["disposition"].tolist() == ["released"]
    out = pydicom.dcmread(next(layout.release.rglob("*.dcm")))
    original = pydicom.dcmread(source)
    assert out.InstanceCreatorUID != original.InstanceCreatorUID
    assert out.file_meta.ImplementationClassUID == original.file_meta.ImplementationClassUID


def test_leak_gate_reads_objects_without_pixel_data(done: deidentify.DeidResult) -> None:
    """No pixel data span: every byte of an SR is scanned, its content items included."""
    from sendit_helpers.deid import gatescan

    sr = next(done.layout.release.rglob("*_SR_*.dcm"))
    found = pydicom.dcmread(sr)
    kept_text = next(i for i in _content(found) if i.ValueType == "TEXT").TextValue
    scanner = gatescan.Scanner.build({"Quimbyville": "name", kept_text: "free text"})
    hits = gatescan.scan_file(sr, sr.name, scanner)
    assert [category for _file, _field, category in hits] == ["free text"]
