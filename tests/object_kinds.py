"""Standard non-image objects built on a generated CT series, with planted identifiers.

highdicom builds a SEG, a TID 1500 measurement report (Comprehensive 3D SR), a Key
Object Selection, a secondary capture and a grayscale softcopy presentation state on
the series; pydicom an RT Structure Set (highdicom has none).  Each carries
identifiers where a real one would: SR TEXT and PNAME items and observer names,
verifying observer, GSPS text, ROI names.  Their references point into the series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sendit_helpers.samples import batchspec, synthetic

RT_STRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Identifiers planted in the objects only (not in the CT headers).
OBSERVER = "Quimby^Horatio"
VERIFIER = "Featherstonehaugh^Imelda"
CREATOR = "Underhill^Prudence"
TEXT_NAME = "Wolfenden"
TEXT_MRN = "MRN77341902"


@dataclass(frozen=True)
class ObjectStudy:
    """The batch folder, what was planted, and the objects written (kind -> file)."""

    folder: Path
    planted: batchspec.Planted
    extra: tuple[str, ...]
    objects: dict[str, Path]
    ct_uids: tuple[str, ...]
    """Original SOPInstanceUIDs of the CT images."""
    date_item: str
    """The original value of the SR's DATE content item."""


def _cts(folder: Path) -> list[Dataset]:
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        if ds.get("Modality") == "CT" and "PixelData" in ds:
            found.append(ds)
    found.sort(key=lambda d: (int(d.SeriesNumber), int(d.InstanceNumber)))
    series = found[0].SeriesInstanceUID
    return [d for d in found if d.SeriesInstanceUID == series]


def _device() -> dict[str, str]:
    return {
        "manufacturer": "sendit",
        "manufacturer_model_name": "object kinds",
        "software_versions": "1",
        "device_serial_number": "SN1",
    }


def _seg(cts: list[Dataset]) -> Dataset:
    mask = np.zeros((len(cts), int(cts[0].Rows), int(cts[0].Columns)), dtype=bool)
    mask[:, 4:12, 4:12] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="thresh", family=codes.cid7162.ArtificialIntelligence, version="1"
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    return hd.seg.Segmentation(
        source_images=cts,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **_device(),
    )


def _observer(name: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=name),
    )


def _sr(cts: list[Dataset], seg: Dataset, date_item: str) -> Dataset:
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[4.0, 4.0], [12.0, 4.0], [12.0, 12.0], [4.0, 4.0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(cts[0]),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        referenced_region=region,
        finding_type=codes.SCT.Neoplasm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Area, value=64.0, unit=codes.UCUM.SquareMillimeter)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=_observer(OBSERVER)),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    content = report[0]
    patient = str(cts[0].PatientName)
    extra = [
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=f"CT lesion reviewed with {patient} {TEXT_NAME} {TEXT_MRN}",
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        hd.sr.PnameContentItem(
            name=codes.DCM.PersonObserverName,
            value=VERIFIER,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT,
        ),
        hd.sr.DateContentItem(
            name=codes.DCM.StudyDate,
            value=date_item,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        hd.sr.UIDRefContentItem(
            name=codes.DCM.StudyInstanceUID,
            value=str(cts[0].StudyInstanceUID),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        hd.sr.CompositeContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=seg.SOPClassUID,
            referenced_sop_instance_uid=seg.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
    ]
    content.ContentSequence.extend(extra)
    return hd.sr.Comprehensive3DSR(
        evidence=[*cts, seg],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=91,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sendit",
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=VERIFIER,
        verifying_organization="Wolfenden Clinic",
    )


def _ko(cts: list[Dataset], sr: Dataset) -> Dataset:
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=[cts[0], cts[1], sr],
        observer_person_context=_observer(OBSERVER),
        description=f"key images for {TEXT_NAME}",
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=[cts[0], cts[1], sr],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=92,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sendit",
    )


def _sc(cts: list[Dataset]) -> Dataset:
    pixels = np.zeros((int(cts[0].Rows), int(cts[0].Columns)), dtype=np.uint8)
    pixels[8:16, 8:16] = 200
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=cts[0],
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),
        series_instance_uid=hd.UID(),
        series_number=93,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sendit",
    )


def _gsps(cts: list[Dataset]) -> Dataset:
    layer = hd.pr.GraphicLayer(layer_name="NOTES", order=1)
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[cts[0]],
        graphic_layer=layer,
        text_objects=[
            hd.pr.TextObject(
                text_value=f"lesion {TEXT_NAME} {TEXT_MRN}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=(1.0, 1.0, 14.0, 8.0),
            )
        ],
    )
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=cts,
        series_instance_uid=hd.UID(),
        series_number=94,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        content_label="NOTES",
        graphic_layers=[layer],
        graphic_annotations=[annotation],
        content_creator_name=CREATOR,
        **_device(),
    )


def _rtstruct(cts: list[Dataset]) -> Dataset:
    """A small RT Structure Set on the series (one ROI, one contour on the first image)."""
    first = cts[0]
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID = RT_STRUCT_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "sendit"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 95
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "contours"
    ds.StructureSetDate = first.StudyDate
    ds.StructureSetTime = "120000"
    frame = first.FrameOfReferenceUID
    contour_images = []
    for ct in cts:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ct.SOPClassUID
        ref.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        contour_images.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence(contour_images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = frame
    roi.ROIName = f"GTV {TEXT_NAME}"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = DicomSequence([roi])
    image = Dataset()
    image.ReferencedSOPClassUID = first.SOPClassUID
    image.ReferencedSOPInstanceUID = first.SOPInstanceUID
    contour = Dataset()
    contour.ContourImageSequence = DicomSequence([image])
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = 3
    z = float(first.ImagePositionPatient[2])
    contour.ContourData = [0.0, 0.0, z, 10.0, 0.0, z, 10.0, 10.0, z]
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = DicomSequence([contour])
    ds.ROIContourSequence = DicomSequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = CREATOR
    ds.RTROIObservationsSequence = DicomSequence([observation])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_object_study(folder: Path) -> ObjectStudy:
    """Generate one CT study and write SEG, SR, KOS, SC, GSPS and RTSTRUCT objects beside it.

    Parameters
    ----------
    folder : Path
        The batch folder to create.

    Returns
    -------
    ObjectStudy
        What was written and planted.
    """
    planted = synthetic.make_batch(
        folder,
        batchspec.BatchSpec(
            n_series=1, images_per_series=3, rows=16, columns=16, burned_in=False, junk=False
        ),
    )
    cts = _cts(folder)
    date_item = str(cts[0].StudyDate)
    seg = _seg(cts)
    sr = _sr(cts, seg, date_item)
    objects = {
        "SEG": seg,
        "SR": sr,
        "KO": _ko(cts, sr),
        "SC": _sc(cts),
        "PR": _gsps(cts),
        "RTSTRUCT": _rtstruct(cts),
    }
    written = {}
    for kind, ds in objects.items():
        path = folder / "objects" / f"{kind.lower()}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written[kind] = path
    return ObjectStudy(
        folder,
        planted,
        (OBSERVER, VERIFIER, CREATOR, TEXT_NAME, TEXT_MRN, "Wolfenden Clinic"),
        written,
        tuple(str(ct.SOPInstanceUID) for ct in cts),
        date_item,
    )
