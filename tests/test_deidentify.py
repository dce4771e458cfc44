"""De-identify stage: nothing identifying leaves, what research needs stays."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.core import disposition
from sendit_helpers.core.errors import BatchError, GateError, LeakError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings
from sendit_helpers.deid import gaterecord, leakgate
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import deidentify, deidplan, deidtables, inspect

#: Planted categories that are not identifying by themselves
#: (their identifying parts are planted elsewhere too).
NOT_SEARCHED = {"file_names", "folder_names", "junk_files", "burned_in_text"}
KEPT = (
    "PatientSex",
    "PatientAge",
    "Modality",
    "BodyPartExamined",
    "PixelSpacing",
    "SliceThickness",
    "KVP",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "BitsStored",
    "RescaleIntercept",
)


def _released(layout: BatchLayout) -> list[Path]:
    return sorted(layout.release.rglob("*.dcm"))


def _by_name(layout: BatchLayout) -> dict[str, str]:
    table = disposition.read(layout)
    return dict(zip(table["output_name"], table["source_path"], strict=True))


@pytest.fixture
def done(opened: tuple[BatchLayout, Settings]) -> deidentify.DeidResult:
    layout, settings = opened
    return upstream.deidentify(layout, settings)


def test_no_planted_value_leaks(
    done: deidentify.DeidResult, batch: tuple[Path, batchspec.Planted]
) -> None:
    layout = done.layout
    values = {
        v.lower()
        for k, vs in batch[1].values.items()
        if k not in NOT_SEARCHED
        for v in vs
        if len(v) >= 4
    }
    values.add(layout.name.lower())
    files = [p for p in layout.release.rglob("*") if p.is_file()]
    assert len(_released(layout)) > 0
    for path in files:
        data = (
            path.read_bytes().lower() + path.relative_to(layout.release).as_posix().lower().encode()
        )
        leaked = [v for v in values if v.encode() in data]
        assert not leaked, f"{path.name} leaks {len(leaked)} planted values"


def test_research_fields_and_pixels_kept(done: deidentify.DeidResult) -> None:
    sources = _by_name(done.layout)
    for path in _released(done.layout):
        new = pydicom.dcmread(path)
        old = pydicom.dcmread(sources[path.name])
        for keyword in KEPT:
            if keyword in old:
                expected = old.data_element(keyword).value
                if keyword == "PatientAge":
                    expected = deidentify_age(str(expected))
                assert new.data_element(keyword).value == expected, keyword
        assert new.PixelData == old.PixelData
        assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID != old.SOPInstanceUID
        assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID
        assert new.PatientIdentityRemoved == "YES"


def deidentify_age(age: str) -> str:
    return "090Y" if age.endswith("Y") and int(age[:-1]) > 89 else age


def test_references_point_to_released_objects(done: deidentify.DeidResult) -> None:
    layout = done.layout
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in _released(layout)}
    uids |= {pydicom.dcmread(p).SOPInstanceUID for p in layout.quarantine.rglob("*.dcm")}
    refs = []
    for path in _released(layout):
        for elem in pydicom.dcmread(path).iterall():
            if elem.keyword == "ReferencedSOPInstanceUID":
                refs.append(elem.value)
    assert refs, "the generated batch has references"
    assert set(refs) <= uids


def test_names_quarantine_and_dispositions(done: deidentify.DeidResult) -> None:
    layout = done.layout
    table = disposition.read(layout)
    assert len(table) == len(inspect.discover(layout.source))
    assert not (table["disposition"] == "pending").any()
    assert (
        table.loc[~table["disposition"].isin(["released", "quarantined"]), "reason"] != ""
    ).all()
    names = [p.name for p in _released(layout)]
    assert len(names) == len(set(names))
    assert all(pd.Series(names).str.fullmatch(r"IR[0-9a-f]{6}_\d+_\d+(_\d+)?\.dcm"))
    files = inspect.load(layout)
    flagged = set(files.loc[files["flagged"], "source_path"])
    quarantined = set(table.loc[table["disposition"] == "quarantined", "source_path"])
    assert flagged and flagged == quarantined
    assert len(list(layout.quarantine.rglob("*.dcm"))) == len(quarantined)


def test_notebook_views_read_only_what_they_show(done: deidentify.DeidResult) -> None:
    """cleaned_head, quarantine_reasons and plan's columns give what the whole tables would."""
    cleaned = pd.read_parquet(done.layout.release / "cleaned.parquet")
    for n in (0, 1, 3, len(cleaned) + 5):
        pd.testing.assert_frame_equal(done.cleaned_head(n), cleaned.head(n))
    assert "cleaned" not in done.__dict__, "the whole table is not read for the head"
    files = inspect.load(done.layout)
    narrow = inspect.load(done.layout, [*deidplan.PLAN_COLUMNS, "not a column"])
    assert list(narrow.columns) == list(deidplan.PLAN_COLUMNS)
    pd.testing.assert_frame_equal(narrow, files[list(deidplan.PLAN_COLUMNS)])
    reasons = deidentify.quarantine_reasons(done)
    table = done.dispositions[done.dispositions["disposition"] == "quarantined"]
    whole = table.merge(files, on="source_path", how="left")[
        ["output_name", "Modality", "SeriesNumber", "SeriesDescription", "group", "label"]
        + ["reason_screen"]
    ].rename(columns={"output_name": "item", "reason_screen": "rule"})
    assert not reasons.empty
    pd.testing.assert_frame_equal(reasons, whole)


def test_parquet_head_of_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    deidtables.cleaned_table([]).to_parquet(path, index=False)
    pd.testing.assert_frame_equal(deidtables.parquet_head(path, 20), pd.read_parquet(path))


def test_tables(done: deidentify.DeidResult) -> None:
    cleaned = pd.read_parquet(done.layout.release / "cleaned.parquet")
    entities = pd.read_parquet(done.layout.release / "entities.parquet")
    assert len(cleaned) == len(_released(done.layout))
    assert {"name", "entity_id", "item_id", "path", "PatientSex", "PatientAge", "Modality"} <= set(
        cleaned.columns
    )
    assert any("." in c for c in cleaned.columns), "nested sequences are flattened"
    assert list(entities.columns) == [
        "id",
        "PatientSex",
        "PatientAge",
        "IMAGE_COUNT",
        "UPLOAD_AGENT",
    ]
    assert int(entities["IMAGE_COUNT"].sum()) == len(cleaned)
    lookup = pd.read_parquet(done.layout.deid_dir / "lookup.parquet")
    assert (lookup["jitter_days"] != 0).all()


def test_stage_does_not_run_inspect(opened: tuple[BatchLayout, Settings]) -> None:
    """The stage refuses an uninspected batch; the pipeline's upstream.deidentify inspects first."""
    layout, settings = opened
    with pytest.raises(BatchError, match=r"batch \S+ is not inspected .* run `sendit inspect`"):
        deidentify.deidentify_batch(layout, settings)
    assert not layout.release.exists() or not any(layout.release.iterdir())
    assert upstream.ensure_inspected(layout, settings) is True
    assert upstream.ensure_inspected(layout, settings) is False


def test_rerun_is_idempotent(opened: tuple[BatchLayout, Settings]) -> None:
    layout, settings = opened
    upstream.deidentify(layout, settings)
    first = {p.relative_to(layout.root): p.read_bytes() for p in layout.root.rglob("*.dcm")}
    upstream.deidentify(layout, settings)
    second = {p.relative_to(layout.root): p.read_bytes() for p in layout.root.rglob("*.dcm")}
    assert first == second


def test_gate_catches_a_planted_leak(
    done: deidentify.DeidResult, batch: tuple[Path, batchspec.Planted]
) -> None:
    layout = done.layout
    assert gaterecord.require_pass(layout)
    target = _released(layout)[0]
    ds = pydicom.dcmread(target)
    patient_id = batch[1].values["PatientID"][0]
    ds.ImageComments = f"follow-up for {patient_id.lower()}"
    ds.save_as(target)
    with pytest.raises(GateError, match=r"changed since the leak gate last passed"):
        gaterecord.require_pass(layout)
    with pytest.raises(
        LeakError, match=r"leak gate failed: 1 identifying value\(s\) found in 1 file\(s\)"
    ) as err:
        leakgate.run_gate(layout, leakgate.load_values(layout))
    assert patient_id not in str(err.value)
    report = pd.read_csv(layout.deid_dir / "leak_report.csv")
    assert report.iloc[0]["field"] == "ImageComments (0020,4000)"
    assert report.iloc[0]["file"] == target.relative_to(layout.release).as_posix()
    assert patient_id not in (layout.deid_dir / "leak_report.csv").read_text()
    with pytest.raises(GateError, match=r"has no leak-gate record"):
        gaterecord.require_pass(layout)


def test_gate_record_trusts_only_files_unchanged_since_the_scan(
    done: deidentify.DeidResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unchanged files are not read again; any write is caught, even one hiding its mtime."""
    layout = done.layout
    digest = gaterecord.require_pass(layout)
    with monkeypatch.context() as m:

        def unexpected(path: Path, data: bytes | None = None) -> gaterecord.FileEntry:
            raise AssertionError(f"{path} was read again")

        m.setattr(gaterecord, "file_entry", unexpected)
        assert gaterecord.require_pass(layout) == digest
    target = _released(layout)[0]
    original = target.read_bytes()
    st = target.stat()
    target.write_bytes(original)  # same bytes, new ctime: read again, still the same digest
    assert gaterecord.require_pass(layout) == digest
    changed = bytearray(original)
    changed[200] ^= 0x01  # same size, a header byte changed, times put back
    target.write_bytes(bytes(changed))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(GateError, match=r"changed since the leak gate last passed"):
        gaterecord.require_pass(layout)
    target.write_bytes(original)
    assert gaterecord.require_pass(layout) == digest
    (target.parent / "extra.dcm").write_bytes(original)
    with pytest.raises(GateError, match=r"changed since the leak gate last passed"):
        gaterecord.require_pass(layout)


def test_age_over_89(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    synthetic.make_batch(
        folder,
        batchspec.BatchSpec(
            n_series=1,
            images_per_series=2,
            rows=16,
            columns=16,
            burned_in=False,
            junk=False,
            patient_age_years=93,
        ),
    )
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    from sendit_helpers.core.settings import load_settings

    upstream.deidentify(layout, load_settings(overrides={"PROGRESS": False}, environ={}))
    assert {pydicom.dcmread(p).PatientAge for p in _released(layout)} == {"090Y"}


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_implicit.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "liver_expb_1frame.dcm",
    ],
)
def test_odd_transfer_syntaxes(tmp_path: Path, name: str) -> None:
    source = get_testdata_file(name)
    assert source is not None
    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy2(source, folder / name)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    from sendit_helpers.core.settings import load_settings

    settings = load_settings(overrides={"PROGRESS": False, "QUARANTINE_FLAGGED": False}, environ={})
    upstream.deidentify(layout, settings)
    table = disposition.read(layout)
    assert table["disposition"].tolist() == ["released"], table["reason"].tolist()
    out = _released(layout)[0]
    new, old = pydicom.dcmread(out), pydicom.dcmread(source, force=True)
    assert new.PixelData == old.PixelData
    assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
    assert "PatientName" not in new or str(new.PatientName) != str(old.get("PatientName", ""))


def test_non_image_objects_are_released(tmp_path: Path) -> None:
    folder = tmp_path / "rt"
    folder.mkdir()
    names = ("ExplVR_BigEndNoMeta.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm")
    for name in names:
        shutil.copy2(get_testdata_file(name), folder / name)  # type: ignore[arg-type]
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    from sendit_helpers.core.settings import load_settings

    upstream.deidentify(layout, load_settings(overrides={"PROGRESS": False}, environ={}))
    table = disposition.read(layout)
    assert set(table["disposition"]) == {"released"}
    outputs = dict(
        zip(table["source_path"].map(lambda p: Path(p).name), table["output_name"], strict=True)
    )
    assert outputs["ExplVR_BigEndNoMeta.dcm"].endswith("_RTPLAN_1_1.dcm")
    assert outputs["waveform_ecg.dcm"].endswith("_ECG_0_1.dcm")  # no SeriesNumber
    # the plan has no InstanceNumber: named after its de-identified SOPInstanceUID
    assert re.fullmatch(r"IR\w+_RTPLAN_2_u[0-9a-f]{10}\.dcm", outputs["rtplan.dcm"])
    assert len(_released(layout)) == 4
    assert gaterecord.require_pass(layout)
    released = {p.name: pydicom.dcmread(p) for p in _released(layout)}
    rt = released[outputs["rtstruct.dcm"]]
    source = pydicom.dcmread(folder / "rtstruct.dcm", force=True)
    assert rt.StructureSetROISequence[0].ROIName == source.StructureSetROISequence[0].ROIName
    ecg = released[outputs["waveform_ecg.dcm"]]
    notes = [
        i.UnformattedTextValue
        for i in ecg.WaveformAnnotationSequence
        if "UnformattedTextValue" in i
    ]
    assert notes == ["ANONYMIZED", "ECG"]  # "RITMO SINUSALE", "ECG NORMALE": unknown words go
    frame = rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert frame == rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    assert frame != source.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID


def test_quarantine_reasons_of_a_batch_without_dicom_files(tmp_path: Path) -> None:
    """A batch of non-DICOM files only (deid-data's top folder) shows no quarantine reasons."""
    folder = tmp_path / "in" / "textonly"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("not dicom")
    layout, settings = open_batch(folder, tmp_path / "work", [], {})
    inspect.inspect_batch(layout, settings)
    result = upstream.deidentify(layout, settings)
    assert deidentify.quarantine_reasons(result).empty
