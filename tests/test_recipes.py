"""Tests for sendit_helpers.deid.recipes: the deid-format recipe engine and screening."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from sendit_helpers.core.errors import RecipeError
from sendit_helpers.deid.dateshift import age_over_89
from sendit_helpers.deid.recipemodel import (
    DEFAULT_RECIPE,
    Action,
    Changes,
    DeidContext,
    ScreenResult,
)
from sendit_helpers.deid.recipes import Recipe

ROOT = Path(__file__).resolve().parents[1]
CT = "1.2.840.10008.5.1.4.1.1.2"


def uid_map(uid: str) -> str:
    return "2.25." + str(int(hashlib.sha256(uid.encode()).hexdigest()[:30], 16))


def ctx(**kw: object) -> DeidContext:
    base: dict[str, object] = {
        "variables": {"entity_id": "ENT-0001", "item_id": "ITEM-0001"},
        "date_shift_days": -10,
        "uid_map": uid_map,
    }
    base.update(kw)
    return DeidContext(**base)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, name: str = "r.deid") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def ct_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyDate = "20200115"
    ds.SeriesDate = "20200115"
    ds.AcquisitionDateTime = "20200115101010.000"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC77001"
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = "SAINT ELSEWHERE HOSPITAL"
    ds.InstitutionAddress = "1 Main Street"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.StationName = "CTSCAN01"
    ds.StudyDescription = "CT CHEST DOE 2020-01-15"
    ds.SeriesDescription = "AXIAL MRN4455667"
    ds.ManufacturerModelName = "LightSpeed VCT"
    ds.OperatorsName = "NURSE^JACKIE"
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "MRN4455667"
    ds.PatientBirthDate = "19300101"
    ds.PatientSex = "M"
    ds.PatientAge = "093Y"
    ds.PatientSize = 1.8
    ds.PatientWeight = 80
    ds.PatientAddress = "22 Acacia Avenue"
    ds.PatientComments = "allergic, call John at home"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = 1.25
    ds.KVP = 120
    ds.DeviceSerialNumber = "SN-998877"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.StudyID = "S123"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 5
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.ImageComments = "John Doe, see prior from 2019"
    ds.Rows = 512
    ds.Columns = 512
    ds.PixelSpacing = [0.5, 0.5]
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "1.2.3.4.6"
    ds.ReferencedImageSequence = Sequence([ref])
    src = Dataset()
    src.ReferencedSOPClassUID = CT
    src.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.SourceImageSequence = Sequence([src])
    pat = Dataset()
    pat.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    pat.ReferencedSOPInstanceUID = "1.2.3.4.77"
    ds.ReferencedPatientSequence = Sequence([pat])
    block = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    block.add_new(0x01, "LO", "PRIVATE SUITE NAME")
    block.add_new(0x02, "LO", "CT99")
    return ds


@pytest.fixture(scope="module")
def default() -> Recipe:
    return Recipe.load(include_deid_filters=False)


# ----------------------------------------------------------------- default recipe


def test_default_recipe_exists_and_is_current() -> None:
    assert DEFAULT_RECIPE.is_file()
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_ps315_recipe.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_default_recipe_keeps_research_fields(default: Recipe) -> None:
    ds = ct_dataset()
    default.apply(ds, ctx())
    assert ds.Modality == "CT"
    assert ds.BodyPartExamined == "CHEST"
    assert ds.PatientSex == "M"
    assert ds.PatientAge == "090Y"
    assert list(ds.PixelSpacing) == [0.5, 0.5]
    assert float(ds.SliceThickness) == 1.25
    assert float(ds.KVP) == 120
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS"
    assert ds.ManufacturerModelName == "LightSpeed VCT"
    assert ds.SeriesNumber == 2 and ds.InstanceNumber == 5
    assert float(ds.PatientWeight) == 80
    assert ds.StudyTime == "101010"


def test_default_recipe_removes_identifiers(default: Recipe) -> None:
    ds = ct_dataset()
    changes = default.apply(ds, ctx())
    assert ds.PatientName == "ENT-0001"
    assert ds.PatientID == "ENT-0001"
    assert ds.AccessionNumber == "ITEM-0001"
    assert ds.StudyID == "ITEM-0001"
    for keyword in (
        "InstitutionName",
        "StationName",
        "DeviceSerialNumber",
        "ReferringPhysicianName",
    ):
        assert not ds.get(keyword), keyword
    for keyword in ("PatientAddress", "InstitutionAddress", "PatientComments", "ImageComments"):
        assert keyword not in ds, keyword
    assert "ReferencedPatientSequence" not in ds
    assert ds.PatientBirthDate == ""
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113108", "113107", "113105"]
    assert ds.DeidentificationMethod
    # private tags gone, with their creator
    assert not [e for e in ds if e.tag.is_private]
    # descriptors cleaned, not removed
    assert ds.StudyDescription == "CT CHEST"
    assert ds.SeriesDescription == "AXIAL"
    assert ds.ProtocolName == "CHEST ROUTINE"
    # dates shifted with format kept
    assert ds.StudyDate == "20200105"
    assert ds.AcquisitionDateTime == "20200105101010.000"
    # the gate and the lookup get what was taken out
    for value in ("DOE^JOHN", "MRN4455667", "ACC77001", "SAINT ELSEWHERE HOSPITAL", "CTSCAN01"):
        assert value in changes.removed_text
    assert "John Doe, see prior from 2019" in changes.removed_text
    assert changes.replaced["PatientID"] == ("MRN4455667", "ENT-0001")
    assert changes.replaced["StudyInstanceUID"] == ("1.2.3.4", uid_map("1.2.3.4"))
    assert "SourceApplicationEntityTitle" not in ds.file_meta


def test_no_original_uid_survives(default: Recipe) -> None:
    ds = ct_dataset()
    originals = {"1.2.3.4", "1.2.3.4.1", "1.2.3.4.5", "1.2.3.4.6", "1.2.3.9"}
    default.apply(ds, ctx())
    found = {str(e.value) for e in ds.iterall() if e.VR == "UI"}
    found |= {str(e.value) for e in ds.file_meta if e.VR == "UI"}
    assert not found & originals
    assert ds.SOPClassUID == CT  # class UIDs are not identifying
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == CT
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uid_consistency_across_files(default: Recipe) -> None:
    first, second = ct_dataset(), ct_dataset()
    second.SOPInstanceUID = "1.2.3.4.6"  # the image `first` references
    default.apply(first, ctx())
    default.apply(second, ctx())
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.ReferencedImageSequence[0].ReferencedSOPInstanceUID == second.SOPInstanceUID
    # the source image of `first` is itself
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_unlisted_uid_is_remapped(default: Recipe) -> None:
    ds = ct_dataset()
    ds.add_new(0x00081167, "UI", "1.2.3.555")  # MultiFrameSourceSOPInstanceUID: not in the profile
    default.apply(ds, ctx())
    assert ds[0x00081167].value == uid_map("1.2.3.555")
    ds.add_new(0x0008010C, "UI", "2.16.840.1.113883.6.96")  # CodingSchemeUID (SNOMED): kept
    default.apply(ds, ctx())
    assert ds[0x0008010C].value == "2.16.840.1.113883.6.96"


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        ("093Y", "090Y"),
        ("089Y", "089Y"),
        ("090Y", "090Y"),
        ("006M", "006M"),
        ("045Y", "045Y"),
        ("bad", ""),
        ("", ""),
    ],
)
def test_age_over_89(age: str, expected: str) -> None:
    assert age_over_89(age) == expected


# ----------------------------------------------------------------- actions


def test_actions_and_field_expressions(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        """FORMAT dicom
%header
ADD ClinicalTrialSponsorName "SPONSOR X"
REPLACE PatientName var:entity_id
REPLACE OperatorsName ANON
REPLACE StudyInstanceUID func:uid
REMOVE endswith:Address
REMOVE startswith:Referring
BLANK contains:Station
REMOVE 00184000
REMOVE (0018,1000)
JITTER StudyDate 3
JITTER SeriesDate func:jitter
KEEP InstitutionName
""",
    )
    rec = Recipe.load([recipe], include_default=False, include_deid_filters=False)
    ds = ct_dataset()
    ds.AcquisitionComments = "note"
    rec.apply(ds, ctx())
    assert ds.ClinicalTrialSponsorName == "SPONSOR X"
    assert ds.PatientName == "ENT-0001"
    assert ds.OperatorsName == "ANON"
    assert ds.StudyInstanceUID == uid_map("1.2.3.4")
    assert "PatientAddress" not in ds and "InstitutionAddress" not in ds
    assert ds.ReferringPhysicianName == ""  # Type 2 in the CT Image IOD: Z, not X
    assert "StationName" not in ds  # Type 3: removed rather than left empty
    assert "AcquisitionComments" not in ds
    assert "DeviceSerialNumber" not in ds
    assert ds.StudyDate == "20200118"
    assert ds.SeriesDate == "20200105"
    assert ds.InstitutionName == "SAINT ELSEWHERE HOSPITAL"
    assert ds.PatientID == "MRN4455667"  # unlisted in this recipe: kept
    assert Action("KEEP") is Action.KEEP


def test_keep_protects_within_a_file_and_later_file_wins(tmp_path: Path) -> None:
    first = write(
        tmp_path, "FORMAT dicom\n%header\nKEEP PatientName\nREMOVE contains:Patient\n", "a.deid"
    )
    second = write(tmp_path, "FORMAT dicom\n%header\nREPLACE PatientName LATER\n", "b.deid")
    ds = ct_dataset()
    Recipe.load([first], include_default=False, include_deid_filters=False).apply(ds, ctx())
    assert ds.PatientName == "DOE^JOHN"
    assert ds.PatientID == ""  # REMOVE of a Type 2 attribute leaves it zero length
    ds = ct_dataset()
    Recipe.load([first, second], include_default=False, include_deid_filters=False).apply(ds, ctx())
    assert ds.PatientName == "LATER"


def test_user_recipe_on_top_of_default(tmp_path: Path) -> None:
    extra = write(tmp_path, "FORMAT dicom\n%header\nKEEP InstitutionName\n")
    ds = ct_dataset()
    Recipe.load([extra], include_deid_filters=False).apply(ds, ctx())
    assert ds.InstitutionName == "SAINT ELSEWHERE HOSPITAL"
    assert ds.PatientID == "ENT-0001"


def test_nested_sequences(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        "FORMAT dicom\n%header\nREPLACE PersonName ANON\nREMOVE ReferencedPatientSequence\n"
        "REPLACE ReferencedSOPInstanceUID func:uid\n",
    )
    rec = Recipe.load([recipe], include_default=False, include_deid_filters=False)
    ds = ct_dataset()
    inner = Dataset()
    inner.PersonName = "SECRET^NAME"
    middle = Dataset()
    middle.ContentSequence = Sequence([inner])
    ds.ContentSequence = Sequence([middle])
    changes = rec.apply(ds, ctx())
    assert ds.ContentSequence[0].ContentSequence[0].PersonName == "ANON"
    assert "ReferencedPatientSequence" not in ds
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == uid_map("1.2.3.4.6")
    assert "SECRET^NAME" in changes.removed_text
    assert "ContentSequence[0].ContentSequence[0].PersonName" in changes.replaced


def test_private_tags_removed_unless_safe(tmp_path: Path) -> None:
    rec = Recipe.load([], include_default=False, include_deid_filters=False)
    ds = ct_dataset()
    rec.apply(ds, ctx(safe_private=frozenset({0x00091002})))
    assert 0x00091002 in ds and 0x00090010 in ds  # kept with its creator
    assert 0x00091001 not in ds
    ds = ct_dataset()
    rec.apply(ds, ctx())
    assert not [e for e in ds if e.tag.is_private]


def test_private_tag_rules(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        'FORMAT dicom\n%header\nKEEP (0009,"GEMS_IDEN_01",01)\nREPLACE 00091002 X\n',
    )
    rec = Recipe.load([recipe], include_default=False, include_deid_filters=False)
    ds = ct_dataset()
    rec.apply(ds, ctx())
    assert ds[0x00091001].value == "PRIVATE SUITE NAME"
    assert ds[0x00091002].value == "X"


def test_wildcard_overlay_and_curve(default: Recipe) -> None:
    ds = ct_dataset()
    ds.add_new(0x60024000, "LT", "overlay note about DOE")
    ds.add_new(0x60023000, "OW", b"\x00\x01")
    ds.add_new(0x50000030, "SH", "curve")
    default.apply(ds, ctx())
    assert 0x60024000 not in ds and 0x60023000 not in ds and 0x50000030 not in ds


def test_clean_text_uses_identifying_values(default: Recipe) -> None:
    ds = ct_dataset()
    ds.StudyDescription = "CT HEAD for Smithers"
    changes = default.apply(ds, ctx(identifying_values=("SMITHERS",)))
    assert ds.StudyDescription == "CT HEAD for"
    assert "Smithers" in changes.removed_text


def test_missing_variable_raises_without_value(tmp_path: Path) -> None:
    # a variable sendit knows (recipemodel.VARIABLES) that this context does not carry
    recipe = write(tmp_path, "FORMAT dicom\n%header\nREPLACE PatientID var:item_timestamp\n")
    rec = Recipe.load([recipe], include_default=False, include_deid_filters=False)
    with pytest.raises(
        RecipeError, match=r"r\.deid:3.*PatientID \(0010,0020\).*item_timestamp"
    ) as info:
        rec.apply(ct_dataset(), ctx())
    assert "MRN4455667" not in str(info.value)


# ----------------------------------------------------------------- malformed recipes


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("FORMAT dicom\n%header\nREMOVE PatientName\nREMOVEE PatientID\n", r"r\.deid:4: 'REMOVEE'"),
        (
            "FORMAT dicom\n%header\nREPLACE PatientName\n",
            r"r\.deid:3: REPLACE needs a field and a value",
        ),
        ("FORMAT dicom\n%header\n\nREMOVE NotAKeywordAtAll\n", r"r\.deid:4: unknown field"),
        ("FORMAT dicom\n%header\nREPLACE PatientID func:nosuch\n", r"r\.deid:3: unknown function"),
        ("FORMAT dicom\nREMOVE PatientID\n", r"r\.deid:2: a section"),
        ("FORMAT dicom\n%filter graylist\ncontains Modality CT\n", r"r\.deid:3: filter criteria"),
        ("FORMAT dicom\n%filter graylist\nLABEL x\n  bogus Modality CT\n", r"r\.deid:4"),
        ("FORMAT dicom\n%header\nJITTER StudyDate soon\n", r"r\.deid:3: JITTER"),
        ("FORMAT dicom\n%header\nREMOVE values:mylist\n", r"r\.deid:3: value lists"),
    ],
)
def test_malformed_recipe(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=pattern):
        Recipe.load([path], include_default=False, include_deid_filters=False)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        Recipe.load([tmp_path / "nope.deid"], include_default=False)


def test_fields_list(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        "FORMAT dicom\n%fields names\nFIELD PatientName\nFIELD endswith:PhysicianName\n"
        "%header\nBLANK fields:names\n",
    )
    ds = ct_dataset()
    Recipe.load([recipe], include_default=False, include_deid_filters=False).apply(ds, ctx())
    assert ds.PatientName == "" and ds.ReferringPhysicianName == ""


# ----------------------------------------------------------------- screening

FILTERS = """FORMAT dicom
%filter whitelist
LABEL Clean vendor
  contains Manufacturer CLEANCO
%filter graylist
LABEL Dose screen
  contains Modality CT
  + contains SeriesDescription Dose || equals Rows 400
  ctpcoordinates 0,0,512,110
LABEL Vendor overlay
  startswith ManufacturerModelName LightSpeed
  + endswith Manufacturer SYSTEMS
  coordinates 10,20,30,40
%filter blacklist
LABEL No image type
  missing ImageType || empty ImageType
"""


def test_screen_graylist_with_coordinates(tmp_path: Path) -> None:
    rec = Recipe.load([write(tmp_path, FILTERS)], include_default=False, include_deid_filters=False)
    assert rec.filter_groups == ["whitelist", "graylist", "blacklist"]
    ds = ct_dataset()
    ds.SeriesDescription = "Dose Report"
    result = rec.screen(ds)
    assert isinstance(result, ScreenResult)
    assert result.flagged and result.group == "graylist" and result.label == "Dose screen"
    assert result.coordinates == ((0, 0, 512, 110),)
    ds.SeriesDescription = "AXIAL"
    result = rec.screen(ds)
    assert result.label == "Vendor overlay" and result.coordinates == ((10, 20, 30, 40),)


def test_screen_blacklist_and_whitelist(tmp_path: Path) -> None:
    rec = Recipe.load([write(tmp_path, FILTERS)], include_default=False, include_deid_filters=False)
    ds = Dataset()
    ds.Modality = "MR"
    result = rec.screen(ds)
    assert result.flagged and result.group == "blacklist" and result.coordinates == ()
    ds.Manufacturer = "CLEANCO"
    result = rec.screen(ds)
    assert not result.flagged and result.group == "whitelist" and result.label == "Clean vendor"
    ds = Dataset()
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL"]
    assert rec.screen(ds) == ScreenResult(False, None, None, "no filter label matched", ())


def test_screen_with_deid_bundled_filters() -> None:
    rec = Recipe.load(include_default=False, include_deid_filters=True)
    assert rec.filter_groups[:3] == ["whitelist", "graylist", "blacklist"]
    ds = Dataset()
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "LightSpeed VCT"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SeriesDescription = "Dose Report"
    result = rec.screen(ds)
    assert result.flagged and result.group == "graylist"
    assert result.coordinates


def test_changes_defaults() -> None:
    assert Changes().removed_text == [] and Changes().replaced == {}
