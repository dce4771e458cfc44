"""REMOVE and BLANK follow the attribute's Type in the object's IOD (PS3.15 E.1.1)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_recipes import ctx, uid_map, write

from sendit_helpers.deid import iodtypes
from sendit_helpers.deid.iodtypes import Requirement
from sendit_helpers.deid.recipes import Recipe

ROOT = Path(__file__).resolve().parents[1]
CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
DEFAULT = Recipe.load(include_deid_filters=False)


def _read(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None
    return pydicom.dcmread(path, force=True)


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def test_type3_sequence_the_profile_blanks_is_removed_type2_stays_empty() -> None:
    ds = _read("CT_small.dcm")
    ds.ReferencedPerformedProcedureStepSequence = Sequence(
        [_ref("1.2.840.10008.3.1.2.3.3", "1.2.3.99")]
    )
    ds.StationName = "CTSCAN01"
    DEFAULT.apply(ds, ctx())
    assert "ReferencedPerformedProcedureStepSequence" not in ds  # Type 3: no zero-item sequence
    assert "StationName" not in ds  # Type 3 in General Equipment: X, not an empty value
    assert ds.PatientBirthDate == ""  # Type 2 in Patient: Z
    assert ds.ReferringPhysicianName == ""


def test_type1_device_serial_number_gets_a_dummy_in_enhanced_equipment() -> None:
    seg = _read("liver_1frame.dcm")
    assert seg.SOPClassUID == SEG and seg.DeviceSerialNumber
    DEFAULT.apply(seg, ctx())
    assert seg.DeviceSerialNumber == iodtypes.DUMMY
    ct = _read("CT_small.dcm")
    ct.DeviceSerialNumber = "SN-12345"
    DEFAULT.apply(ct, ctx())
    assert "DeviceSerialNumber" not in ct  # Type 3 in General Equipment


def test_removed_overlay_data_takes_its_whole_group() -> None:
    ds = _read("examples_overlay.dcm")
    assert any(tag >> 16 == 0x6000 for tag in ds.keys())
    DEFAULT.apply(ds, ctx())
    assert not [tag for tag in ds.keys() if 0x6000 <= tag >> 16 <= 0x60FF]


def test_user_recipe_remove_and_blank_follow_the_types(tmp_path: Path) -> None:
    recipe = write(
        tmp_path,
        "FORMAT dicom\n%header\nREMOVE PatientName\nREMOVE FrameOfReferenceUID\n"
        "REMOVE Modality\nBLANK InstitutionName\nBLANK ImageType\n",
    )
    rec = Recipe.load([recipe], include_default=False, include_deid_filters=False)
    ds = _read("CT_small.dcm")
    frame = ds.FrameOfReferenceUID
    rec.apply(ds, ctx())
    assert ds.PatientName == ""  # Type 2: zero length rather than removed
    assert ds.FrameOfReferenceUID == uid_map(frame)  # Type 1 UID: replaced, not removed
    assert ds.Modality == iodtypes.DUMMY  # Type 1 text: a dummy
    assert ds.ImageType == iodtypes.DUMMY
    assert "InstitutionName" not in ds  # Type 3: removed rather than left empty
    unknown = _read("CT_small.dcm")
    unknown.SOPClassUID = "1.2.3.4.5.6"  # an IOD the table does not know: as written
    rec.apply(unknown, ctx())
    assert "PatientName" not in unknown and unknown.InstitutionName == ""


def test_requirement_top_level_nested_and_unknown() -> None:
    assert iodtypes.requirement(SEG, "", "DeviceSerialNumber") is Requirement.VALUE
    assert iodtypes.requirement(CT, "", "DeviceSerialNumber") is Requirement.OPTIONAL
    assert iodtypes.requirement(CT, "", "PatientID") is Requirement.PRESENT
    assert iodtypes.requirement(CT, "", "NotInTheIod") is Requirement.OPTIONAL
    nested = iodtypes.requirement(SEG, "ReferencedSeriesSequence[0].", "SeriesInstanceUID")
    assert nested is Requirement.VALUE
    deep = "ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]."
    assert iodtypes.requirement(SEG, deep, "ReferencedSOPInstanceUID") is Requirement.UNKNOWN
    assert iodtypes.requirement("1.2.3.4", "", "PatientID") is Requirement.UNKNOWN
    assert iodtypes.requirement(CT, "", "") is Requirement.UNKNOWN  # private
    assert iodtypes.overlay_anchor(0x60220010) == 0x60223000
    assert iodtypes.overlay_anchor(0x60003000) is None
    assert iodtypes.overlay_anchor(0x00100010) is None


def test_types_table_is_generated_from_the_installed_highdicom() -> None:
    table = json.loads(iodtypes.TYPES_TABLE.read_text())
    assert "highdicom" in table["source"] and table["sop_classes"][CT] == "ct-image"
    if importlib.util.find_spec("highdicom") is None:
        pytest.skip("highdicom (test extra) is not installed")
    import highdicom

    if highdicom.__version__ != table["highdicom"]:
        pytest.skip(f"table from highdicom {table['highdicom']}, {highdicom.__version__} installed")
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_iod_types.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_type1_text_clean_descriptors_empties_gets_the_dummy() -> None:
    rt = _read("rtstruct.dcm")
    rt.StructureSetLabel = "Zorblax Qwimby"  # words Clean Descriptors does not keep
    DEFAULT.apply(rt, ctx())
    assert rt.StructureSetLabel == iodtypes.DUMMY  # Type 1 in Structure Set: never empty
    sr = _read("reportsi.dcm")
    texts = [e for e in sr.iterall() if e.keyword == "TextValue"]
    assert texts and all(e.value for e in texts)
    DEFAULT.apply(sr, ctx())
    assert all(e.value for e in sr.iterall() if e.keyword == "TextValue")
    requirement = iodtypes.requirement(
        sr.SOPClassUID, "ContentSequence[0].ContentSequence[1].", "TextValue"
    )
    assert requirement is Requirement.VALUE  # the content tree: same macro at every level
