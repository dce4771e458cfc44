"""Deterministic synthetic DICOM batches for the demo, the tests and the benchmarks.

A *batch* is one study as a hospital PACS would export it: a patient folder,
one folder per series, CT images, optionally a secondary capture and two
ultrasound images with the patient's name burned into the pixels, and some
junk (a text file, a truncated DICOM, an empty file).  Every identifying value
is unique, greppable, and recorded in a :class:`Planted` so that tests can scan
the outputs of every stage byte for byte.

Everything is derived from a seed: the same seed gives byte-identical files.

Command line::

    python -m sendit_helpers.samples.synthetic OUT_DIR [--batches N] [--ct-files N] [--seed S]

writes the batch folders ``OUT_DIR/batch_001 ...`` (and, with ``--ct-files``, a
512x512 CT study ``OUT_DIR/ct_corpus``) and their planted values, *next to*
``OUT_DIR`` so that ``OUT_DIR`` holds batches only:
``OUT_DIR/../planted/<batch>.json``.  ``make demo`` passes ``demo/batches``, the
layout :func:`demo_batch` uses.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import lru_cache
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

__all__ = [
    "BatchSpec",
    "Planted",
    "burn_text",
    "demo_batch",
    "demo_root",
    "FONTS",
    "TextTruth",
    "load_demo_planted",
    "load_text_truth",
    "main",
    "make_batch",
    "make_batches",
    "make_ct_corpus",
    "make_text_images",
    "text_truth_path",
]

#: Private creator of the planted private blocks (group 0x0009 and, nested, 0x0011).
PRIVATE_CREATOR = "SENDIT_SYNTH"
#: Name of the junk text file written at the top of a batch folder.
NOTES_NAME = "notes.txt"
#: Name of the empty junk file written in the patient folder.
EMPTY_NAME = "AUTORUN.INF"
#: Age (years) of the oldest patient made by :func:`make_batches`.
OLD_AGE_YEARS = 93
#: Number of demo batches made by :func:`demo_batch`.
DEMO_BATCHES = 2

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


# --------------------------------------------------------------------------- public types


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


# --------------------------------------------------------------------------- text burning


@lru_cache(maxsize=1)
def _font_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


#: Fonts :func:`burn_text` can use (all bundled with matplotlib): name -> file.
FONTS = {
    "sans": "DejaVuSans.ttf",
    "mono": "DejaVuSansMono.ttf",
    "serif": "DejaVuSerif.ttf",
}


@lru_cache(maxsize=len(FONTS))
def _font_file(font: str) -> str:
    """The path of one of :data:`FONTS` (DejaVu Sans for ``"sans"``)."""
    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; use one of {', '.join(FONTS)}")
    if font == "sans":
        return _font_path()
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[font])


_CAP_HEIGHT_EM = 0.729  # DejaVu capital height (Sans, Mono and Serif) as a fraction of the em


def _text_mask(text: str, height: int, font_name: str = "sans") -> npt.NDArray[np.float32]:
    """Rasterize ``text`` with matplotlib's FreeType wrapper; coverage in [0, 1]."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(_font_file(font_name))
    font.set_size(height / _CAP_HEIGHT_EM, 72.0)
    font.set_text(text, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    image = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    return image


def _fit(text: str, height: int, max_width: int) -> tuple[int, int]:
    """The largest height <= ``height`` (>= 6) whose rendering fits ``max_width``; its width."""
    width = _text_mask(text, height).shape[1]
    while width > max_width and height > 6:
        height -= 1
        width = _text_mask(text, height).shape[1]
    return height, width


def burn_text(
    pixels: npt.NDArray[np.generic],
    text: str,
    x: int,
    y: int,
    height: int,
    value: int | None = None,
    *,
    font: str = "sans",
) -> npt.NDArray[np.generic]:
    """Burn readable text into an image, without external fonts.

    The text is rasterized (antialiased) with a DejaVu font bundled with
    matplotlib (Sans unless ``font`` says otherwise), through matplotlib's
    FreeType wrapper (the one its Agg backend uses).

    Parameters
    ----------
    pixels : numpy.ndarray
        A 2-D image ``(rows, columns)``, or ``(rows, columns, samples)`` for colour
        images (every sample gets ``value``).  Not modified.
    text : str
        One line of text.
    x, y : int
        Column and row of the top-left corner of the text box.  Text that falls
        outside the image is clipped.
    height : int
        Height in pixels of the capital letters (descenders go below it).
    value : int or None
        Intensity of the text; default the image maximum (the dtype maximum for
        a flat image).  A value close to the background gives low contrast.
    font : str
        ``"sans"`` (DejaVu Sans, the default), ``"mono"`` (DejaVu Sans Mono) or
        ``"serif"`` (DejaVu Serif); see :data:`FONTS`.

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype, with the text burned in.

    Raises
    ------
    ValueError
        If the image is not 2-D or 3-D or ``height`` is below 4.
    """
    if pixels.ndim not in (2, 3):
        raise ValueError(f"burn_text needs a 2-D or 3-D image, got shape {pixels.shape}")
    if height < 4:
        raise ValueError(f"burn_text needs a height of at least 4 pixels, got {height}")
    out = np.array(pixels, copy=True)
    if value is None:
        lo, hi = out.min(), out.max()
        if hi > lo:
            value = int(hi)
        elif np.issubdtype(out.dtype, np.integer):
            value = int(np.iinfo(out.dtype).max)
        else:
            value = 1
    mask = _text_mask(text, height, font)
    rows, cols = out.shape[:2]
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + mask.shape[0], rows), min(x + mask.shape[1], cols)
    if y1 <= y0 or x1 <= x0:
        return out
    alpha = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    region = out[y0:y1, x0:x1].astype(np.float64)
    if out.ndim == 3:
        alpha3 = alpha[:, :, None]
        blended = region * (1.0 - alpha3) + float(value) * alpha3
    else:
        blended = region * (1.0 - alpha) + float(value) * alpha
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        blended = np.clip(np.rint(blended), info.min, info.max)
    out[y0:y1, x0:x1] = blended.astype(out.dtype)
    return out


# --------------------------------------------------------------------------- identities


_ONSETS = (
    "B BR C CH D DR F FL G GR H J K KL KR L M N P PH PR Q QU R S SH ST T TH TR V VR W X Z ZH"
).split()
_VOWELS = "A E I O U AE IA OU Y EO".split()
_CODAS = ["", "", "N", "R", "X", "TH", "L", "M", "S", "NT", "RD", "V"]


class _Gen:
    """Unique, greppable words and numbers from a seeded ``random.Random``."""

    def __init__(self, key: str) -> None:
        self.rng = random.Random(key)
        self._words: list[str] = []
        self._numbers: set[str] = set()

    def word(self, syllables: int = 3) -> str:
        while True:
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(syllables)
            )
            if len(w) < 7 or len(w) > 14:
                continue
            if any(w in o or o in w for o in self._words):
                continue
            self._words.append(w)
            return w

    def digits(self, n: int) -> str:
        while True:
            s = str(self.rng.randrange(10 ** (n - 1), 10**n))
            if s not in self._numbers:
                self._numbers.add(s)
                return s

    def person(self) -> tuple[str, str]:
        """(FAMILY, GIVEN)."""
        return self.word(3), self.word(2 + self.rng.randrange(2))


def _title(word: str) -> str:
    return word.capitalize()


@dataclass(frozen=True)
class _Identity:
    family: str
    given: str
    middle: str
    patient_id: str
    other_patient_id: str
    issuer: str
    birth_date: str
    age: str
    sex: str
    weight: str
    size: str
    address: str
    phone: str
    military_rank: str
    ethnic_group: str
    mother_birth_name: str
    accession: str
    study_id: str
    requested_procedure_id: str
    sps_id: str
    pps_id: str
    study_date: str
    sc_date: str
    study_time: str
    institution: str
    institution_address: str
    department: str
    ct_station: str
    us_station: str
    performed_ae: str
    performed_location: str
    ct_serial: str
    us_serial: str
    referring: str
    performing: str
    operator: str
    requesting: str
    comment_doctor: tuple[str, str]
    history_relative: tuple[str, str]
    prior_date_text: str
    callback_person: tuple[str, str]
    callback_phone: str
    nickname: str
    series_doctor: tuple[str, str]
    notes_person: tuple[str, str]
    notes_phone: str
    private_name: str
    private_id: str
    private_blob: str
    nested_private: str
    nested_doctor: str
    nested_doctor_code: str
    nested_institution_phone: str

    @property
    def patient_name(self) -> str:
        return f"{self.family}^{self.given}^{self.middle}"


_STUDY_FIELDS = (
    "accession", "study_id", "requested_procedure_id", "sps_id", "pps_id", "study_time",
)  # fmt: skip
"""Identity fields that belong to a study, not its patient (:attr:`BatchSpec.study`)."""


def _dicom_date(d: date) -> str:
    return d.strftime("%Y%m%d")


def _identity(gen: _Gen, age: int, sex: str) -> _Identity:
    rng = gen.rng
    family, given = gen.person()
    middle = gen.word(2)
    study = date(2015 + rng.randrange(9), 1 + rng.randrange(12), 1 + rng.randrange(28))
    birth = study.replace(year=study.year - age) - timedelta(days=1 + rng.randrange(300))
    hour = 7 + rng.randrange(11)
    study_time = f"{hour:02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    prior = study - timedelta(days=30 + rng.randrange(700))

    def pn() -> str:
        f, g = gen.person()
        return f"{f}^{g}"

    def phone() -> str:
        return f"(555) {gen.digits(3)}-{gen.digits(4)}"

    town = _title(gen.word(3))
    return _Identity(
        family=family,
        given=given,
        middle=middle,
        patient_id=f"PT{gen.digits(8)}",
        other_patient_id=f"OP{gen.digits(8)}",
        issuer=f"{gen.word(2)}_HIS",
        birth_date=_dicom_date(birth),
        age=f"{age:03d}Y",
        sex=sex,
        weight=f"{55 + rng.randrange(40)}.{rng.randrange(10)}",
        size=f"1.{55 + rng.randrange(40)}",
        address=f"{gen.digits(4)} {_title(gen.word(3))} Street, {town}",
        phone=phone(),
        military_rank=f"CAPTAIN {gen.word(2)}",
        ethnic_group=gen.word(3),
        mother_birth_name=pn(),
        accession=f"ACC{gen.digits(8)}",
        study_id=f"ST{gen.digits(6)}",
        requested_procedure_id=f"RP{gen.digits(8)}",
        sps_id=f"SPS{gen.digits(8)}",
        pps_id=f"PPS{gen.digits(8)}",
        study_date=_dicom_date(study),
        sc_date=_dicom_date(study + timedelta(days=1)),
        study_time=study_time,
        institution=f"{_title(gen.word(3))} Memorial Hospital",
        institution_address=f"{gen.digits(3)} {_title(gen.word(3))} Avenue, {town}",
        department=f"{_title(gen.word(3))} Imaging Center",
        ct_station=f"CT{gen.word(2)}"[:16],
        us_station=f"US{gen.word(2)}"[:16],
        performed_ae=f"AE{gen.word(2)}"[:16],
        performed_location=f"RM{gen.digits(3)}{gen.word(2)}"[:16],
        ct_serial=f"SN{gen.digits(9)}",
        us_serial=f"SN{gen.digits(9)}",
        referring=pn(),
        performing=pn(),
        operator=pn(),
        requesting=pn(),
        comment_doctor=gen.person(),
        history_relative=gen.person(),
        prior_date_text=prior.strftime("%m/%d/%Y"),
        callback_person=gen.person(),
        callback_phone=phone(),
        nickname=gen.word(2),
        series_doctor=gen.person(),
        notes_person=gen.person(),
        notes_phone=phone(),
        private_name=pn(),
        private_id=f"PV{gen.digits(8)}",
        private_blob=f"PRIVNOTE{gen.word(3)}",
        nested_private=f"NESTPRIV{gen.word(3)}",
        nested_doctor=pn(),
        nested_doctor_code=f"DOC{gen.digits(7)}",
        nested_institution_phone=phone(),
    )


def _pn_parts(pn: str) -> list[str]:
    return [pn, *[p for p in pn.split("^") if p]]


def _person_text(person: tuple[str, str]) -> str:
    return f"{_title(person[1])} {_title(person[0])}"


def _person_tokens(person: tuple[str, str]) -> list[str]:
    """A person as written in free text, and each part."""
    return [_person_text(person), _title(person[1]), _title(person[0])]


# --------------------------------------------------------------------------- planning


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


# --------------------------------------------------------------------------- pixels


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


# --------------------------------------------------------------------------- datasets


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


# --------------------------------------------------------------------------- public API


def make_batch(folder: Path, spec: BatchSpec = BatchSpec()) -> Planted:  # noqa: B008
    """Write one synthetic study (one batch) into ``folder``.

    Layout::

        folder/notes.txt                                        (junk)
        folder/<FAMILY>_<GIVEN>_<PatientID>/AUTORUN.INF          (junk, empty)
        folder/<FAMILY>_<GIVEN>_<PatientID>/<Accession>_S001_<description>/IM_<Accession>_010001.dcm
        folder/<patient folder>/<Accession>_S900_KEY_IMAGES/<SOPInstanceUID>.dcm
        folder/<patient folder>/<Accession>_S901_US_ABDOMEN_LIMITED/<SOPInstanceUID>.dcm

    The first CT series also holds the truncated DICOM (the next instance number).

    Parameters
    ----------
    folder : Path
        Created if missing.
    spec : BatchSpec
        What to generate.

    Returns
    -------
    Planted
        Every identifying value written.

    Raises
    ------
    ValueError
        If the spec is impossible (no series or images, images below 16x16,
        unknown sex, age outside 0..150).
    """
    if spec.n_series < 1 or spec.images_per_series < 1:
        raise ValueError("a batch needs at least one series of at least one image")
    return _generate(
        Path(folder),
        "batch",
        spec.seed,
        [spec.images_per_series] * spec.n_series,
        spec.rows,
        spec.columns,
        spec.burned_in,
        spec.junk,
        spec.patient_age_years,
        spec.patient_sex,
        spec.study,
    )


def make_batches(
    root: Path,
    n: int = 2,
    spec: BatchSpec = BatchSpec(),  # noqa: B008
) -> dict[Path, Planted]:
    """Write ``n`` batches ``root/batch_001 ...``, one patient each.

    Batch ``i`` (from 0) uses seed ``spec.seed + i``; when ``n >= 2`` the last
    batch's patient is :data:`OLD_AGE_YEARS` (93) years old, to exercise the
    ``090Y`` rule.

    Parameters
    ----------
    root : Path
        Created if missing.
    n : int
        Number of batches (at least 1).
    spec : BatchSpec
        Template spec for every batch.

    Returns
    -------
    dict[Path, Planted]
        Batch folder -> planted values, in batch order.
    """
    if n < 1:
        raise ValueError(f"make_batches needs n >= 1, got {n}")
    out: dict[Path, Planted] = {}
    for i in range(n):
        age = OLD_AGE_YEARS if n >= 2 and i == n - 1 else spec.patient_age_years
        sub = replace(spec, seed=spec.seed + i, patient_age_years=age)
        folder = Path(root) / f"batch_{i + 1:03d}"
        out[folder] = make_batch(folder, sub)
    return out


def make_ct_corpus(
    folder: Path,
    n_files: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    series: int = 4,
) -> Planted:
    """Write a plain CT study of ``n_files`` images for benchmarks.

    Same header content and layout as :func:`make_batch`, without junk and
    without burned-in images; the files are spread over ``series`` series.

    Parameters
    ----------
    folder : Path
        Created if missing.
    n_files : int
        Number of images (at least 1).
    rows, columns : int
        Image size.
    seed : int
        Seed (a corpus and a batch with the same seed still differ).
    series : int
        Number of series (fewer if ``n_files < series``).

    Returns
    -------
    Planted
        Every identifying value written.
    """
    if n_files < 1 or series < 1:
        raise ValueError("make_ct_corpus needs n_files >= 1 and series >= 1")
    series = min(series, n_files)
    counts = [n_files // series + (1 if i < n_files % series else 0) for i in range(series)]
    return _generate(Path(folder), "ct-corpus", seed, counts, rows, columns, False, False, 56, "M")


# --------------------------------------------------------------------------- OCR test images


#: Capital heights (pixels) of the text :func:`make_text_images` burns in.
TEXT_HEIGHTS = (8, 10, 13, 17, 24)
#: Contrasts of that text: bright on the image, dimmer, dark on a light banner.
TEXT_CONTRASTS = ("high", "medium", "inverse")
_TEXT_KINDS = ("us", "sc", "ct", "us_rgb")
_TEXT_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "top-center")
_CT_WINDOWS = (("40", "400"), ("-600", "1500"), ("500", "2000"))


@dataclass(frozen=True)
class TextTruth:
    """One line of text burned in by :func:`make_text_images`.

    Parameters
    ----------
    file : str
        The image's file name (in the folder given to :func:`make_text_images`).
    text : str
        The line (fake identifiers, made from the seed).
    box : tuple of four ints
        ``(x0, y0, x1, y1)``, end-exclusive pixel corners of the glyphs.
    height : int
        Capital height in pixels.
    font : str
        One of :data:`FONTS`.
    contrast : str
        One of :data:`TEXT_CONTRASTS`.
    kind : str
        ``us``, ``us_rgb``, ``sc`` or ``ct``.
    """

    file: str
    text: str
    box: tuple[int, int, int, int]
    height: int
    font: str
    contrast: str
    kind: str


@dataclass(frozen=True)
class _TextStyle:
    kind: str
    height: int
    font: str
    contrast: str
    corner: str
    lines: tuple[str, str]
    window: tuple[str, str]


def text_truth_path(folder: Path) -> Path:
    """Where :func:`make_text_images` records the text it burned in: ``<folder>.truth.json``.

    Parameters
    ----------
    folder : Path
        The folder given to :func:`make_text_images`.

    Returns
    -------
    Path
        A sibling of ``folder`` (outside it, so a stage reading the folder never sees it).
    """
    folder = Path(folder)
    return folder.with_name(folder.name + ".truth.json")


def load_text_truth(folder: Path) -> list[TextTruth]:
    """Read the lines :func:`make_text_images` burned into the images of ``folder``.

    Parameters
    ----------
    folder : Path
        The folder given to :func:`make_text_images`.

    Returns
    -------
    list of TextTruth
        Empty when the images carry no text (or the record is missing).
    """
    path = text_truth_path(folder)
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        TextTruth(
            str(d["file"]),
            str(d["text"]),
            (int(d["box"][0]), int(d["box"][1]), int(d["box"][2]), int(d["box"][3])),
            int(d["height"]),
            str(d["font"]),
            str(d["contrast"]),
            str(d["kind"]),
        )
        for d in data
    ]


def _text_lines(gen: _Gen) -> tuple[str, str]:
    """Two lines as a modality would burn them: a name, then an ID, a birth date or an accession."""
    family, given = gen.person()
    choice = gen.rng.randrange(3)
    if choice == 0:
        second = f"ID PT{gen.digits(8)}"
    elif choice == 1:
        second = f"DOB {1930 + gen.rng.randrange(80)}-{1 + gen.rng.randrange(12):02d}-" + (
            f"{1 + gen.rng.randrange(28):02d}"
        )
    else:
        second = f"ACC {gen.digits(8)}"
    name = f"{family}, {given}" if gen.rng.randrange(2) else f"{_title(family)}, {_title(given)}"
    return name, second


def _tight(mask: npt.NDArray[np.float32], x: int, y: int) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask > 0.15)
    return (
        x + int(cols.min()),
        y + int(rows.min()),
        x + int(cols.max()) + 1,
        y + int(rows.max()) + 1,
    )


def _text_block(
    pixels: npt.NDArray[np.generic],
    lines: Sequence[str],
    corner: str,
    height: int,
    font: str,
    contrast: str,
    text_value: int,
    banner_value: int,
) -> tuple[npt.NDArray[np.generic], list[tuple[int, int, int, int]]]:
    """Burn ``lines`` into a corner of ``pixels``; return the image and each line's glyph box."""
    rows, cols = pixels.shape[:2]
    margin = max(4, rows // 64)
    sizes, masks = [], []
    for text in lines:
        h = height
        mask = _text_mask(text, h, font)
        while mask.shape[1] > cols - 2 * margin and h > 6:
            h -= 1
            mask = _text_mask(text, h, font)
        sizes.append((h, mask.shape[1]))
        masks.append(mask)
    gap = max(2, height // 3)
    block_h = sum(m.shape[0] for m in masks) + gap * (len(masks) - 1)
    block_w = max(m.shape[1] for m in masks)
    top = margin if corner.startswith("top") else rows - margin - block_h
    if corner.endswith("left"):
        left = margin
    elif corner.endswith("right"):
        left = cols - margin - block_w
    else:
        left = (cols - block_w) // 2
    out = pixels
    if contrast == "inverse":
        out = np.array(out, copy=True)
        pad = max(3, height // 3)
        out[
            max(0, top - pad) : min(rows, top + block_h + pad),
            max(0, left - pad) : min(cols, left + block_w + pad),
        ] = banner_value
    boxes = []
    y = top
    for text, (h, _), mask in zip(lines, sizes, masks, strict=True):
        out = burn_text(out, text, left, y, h, text_value, font=font)
        x0, y0, x1, y1 = _tight(mask, left, y)
        boxes.append((max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)))
        y += mask.shape[0] + gap
    return out, boxes


def make_text_images(
    folder: Path,
    n: int,
    *,
    with_text: bool,
    seed: int = 0,
    images_per_series: int = 1,
    size: int = 512,
) -> list[Path]:
    """Write images with text burned into the pixels, or plain CT slices, for the OCR screen.

    With ``with_text``, series cycle through ultrasound (MONOCHROME2 and RGB,
    ``3/4 size`` x ``size``), secondary capture (``size/2`` square, 8 bits) and
    CT (``size`` square, 12 bits, windowed in the header) images; each series
    gets two lines of fake identifiers (a name, then an ID, a birth date or an
    accession number) in one of :data:`TEXT_HEIGHTS`, :data:`FONTS` and
    :data:`TEXT_CONTRASTS`, in a corner or at the top centre.  The lines and
    their boxes are recorded in :func:`text_truth_path` (read them with
    :func:`load_text_truth`).  Without ``with_text``, every image is a plain CT
    slice (``size`` square; soft-tissue, lung and bone windows by series) and no
    record is written.  The headers carry no identifying value.

    Parameters
    ----------
    folder : Path
        Created if missing; the files are ``text_NNNN.dcm`` or ``plain_NNNN.dcm``.
    n : int
        Number of images (at least 1).
    with_text : bool
        Burn text in, or write plain CT slices.
    seed : int
        Every pixel and word derives from it (and from ``with_text``).
    images_per_series : int
        Images per series (same text, position and style within a series).
    size : int
        Edge of the CT images (at least 256 with text, 64 without); the others follow it.

    Returns
    -------
    list of Path
        The files, in instance order.

    Raises
    ------
    ValueError
        If ``n``, ``images_per_series`` or ``size`` is too small.
    """
    if n < 1 or images_per_series < 1 or size < (256 if with_text else 64):
        raise ValueError(
            "make_text_images needs n >= 1, images_per_series >= 1 and size >= 256 "
            "(64 without text)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = f"text-images:{seed}:{int(with_text)}"
    uid = _Uids(key)
    gen = _Gen(key)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    study_uid = uid("study")
    truth: list[dict[str, object]] = []
    paths: list[Path] = []
    style = _TextStyle("ct", 0, "sans", "high", "top-left", ("", ""), _CT_WINDOWS[0])
    phantom: _CTPhantom | None = None
    for i in range(n):
        series, k = divmod(i, images_per_series)
        if k == 0:
            pick = random.Random(f"{key}:{series}")
            style = _TextStyle(
                kind=_TEXT_KINDS[series % len(_TEXT_KINDS)] if with_text else "ct",
                height=pick.choice(TEXT_HEIGHTS),
                font=pick.choice(list(FONTS)),
                contrast=pick.choice(TEXT_CONTRASTS),
                corner=pick.choice(_TEXT_CORNERS),
                lines=_text_lines(gen),
                window=_CT_WINDOWS[series % len(_CT_WINDOWS)],
            )
            phantom = None
        kind = style.kind
        ds = Dataset()
        sop_class = {"us": UltrasoundImageStorage, "us_rgb": UltrasoundImageStorage}.get(
            kind, SecondaryCaptureImageStorage if kind == "sc" else CTImageStorage
        )
        ds.file_meta = _file_meta(sop_class)
        ds.SOPClassUID = sop_class
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = uid("series", series)
        ds.SeriesNumber = series + 1
        ds.Modality = {"us": "US", "us_rgb": "US", "sc": "OT"}.get(kind, "CT")
        ds.SeriesDescription = "OCR TEST IMAGES" if with_text else "PLAIN CT"
        ds.PatientID = "OCRTEST"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelRepresentation = 0
        pixels: npt.NDArray[np.generic]
        if kind in ("us", "us_rgb"):
            rows, cols = 3 * size // 4, size
            pixels = _us_gray(rows, cols, rng)
            text_value, banner = (255, 210) if style.contrast != "medium" else (150, 210)
        elif kind == "sc":
            rows = cols = size // 2
            pixels = _window8(_CTPhantom(rows, cols, rng).slice(k % 9, 9), 40, 400)
            text_value, banner = (255, 220) if style.contrast != "medium" else (170, 220)
        else:
            rows = cols = size
            if phantom is None:
                phantom = _CTPhantom(rows, cols, rng)
            depth = max(images_per_series, 9)
            pixels = phantom.slice((k if images_per_series > 1 else series) % depth, depth)
            medium = style.contrast == "medium"
            window = ("500", "2000") if medium else ("40", "400")  # medium: 1000 HU shows grey
            ds.WindowCenter, ds.WindowWidth = window if with_text else style.window
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
            text_value, banner = (2024, 4095) if medium else (4095, 4095)
        if style.contrast == "inverse":
            text_value = 0 if kind != "ct" else 24
        if with_text:
            pixels, boxes = _text_block(
                pixels, style.lines, style.corner, style.height, style.font, style.contrast,
                text_value, banner,
            )  # fmt: skip
        if kind == "us_rgb":
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated = bits
        ds.BitsStored, ds.HighBit = (12, 11) if bits == 16 else (8, 7)
        ds.Rows, ds.Columns = rows, cols
        _set_instance(ds, uid("sop", i), k + 1)
        _set_pixels(ds, pixels)
        name = f"{'text' if with_text else 'plain'}_{i:04d}.dcm"
        _write(ds, folder / name)
        paths.append(folder / name)
        if with_text:
            for text, box in zip(style.lines, boxes, strict=True):
                truth.append(
                    {
                        "file": name,
                        "text": text,
                        "box": list(box),
                        "height": style.height,
                        "font": style.font,
                        "contrast": style.contrast,
                        "kind": kind,
                    }
                )
    if with_text:
        text_truth_path(folder).write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return paths


def _repo_or_cwd() -> Path:
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def demo_root() -> Path:
    """Return the default sample location.

    Returns
    -------
    Path
        ``$SENDIT_DEMO_DIR`` if set, else ``<repository>/demo`` when running from
        a source checkout, else ``<cwd>/demo``.
    """
    env = os.environ.get("SENDIT_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    return _repo_or_cwd() / "demo"


def _planted_dir(batches_dir: Path) -> Path:
    return batches_dir.parent / "planted"


def _write_samples(
    batches_dir: Path, batches: int, ct_files: int, seed: int
) -> dict[Path, Planted]:
    """Batches (and a CT corpus) in ``batches_dir``, planted JSON next to it."""
    made = make_batches(batches_dir, batches, BatchSpec(seed=seed)) if batches else {}
    if ct_files:
        corpus = batches_dir / "ct_corpus"
        made[corpus] = make_ct_corpus(corpus, ct_files, seed=seed)
    for path, planted in made.items():
        planted.to_json(_planted_dir(batches_dir) / f"{path.name}.json")
    return made


def demo_batch() -> Path:
    """Return the first demo batch, generating the demo batches if missing.

    ``demo_root()/batches/batch_001`` and ``batch_002`` (93-year-old patient),
    with their planted values in ``demo_root()/planted/<batch>.json``.
    Generation happens in a temporary folder renamed into place, so concurrent
    callers and interrupted runs never see a half-written demo.

    Returns
    -------
    Path
        ``demo_root()/"batches"/"batch_001"``.
    """
    root = demo_root()
    batches = root / "batches"
    first = batches / "batch_001"
    if first.is_dir() and (root / "planted" / "batch_001.json").is_file():
        return first
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        _write_samples(tmp / "batches", DEMO_BATCHES, 0, 0)
        planted = root / "planted"
        planted.mkdir(exist_ok=True)
        for made in sorted((tmp / "planted").iterdir()):
            if not (planted / made.name).is_file():
                os.replace(made, planted / made.name)  # atomic; same content either way
        if not batches.exists():
            try:
                os.rename(tmp / "batches", batches)
            except OSError:
                if not first.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return first


def load_demo_planted(batch: Path) -> Planted:
    """Return the planted values of a batch made by :func:`demo_batch` or the CLI.

    Parameters
    ----------
    batch : Path
        ``<root>/<batches>/<name>``.

    Returns
    -------
    Planted
        Read from ``<root>/planted/<name>.json``.
    """
    batch = Path(batch)
    return Planted.from_json(_planted_dir(batch.parent) / f"{batch.name}.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: write sample batches (and a CT corpus) into OUT_DIR.

    Batches go to ``OUT_DIR/batch_001 ...`` (``OUT_DIR/ct_corpus`` for the corpus),
    their planted values to ``OUT_DIR/../planted/<batch>.json``.

    Parameters
    ----------
    argv : Sequence[str] or None
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m sendit_helpers.samples.synthetic",
        description="Write deterministic synthetic DICOM batches (fake PHI) for demos and tests.",
    )
    parser.add_argument(
        "out_dir",
        type=Path,
        help="folder of the batches (planted values go to OUT_DIR/../planted/)",
    )
    parser.add_argument("--batches", type=int, default=DEMO_BATCHES, help="number of batches")
    parser.add_argument(
        "--ct-files", type=int, default=0, help="also write a 512x512 CT corpus of N files"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.batches < 0 or args.ct_files < 0:
        parser.error("--batches and --ct-files must not be negative")
    out_dir: Path = args.out_dir
    made = _write_samples(out_dir, args.batches, args.ct_files, args.seed)
    for path in made:
        print(f"batch: {path}")
    print(f"planted values: {_planted_dir(out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
