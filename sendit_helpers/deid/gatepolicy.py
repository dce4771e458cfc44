"""What the recipe's own policy keeps, so the leak gate does not search for it (:class:`Policy`).

A removed value that is, or is part of, a technical field the outputs keep
verbatim (Manufacturer, model, software versions, station and device
descriptors), a coded value kept verbatim, or that consists only of words
Clean Descriptors keeps, is not a leak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid.cleaned import TECHNICAL_KEYWORDS, WORDS
from sendit_helpers.deid.descriptors import allowed_words

#: Categories of names (a PN value, and each of its parts).
NAME_CATEGORIES = frozenset({"name", "name part"})
POLICY_FILE = "gate_policy.json"
#: Coded and enumerated fields kept verbatim in the outputs (at any depth): code
#: sequences come from controlled terminologies, and an SR's ValueType /
#: RelationshipType are enumerated.  Their values and words are technical, not PHI.
CODE_KEYWORDS = frozenset(
    {
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodeMeaning",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
    }
)
_DESCRIPTOR_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Policy:
    """What the recipe's own policy keeps, so the gate does not search for it.

    A removed value is not a leak where the outputs keep it by policy:

    1. it equals a value, or a word, of a technical field kept in the
       batch's outputs (:data:`~sendit_helpers.deid.cleaned.TECHNICAL_KEYWORDS`:
       Manufacturer, ManufacturerModelName, SoftwareVersions, StationName,
       DeviceSerialNumber ... as the outputs have them; a field the recipe
       removes or blanks contributes nothing); or it is part of such a value
       starting at a word boundary, when it has no digit and is not a name
       (``LightSpeed Ultr`` in ``LightSpeed Ultra``);
    2. or it equals a value of a coded or enumerated field kept in the outputs
       (:data:`CODE_KEYWORDS`: CodeValue, CodeMeaning, ValueType ... of code
       sequences and SR content items, which come from controlled terminologies):
       a StudyID ``1234`` that is also a CodeValue, a creator UID that a
       code carries as its value, an ImplementationClassUID an output's file
       meta carries; or it is a word of letters only (a name part, a word cut
       from a text) equal to a word of such a value (``Name`` of
       ``Last Name^First Name`` beside the concept ``Person Observer Name``,
       ``text`` beside the value type ``TEXT``).  A whole name is never kept
       this way;
    3. or it consists only of words Clean Descriptors keeps by name
       (``descriptor-words.txt``, and words of one or two letters), at
       least one of them listed (``CT, HEAD/BRAIN WO CONT``).  Numbers and
       codes never qualify, so IDs, dates and UIDs are always searched.

    A name part equal to such a word (a family name ``Head``, or ``Siemens``
    beside a Manufacturer ``SIEMENS``) is therefore not searched on its own;
    the whole name and its other parts still are.

    Parameters
    ----------
    technical : frozenset of str
        Case-folded values of the kept technical fields.
    words : frozenset of str
        Their words (split at anything but letters and digits).
    """

    technical: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    """Case-folded values of the kept coded fields (:data:`CODE_KEYWORDS`), and the
    ImplementationClassUIDs of the outputs' file meta."""
    code_words: frozenset[str] = frozenset()
    """Their words."""

    @classmethod
    def of_values(cls, values: Iterable[str], codes: Iterable[str] = ()) -> Policy:
        """The policy of kept technical values and coded values (as written in the outputs)."""
        technical = {v.strip().casefold() for v in values if v and v.strip()}
        words = {w for v in technical for w in WORDS.split(v) if w}
        coded = {v.strip().casefold() for v in codes if v and v.strip()}
        code_words = {w for v in coded for w in WORDS.split(v) if w}
        return cls(frozenset(technical), frozenset(words), frozenset(coded), frozenset(code_words))

    def keeps(self, value: str, category: str) -> bool:
        """Whether the policy keeps ``value`` (of ``category``), so it is not searched."""
        folded = value.strip().casefold()
        if not folded:
            return False
        if folded in self.technical or folded in self.words:
            return True
        if category != "name" and folded in self.codes:
            return True
        if category != "name" and folded.isalpha() and folded in self.code_words:
            return True
        if category not in NAME_CATEGORIES and not any(c.isdigit() for c in folded):
            for kept in self.technical:
                start = kept.find(folded)
                while start >= 0:
                    if start == 0 or not kept[start - 1].isalnum():
                        return True
                    start = kept.find(folded, start + 1)
        return only_descriptor_words(folded)


def only_descriptor_words(text: str) -> bool:
    """True when ``text`` holds only words Clean Descriptors keeps by name, one of them listed.

    Words of one or two letters count as kept; numbers, codes and words with
    digits do not (so an ID is never "only descriptor words").
    """
    words = _DESCRIPTOR_WORD.findall(text.casefold())
    listed = allowed_words()
    if not words or not all(w in listed or (w.isalpha() and len(w) <= 2) for w in words):
        return False
    return any(w in listed for w in words)


def policy_of_tables(paths: Iterable[Path]) -> Policy:
    """The :class:`Policy` of the kept technical fields in cleaned tables (any depth).

    Parameters
    ----------
    paths : iterable of Path
        ``cleaned.parquet`` and ``quarantined.parquet`` (missing ones are skipped).
    """
    values: set[str] = set()
    codes: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        names = pq.read_schema(path).names
        wanted = [n for n in names if n.rsplit(".", 1)[-1] in TECHNICAL_KEYWORDS | CODE_KEYWORDS]
        if not wanted:
            continue
        with pq.ParquetFile(path) as source:  # not read_table: its dataset set-up costs more
            table = source.read(columns=wanted)
        for name, column in zip(wanted, table.columns, strict=True):
            into = values if name.rsplit(".", 1)[-1] in TECHNICAL_KEYWORDS else codes
            for text in pc.unique(column.cast(pa.string())).to_pylist():
                if text:
                    into.update(v for part in text.split(" | ") for v in part.split("\\"))
    return Policy.of_values(values, codes)


def save_policy(layout: BatchLayout, policy: Policy) -> Path:
    """Keep the batch's :class:`Policy` in ``phi/deidentify/`` for later gate runs (review)."""
    path = layout.deid_dir / POLICY_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = {"technical": sorted(policy.technical), "codes": sorted(policy.codes)}
    path.write_text(json.dumps(kept, ensure_ascii=False))
    return path


def load_policy(layout: BatchLayout) -> Policy:
    """The policy saved by :func:`save_policy` (none kept when there is none)."""
    path = layout.deid_dir / POLICY_FILE
    if not path.exists():
        return Policy()
    raw = json.loads(path.read_text())
    return Policy.of_values(
        (str(v) for v in raw.get("technical", [])), (str(v) for v in raw.get("codes", []))
    )
