"""Made-up patients: unique, greppable names, IDs, addresses, dates and staff, derived from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

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
