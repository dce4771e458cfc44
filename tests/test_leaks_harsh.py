"""A harsh corpus: unique planted values in every place PHI hides, scanned byte for byte.

Each file is built in code with pydicom, so the values sit exactly where real
exports hide them: every PN attribute, IDs and their issuers, addresses,
phone numbers, free text, descriptors with a name inside, nested and
doubly-nested sequences, SR content, private tags (also inside sequences,
as UN, and after the pixel data), overlay and curve groups, non-ASCII names,
and the folder and file names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import load_settings
from sendit_helpers.run import upstream


def build(path: Path, plant: Callable[[str], str]) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SeriesInstanceUID = "1.2.3.4.5.6"
    ds.Modality = "CT"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.PatientName = f"{plant('PatientName family')}^{plant('PatientName given')}"
    ds.PatientID = plant("PatientID")
    ds.AccessionNumber = plant("Accession")
    ds.OtherPatientNames = f"{plant('OtherPatientNames')}^X"
    ds.PatientBirthName = plant("PatientBirthName")
    ds.PatientMotherBirthName = plant("MotherBirthName")
    ds.ResponsiblePerson = plant("ResponsiblePerson")
    ds.ResponsibleOrganization = plant("ResponsibleOrganization")
    ds.PatientInsurancePlanCodeSequence = Sequence([Dataset()])
    ds.PatientInsurancePlanCodeSequence[0].CodeMeaning = plant("InsurancePlan")
    ds.MedicalRecordLocator = plant("MedicalRecordLocator")
    ds.IssuerOfPatientID = plant("IssuerOfPatientID")
    ds.PatientAddress = plant("PatientAddress")
    ds.CountryOfResidence = plant("CountryOfResidence")
    ds.RegionOfResidence = plant("RegionOfResidence")
    ds.PatientTelephoneNumbers = plant("Phone")
    ds.MilitaryRank = plant("MilitaryRank")
    ds.BranchOfService = plant("BranchOfService")
    ds.PatientReligiousPreference = plant("Religion")
    ds.Occupation = plant("Occupation")
    ds.AdditionalPatientHistory = plant("AdditionalPatientHistory")
    ds.PatientComments = plant("PatientComments")
    ds.ReferringPhysicianName = plant("ReferringPhysician")
    ds.ReferringPhysicianAddress = plant("ReferringPhysicianAddress")
    ds.PhysiciansOfRecord = plant("PhysiciansOfRecord")
    ds.NameOfPhysiciansReadingStudy = plant("ReadingPhysician")
    ds.OperatorsName = plant("OperatorsName")
    ds.PerformingPhysicianName = plant("PerformingPhysician")
    ds.RequestingPhysician = plant("RequestingPhysician")
    ds.InstitutionName = plant("InstitutionName")
    ds.InstitutionAddress = plant("InstitutionAddress")
    ds.InstitutionalDepartmentName = plant("Department")
    ds.StationName = plant("StationName")
    ds.DeviceSerialNumber = plant("DeviceSerialNumber")
    ds.DetectorID = plant("DetectorID")
    ds.GantryID = plant("GantryID")
    ds.StudyID = plant("StudyID")
    ds.StudyDescription = f"CT CHEST {plant('StudyDescription name')}"
    ds.SeriesDescription = f"AX 5mm {plant('SeriesDescription name')}"
    ds.ProtocolName = f"CHEST {plant('ProtocolName name')}"
    ds.ImageComments = plant("ImageComments")
    ds.RequestedProcedureDescription = plant("RequestedProcedureDescription")
    ds.PerformedProcedureStepDescription = plant("PPS description")
    ds.PerformedProcedureStepID = plant("PPSID")
    ds.ScheduledProcedureStepID = plant("SPSID")
    ds.RequestedProcedureID = plant("RequestedProcedureID")
    ds.ReasonForStudy = plant("ReasonForStudy")
    ds.RequestingService = plant("RequestingService")
    ds.AdmittingDiagnosesDescription = plant("AdmittingDiagnoses")
    ds.AdmissionID = plant("AdmissionID")
    ds.CurrentPatientLocation = plant("CurrentPatientLocation")
    ds.PatientInstitutionResidence = plant("InstitutionResidence")
    ds.VisitComments = plant("VisitComments")
    ds.ContentCreatorName = plant("ContentCreatorName")
    ds.StudyDate = "20190311"
    ds.SeriesDate = "20190311"
    ds.ContentDate = "20190312"
    ds.PatientBirthDate = "19740203"
    ds.StudyTime = "101010"
    ds.AcquisitionDateTime = "20190311101010"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    # nested
    rs = Dataset()
    rs.AccessionNumber = ds.AccessionNumber
    rs.RequestedProcedureID = plant("nested RPID")
    rs.ScheduledProcedureStepDescription = plant("nested SPS desc")
    inner = Dataset()
    inner.PersonName = plant("deep PersonName")
    inner.TextValue = plant("deep TextValue")
    inner.ValueType = "TEXT"
    rs.ContentSequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([rs])
    ct = Dataset()
    ct.ValueType = "PNAME"
    ct.PersonName = plant("SR PersonName")
    ct.TextValue = plant("SR TextValue")
    ds.ContentSequence = Sequence([ct])
    op = Dataset()
    op.PatientID = plant("OtherPatientIDsSequence")
    op.IssuerOfPatientID = plant("issuer nested")
    ds.OtherPatientIDsSequence = Sequence([op])
    ident = Dataset()
    ident.PersonIdentificationCodeSequence = Sequence([Dataset()])
    ident.PersonIdentificationCodeSequence[0].CodeValue = plant("person code")
    ident.PersonAddress = plant("person address")
    ds.OperatorIdentificationSequence = Sequence([ident])
    # private tags, incl. in sequence and UN
    blk = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    blk.add_new(0x10, "LO", plant("private LO"))
    blk.add_new(0x11, "UN", plant("private UN").encode())
    seqitem = Dataset()
    b2 = seqitem.private_block(0x0011, "ACME", create=True)
    b2.add_new(0x01, "LO", plant("private in seq"))
    ds.ReferencedStudySequence = Sequence([seqitem])
    # curve & overlay comments
    ds.add_new(0x60004000, "LT", plant("overlay comments"))
    ds.add_new(0x50002500, "LO", plant("curve label"))
    # unknown public-looking (odd) not private: skip
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((16, 16), np.uint16).tobytes()
    # trailing element after pixel data (padding) with PHI
    ds.OtherPatientNames = [
        f"{plant('OtherPatientNames 2')}^X",
        "M\u00dcLLER" + plant("non-ASCII name"),
    ]
    trailing = ds.private_block(0x7FE1, "ACME TRAILER", create=True)  # private data after PixelData
    trailing.add_new(0x01, "LO", plant("private after pixel data"))
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def harsh(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    planted: dict[str, str] = {}

    def plant(where: str) -> str:
        token = f"ZQX{len(planted):04d}PHI"
        planted[token] = where
        return token

    folder = tmp_path / "in" / plant("batch folder name")
    for _ in range(3):
        target = folder / plant("patient folder") / f"{plant('file name')}.dcm"
        target.parent.mkdir(parents=True)
        build(target, plant)
    return folder, planted


def test_nothing_planted_survives(harsh: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    folder, planted = harsh
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    overrides = {"PROGRESS": False, "QUARANTINE_FLAGGED": False}  # headers are the point here
    upstream.deidentify(layout, load_settings(overrides=overrides, environ={}))
    released = sorted(layout.release.rglob("*.dcm"))
    assert len(released) == 3
    for path in (p for p in layout.release.rglob("*") if p.is_file()):
        data = (
            path.read_bytes().lower() + path.relative_to(layout.release).as_posix().lower().encode()
        )
        leaks = sorted(where for token, where in planted.items() if token.lower().encode() in data)
        assert not leaks, f"{path.name}: {leaks}"
        assert "müller".encode() not in data
    ds = pydicom.dcmread(released[0])
    assert (ds.PatientSex, ds.PatientAge, ds.BodyPartExamined, ds.KVP) == (
        "F",
        "045Y",
        "CHEST",
        120,
    )
    assert (ds.StudyDescription, ds.SeriesDescription, ds.ProtocolName) == (
        "CT CHEST",
        "AX 5mm",
        "CHEST",
    )
    assert ds.PixelData == np.zeros((16, 16), np.uint16).tobytes()
    report = json.loads((layout.phi / "leak_gate.json").read_text())
    assert report["passed"] and report["files"] == 5


@pytest.mark.parametrize("written", ["ÖDÖN MÜLLER", "Ödön Müller", "ödön müller"])
@pytest.mark.parametrize("codec", ["utf-8", "latin-1"])
def test_gate_finds_non_ascii_names_in_any_case_and_charset(written: str, codec: str) -> None:
    from sendit_helpers.deid.gatescan import Scanner

    scanner = Scanner.build({"MÜLLER^ÖDÖN": "name"})
    assert scanner.find(f"seen by {written} today".encode(codec)), (written, codec)
