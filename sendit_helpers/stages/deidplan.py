"""The de-identify stage's plan: which files, their pseudonyms and output names.

:func:`plan` chooses the readable DICOM files of an inspected batch (a
DICOMDIR or a data set without a SOP class is skipped with the reason), gets
one pseudonym per study from the identifier provider, names each output
``<item>_<series>_<instance>.dcm`` (objects without pixel data with their
Modality) and sends flagged images and opaque objects to quarantine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydicom.filereader import read_file_meta_info

from sendit_helpers.core import disposition
from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid.dateshift import shift_date
from sendit_helpers.pseudonyms.provider import StudyKey, make_provider
from sendit_helpers.pseudonyms.uids import UidMapper
from sendit_helpers.stages.engine import (
    Job,
)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DOCUMENT = (
    "{kind}: a document of free text the recipe cannot clean; the profile empties it "
    "(EncapsulatedDocument (0042,0011), D) and the header is de-identified; held for review"
)
#: SOP classes whose content the recipe cannot clean (a document, a 3D model, vendor
#: raw data), with the disposition reason: their header is de-identified and the
#: file held in quarantine for a person to review.
OPAQUE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.104.1": _DOCUMENT.format(kind="encapsulated PDF"),
    "1.2.840.10008.5.1.4.1.1.104.2": _DOCUMENT.format(kind="encapsulated CDA"),
    "1.2.840.10008.5.1.4.1.1.104.3": _DOCUMENT.format(kind="encapsulated STL model"),
    "1.2.840.10008.5.1.4.1.1.104.4": _DOCUMENT.format(kind="encapsulated OBJ model"),
    "1.2.840.10008.5.1.4.1.1.104.5": _DOCUMENT.format(kind="encapsulated MTL material"),
    "1.2.840.10008.5.1.4.1.1.66": (
        "raw data: vendor data the recipe cannot read (private elements removed, header "
        "de-identified); held for review"
    ),
}
#: The disposition reason of an image the pixel screen flagged.
FLAGGED_REASON = "pixel screen flagged possible burned-in PHI; awaiting review"


def _patient_key(row: Mapping[str, Any]) -> StudyKey:
    patient = (
        row["PatientID"] if isinstance(row["PatientID"], str) and row["PatientID"].strip() else ""
    )
    study = row["StudyInstanceUID"] if isinstance(row["StudyInstanceUID"], str) else ""
    accession = row["AccessionNumber"] if isinstance(row["AccessionNumber"], str) else ""
    date = row["StudyDate"] if isinstance(row["StudyDate"], str) else ""
    if not patient:
        patient = f"no-patient-id:{study or row['source_path']}"
    return StudyKey(patient, accession.strip() or study, date)


def _number(value: Any, fallback: int) -> int:
    return fallback if value is None or pd.isna(value) else int(value)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _modality(value: Any) -> str:
    """A Modality as a file-name part: letters and digits only, ``OT`` when there are none."""
    return "".join(c for c in _text(value).upper() if c.isascii() and c.isalnum())[:8] or "OT"


def _instance_part(row: Any, uid_map: UidMapper | None) -> str:
    """InstanceNumber, else a digest of the de-identified SOPInstanceUID (the object's own name)."""
    if row.InstanceNumber is not None and not pd.isna(row.InstanceNumber):
        return str(int(row.InstanceNumber))
    uid = _text(getattr(row, "SOPInstanceUID", None))
    if not uid or uid_map is None:
        return "x"  # no UID either: the suffix below keeps names unique
    return "u" + hashlib.sha256(uid_map(uid).encode("ascii")).hexdigest()[:10]


def _names(
    candidates: pd.DataFrame,
    codes: Mapping[str, tuple[str, str, int]],
    uid_map: UidMapper | None = None,
) -> dict[str, str]:
    """Unique names per source file, stable in source order.

    Images are ``<item>_<series>_<instance>.dcm``; objects without pixel data
    (SR, KOS, presentation states, RT plans and structure sets, waveforms)
    ``<item>_<Modality>_<series>_<instance>.dcm``, so they do not take an
    image's name.  A missing SeriesNumber is ``0``; a missing InstanceNumber is
    ``u`` + 10 hex digits of the SHA-256 of the de-identified SOPInstanceUID:
    the same object gets the same name whatever else the batch holds.  Names
    still equal get ``_2``, ``_3``... in source order.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    pixels = "has_pixels" in candidates.columns
    for row in candidates.itertuples(index=False):
        source = str(row.source_path)
        _entity, item, _jitter = codes[source]
        series, instance = _number(row.SeriesNumber, 0), _instance_part(row, uid_map)
        if pixels and not bool(row.has_pixels):
            base = f"{item}_{_modality(getattr(row, 'Modality', None))}_{series}_{instance}"
        else:
            base = f"{item}_{series}_{instance}"
        name, n = f"{base}.dcm", 1
        while name in taken:
            n += 1
            name = f"{base}_{n}.dcm"
        taken.add(name)
        names[source] = name
    return names


#: The ``files.parquet`` columns :func:`plan` reads.
PLAN_COLUMNS = (
    "source_path",
    "SOPClassUID",
    "has_pixels",
    "flagged",
    "PatientID",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "SeriesNumber",
    "InstanceNumber",
    "PatientBirthDate",
    "SOPInstanceUID",
    "Modality",
)


@dataclass
class Plan:
    """The jobs of a batch, and the files it will not release with the reason."""

    jobs: list[Job]
    skipped: list[Row]


def plan(
    layout: BatchLayout, settings: Mapping[str, Any], files: pd.DataFrame, secret: bytes
) -> Plan:
    """Choose the files to de-identify, get pseudonyms and name the outputs."""
    table = disposition.read(layout, ["source_path", "disposition"]).set_index("source_path")
    dicom = files[files["source_path"].isin(table.index)]
    dicom = dicom[
        table.loc[dicom["source_path"], "disposition"]
        .isin(
            [
                str(Disposition.PENDING),
                str(Disposition.RELEASED),
                str(Disposition.QUARANTINED),
                str(Disposition.SKIPPED),
            ]
        )
        .to_numpy()
    ]
    sop_class = dicom["SOPClassUID"].map(_text)
    storable = (sop_class != "") & (sop_class != DICOMDIR_CLASS)
    skipped = [
        Row(p, Disposition.SKIPPED, _not_storable(p)) for p in dicom.loc[~storable, "source_path"]
    ]
    images = dicom[storable].sort_values("source_path")
    keys = {row.source_path: _patient_key(row._asdict()) for row in images.itertuples(index=False)}
    cfg = typed(settings)
    ids = cfg.pseudonyms
    provider = make_provider(
        ids.provider,
        secret=secret,
        prefix=ids.entity_prefix,
        crosswalk_csv=Path(ids.crosswalk_csv) if ids.crosswalk_csv else None,
        url=ids.url,
        id_source=ids.id_source,
        token=ids.token or None,
        timeout=ids.timeout,
        retries=ids.retries,
        max_jitter_days=cfg.deid.max_jitter_days,
    )
    pseudonyms = provider.pseudonymize(list(dict.fromkeys(keys.values()))) if keys else {}
    codes = {
        p: (pseudonyms[k].entity_id, pseudonyms[k].item_id, pseudonyms[k].jitter_days)
        for p, k in keys.items()
    }
    names = _names(images, codes, UidMapper(secret))
    quarantine = cfg.deid.quarantine_flagged
    jobs = []
    for row in images.itertuples(index=False):
        entity, item, jitter = codes[row.source_path]
        reason = OPAQUE_CLASSES.get(_text(row.SOPClassUID), "")
        if not reason and quarantine and bool(row.flagged) and bool(row.has_pixels):
            reason = FLAGGED_REASON
        root = layout.quarantine if reason else layout.release
        output = root / entity / names[row.source_path]
        jobs.append(
            Job(
                row.source_path,
                str(output),
                names[row.source_path],
                entity,
                item,
                jitter,
                bool(reason),
                shift_date(_text(getattr(row, "PatientBirthDate", None)), jitter),
                shift_date(_text(row.StudyDate), jitter),
                reason,
            )
        )
    return Plan(jobs, skipped)


def _not_storable(path: str) -> str:
    """The skip reason of a file without a storable SOP class (a DICOMDIR, a fragment)."""
    try:
        meta = read_file_meta_info(path)
    except READ_ERRORS:
        meta = None
    media = _text(str(meta.get("MediaStorageSOPClassUID", ""))) if meta is not None else ""
    if media == DICOMDIR_CLASS or Path(path).name.upper().startswith("DICOMDIR"):
        return "media directory (DICOMDIR), an index of the other files; not released"
    return (
        "no SOPClassUID (0008,0016): a data set without a SOP class is not a storable object; "
        "not released (re-export it from the PACS if it should be)"
    )
