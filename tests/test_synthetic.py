"""Tests of the synthetic batch generator (sendit_helpers.samples.synthetic)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.samples.batchspec import BatchSpec, Planted
from sendit_helpers.samples.burn import burn_text
from sendit_helpers.samples.synthetic import (
    demo_batch,
    demo_root,
    load_demo_planted,
    make_batch,
    make_batches,
    make_ct_corpus,
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _broken(folder: Path, planted: Planted) -> set[Path]:
    return {folder / rel for rel in planted.values["junk_files"]}


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Planted]:
    folder = tmp_path_factory.mktemp("synthetic") / "batch"
    return folder, make_batch(folder)


def test_every_image_reads(batch: tuple[Path, Planted]) -> None:
    folder, planted = batch
    broken = _broken(folder, planted)
    dcm = [p for p in _files(folder) if p.suffix == ".dcm"]
    good = [p for p in dcm if p not in broken]
    assert len(good) == 3 * 4 + 1 + 2
    for path in good:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.pixel_array.shape[:2] == (ds.Rows, ds.Columns)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    truncated = [p for p in dcm if p in broken]
    assert len(truncated) == 1
    with pytest.raises(Exception):  # noqa: B017 - any read error will do
        pydicom.dcmread(truncated[0]).pixel_array  # noqa: B018


def test_junk_files(batch: tuple[Path, Planted]) -> None:
    folder, planted = batch
    junk = planted.values["junk_files"]
    assert batchspec.NOTES_NAME in junk
    assert (folder / batchspec.NOTES_NAME).read_text(encoding="utf-8").strip()
    empty = [folder / rel for rel in junk if rel.endswith(batchspec.EMPTY_NAME)]
    assert len(empty) == 1 and empty[0].stat().st_size == 0


def test_every_planted_value_is_in_the_batch(batch: tuple[Path, Planted]) -> None:
    folder, planted = batch
    files = _files(folder)
    blob = b"\n".join(p.read_bytes() for p in files)
    paths = "\n".join(p.relative_to(folder).as_posix() for p in files)
    for category, values in planted.values.items():
        if category == "burned_in_text":  # lives in the pixels only
            continue
        assert values, category
        for value in values:
            assert value.encode() in blob or value in paths, (category, value)


def test_planted_categories(batch: tuple[Path, Planted]) -> None:
    _, planted = batch
    v = planted.values
    for category in (
        "PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
        "other_uids", "dates", "datetimes", "address", "phone", "institution", "station",
        "device_serial", "physicians", "free_text", "private", "nested", "file_names",
        "folder_names", "junk_files", "burned_in_text", "demographics", "procedure_ids",
    ):  # fmt: skip
        assert v.get(category), category
    assert "age_over_89" not in v
    assert len(v["PatientName"]) == 4  # FAMILY^GIVEN^MIDDLE and each part
    assert all(len(d) == 8 and d.isdigit() for d in v["dates"])
    assert len(v["SOPInstanceUID"]) == 3 * 4 + 1 + 2 + 1  # + the truncated file
    flat = planted.all_values()
    assert len(flat) == len(set(flat))
    assert set(flat) == {x for values in v.values() for x in values}


def test_header_content(batch: tuple[Path, Planted]) -> None:
    folder, planted = batch
    broken = _broken(folder, planted)
    datasets = [
        pydicom.dcmread(p) for p in _files(folder) if p.suffix == ".dcm" and p not in broken
    ]
    sops = {ds.SOPInstanceUID for ds in datasets}
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyDate for ds in datasets}) == 1
    ct = [ds for ds in datasets if ds.Modality == "CT"]
    assert {ds.PatientAge for ds in ct} == {"056Y"}
    assert len({tuple(ds.ImagePositionPatient) for ds in ct}) > 4
    first = ct[0]
    assert first.BitsAllocated == 16 and first.BitsStored == 12
    assert str(first.PatientName) == planted.values["PatientName"][0]
    assert first.private_block(0x0009, batchspec.PRIVATE_CREATOR)[0x01].value
    nested = first.RequestAttributesSequence[0]
    assert (
        nested.private_block(0x0011, batchspec.PRIVATE_CREATOR)[0x01].value
        in (planted.values["private"])
    )
    # every UID reference points to an object of the batch
    refs = [
        item.ReferencedSOPInstanceUID
        for ds in datasets
        for node in _walk(ds)
        for key in ("ReferencedImageSequence", "SourceImageSequence", "ReferencedInstanceSequence")
        for item in node.get(key, [])
    ]
    assert refs and set(refs) <= sops
    assert any("ReferencedSeriesSequence" in ds for ds in datasets)


def test_burned_in_images(batch: tuple[Path, Planted]) -> None:
    folder, planted = batch
    broken = _broken(folder, planted)
    datasets = [
        pydicom.dcmread(p) for p in _files(folder) if p.suffix == ".dcm" and p not in broken
    ]
    sc = [ds for ds in datasets if ds.Modality == "OT"]
    us = [ds for ds in datasets if ds.Modality == "US"]
    assert len(sc) == 1 and sc[0].BurnedInAnnotation == "YES"
    assert sc[0].SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert {ds.PhotometricInterpretation for ds in us} == {"RGB", "MONOCHROME2"}
    assert any("BurnedInAnnotation" not in ds for ds in us)
    assert any(ds.get("BurnedInAnnotation") == "YES" for ds in us)
    name = f"{planted.values['PatientName'][1]}, {planted.values['PatientName'][2]}"
    assert name in planted.values["burned_in_text"]
    assert f"ID {planted.values['PatientID'][0]}" in planted.values["burned_in_text"]
    # the secondary capture's top-left corner holds bright text
    assert sc[0].pixel_array[4:40, :120].max() == 255


def test_no_burned_in_no_junk(tmp_path: Path) -> None:
    planted = make_batch(tmp_path / "b", BatchSpec(n_series=1, images_per_series=2, burned_in=False,
                                                   junk=False, seed=3))  # fmt: skip
    files = _files(tmp_path / "b")
    assert len(files) == 2 and all(p.suffix == ".dcm" for p in files)
    assert "burned_in_text" not in planted.values and "junk_files" not in planted.values


def test_deterministic(tmp_path: Path) -> None:
    spec = BatchSpec(n_series=2, images_per_series=2, seed=7)
    a, b = make_batch(tmp_path / "a", spec), make_batch(tmp_path / "b", spec)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in fa] == [
        p.relative_to(tmp_path / "b") for p in fb
    ]
    for pa, pb in zip(fa, fb, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa
    c = make_batch(tmp_path / "c", BatchSpec(n_series=2, images_per_series=2, seed=8))
    assert set(a.all_values()) & set(c.all_values()) == {batchspec.NOTES_NAME}


def test_make_batches_old_patient(tmp_path: Path) -> None:
    spec = BatchSpec(n_series=1, images_per_series=1, burned_in=False, junk=False)
    made = make_batches(tmp_path, 2, spec)
    assert [p.name for p in made] == ["batch_001", "batch_002"]
    (young, p_young), (old, p_old) = made.items()
    assert "age_over_89" not in p_young.values
    assert p_old.values["age_over_89"] == ["093Y"]
    ds_young = pydicom.dcmread(_files(young)[0])
    ds_old = pydicom.dcmread(_files(old)[0])
    assert ds_young.PatientAge == "056Y" and ds_old.PatientAge == "093Y"
    years = int(ds_old.StudyDate[:4]) - int(ds_old.PatientBirthDate[:4])
    assert years in (93, 94)
    assert ds_young.PatientID != ds_old.PatientID
    assert not set(p_young.values["PatientName"]) & set(p_old.values["PatientName"])


def test_ct_corpus(tmp_path: Path) -> None:
    planted = make_ct_corpus(tmp_path / "ct", 10, rows=128, columns=96, series=4)
    files = _files(tmp_path / "ct")
    assert len(files) == 10 and all(p.suffix == ".dcm" for p in files)
    assert len(planted.values["SOPInstanceUID"]) == 10
    assert len(planted.values["SeriesInstanceUID"]) == 4
    for path in files:
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns, ds.Modality) == (128, 96, "CT")
        assert ds.pixel_array.shape == (128, 96)
        assert 128 * 96 * 2 < path.stat().st_size < 128 * 96 * 2 + 12_000
    assert "burned_in_text" not in planted.values and "junk_files" not in planted.values


def test_planted_json_roundtrip(batch: tuple[Path, Planted], tmp_path: Path) -> None:
    _, planted = batch
    planted.to_json(tmp_path / "sub" / "planted.json")
    assert Planted.from_json(tmp_path / "sub" / "planted.json") == planted
    (tmp_path / "bad.json").write_text('{"values": {"x": [1]}}')
    with pytest.raises(ValueError):
        Planted.from_json(tmp_path / "bad.json")


def test_demo_batch_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDIT_DEMO_DIR", str(tmp_path / "demo"))
    assert demo_root() == tmp_path / "demo"
    first = demo_batch()
    assert first == tmp_path / "demo" / "batches" / "batch_001"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _files(tmp_path / "demo")}
    assert any(p.suffix == ".dcm" for p in before)
    assert (tmp_path / "demo" / "batches" / "batch_002").is_dir()
    assert demo_batch() == first
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _files(tmp_path / "demo")}
    assert before == after
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]
    planted = load_demo_planted(first)
    assert planted.values["PatientID"]
    old = load_demo_planted(first.parent / "batch_002")
    assert old.values["age_over_89"] == ["093Y"]


def test_demo_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDIT_DEMO_DIR", raising=False)
    assert demo_root().name == "demo"
    assert demo_root().is_absolute()


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "batches"
    assert synthetic.main([str(out), "--batches", "1", "--ct-files", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_001", "ct_corpus"]
    assert load_demo_planted(out / "batch_001").values["PatientID"]
    assert len(_files(out / "ct_corpus")) == 3
    assert Planted.from_json(tmp_path / "planted" / "ct_corpus.json").values["file_names"]


def test_cli_matches_demo_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` runs the CLI on demo/batches; demo_batch() must then reuse it
    assert synthetic.main([str(tmp_path / "batches")]) == 0
    monkeypatch.setenv("SENDIT_DEMO_DIR", str(tmp_path))
    first = tmp_path / "batches" / "batch_001"
    mtime = (tmp_path / "planted" / "batch_001.json").stat().st_mtime_ns
    assert demo_batch() == first
    assert (tmp_path / "planted" / "batch_001.json").stat().st_mtime_ns == mtime


def test_burn_text() -> None:
    base = np.full((40, 200), 10, dtype=np.uint16)
    copy = base.copy()
    small = burn_text(base, "AB 12", 2, 2, 6, 1000)
    large = burn_text(base, "AB 12", 2, 2, 20, 1000)
    assert np.array_equal(base, copy)  # input untouched
    assert small.dtype == np.uint16 and small.shape == base.shape
    assert (small == 1000).sum() < (large == 1000).sum()
    assert small.max() > 500 and small.min() == 10
    assert large.max() == 1000
    dim = burn_text(base, "AB 12", 2, 2, 20, 30)
    assert dim.max() == 30
    # default value: the image maximum, or the dtype maximum for a flat image
    assert burn_text(np.zeros((30, 80), np.uint8), "X", 0, 0, 12).max() == 255
    rgb = burn_text(np.zeros((30, 80, 3), np.uint8), "X", 0, 0, 12, 200)
    assert rgb.max() == 200 and np.array_equal(rgb[..., 0], rgb[..., 2])
    # clipped at the edges, no error
    edge = burn_text(base, "EDGE TEXT", 180, 30, 20, 1000)
    assert edge.shape == base.shape and edge.max() == 1000
    assert np.array_equal(burn_text(base, "X", 500, 500, 10), base)
    with pytest.raises(ValueError):
        burn_text(np.zeros(5), "X", 0, 0, 10)


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_batch(tmp_path, BatchSpec(n_series=0))
    with pytest.raises(ValueError):
        make_batch(tmp_path, BatchSpec(patient_sex="X"))
    with pytest.raises(ValueError):
        make_ct_corpus(tmp_path, 0)
    assert not os.listdir(tmp_path)
