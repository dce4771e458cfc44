"""The DICOM files of one generated study: series plan, UIDs, phantom pixels, data sets, writers.

``_generate`` writes the CT series, secondary capture and ultrasound images of a
:class:`~sendit_helpers.samples.batchspec.BatchSpec` and records what it planted.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from sendit_helpers.samples.batchspec import (
    _CATEGORIES,
    _DETACHED_PATIENT_SOP_CLASS,
    _MPPS_SOP_CLASS,
    EMPTY_NAME,
    NOTES_NAME,
    PRIVATE_CREATOR,
    Planted,
)
from sendit_helpers.samples.burn import _fit, burn_text
from sendit_helpers.samples.identities import (
    _STUDY_FIELDS,
    _Gen,
    _Identity,
    _identity,
    _person_text,
    _person_tokens,
    _pn_parts,
    _title,
)


@dataclass(frozen=True)
class _Series:
    kind: str  # "ct", "sc" or "us"
    index: int  # position in the plan
    number: int  # SeriesNumber
    description: str
    label: str  # folder-safe description
    n_images: int
    thickness: float = 2.5
    kernel: str = "STANDARD"
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    derived: bool = False


_CT_SERIES = (
    ("AX SOFT TISSUE 2.5mm", 2.5, "STANDARD", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), False),
    ("AX LUNG 1.25mm", 1.25, "LUNG", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), False),
    ("COR SOFT TISSUE 3mm", 3.0, "STANDARD", (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), True),
    ("SAG BONE 3mm", 3.0, "BONE", (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), True),
)


def _label(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text).strip("_")


def _plan(ident: _Identity, ct_counts: Sequence[int], burned_in: bool) -> list[_Series]:
    plan: list[_Series] = []
    for i, count in enumerate(ct_counts):
        desc, thick, kernel, iop, derived = _CT_SERIES[i % len(_CT_SERIES)]
        if i >= len(_CT_SERIES):
            desc = f"{desc} RECON {i + 1}"
        label = _label(desc)
        if i == len(ct_counts) - 1:
            desc = f"{desc} per Dr {_title(ident.series_doctor[0])}"
        plan.append(_Series("ct", i, i + 1, desc, label, count, thick, kernel, iop, derived))
    if burned_in:
        n = len(plan)
        plan.append(_Series("sc", n, 900, "KEY IMAGES", "KEY_IMAGES", 1, derived=True))
        plan.append(_Series("us", n + 1, 901, "US ABDOMEN LIMITED", "US_ABDOMEN_LIMITED", 2))
    return plan


class _Uids:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def __call__(self, *parts: object) -> UID:
        # A deterministic "2.25.<UUID as integer>" UID: a version-4 UUID made from a
        # hash of the parts (generate_uid(prefix=None) ignores entropy_srcs).
        text = "\x1f".join(["sendit-synthetic", self.namespace, *map(str, parts)])
        digest = hashlib.sha256(text.encode("utf-8")).digest()[:16]
        return UID(f"2.25.{uuid.UUID(bytes=digest, version=4).int}")


class _Recorder:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, None]] = {c: {} for c in _CATEGORIES}

    def add(self, category: str, *values: str) -> None:
        bucket = self.values.setdefault(category, {})
        for v in values:
            if v:
                bucket.setdefault(v, None)

    def planted(self) -> Planted:
        return Planted({k: list(v) for k, v in self.values.items() if v})


class _CTPhantom:
    """A chest-like phantom, uint16 stored values (HU + 1024, 12 bits)."""

    def __init__(self, rows: int, columns: int, rng: np.random.Generator) -> None:
        yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
        self.x = (xx - (columns - 1) / 2) / (columns / 2)
        self.y = (yy - (rows - 1) / 2) / (rows / 2)
        self.rng = rng
        body = self.x**2 + (self.y * 1.3) ** 2 < 0.85**2
        base = np.full((rows, columns), 24, dtype=np.float32)  # air, -1000 HU
        base[body] = 1064.0  # soft tissue, 40 HU
        fat = body & (self.x**2 + (self.y * 1.3) ** 2 > 0.78**2)
        base[fat] = 924.0  # -100 HU
        spine = self.x**2 + (self.y - 0.42) ** 2 < 0.11**2
        base[spine] = 1724.0  # bone, 700 HU
        self.body = body
        self.base = base

    def slice(self, k: int, n: int) -> npt.NDArray[np.uint16]:
        t = k / max(n - 1, 1)
        a = 0.2 + 0.12 * np.sin(np.pi * t)
        img = self.base.copy()
        for cx in (-0.36, 0.36):
            lung = ((self.x - cx) / a) ** 2 + ((self.y + 0.05) / (1.5 * a)) ** 2 < 1.0
            img[lung & self.body] = 224.0  # -800 HU
        heart = (self.x - 0.08) ** 2 + (self.y + 0.1) ** 2 < (0.18 * (1.0 - 0.5 * t)) ** 2
        img[heart] = 1084.0
        img += self.rng.standard_normal(img.shape, dtype=np.float32) * 12.0
        return np.clip(img, 0, 4095).astype(np.uint16)


def _window8(stored: npt.NDArray[np.uint16], center: float, width: float) -> npt.NDArray[np.uint8]:
    hu = stored.astype(np.float32) - 1024.0
    scaled = (hu - (center - width / 2)) / width * 255.0
    out: npt.NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def _us_gray(rows: int, columns: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cx, cy = (columns - 1) / 2, -0.05 * rows
    radius = np.hypot(xx - cx, yy - cy)
    angle = np.arctan2(xx - cx, yy - cy)
    sector = (np.abs(angle) < 0.62) & (radius > 0.15 * rows) & (radius < 0.95 * rows)
    speckle = rng.rayleigh(38.0, (rows, columns)).astype(np.float32)
    lesion = (xx - cx - 0.1 * columns) ** 2 + (yy - 0.55 * rows) ** 2 < (0.09 * rows) ** 2
    speckle[lesion] *= 0.35
    img = np.where(sector, speckle, 0.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _common(ident: _Identity, uid: _Uids, rec: _Recorder) -> Dataset:
    """Patient, study and request attributes shared by every image of the batch."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = ident.issuer
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientAge = ident.age
    ds.PatientWeight = ident.weight
    ds.PatientSize = ident.size
    ds.PatientAddress = ident.address
    ds.PatientTelephoneNumbers = ident.phone
    ds.MilitaryRank = ident.military_rank
    ds.EthnicGroup = ident.ethnic_group
    ds.PatientMotherBirthName = ident.mother_birth_name
    ds.OtherPatientIDs = ident.other_patient_id
    other = Dataset()
    other.PatientID = ident.other_patient_id
    other.IssuerOfPatientID = ident.issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.PatientComments = f"Prefers to be called {_title(ident.nickname)}"
    ds.AdditionalPatientHistory = (
        f"History given by daughter {_person_text(ident.history_relative)}; "
        f"prior CT on {ident.prior_date_text}."
    )
    ref_patient_uid = uid("referenced-patient")
    ds.ReferencedPatientSequence = DicomSequence(
        [_ref(_DETACHED_PATIENT_SOP_CLASS, ref_patient_uid)]
    )
    # Study
    ds.StudyInstanceUID = uid("study")
    ds.StudyDate = ident.study_date
    ds.StudyTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.StudyID = ident.study_id
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.ReferringPhysicianName = ident.referring
    ref_doc = Dataset()
    ref_doc.InstitutionName = ident.institution
    ref_doc.PersonTelephoneNumbers = ident.nested_institution_phone
    ref_doc.PersonIdentificationCodeSequence = DicomSequence(
        [_code(ident.nested_doctor_code, "L", ident.nested_doctor)]
    )
    ds.ReferringPhysicianIdentificationSequence = DicomSequence([ref_doc])
    ds.RequestingPhysician = ident.requesting
    ds.RequestedProcedureComments = (
        f"Call {_person_text(ident.callback_person)} at {ident.callback_phone} with results"
    )
    ds.ProcedureCodeSequence = DicomSequence(
        [_code("74177", "C4", "CT ABDOMEN AND PELVIS W CONTRAST")]
    )
    request = Dataset()
    request.AccessionNumber = ident.accession
    request.RequestedProcedureID = ident.requested_procedure_id
    request.RequestedProcedureDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    request.ScheduledProcedureStepID = ident.sps_id
    request.ScheduledProcedureStepDescription = "CT CAP W CONTRAST"
    request.ScheduledProtocolCodeSequence = DicomSequence(
        [_code("CTCAP", "99SYNTH", "CT chest abdomen pelvis with contrast")]
    )
    block = request.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", ident.nested_private)
    ds.RequestAttributesSequence = DicomSequence([request])
    # Performed procedure step
    pps_uid = uid("performed-procedure-step")
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([_ref(_MPPS_SOP_CLASS, pps_uid)])
    ds.PerformedProcedureStepID = ident.pps_id
    ds.PerformedProcedureStepStartDate = ident.study_date
    ds.PerformedProcedureStepStartTime = ident.study_time
    ds.PerformedProcedureStepDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.PerformedStationAETitle = ident.performed_ae
    ds.PerformedStationName = ident.ct_station
    ds.PerformedLocation = ident.performed_location
    # Institution
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.institution_address
    ds.InstitutionalDepartmentName = ident.department
    ds.PerformingPhysicianName = ident.performing
    ds.OperatorsName = ident.operator
    # Private block
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", ident.private_name)
    block.add_new(0x02, "LO", ident.private_id)
    block.add_new(0x03, "UN", ident.private_blob.encode("ascii"))

    rec.add("PatientName", *_pn_parts(ident.patient_name))
    rec.add("PatientID", ident.patient_id)
    rec.add("OtherPatientIDs", ident.other_patient_id)
    rec.add("AccessionNumber", ident.accession)
    rec.add("StudyID", ident.study_id)
    rec.add("procedure_ids", ident.requested_procedure_id, ident.sps_id, ident.pps_id)
    rec.add("StudyInstanceUID", str(ds.StudyInstanceUID))
    rec.add("other_uids", ref_patient_uid, pps_uid)
    rec.add("dates", ident.study_date, ident.birth_date)
    if int(ident.age[:3]) > 89:
        rec.add("age_over_89", ident.age)
    rec.add(
        "demographics",
        ident.military_rank,
        ident.ethnic_group,
        *_pn_parts(ident.mother_birth_name),
    )
    rec.add("address", ident.address)
    rec.add("phone", ident.phone, ident.callback_phone)
    rec.add("institution", ident.institution, ident.institution_address, ident.department)
    rec.add("station", ident.ct_station, ident.performed_ae, ident.performed_location)
    rec.add("device_serial", ident.ct_serial)
    for doc in (ident.referring, ident.performing, ident.operator, ident.requesting):
        rec.add("physicians", *_pn_parts(doc))
    rec.add(
        "free_text",
        _title(ident.nickname),
        *_person_tokens(ident.history_relative),
        ident.prior_date_text,
        *_person_tokens(ident.callback_person),
    )
    rec.add("private", *_pn_parts(ident.private_name), ident.private_id, ident.private_blob)
    rec.add("private", ident.nested_private)
    rec.add(
        "nested",
        ident.issuer,
        ident.nested_doctor_code,
        *_pn_parts(ident.nested_doctor),
        ident.nested_institution_phone,
        ident.nested_private,
    )
    return ds


def _file_meta(sop_class: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _set_instance(ds: Dataset, sop_uid: str, number: int) -> None:
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = number


def _set_pixels(ds: Dataset, array: npt.NDArray[np.generic]) -> None:
    vr = "OB" if array.dtype.itemsize == 1 else "OW"
    ds.add_new(0x7FE00010, vr, array.astype(array.dtype.newbyteorder("<")).tobytes())


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _ct_template(
    common: Dataset,
    ident: _Identity,
    series: _Series,
    series_uid: str,
    frame_uid: str,
    event_uid: str,
    ref_uid: str,
    rows: int,
    columns: int,
) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.file_meta = _file_meta(CTImageStorage)
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = (
        ["DERIVED", "SECONDARY", "REFORMATTED"]
        if series.derived
        else ["ORIGINAL", "PRIMARY", "AXIAL"]
    )
    minutes = 2 + 3 * series.index
    hh, mm, ss = int(ident.study_time[:2]), int(ident.study_time[2:4]), ident.study_time[4:]
    tot = hh * 60 + mm + minutes
    series_time = f"{tot // 60 % 24:02d}{tot % 60:02d}{ss}"
    ds.InstanceCreationDate = ident.study_date
    ds.InstanceCreationTime = series_time
    ds.SeriesDate = ident.study_date
    ds.AcquisitionDate = ident.study_date
    ds.ContentDate = ident.study_date
    ds.SeriesTime = series_time
    ds.AcquisitionTime = series_time
    ds.ContentTime = series_time
    ds.AcquisitionDateTime = f"{ident.study_date}{series_time}.000000"
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "Revolution CT"
    ds.SoftwareVersions = "revo_ct_22.10"
    ds.StationName = ident.ct_station
    ds.DeviceSerialNumber = ident.ct_serial
    ds.SeriesDescription = series.description
    ds.ProtocolName = "CT CHEST ABD PELVIS W"
    ds.BodyPartExamined = "CHEST"
    ds.ContrastBolusAgent = "OMNIPAQUE 350"
    ds.ImageComments = f"Compared with outside films per Dr {_person_text(ident.comment_doctor)}"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.IrradiationEventUID = event_uid
    ds.PatientPosition = "FFS"
    ds.SliceThickness = _fmt(series.thickness)
    ds.SpacingBetweenSlices = _fmt(series.thickness)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "350"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = 250
    ds.Exposure = 125
    ds.FilterType = "BODY FILTER"
    ds.ConvolutionKernel = series.kernel
    ds.ImageOrientationPatient = [_fmt(v) for v in series.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [_fmt(350.0 / rows), _fmt(350.0 / columns)]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    if series.kernel == "LUNG":
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    elif series.kernel == "BONE":
        ds.WindowCenter, ds.WindowWidth = "500", "2000"
    else:
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.ReferencedImageSequence = DicomSequence([_ref(CTImageStorage, ref_uid)])
    return ds


def _ct_position(series: _Series, k: int) -> tuple[list[str], str]:
    iop = series.orientation
    row = np.array(iop[:3])
    col = np.array(iop[3:])
    normal = np.cross(row, col)
    z = -150.0 + k * series.thickness
    origin = -175.0 * row - 175.0 * col + z * normal
    return [_fmt(float(v) + 0.0) for v in origin], _fmt(z)


def _write(ds: Dataset, path: Path) -> None:
    dcmwrite(path, ds, enforce_file_format=True)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _generate(
    folder: Path,
    namespace: str,
    seed: int,
    ct_counts: Sequence[int],
    rows: int,
    columns: int,
    burned_in: bool,
    junk: bool,
    age: int,
    sex: str,
    study: int = 0,
) -> Planted:
    if not ct_counts or min(ct_counts) < 1:
        raise ValueError("every CT series needs at least one image")
    if rows < 16 or columns < 16:
        raise ValueError(f"images need at least 16x16 pixels, got {rows}x{columns}")
    if not 0 <= age <= 150:
        raise ValueError(f"patient age must be within 0..150 years, got {age}")
    if sex not in ("M", "F", "O"):
        raise ValueError(f"patient sex must be M, F or O, got {sex!r}")
    key = f"{namespace}:{seed}"
    gen = _Gen(key)
    ident = _identity(gen, age, sex)
    if study:
        key = f"{key}:study{study}"
        other = _identity(_Gen(key), age, sex)
        ident = replace(
            ident,
            **{name: getattr(other, name) for name in _STUDY_FIELDS},
        )
    uid = _Uids(key)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    rec = _Recorder()
    common = _common(ident, uid, rec)
    study_uid = str(common.StudyInstanceUID)
    plan = _plan(ident, ct_counts, burned_in)

    series_uids = [str(uid("series", s.index)) for s in plan]
    sop_uids = [[str(uid("sop", s.index, k)) for k in range(s.n_images)] for s in plan]
    frame_uid = str(uid("frame-of-reference"))
    rec.add("SeriesInstanceUID", *series_uids)
    rec.add("FrameOfReferenceUID", frame_uid)
    rec.add("free_text", *_person_tokens(ident.comment_doctor))
    rec.add("free_text", _title(ident.series_doctor[0]))

    folder = Path(folder)
    patient_dir_name = f"{ident.family}_{ident.given}_{ident.patient_id}"
    patient_dir = folder / patient_dir_name
    rec.add("folder_names", patient_dir_name)
    n_ct = len(ct_counts)

    for series in plan:
        series_dir_name = f"{ident.accession}_S{series.number:03d}_{series.label}"
        series_dir = patient_dir / series_dir_name
        series_dir.mkdir(parents=True, exist_ok=True)
        rec.add("folder_names", series_dir_name)
        uids = sop_uids[series.index]
        if series.kind == "ct":
            event_uid = str(uid("irradiation-event", series.index))
            rec.add("other_uids", event_uid)
            ref_uid = sop_uids[(series.index + 1) % n_ct][0]
            ds = _ct_template(
                common, ident, series, series_uids[series.index], frame_uid, event_uid,
                ref_uid, rows, columns,
            )  # fmt: skip
            rec.add("datetimes", str(ds.AcquisitionDateTime))
            phantom = _CTPhantom(rows, columns, rng)
            for k, sop in enumerate(uids):
                _set_instance(ds, sop, k + 1)
                ipp, loc = _ct_position(series, k)
                ds.ImagePositionPatient = ipp
                ds.SliceLocation = loc
                _set_pixels(ds, phantom.slice(k, series.n_images))
                name = f"IM_{ident.accession}_{series.number:02d}{k + 1:04d}.dcm"
                _write(ds, series_dir / name)
                rec.add("SOPInstanceUID", sop)
                rec.add("file_names", name)
            if junk and series.index == 0:
                # A valid image cut in the middle of its pixel data.
                trunc_uid = str(uid("truncated"))
                _set_instance(ds, trunc_uid, series.n_images + 1)
                data = _encode(ds)
                cut = len(data) - len(ds.PixelData) // 2
                name = f"IM_{ident.accession}_{series.number:02d}{series.n_images + 1:04d}.dcm"
                (series_dir / name).write_bytes(data[:cut])
                rec.add("SOPInstanceUID", trunc_uid)
                rec.add("file_names", name)
                rec.add("junk_files", f"{patient_dir_name}/{series_dir_name}/{name}")
        elif series.kind == "sc":
            _write_sc(rec, common, ident, series, series_uids, sop_uids, series_dir, rng, study_uid)
        else:
            _write_us(rec, common, ident, series, series_uids[series.index], uids, series_dir, rng)

    if junk:
        notes = folder / NOTES_NAME
        notes.write_text(
            "Export notes\n"
            f"Patient: {ident.family}, {ident.given} ({ident.patient_id})\n"
            f"Accession: {ident.accession}\n"
            f"Questions: {_person_text(ident.notes_person)}, {ident.notes_phone}\n",
            encoding="utf-8",
        )
        (patient_dir / EMPTY_NAME).write_bytes(b"")
        rec.add("free_text", *_person_tokens(ident.notes_person))
        rec.add("phone", ident.notes_phone)
        rec.add("junk_files", NOTES_NAME, f"{patient_dir_name}/{EMPTY_NAME}")
    return rec.planted()


def _secondary_header(
    common: Dataset, ident: _Identity, series: _Series, series_uid: str, sop_class: str
) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.file_meta = _file_meta(sop_class)
    ds.SOPClassUID = sop_class
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PatientOrientation = ""
    return ds


def _write_sc(
    rec: _Recorder,
    common: Dataset,
    ident: _Identity,
    series: _Series,
    series_uids: list[str],
    sop_uids: list[list[str]],
    series_dir: Path,
    rng: np.random.Generator,
    study_uid: str,
) -> None:
    ds = _secondary_header(
        common, ident, series, series_uids[series.index], SecondaryCaptureImageStorage
    )
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "SENDIT SYNTH WORKSTATION"
    ds.SeriesDate = ident.sc_date
    ds.ContentDate = ident.sc_date
    ds.ContentTime = "093000"
    ds.BurnedInAnnotation = "YES"
    source = sop_uids[0][len(sop_uids[0]) // 2]
    ds.SourceImageSequence = DicomSequence([_ref(CTImageStorage, source)])
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series_uids[0]
    ref_series.StudyInstanceUID = study_uid
    ref_series.ReferencedInstanceSequence = DicomSequence(
        [_ref(CTImageStorage, u) for u in sop_uids[0]]
    )
    ds.ReferencedSeriesSequence = DicomSequence([ref_series])
    size = 256
    ds.Rows = ds.Columns = size
    pixels: npt.NDArray[np.generic] = _window8(_CTPhantom(size, size, rng).slice(0, 1), 40, 400)
    name_line = f"{ident.family}, {ident.given}"
    id_line = f"ID {ident.patient_id}"
    height, _ = _fit(name_line, 12, size - 12)
    pixels = burn_text(pixels, name_line, 6, 6, height, 255)
    pixels = burn_text(pixels, id_line, 6, 12 + height, 10, 255)
    _set_instance(ds, sop_uids[series.index][0], 1)
    _set_pixels(ds, pixels)
    name = f"{ds.SOPInstanceUID}.dcm"
    _write(ds, series_dir / name)
    rec.add("SOPInstanceUID", str(ds.SOPInstanceUID))
    rec.add("file_names", name)
    rec.add("dates", ident.sc_date)
    rec.add("burned_in_text", name_line, id_line)


def _write_us(
    rec: _Recorder,
    common: Dataset,
    ident: _Identity,
    series: _Series,
    series_uid: str,
    uids: list[str],
    series_dir: Path,
    rng: np.random.Generator,
) -> None:
    rows, columns = 384, 512
    name_line = f"{ident.family}, {ident.given}"
    id_line = f"ID {ident.patient_id}"
    for k, sop in enumerate(uids):
        ds = _secondary_header(common, ident, series, series_uid, UltrasoundImageStorage)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.Modality = "US"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "ACUSON Sequoia"
        ds.SoftwareVersions = "VA20A"
        ds.StationName = ident.us_station
        ds.DeviceSerialNumber = ident.us_serial
        ds.SeriesDate = ident.study_date
        ds.ContentDate = ident.study_date
        ds.ContentTime = ident.study_time
        ds.BodyPartExamined = "ABDOMEN"
        ds.Rows, ds.Columns = rows, columns
        gray = _us_gray(rows, columns, rng)
        pixels: npt.NDArray[np.generic]
        if k == 0:
            # RGB, the header admits the burned-in text.
            ds.BurnedInAnnotation = "YES"
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
            pixels = np.repeat(gray[:, :, None], 3, axis=2)
            pixels[rows - 40 : rows - 10, columns - 20 : columns - 10] = (255, 200, 0)
            height, _ = _fit(name_line, 14, columns - 16)
            pixels = burn_text(pixels, name_line, 8, 8, height, 230)
            pixels = burn_text(pixels, id_line, 8, 14 + height, 11, 230)
        else:
            # MONOCHROME2, smaller and dimmer text, BurnedInAnnotation absent.
            pixels = gray
            height, width = _fit(name_line, 9, columns // 2)
            x = columns - width - 8
            pixels = burn_text(pixels, name_line, x, rows - 20 - 2 * height, height, 170)
            pixels = burn_text(pixels, id_line, x, rows - 10 - height, height, 170)
        _set_instance(ds, sop, k + 1)
        _set_pixels(ds, pixels)
        name = f"{sop}.dcm"
        _write(ds, series_dir / name)
        rec.add("SOPInstanceUID", sop)
        rec.add("file_names", name)
    rec.add("station", ident.us_station)
    rec.add("device_serial", ident.us_serial)
    rec.add("burned_in_text", name_line, id_line)
