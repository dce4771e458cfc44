"""What a generated batch is made of (:class:`BatchSpec`) and what was planted in it.

Every identifying value of a batch is recorded in a :class:`Planted`.

The tests scan the outputs of every stage for the values a :class:`Planted` records;
the constants name the planted private block and the junk files of a batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import (
    UID,
)

__all__ = [
    "BatchSpec",
    "EMPTY_NAME",
    "NOTES_NAME",
    "OLD_AGE_YEARS",
    "PRIVATE_CREATOR",
    "Planted",
]

#: Private creator of the planted private blocks (group 0x0009 and, nested, 0x0011).
PRIVATE_CREATOR = "SENDIT_SYNTH"


#: Name of the junk text file written at the top of a batch folder.
NOTES_NAME = "notes.txt"


#: Name of the empty junk file written in the patient folder.
EMPTY_NAME = "AUTORUN.INF"


#: Age (years) of the oldest patient made by :func:`make_batches`.
OLD_AGE_YEARS = 93


_DETACHED_PATIENT_SOP_CLASS = UID("1.2.840.10008.3.1.2.1.1")


_MPPS_SOP_CLASS = UID("1.2.840.10008.3.1.2.3.3")


# Categories of Planted.values, in the order they are filled.
_CATEGORIES = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "procedure_ids",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "other_uids",
    "dates",
    "datetimes",
    "age_over_89",
    "demographics",
    "address",
    "phone",
    "institution",
    "station",
    "device_serial",
    "physicians",
    "free_text",
    "private",
    "nested",
    "file_names",
    "folder_names",
    "junk_files",
    "burned_in_text",
)


@dataclass(frozen=True)
class Planted:
    """Every identifying value planted in one batch (or corpus).

    Parameters
    ----------
    values : dict[str, list[str]]
        Category -> values.  Categories: ``PatientName`` (full ``FAMILY^GIVEN^MIDDLE``
        and each part), ``PatientID``, ``OtherPatientIDs``, ``AccessionNumber``,
        ``StudyID``, ``procedure_ids`` (requested/scheduled/performed step IDs),
        ``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID``,
        ``FrameOfReferenceUID``, ``other_uids`` (irradiation event, referenced
        patient and performed-procedure-step UIDs), ``dates`` (``YYYYMMDD``, birth
        date included), ``datetimes`` (``AcquisitionDateTime`` as written),
        ``age_over_89`` (``PatientAge`` only when above 89, e.g. ``093Y``),
        ``demographics`` (military rank, ethnic group, mother's birth name),
        ``address``, ``phone``, ``institution``, ``station``, ``device_serial``,
        ``physicians``, ``free_text`` (names, nickname and date planted in
        comments, histories, a series description and ``notes.txt``), ``private``
        (private tags, one inside a sequence), ``nested`` (values only found in
        sequences, one doubly nested), ``file_names`` and ``folder_names``
        (base names, they carry PHI), ``junk_files`` (paths relative to the batch
        folder of the non-image files and of the truncated DICOM) and
        ``burned_in_text`` (each line burned into pixels; these are the only
        values that are *not* present as bytes).  Empty categories are omitted.
    """

    values: dict[str, list[str]]

    def all_values(self) -> list[str]:
        """Return every planted value, flattened and unique, in category order.

        Returns
        -------
        list[str]
            The values; the first occurrence decides the order.
        """
        seen: dict[str, None] = {}
        for values in self.values.values():
            for value in values:
                seen.setdefault(value, None)
        return list(seen)

    def to_json(self, path: Path) -> None:
        """Write the planted values as JSON (parent folders are created).

        Parameters
        ----------
        path : Path
            Destination file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"values": self.values}, indent=1, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: Path) -> Planted:
        """Read planted values written by :meth:`to_json`.

        Parameters
        ----------
        path : Path
            A JSON file written by :meth:`to_json`.

        Returns
        -------
        Planted
            The values read.

        Raises
        ------
        ValueError
            If the file does not hold a ``{"values": {category: [str, ...]}}`` object.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        values = data.get("values") if isinstance(data, dict) else None
        if not isinstance(values, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in values.values()
        ):
            raise ValueError(f"{path}: expected a JSON object {{'values': {{category: [str]}}}}")
        return cls({str(k): list(v) for k, v in values.items()})


@dataclass(frozen=True)
class BatchSpec:
    """What :func:`make_batch` generates.

    Parameters
    ----------
    n_series : int
        Number of CT series.
    images_per_series : int
        CT images per series.
    rows, columns : int
        CT image size.  The burned-in images have fixed, larger sizes (256x256
        secondary capture, 384x512 ultrasound) so that their text stays legible.
    burned_in : bool
        Add a secondary capture (``BurnedInAnnotation`` ``YES``) and two ultrasound
        images (one RGB admitting the text, one MONOCHROME2 without
        ``BurnedInAnnotation``) with the patient's name and ID burned in.
    junk : bool
        Add ``notes.txt``, a DICOM truncated in the middle of its pixel data and
        an empty file.
    patient_age_years : int
        Age at the study date; ``PatientAge`` and ``PatientBirthDate`` follow it.
    patient_sex : str
        ``M``, ``F`` or ``O``.
    seed : int
        Every value and every pixel derives from it.
    study : int
        Which study of the seed's patient: ``0`` is the first; another number gives
        the same patient (name, IDs, birth date, sex, age) in another study (its own
        UIDs, accession, study IDs, date and time), as a second export would be.
    """

    n_series: int = 3
    images_per_series: int = 4
    rows: int = 64
    columns: int = 64
    burned_in: bool = True
    junk: bool = True
    patient_age_years: int = 56
    patient_sex: str = "M"
    seed: int = 0
    study: int = 0
