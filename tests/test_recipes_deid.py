"""deid's own recipes load and run; deid-isms are resolved or refused with file:line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from deid.data import data_base
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from sendit_helpers.core.errors import RecipeError, RecipeWarning
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid.dateshift import shift_date
from sendit_helpers.deid.recipemodel import VARIABLES, DeidContext
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import engine
from tests import realworld

BUNDLED = sorted(p.name for p in Path(data_base).glob("deid.dicom*"))
#: pydicom test files of several kinds: CT, MR, big endian, deflated, JPEG 2000, RGB, RT plan.
PYDICOM = (
    "CT_small.dcm",
    "MR_small.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
)
CT = "1.2.840.10008.5.1.4.1.1.2"
SECRET = b"test-secret-for-deid-recipes"


def load(*paths: Path | str) -> Recipe:
    return Recipe.load([Path(p) for p in paths], include_default=False, include_deid_filters=False)


def write(tmp_path: Path, text: str, name: str = "r.deid") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def uid_map(uid: str) -> str:
    return "2.25." + str(int(hashlib.sha256(uid.encode()).hexdigest()[:30], 16))


def ctx() -> DeidContext:
    variables = {"entity_id": "ENT1", "item_id": "ITEM1", "jitter": "-10"}
    variables |= {"entity_timestamp": "19600101", "item_timestamp": "20200101"}
    return DeidContext(variables, -10, uid_map)


def ct() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20200301"
    return ds


# ----------------------------------------------------------------- deid's bundled recipes


def test_bundled_deid_dicom_loads_with_warnings_naming_file_and_line() -> None:
    path = Path(data_base) / "deid.dicom"
    with pytest.warns(RecipeWarning) as caught:
        recipe = load(path)
    messages = [str(w.message) for w in caught]
    assert messages == list(recipe.warnings)
    lines = path.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(n for n, line in enumerate(lines, start=1) if line.strip() == text)

    old, jitter, uid = (
        line_of("REMOVE PatientsName"),
        line_of("REMOVE jitter"),
        line_of("REMOVE contains:UID"),
    )
    assert any(
        m.startswith(f"{path}:{old}: 'PatientsName' is the old keyword of PatientName (0010,0010)")
        for m in messages
    )
    assert any(
        m.startswith(f"{path}:{jitter}: 'jitter' is an action or function name, not a field")
        for m in messages
    )
    assert any(
        m.startswith(f"{path}:{uid}: REMOVE contains:UID reaches SOPClassUID (0008,0016)")
        for m in messages
    )


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipe_deidentifies_generated_and_pydicom_files(name: str, tmp_path: Path) -> None:
    """Valid, readable files: SOP class kept, instance UIDs new, the var: values in place."""
    folder = tmp_path / "in"
    synthetic.make_batch(
        folder, batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
    )
    sources = sorted(p for p in folder.rglob("*.dcm") if p.stat().st_size > 1000)[:3]
    sources += [Path(str(get_testdata_file(n))) for n in PYDICOM]
    config = engine.WorkerConfig((str(Path(data_base) / name),), False, SECRET)
    with pytest.warns(RecipeWarning) if name != "deid.dicom.xray.chest" else _nothing():
        engine.load_recipe.cache_clear()
        engine.element_cache.cache_clear()
        engine.load_recipe(config.recipe_files, config.include_default)
    default = engine.WorkerConfig((), True, SECRET)
    pairs: list[tuple[Path, Path, Path]] = []
    for index, source in enumerate(sources):
        before = pydicom.dcmread(source, force=True)
        job = engine.Job(
            str(source),
            str(tmp_path / "out" / f"{index}.dcm"),
            f"{index}.dcm",
            "IR0001",
            "IRabcd",
            -7,
            False,
            shift_date(str(before.get("PatientBirthDate", "") or ""), -7),
            shift_date(str(before.get("StudyDate", "") or ""), -7),
        )
        outcome = engine.deidentify_file(job, config)
        assert outcome.error == "", (source.name, outcome.error)
        ours = dataclasses.replace(job, output=str(tmp_path / "default" / f"{index}.dcm"))
        assert engine.deidentify_file(ours, default).error == ""
        pairs.append((source, Path(job.output), Path(ours.output)))
        after = pydicom.dcmread(job.output)
        assert after.SOPClassUID == before.SOPClassUID, source.name
        assert after.file_meta.MediaStorageSOPClassUID == before.SOPClassUID
        assert after.SOPInstanceUID != before.SOPInstanceUID
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.StudyInstanceUID and after.StudyInstanceUID != before.StudyInstanceUID
        assert after.SeriesInstanceUID and after.SeriesInstanceUID != before.SeriesInstanceUID
        if "PixelData" in before:
            assert after.PixelData == before.PixelData
        if name == "deid.dicom.xray.chest":  # filters only: the header goes through unchanged
            continue
        assert not after.get("PatientName")  # removed, or emptied where its Type is 2
        assert after.PatientID == "IR0001"
        assert after.AccessionNumber == "IRabcd"
        assert after.PatientIdentityRemoved == "YES"
        assert after.PatientBirthDate == job.entity_timestamp
        assert after.StudyDate == job.item_timestamp
        if before.get("StudyDate"):
            assert after.StudyDate and after.StudyDate != before.StudyDate
        # PatientIdentityRemoved YES requires a DeidentificationMethod (PS3.3 C.7.1.1)
        assert str(after.DeidentificationMethod).startswith("sendit with deid.dicom")
    # valid in, valid out: no dciodvfy error the default recipe's output does not have too
    for source, output, reference in pairs:
        gained = realworld.new_dciodvfy_errors(source, output)
        assert gained == realworld.new_dciodvfy_errors(source, reference), source.name


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_deid_dicom_on_top_of_the_default_runs_the_stage(tmp_path: Path) -> None:
    """The stage gives the timestamps from the plan (files.parquet + the date shift)."""
    folder = tmp_path / "input" / "B1"
    synthetic.make_batch(
        folder, batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
    )
    layout, settings = open_batch(
        folder,
        tmp_path / "work",
        [],
        {"PROGRESS": False, "DEID_RECIPES": [str(Path(data_base) / "deid.dicom")]},
    )
    with pytest.warns(RecipeWarning) as caught:
        result = upstream.deidentify(layout, settings)
    assert any("old keyword of PatientName" in str(w.message) for w in caught)
    released = result.dispositions[result.dispositions["disposition"] == "released"]
    assert len(released) == 2
    lookup = pd_lookup(layout)
    for path in sorted(layout.release.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(lookup[path.name])
        shift = (_date(str(ds.StudyDate)) - _date(str(source.StudyDate))).days
        assert shift != 0
        assert ds.PatientBirthDate == shift_date(str(source.PatientBirthDate), shift)


def pd_lookup(layout: BatchLayout) -> dict[str, str]:
    table = pd.read_parquet(layout.deid_dir / "lookup.parquet")
    files = table[table["field"] == "(file)"]
    return dict(zip(files["new"], files["source_path"], strict=True))


def _date(text: str) -> dt.date:
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))


# ----------------------------------------------------------------- deid-isms, one by one


def test_old_keyword_is_resolved(tmp_path: Path) -> None:
    path = write(tmp_path, "FORMAT dicom\n%header\nREMOVE PatientsBirthDate\n")
    with pytest.warns(RecipeWarning, match=r"r\.deid:3: 'PatientsBirthDate' is the old keyword"):
        recipe = load(path)
    ds = ct()
    recipe.apply(ds, ctx())
    assert not ds.get("PatientBirthDate")  # removed, or emptied where its Type is 2


def test_unknown_field_names_line_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "FORMAT dicom\n%header\nREMOVE PatientNme\n")
    with pytest.raises(
        RecipeError,
        match=r"r\.deid:3: unknown field 'PatientNme' "
        r"\(did you mean PatientName \(0010,0010\)\?\); write a DICOM keyword",
    ):
        load(path)


def test_unknown_variable_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "FORMAT dicom\n%header\nADD PatientBirthDate var:entity_timestmp\n")
    with pytest.raises(
        RecipeError,
        match=r"r\.deid:3: unknown variable 'var:entity_timestmp'; did you mean "
        r"var:entity_timestamp\? sendit supplies entity_id, entity_timestamp, item_id",
    ):
        load(path)


def test_every_documented_variable_is_given_by_the_stage() -> None:
    job = engine.Job("a", "b", "c", "E", "I", 3, False, "19600104", "20200104")
    config = engine.WorkerConfig((), True, SECRET)
    assert set(engine.job_context(job, config).variables) == set(VARIABLES)


@pytest.mark.parametrize(
    "line",
    ["REMOVE SOPInstanceUID", "BLANK SOPClassUID", "REMOVE contains:UID", "REMOVE endswith:ID"],
)
def test_identity_uids_are_replaced_not_removed(line: str, tmp_path: Path) -> None:
    path = write(tmp_path, f"FORMAT dicom\n%header\n{line}\n")
    with pytest.warns(RecipeWarning, match=r"r\.deid:3: .* which every DICOM file needs"):
        recipe = load(path)
    ds = ct()
    recipe.apply(ds, ctx())
    assert ds.SOPClassUID == CT
    assert ds.SOPInstanceUID == uid_map("1.2.3.4.5")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == uid_map("1.2.3.4")
    assert ds.SeriesInstanceUID == uid_map("1.2.3.4.1")


def test_keep_or_func_uid_on_identity_uids_gives_no_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "FORMAT dicom\n%header\nREMOVE contains:UID\nKEEP SOPClassUID\n"
        "REPLACE SOPInstanceUID func:uid\nREPLACE StudyInstanceUID func:uid\n"
        "REPLACE SeriesInstanceUID func:uid\n",
    )
    recipe = load(path)
    assert recipe.warnings == ()


def test_edited_recipe_file_is_seen_by_the_next_batch(tmp_path: Path) -> None:
    """Loaded recipes are cached per process (a warm kernel) but an edited file is read again."""
    folder = tmp_path / "input" / "B1"
    synthetic.make_batch(
        folder, batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
    )
    recipe = tmp_path / "site.deid"
    found = []
    for value in ("first", "second"):
        recipe.write_text(f"FORMAT dicom\n\n%header\n\nREPLACE SeriesDescription {value}\n")
        layout, settings = open_batch(
            folder,
            tmp_path / f"work-{value}",
            [],
            {"PROGRESS": False, "WORKERS": 1, "DEID_RECIPES": [str(recipe)]},
        )
        upstream.deidentify(layout, settings)
        released = layout.release.rglob("*.dcm")
        found.append({str(pydicom.dcmread(p).SeriesDescription) for p in released})
    assert found == [{"first"}, {"second"}]
