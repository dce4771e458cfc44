"""The recipe model: actions, compiled rules and filter labels, one file's context and changes.

What :mod:`~sendit_helpers.deid.recipeparser` compiles a deid recipe into and what the
engine (:class:`~sendit_helpers.deid.recipes.Recipe`) reads: the ``%header`` actions, the
``var:`` names and ``func:`` functions a recipe may use, the compiled rules (``_Rule``,
``_Value``) and ``%filter`` labels (``_Label``, ``_Line``, ``_Cond``), the context of one
file (:class:`DeidContext`), what the engine did to it (:class:`Changes`) and the outcome
of screening (:class:`ScreenResult`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom.tag import BaseTag

from sendit_helpers.deid.recipefields import _Field

__all__ = [
    "Action",
    "CLEAN_SOURCE_TAGS",
    "Changes",
    "DEFAULT_RECIPE",
    "DeidContext",
    "FILE_META_DROP",
    "GATE_VRS",
    "IDENTITY_TAGS",
    "ScreenResult",
    "VARIABLES",
]

_RECIPE_NAME = "ps315-basic-rpc-rlt-cd.deid"


_SOURCE_DEFAULT = Path(__file__).resolve().parents[2] / "params" / "recipes" / _RECIPE_NAME


_BUNDLED_DEFAULT = (
    Path(__file__).resolve().parents[1] / "_bundled" / "params" / "recipes" / _RECIPE_NAME
)


DEFAULT_RECIPE: Path = _SOURCE_DEFAULT if _SOURCE_DEFAULT.exists() else _BUNDLED_DEFAULT
"""The default recipe: PS3.15 Basic Profile + RPC, RLT (modified dates), CD options."""


class Action(StrEnum):
    """The ``%header`` actions of a deid recipe."""

    ADD = "ADD"
    REPLACE = "REPLACE"
    REMOVE = "REMOVE"
    BLANK = "BLANK"
    KEEP = "KEEP"
    JITTER = "JITTER"


@dataclass(frozen=True)
class ScreenResult:
    """Outcome of the ``%filter`` screening of one dataset.

    Attributes
    ----------
    flagged : bool
        True when a non-whitelist filter label matched (pixels need review).
    group : str or None
        Filter group of the first matching label (``whitelist``, ``graylist``,
        ``blacklist`` ...), None when nothing matched.
    label : str or None
        Name of the first matching label.
    reason : str
        The matching criteria as written in the recipe (never a value read
        from the dataset).
    coordinates : tuple of (int, int, int, int)
        ``(x0, y0, x1, y1)`` boxes to scrub, in pixel coordinates.
    """

    flagged: bool
    group: str | None
    label: str | None
    reason: str
    coordinates: tuple[tuple[int, int, int, int], ...]


@dataclass
class DeidContext:
    """Everything the de-identification of one file needs.

    Attributes
    ----------
    variables : dict of str to str
        Values for ``var:NAME`` (``entity_id``, ``item_id`` ...).
    date_shift_days : int
        JITTER moves DA/DT values by this many days (intervals are kept);
        also used by ``func:jitter``.
    uid_map : callable
        Consistent UID replacement, used by ``func:uid``, every U action of
        the profile and the engine's UI safety net.
    identifying_values : sequence of str
        Known identifying strings of this patient/study, removed from text by
        ``func:clean_text`` (in addition to the file's own names, IDs and dates).
    safe_private : frozenset of int
        Full private tags (``0xggggbbee`` as found in the file) to keep.
    sop_class_uid : str
        The object's SOPClassUID: REMOVE and BLANK follow the attribute's Type in its IOD
        (:mod:`sendit_helpers.deid.iodtypes`).  :meth:`Recipe.apply` takes it from the data set;
        callers of :meth:`Recipe.apply_element` set it.
    """

    variables: dict[str, str]
    date_shift_days: int
    uid_map: Callable[[str], str]
    identifying_values: Sequence[str] = ()
    safe_private: frozenset[int] = frozenset()
    sop_class_uid: str = ""


@dataclass
class Changes:
    """What :meth:`Recipe.apply` did to one dataset.

    Attributes
    ----------
    removed_text : list of str
        Free-text values (and PN components) removed, blanked or replaced, and
        fragments cut out by ``func:clean_text``; the leak gate scans
        ``release/`` for them.
    replaced : dict of str to (str, str)
        ``keyword`` (nested: ``Seq[i].Keyword``; private: ``(gggg,eeee)``) ->
        ``(old, new)`` for UIDs and identifiers; goes into the PHI lookup.
    originals : list of (str, str, list of str)
        ``(VR, category, values)``: the original values (stripped strings as
        pydicom converts them) of every element with a :data:`GATE_VRS` VR
        that the recipe removed, blanked or acted on (changed or not), at any
        depth: nested elements of removed/blanked sequences, removed private
        elements and creators, elements replaced by ADD.  Category is
        ``"name"`` for PN, else the keyword or ``(gggg,eeee)``.  Untouched
        elements are never listed; the de-identify stage drops values still
        present in the output and gives the rest to the leak gate.
    """

    removed_text: list[str] = field(default_factory=list)
    replaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    originals: list[tuple[str, str, list[str]]] = field(default_factory=list)


_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE"})


#: Value representations whose removed or changed values :attr:`Changes.originals` reports.
GATE_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "DT", "UI", "AE"})


_STRING_VRS = _TEXT_VRS | frozenset({"CS", "DA", "DT", "TM", "UI", "UR", "AS", "DS", "IS"})


_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "AT"})


_FLOAT_VRS = frozenset({"FL", "FD"})


_METHOD_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}


_FUNCS = frozenset({"uid", "clean_text", "jitter", "method_codes"})


#: The ``var:`` names a recipe may use, as deid users supply them, and what sendit gives
#: (per file, from the identifier provider's
#: :class:`~sendit_helpers.pseudonyms.provider.Pseudonyms` and the date shift; see
#: ``engine.job_context``).
VARIABLES: dict[str, str] = {
    "entity_id": "the patient's pseudonym",
    "item_id": "the study's pseudonym (study code)",
    "entity_timestamp": "PatientBirthDate shifted by the patient's date shift (YYYYMMDD, or empty)",
    "item_timestamp": "StudyDate shifted by the date shift (YYYYMMDD, or empty)",
    "jitter": "the date shift in days",
}


#: Elements without which a file is no DICOM object: SOP class and instance, study and
#: series.  A REMOVE / BLANK / JITTER that reaches them keeps class UIDs and replaces
#: instance UIDs (``func:uid``) instead, with a :class:`RecipeWarning` at load.
IDENTITY_TAGS: dict[int, str] = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}


_UID_KEEP_SUFFIXES = ("ClassUID", "TransferSyntaxUID", "TransferSyntaxUIDInFile")


_UID_KEEP_KEYWORDS = frozenset({"CodingSchemeUID", "ContextGroupExtensionCreatorUID"})


#: File meta elements the de-identified file does not carry over.
FILE_META_DROP = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


_AGE_TAG = 0x00101010


_SOP_INSTANCE_UID = 0x00080018


_SOP_CLASS = 0x00080016


_MEDIA_SOP = BaseTag(0x00020003)


#: Identifying values taken from the file itself for func:clean_text.
CLEAN_SOURCE_TAGS = (
    0x00100010,
    0x00100020,
    0x00101000,
    0x00101001,
    0x00101005,
    0x00101060,
    0x00100030,
    0x00080050,
    0x00200010,
    0x00080080,
    0x00080090,
    0x00081050,
    0x00081060,
    0x00081070,
    0x00081010,
    0x00181000,
    0x00321032,
    0x00400006,
)


_LIT, _VAR, _FUNC = "lit", "var", "func"


@dataclass(frozen=True)
class _Value:
    kind: str  # lit, var, func
    text: str  # literal, variable name or function name
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Rule:
    action: Action
    fields: tuple[_Field, ...]
    value: _Value | None
    source: int  # index of the recipe file
    where: str  # "file:line"
    field_text: str


@dataclass(frozen=True)
class _Cond:
    action: str
    tag: int | None
    field_text: str
    value: str
    regex: re.Pattern[str] | None


@dataclass(frozen=True)
class _Line:
    operator: str  # "and" / "or" relative to the previous lines
    conds: tuple[_Cond, ...]
    inner: tuple[str, ...]  # operators between conds


@dataclass(frozen=True)
class _Label:
    group: str
    name: str
    lines: tuple[_Line, ...]
    coordinates: tuple[str, ...]  # "x0,y0,x1,y1", "all" or "from:Field" (scrub boxes)
    reason: str


_HEADER_ACTIONS = ("ADD", "BLANK", "JITTER", "KEEP", "REPLACE", "REMOVE")


_FILTER_ACTIONS = (
    "contains",
    "notcontains",
    "equals",
    "notequals",
    "missing",
    "present",
    "empty",
    "startswith",
    "endswith",
)


_SECTIONS = ("header", "filter", "values", "fields", "labels")


@dataclass
class _Parsed:
    rules: list[_Rule]
    labels: list[_Label]
    notes: list[str] = field(default_factory=list)
