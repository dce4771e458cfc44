"""De-identification recipes (deid format) compiled into a fast per-file plan.

Recipes are written in the format of the ``deid`` project
(https://pydicom.github.io/deid/) and parsed with deid's own parser
(:func:`deid.config.utils.load_deid`).  deid's per-file machinery
(``get_identifiers`` / ``replace_identifiers``) is far too slow for the
de-identify stage (it expands every field expression against every file), so
the parsed actions are compiled here into a tag -> action plan that is
resolved once per tag and cached; :meth:`Recipe.apply` then walks a dataset
once, recursing into sequences.

Semantics (the contract the leak gate and the tests rely on)
------------------------------------------------------------
* ``%header`` actions ADD, REPLACE, REMOVE, BLANK, KEEP, JITTER.  Field
  expressions: keywords, attribute names, tag numbers (``00100010``,
  ``(0010,0010)``, ``0x00100010``), tags with ``X`` wildcards for repeating
  groups (``(50XX,XXXX)``, ``(60XX,4000)``; an extension of deid's syntax),
  private tags with their creator (``(0019,"GEMS_ACQU_01",1A)``),
  ``endswith:``, ``startswith:``, ``contains:``, ``except:`` (regular
  expressions matched case-insensitively against keyword, name and tag
  strings as deid does), ``select:VR:XX``, ``select:group:gggg``, ``all`` and
  ``fields:NAME`` (a ``%fields`` list).  ``values:NAME`` (value-based lists)
  needs a per-file scan of every value and is rejected with a
  :class:`~sendit_helpers.core.errors.RecipeError`.
* deid's own recipes load as they are: an old keyword (``PatientsName``) is
  read as today's, a field deid ignores (``REMOVE jitter``: an action or
  function name) is ignored, each with a :class:`RecipeWarning` naming
  file:line; any other unknown field is a RecipeError naming file:line and the
  closest keyword.  A REMOVE / BLANK / JITTER (or REPLACE with var:) that
  decides an :data:`IDENTITY_TAGS` element keeps class UIDs and maps instance
  UIDs (as ``func:uid``) instead, warned at load: outputs stay DICOM files.
* Values: literal strings (surrounding double quotes stripped), ``var:NAME``
  (a name of :data:`VARIABLES`, else a RecipeError at load; the value from
  ``DeidContext.variables``), ``func:uid`` (``DeidContext.uid_map``),
  ``func:clean_text`` (remove known identifying values from the text),
  ``func:jitter`` (shift a date by ``DeidContext.date_shift_days``) and, for
  ADD only, ``func:method_codes CODE ...`` (a DCM-coded
  DeidentificationMethodCodeSequence, CID 7050).  JITTER takes an integer,
  ``var:NAME`` or ``func:jitter`` (= ``DeidContext.date_shift_days``).
  ``REMOVE field func:...`` (deid's conditional removal) is treated as an
  unconditional REMOVE.
* Combination: recipe files are applied in order and, per tag, the *last*
  file with a matching rule decides.  Within that file a matching KEEP
  protects the tag (deid semantics); otherwise the last matching rule wins.
  ADD always runs, after every other action, on the top-level dataset only.
* Actions apply at every nesting depth.  KEEP on a sequence keeps the
  sequence but still processes its items; REMOVE drops it with its items;
  BLANK empties it.
* REMOVE and BLANK follow the attribute's Type in the object's IOD
  (PS3.15 E.1.1, :mod:`sendit_helpers.deid.iodtypes`): Type 1 gets a dummy value
  (a sequence keeps its de-identified items), Type 2 zero length, Type 3 or
  an attribute outside the IOD is removed; a removed Overlay Data
  ``(60xx,3000)`` removes its whole group.
* Engine defaults for tags no rule matches: public tags are kept (PS3.15
  lists the identifying ones) except UI values, which are mapped through
  ``uid_map`` unless the keyword names a class / transfer syntax / coding
  scheme UID or the value is a UID defined by the standard (so no original
  instance UID survives); private tags are removed unless ``safe_private``
  holds their full tag (``0xggggbbee`` as found in the file, i.e. with the
  creator's block already resolved) or a rule matches them (use the
  creator syntax for a file-independent rule).  Private creator elements
  are kept only while a data element of their block is kept.
* PatientAge is always capped at ``090Y`` (:func:`age_over_89`);
  file_meta MediaStorageSOPInstanceUID is set to the new SOPInstanceUID and
  file_meta AE titles / private information are removed.
* Errors never carry values: they name the recipe file and line, or the tag
  as ``Keyword (gggg,eeee)``.

``%filter`` screening (:meth:`Recipe.screen`) re-implements deid's filter
evaluation instead of calling ``deid.dicom.filter``/``has_burned_pixels``:
deid's parser silently drops ``startswith``/``endswith`` criteria, its
``load_combined_deid`` loses filter groups when combining files, and its
evaluator ANDs every line of a label (ignoring a leading ``||``) and
recompiles every regular expression for every file (~1 ms per file for the
~500 bundled criteria, against ~60 us here with precompiled patterns).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary
from pydicom._uid_dict import UID_dictionary
from pydicom.config import IGNORE as _IGNORE
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from sendit_helpers.core.errors import RecipeError, RecipeWarning, tag_label
from sendit_helpers.deid import descriptors, iodtypes, structured
from sendit_helpers.deid.dicomwrite import element_strings, item_strings, simple_codec, text_codec

__all__ = [
    "DEFAULT_RECIPE",
    "Action",
    "Changes",
    "DeidContext",
    "Recipe",
    "GATE_VRS",
    "IDENTITY_TAGS",
    "ScreenResult",
    "VARIABLES",
    "age_over_89",
    "shift_date",
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


# --------------------------------------------------------------------------- helpers

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def age_over_89(value: str) -> str:
    """Cap a PatientAge (AS) value at ``090Y``.

    Parameters
    ----------
    value : str
        An age string such as ``"093Y"``, ``"045Y"`` or ``"006M"``.

    Returns
    -------
    str
        ``"090Y"`` for ages of 90 years or more (also when expressed in
        months, weeks or days), the value unchanged otherwise, and ``""`` when
        the value is not a valid age string (it cannot be checked).
    """
    if not value:
        return value
    match = _AGE_RE.match(value)
    if match is None:
        return ""
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = {"Y": number, "M": number / 12, "W": number / 52.18, "D": number / 365.25}[unit]
    return "090Y" if years >= 90 else value


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
#: :class:`~sendit_helpers.pseudonyms.identifiers.Pseudonyms` and the date shift; see
#: ``deidentify._context``).
VARIABLES: dict[str, str] = {
    "entity_id": "the patient's pseudonym",
    "item_id": "the study's pseudonym (study code)",
    "entity_timestamp": "PatientBirthDate shifted by the patient's date shift (YYYYMMDD, or empty)",
    "item_timestamp": "StudyDate shifted by the date shift (YYYYMMDD, or empty)",
    "jitter": "the date shift in days",
}
#: Words deid reads as a field name on an action line without finding a field, so it
#: ignores the line (``REMOVE jitter`` in deid's bundled ``deid.dicom``): the action and
#: function names.  sendit ignores such a line too, with a :class:`RecipeWarning`.
_DEID_WORDS = frozenset({"add", "blank", "jitter", "keep", "replace", "remove", "uid", "label"})
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
_GENERIC_PHI = re.compile(
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"  # 2021-03-04
    r"|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # 03/04/2021
    r"|\d{6,}"  # long digit runs (MRNs, accession numbers, compact dates)
)


def _parse_tag_text(text: str) -> int | None:
    """Return the tag for ``00100010``, ``(0010,0010)`` or ``0x00100010``."""
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if t.startswith("(") and t.endswith(")"):
        t = t[1:-1]
    t = t.replace(",", "").replace(" ", "")
    if len(t) == 8 and all(c in "0123456789abcdefABCDEF" for c in t):
        return int(t, 16)
    return None


_WILDCARD_RE = re.compile(r"^\(?([0-9A-Fa-fXx]{4}),\s*([0-9A-Fa-fXx]{4})\)?$")
_PRIVATE_RE = re.compile(r'^\(?([0-9A-Fa-f]{4}),\s*"([^"]*)",\s*([0-9A-Fa-f]{2})\)?$')


def _wildcard(text: str) -> tuple[int, int] | None:
    """Return ``(mask, value)`` for a tag with X wildcards, e.g. ``(60XX,4000)``."""
    match = _WILDCARD_RE.match(text.strip())
    if match is None:
        return None
    digits = (match.group(1) + match.group(2)).upper()
    if "X" not in digits:
        return None
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    value = int("".join("0" if c == "X" else c for c in digits), 16)
    return mask, value


@lru_cache(maxsize=1)
def _names() -> dict[str, int]:
    """Lower-case keyword / attribute name -> tag, for the public dictionary."""
    table: dict[str, int] = {}
    for tag, entry in DicomDictionary.items():
        table.setdefault(entry[2].lower(), tag)
        if entry[4]:
            table[entry[4].lower()] = tag
    return table


@lru_cache(maxsize=1)
def _old_names() -> dict[str, int]:
    """Lower-case old-style keyword -> tag.

    Before keywords were standardised (pydicom < 1.0, DICOM 2008 and earlier)
    a keyword was the attribute name without its spaces and punctuation:
    ``PatientsName`` for Patient's Name.  Recipes written then still carry them.
    """
    current = _names()
    table: dict[str, int] = {}
    for tag, entry in DicomDictionary.items():
        old = re.sub(r"[^A-Za-z0-9]", "", str(entry[2])).lower()
        if old and old not in current:
            table.setdefault(old, tag)
    return table


def _suggest(text: str) -> str:
    """`` (did you mean Keyword (gggg,eeee)?)`` for a near miss, else ``""``."""
    keywords = {str(entry[4]).lower(): tag for tag, entry in DicomDictionary.items() if entry[4]}
    close = difflib.get_close_matches(text.lower(), list(keywords), n=1, cutoff=0.8)
    if not close:
        return ""
    tag = keywords[close[0]]
    return f" (did you mean {tag_label(_entry(tag)[1], tag)}?)"


def _warn(notes: list[str], message: str) -> None:
    notes.append(message)
    warnings.warn(message, RecipeWarning, stacklevel=3)


@lru_cache(maxsize=1)
def _repeater_names() -> dict[str, tuple[int, int]]:
    """Lower-case keyword of a repeating-group attribute -> (mask, value)."""
    table: dict[str, tuple[int, int]] = {}
    for pattern, entry in RepeatersDictionary.items():
        wc = _wildcard(f"({pattern[:4]},{pattern[4:]})")
        if wc is not None:
            table[entry[2].lower()] = wc
            if entry[4]:
                table[entry[4].lower()] = wc
    return table


def _entry(tag: int) -> tuple[str, str, str]:
    """``(VR, keyword, name)`` from the public dictionary, or ``("", "", "")``."""
    try:
        vr, _vm, name, _retired, keyword = get_entry(tag)
    except KeyError:
        return "", "", ""
    return str(vr), str(keyword), str(name)


def _tag_strings(tag: int) -> tuple[str, str]:
    return f"({tag >> 16:04x},{tag & 0xFFFF:04x})", f"{tag:08X}"


# --------------------------------------------------------------------------- field expressions


@dataclass(frozen=True)
class _Field:
    kind: str  # tag, wild, private, regex, except, vr, group, all, name
    tag: int = 0
    mask: int = 0
    creator: str = ""
    regex: re.Pattern[str] | None = None
    text: str = ""

    def matches(self, tag: int, vr: str, keyword: str, name: str, creator: str | None) -> bool:
        kind = self.kind
        if kind == "tag":
            return tag == self.tag
        if kind == "wild":
            return (tag & self.mask) == self.tag
        if kind == "all":
            return True
        if kind == "private":
            return (
                creator is not None
                and (tag >> 16) == (self.tag >> 16)
                and (tag & 0xFF) == (self.tag & 0xFF)
                and creator.strip() == self.creator
            )
        if kind == "vr":
            return vr.upper().startswith(self.text)
        if kind == "group":
            return (tag >> 16) == self.tag
        if kind == "name":  # unknown exact name: compare like deid's exact matches
            return self.text in (keyword.lower(), name.lower(), *_tag_strings(tag))
        assert self.regex is not None
        strings = [*_tag_strings(tag), keyword, name]
        if creator is not None:
            strings.append(f'{tag >> 16:04X},"{creator}",{tag & 0xFF:02X}')
        hit = any(self.regex.search(s) for s in strings if s)
        return hit if kind == "regex" else not hit


def _compile_field(
    text: str, fields: dict[str, list[str]], where: str, notes: list[str] | None = None
) -> list[_Field]:
    """Compile one field expression; ``where`` names file and line for errors.

    ``notes`` receives the warnings given (old keyword resolved, line ignored as
    deid ignores it); an empty result means the line matches nothing.
    """
    if notes is None:
        notes = []
    raw = text.strip()
    low = raw.lower()
    if low == "all":
        return [_Field("all")]
    if low.startswith("values:"):
        raise RecipeError(
            f"{where}: value lists ('values:') are not supported by the fast engine; "
            "list the fields in a %fields section and use 'fields:' instead"
        )
    if low.startswith("fields:"):
        name = raw.split(":", 1)[1]
        if name not in fields:
            raise RecipeError(f"{where}: '%fields {name}' is not defined in this recipe")
        out: list[_Field] = []
        for member in fields[name]:
            out.extend(_compile_field(member, fields, where, notes))
        return out
    private = _PRIVATE_RE.match(raw)
    if private is not None:
        group, creator, offset = private.groups()
        if not int(group, 16) & 1:
            raise RecipeError(f"{where}: creator syntax is only valid for private (odd) groups")
        return [
            _Field("private", tag=(int(group, 16) << 16) | int(offset, 16), creator=creator.strip())
        ]
    if ":" in raw and not raw.startswith("("):
        expander, expression = raw.split(":", 1)
        expander = expander.lower()
        if expander == "select":
            attr, _, value = expression.partition(":")
            if attr.upper() == "VR" and value:
                return [_Field("vr", text=value[:2].upper())]
            if attr.upper() == "GROUP" and value:
                try:
                    return [_Field("group", tag=int(value, 16))]
                except ValueError:
                    pass
            raise RecipeError(f"{where}: 'select:' expects 'select:VR:XX' or 'select:group:gggg'")
        if expander in ("endswith", "startswith", "contains", "except"):
            pattern = expression
            if expander == "endswith":
                pattern = f"({expression})$"
            elif expander == "startswith":
                pattern = f"^({expression})"
            try:
                regex = re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise RecipeError(
                    f"{where}: invalid regular expression in '{expander}:' ({exc})"
                ) from None
            return [_Field("except" if expander == "except" else "regex", regex=regex)]
        raise RecipeError(f"{where}: unknown field expander '{expander}:'")
    tag = _parse_tag_text(raw)
    if tag is not None:
        return [_Field("tag", tag=tag)]
    wild = _wildcard(raw)
    if wild is not None:
        return [_Field("wild", mask=wild[0], tag=wild[1])]
    known = _names().get(low)
    if known is not None:
        return [_Field("tag", tag=known)]
    rep = _repeater_names().get(low)
    if rep is not None:
        return [_Field("wild", mask=rep[0], tag=rep[1])]
    old = _old_names().get(low)
    if old is not None:
        label = tag_label(_entry(old)[1], old)
        _warn(
            notes,
            f"{where}: '{raw}' is the old keyword of {label}; read as {label} "
            f"(write {_entry(old)[1]} to silence this warning)",
        )
        return [_Field("tag", tag=old)]
    if low in _DEID_WORDS:
        _warn(
            notes,
            f"{where}: '{raw}' is an action or function name, not a field; the line matches "
            "nothing and is ignored, as deid ignores it (delete the line)",
        )
        return []
    raise RecipeError(
        f"{where}: unknown field '{raw}'{_suggest(raw)}; write a DICOM keyword (PatientName), "
        "a tag ((0010,0010) or 00100010), a wildcard tag ((60XX,3000)), a private tag with "
        "its creator or a field expression (contains:, startswith:, endswith:, fields:NAME)"
    )


# --------------------------------------------------------------------------- values

_LIT, _VAR, _FUNC = "lit", "var", "func"


@dataclass(frozen=True)
class _Value:
    kind: str  # lit, var, func
    text: str  # literal, variable name or function name
    args: tuple[str, ...] = ()


def _compile_value(action: str, raw: str | None, where: str) -> _Value | None:
    if raw is None:
        return None
    text = raw.strip()  # deid already cut trailing comments
    if action == "REMOVE":
        return None  # deid's conditional REMOVE: removed unconditionally here (safer)
    if not text:
        raise RecipeError(f"{where}: {action} requires a value")
    low = text.lower()
    if low.startswith("var:"):
        name = text[4:].strip()
        if not name or " " in name:
            raise RecipeError(f"{where}: 'var:' needs one variable name")
        if name not in VARIABLES:
            close = difflib.get_close_matches(name, list(VARIABLES), n=1)
            hint = f"did you mean var:{close[0]}? " if close else ""
            raise RecipeError(
                f"{where}: unknown variable 'var:{name}'; {hint}sendit supplies "
                f"{', '.join(sorted(VARIABLES))}: use one of these or a literal value"
            )
        return _Value(_VAR, name)
    if low.startswith("func:"):
        parts = text[5:].split()
        if not parts or parts[0] not in _FUNCS:
            known = ", ".join(sorted(_FUNCS))
            raise RecipeError(f"{where}: unknown function '{text[5:].strip()}' (known: {known})")
        if parts[0] == "method_codes":
            if action != "ADD":
                raise RecipeError(f"{where}: func:method_codes is only valid with ADD")
            bad = [c for c in parts[1:] if c not in _METHOD_CODES]
            if bad or len(parts) == 1:
                raise RecipeError(
                    f"{where}: func:method_codes expects CID 7050 code values (1131xx)"
                )
        elif action == "JITTER" and parts[0] != "jitter":
            raise RecipeError(f"{where}: JITTER takes a number of days, var:NAME or func:jitter")
        return _Value(_FUNC, parts[0], tuple(parts[1:]))
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if action == "JITTER":
        try:
            int(text)
        except ValueError:
            raise RecipeError(
                f"{where}: JITTER takes a number of days, var:NAME or func:jitter"
            ) from None
    return _Value(_LIT, text)


# --------------------------------------------------------------------------- recipe text


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


def _ctp(raw: str, where: str) -> str:
    """CTP ``x,y,width,height`` -> ``x0,y0,x1,y1``."""
    if raw.strip() == "all":
        return "all"
    nums = _numbers(raw, where)
    return f"{nums[0]},{nums[1]},{nums[0] + nums[2]},{nums[1] + nums[3]}"


def _numbers(raw: str, where: str) -> list[int]:
    try:
        nums = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"{where}: coordinates must be four integers x0,y0,x1,y1") from None
    if len(nums) != 4:
        raise RecipeError(f"{where}: coordinates must be four integers x0,y0,x1,y1")
    return nums


def _parse_condition(text: str, where: str) -> tuple[tuple[_Cond, ...], tuple[str, ...]]:
    """Parse ``contains A x || empty B + equals C y`` into conditions and operators."""
    conds: list[_Cond] = []
    ops: list[str] = []
    pieces = re.split(r"\s*(\|\||\+)\s*(?=(?:" + "|".join(_FILTER_ACTIONS) + r")\b)", text.strip())
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            ops.append("or" if piece == "||" else "and")
            continue
        words = piece.strip().split(None, 2)
        if not words or words[0].lower() not in _FILTER_ACTIONS:
            raise RecipeError(f"{where}: '{words[0] if words else ''}' is not a filter criterion")
        action = words[0].lower()
        if len(words) < 2:
            raise RecipeError(f"{where}: {action} needs a field")
        field_text = words[1]
        value = words[2].strip() if len(words) > 2 else ""
        needs_value = action not in ("missing", "present", "empty")
        if needs_value and not value:
            raise RecipeError(f"{where}: {action} needs a field and a value")
        if not needs_value and value:
            raise RecipeError(f"{where}: {action} takes a field only")
        tag = _parse_tag_text(field_text)
        if tag is None:
            tag = _names().get(field_text.lower())
        regex = None
        if action in ("contains", "notcontains"):
            try:
                regex = re.compile(value, re.IGNORECASE)
            except re.error:
                regex = re.compile(re.escape(value), re.IGNORECASE)
        conds.append(_Cond(action, tag, field_text, value, regex))
    return tuple(conds), tuple(ops)


@dataclass
class _Parsed:
    rules: list[_Rule]
    labels: list[_Label]
    notes: list[str] = field(default_factory=list)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecipeError(
            f"{path}: cannot read the recipe ({exc.strerror}); check the path"
        ) from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: the recipe is not UTF-8 text") from None


def _parse_file(path: Path, source: int, *, header: bool = True) -> _Parsed:
    """Validate a recipe line by line, parse it with deid, and compile it.

    Parameters
    ----------
    path : Path
        The recipe file.
    source : int
        Its position among the loaded recipes (later wins).
    header : bool
        Compile the ``%header`` section (False: only ``%filter``, as for the
        filters bundled with deid whose header section is not ours).
    """
    lines = _read_lines(path)
    section: str | None = None
    section_name: str | None = None
    header_lines: list[int] = []
    fields: dict[str, list[str]] = {}
    labels: list[_Label] = []
    label: dict[str, Any] | None = None

    def close_label() -> None:
        nonlocal label
        if label is not None:
            labels.append(
                _Label(
                    label["group"],
                    label["name"],
                    tuple(label["lines"]),
                    tuple(label["coords"]),
                    " ".join(label["reason"]).strip(),
                )
            )
            label = None

    for number, original in enumerate(lines, start=1):
        line = original.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        head = line.split(None, 1)[0]
        if head.upper() == "FORMAT":
            fmt = line.split(None, 1)[1].split("#", 1)[0].strip().lower() if " " in line else ""
            if fmt != "dicom":
                raise RecipeError(f"{where}: only 'FORMAT dicom' is supported")
            continue
        if line.startswith("%"):
            close_label()
            parts = line.split("#", 1)[0].split()
            section = parts[0][1:].lower()
            section_name = " ".join(parts[1:]) or None
            if section not in _SECTIONS or section == "labels":
                raise RecipeError(
                    f"{where}: '%{section}' is not a supported section ({', '.join(_SECTIONS[:4])})"
                )
            if section in ("filter", "values", "fields") and not section_name:
                raise RecipeError(f"{where}: '%{section}' needs a name, e.g. '%{section} graylist'")
            if section == "fields":
                fields.setdefault(str(section_name), [])
            continue
        if section is None:
            raise RecipeError(f"{where}: a section such as '%header' must come before this line")
        if section == "header":
            if head.upper() not in _HEADER_ACTIONS:
                raise RecipeError(
                    f"{where}: '{head}' is not a header action "
                    "(ADD, BLANK, JITTER, KEEP, REPLACE, REMOVE)"
                )
            if len(line.split("#", 1)[0].split()) < 2:
                raise RecipeError(f"{where}: {head.upper()} needs a field")
            if (
                head.upper() in ("ADD", "REPLACE", "JITTER")
                and len(line.split("#", 1)[0].split()) < 3
            ):
                raise RecipeError(f"{where}: {head.upper()} needs a field and a value")
            header_lines.append(number)
        elif section == "fields":
            if head.upper() != "FIELD" or len(line.split()) < 2:
                raise RecipeError(f"{where}: %fields sections take 'FIELD <expression>' lines")
            fields[str(section_name)].append(line.split("#", 1)[0].split()[1])
        elif section == "values":
            if head.upper() not in ("FIELD", "SPLIT") or len(line.split()) < 2:
                raise RecipeError(f"{where}: %values sections take 'FIELD' or 'SPLIT' lines")
        elif section == "filter":
            if head.upper() == "LABEL":
                close_label()
                name = line[len(head) :].split("#", 1)[0].strip()
                label = {
                    "group": section_name,
                    "name": name,
                    "lines": [],
                    "coords": [],
                    "reason": [],
                }
                continue
            if label is None:
                raise RecipeError(f"{where}: filter criteria must follow a 'LABEL name' line")
            low = line.lower()
            body = line.split(" #", 1)[0].strip()
            if low.startswith(
                ("ctpcoordinates", "ctpkeepcoordinates", "coordinates", "keepcoordinates")
            ):
                keyword, _, raw = body.partition(" ")
                keyword = keyword.lower()
                raw = raw.strip()
                if keyword.startswith("ctp"):
                    raw = _ctp(raw, where)
                elif raw != "all" and not raw.startswith("from:"):
                    _numbers(raw, where)
                if "keep" not in keyword:  # keep-masks are ignored: scrubbing more is the safe side
                    label["coords"].append(raw)
                continue
            operator = "and"
            if body.startswith("||"):
                operator, body = "or", body[2:].strip()
            elif body.startswith("+"):
                body = body[1:].strip()
            conds, inner = _parse_condition(body, where)
            label["lines"].append(_Line(operator, conds, inner))
            label["reason"].append(body if len(label["lines"]) == 1 else f"{operator} {body}")
    close_label()

    rules: list[_Rule] = []
    notes: list[str] = []
    if header and header_lines:
        config = _deid_load(path)
        entries = list(config.get("header") or [])
        if len(entries) != len(header_lines):
            raise RecipeError(
                f"{path}: deid parsed {len(entries)} header actions but the file has "
                f"{len(header_lines)} action lines; check quoting on the action lines"
            )
        for number, entry in zip(header_lines, entries, strict=True):
            where = f"{path}:{number}"
            action = Action(str(entry["action"]).upper())
            field_text = str(entry["field"])
            compiled = tuple(_compile_field(field_text, fields, where, notes))
            value = _compile_value(action.value, entry.get("value"), where)
            if not compiled and action is not Action.ADD:
                continue  # a line deid ignores (warned above)
            if action is Action.ADD:
                if len(compiled) != 1 or compiled[0].kind != "tag":
                    raise RecipeError(f"{where}: ADD needs a single public keyword or tag number")
                vr = _entry(compiled[0].tag)[0]
                if not vr or compiled[0].tag >> 16 & 1:
                    raise RecipeError(
                        f"{where}: ADD needs a public attribute known to the dictionary"
                    )
                if (
                    value is not None
                    and value.kind == _FUNC
                    and value.text not in ("method_codes", "jitter")
                ):
                    raise RecipeError(f"{where}: ADD supports literals, var: and func:method_codes")
            rules.append(_Rule(action, compiled, value, source, where, field_text))
    return _Parsed(rules, labels, notes)


def _deid_load(path: Path) -> dict[str, Any]:
    """Parse with deid's own parser, turning its ``sys.exit`` into RecipeError."""
    from deid.config.utils import load_deid
    from deid.logger import bot

    saved = bot.level
    bot.level = -3  # deid's ERROR: its debug chatter would flood the notebooks
    try:
        config = load_deid(str(path))
    except SystemExit:
        raise RecipeError(
            f"{path}: deid could not parse the recipe; see deid's message above"
        ) from None
    finally:
        bot.level = saved
    return dict(config)


# --------------------------------------------------------------------------- compiled plan

# Plan kinds (small ints: the walk compares them a few hundred times per file).
_K_KEEP, _K_SEQ, _K_REMOVE, _K_BLANK, _K_LIT, _K_VAR, _K_UID, _K_CLEAN, _K_JITTER = range(9)
_K_UID_DEFAULT, _K_AGE, _K_FUNC_JITTER, _K_DUMMY = 9, 10, 11, 12
_IOD_EFFECTS = {
    iodtypes.Effect.REMOVE: _K_REMOVE,
    iodtypes.Effect.BLANK: _K_BLANK,
    iodtypes.Effect.DUMMY: _K_DUMMY,
    iodtypes.Effect.ITEMS: _K_SEQ,
}
_K_STRUCT = 13  # a structured-content sequence: :func:`structured.clean_sequence`

# (kind, payload, rule, VR, keyword); _plan_for leaves VR and keyword empty.
_Plan = tuple[int, Any, "_Rule | None", str, str]
_PLAN_KEEP: _Plan = (_K_KEEP, None, None, "", "")
_PLAN_SEQ: _Plan = (_K_SEQ, None, None, "", "")
_PLAN_UID_DEFAULT: _Plan = (_K_UID_DEFAULT, None, None, "", "")
_PLAN_AGE: _Plan = (_K_AGE, None, None, "", "")


def _shift_da(value: str, days: int) -> str | None:
    v = value.strip()
    if not v:
        return v
    if "-" in v:  # a date range (query datasets)
        parts = [_shift_da(p, days) if p else "" for p in v.split("-")]
        return None if any(p is None for p in parts) else "-".join(str(p) for p in parts)
    dotted = len(v) == 10 and v[4] == "." and v[7] == "."
    digits = v.replace(".", "") if dotted else v
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        new = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) + _dt.timedelta(
            days=days
        )
    except (ValueError, OverflowError):
        return None
    out = f"{new.year:04d}{new.month:02d}{new.day:02d}"
    return f"{out[:4]}.{out[4:6]}.{out[6:]}" if dotted else out


def shift_date(value: str | None, days: int) -> str:
    """A ``YYYYMMDD`` date moved by ``days`` (``""`` when empty or not a date).

    The value of the ``entity_timestamp`` and ``item_timestamp`` variables
    (:data:`VARIABLES`).
    """
    text = (value or "").strip()
    shifted = _shift_da(text, days) if text else ""
    return shifted if shifted and "-" not in text else ""


def _shift_dt(value: str, days: int) -> str | None:
    v = value.strip()
    if not v:
        return v
    if len(v) < 8:
        return None  # YYYY or YYYYMM cannot be shifted by days
    head = _shift_da(v[:8], days)
    return None if head is None else head + v[8:]


def _shift(value: Any, vr: str, days: int) -> Any:
    """Shift DA/DT values (multi-valued too); TM is unchanged by whole days.

    Returns None when a value cannot be parsed (the caller blanks it).
    """
    if vr == "TM":
        return value
    func = _shift_dt if vr == "DT" else _shift_da
    if isinstance(value, (MultiValue, list, tuple)):
        out = [func(str(v), days) for v in value]
        return None if any(v is None for v in out) else "\\".join(str(v) for v in out)
    if vr not in ("DA", "DT"):  # JITTER on another VR: accept a date or a datetime
        text = str(value)
        shifted = _shift_da(text, days) if len(text.strip()) == 8 else _shift_dt(text, days)
        return shifted
    return func(str(value), days)


def _raw_texts(ds: Dataset, raw: RawDataElement, vr: str) -> list[str] | None:
    """Decode a raw text element without pydicom's conversion.

    Returns None when the character set needs pydicom (code extensions).
    """
    charset = ds.original_character_set
    if not isinstance(charset, str):
        if len(charset) != 1:
            return None
        charset = charset[0]
    codec = simple_codec(charset)
    if codec is None:
        return None
    text = bytes(raw.value or b"").decode(codec, "replace").rstrip(" \x00")
    if vr in ("LT", "ST", "UT"):
        return [text] if text else []
    return [v.strip() for v in text.split("\\") if v.strip()]


def _category(vr: str, keyword: str, tag: int) -> str:
    return "name" if vr == "PN" else (keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")


def _originals(
    ds: Dataset,
    tag: int,
    dvr: str,
    out: list[tuple[str, str, list[str]]],
    codec: str | None | bool = False,
) -> None:
    """Append the gate-VR values element ``tag`` of ``ds`` holds now (nested ones too).

    ``codec`` is ``text_codec(ds)`` taken before the walk changed anything
    (False: look it up now).
    """
    item: Any = ds._dict.get(BaseTag(tag))  # as stored: a raw element stays unconverted
    if item is None:
        return
    known = item.VR if item.VR not in (None, "UN") else (dvr if item.VR is None else "")
    if known and known != "SQ" and known not in GATE_VRS and " or " not in known:
        return  # not a value the gate looks for: no need to decode it
    vr, values = item_strings(ds, tag, item, dvr, codec)
    if vr == "SQ":
        for child in ds[tag].value or ():
            for sub in sorted(int(t) for t in child._dict):
                _originals(child, sub, _entry(sub)[0], out)
    elif vr in GATE_VRS and values:
        keyword = _entry(tag)[1] if not (tag >> 16) & 1 else ""
        out.append((vr, _category(vr, keyword, tag), values))


def _put(ds: Dataset, btag: BaseTag, elem: DataElement) -> None:
    """``ds[btag] = elem`` without Dataset.__setitem__'s checks for public, non-SQ tags."""
    if btag >> 16 & 1 or elem.VR == "SQ" or btag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        ds[btag] = elem
    else:
        ds._dict[btag] = elem


def _method_code_items(codes: Sequence[str]) -> list[Dataset]:
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = _METHOD_CODES[code]
        items.append(item)
    return items


def _note_texts(changes: Changes, texts: list[str], vr: str) -> None:
    for text in texts:
        changes.removed_text.append(text)
        if vr == "PN":
            changes.removed_text.extend(_pn_parts(text))


def _creator(ds: Dataset, block: int) -> str | None:
    """The private creator of a block, read without converting the element."""
    raw = ds.get_item(block, keep_deferred=True)
    if raw is None:
        return None
    value = raw.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return None if value is None else str(value).strip()


class _Tokens:
    """Identifying strings for func:clean_text.

    The file's own values are captured before the walk changes them; they are
    tokenised on first use only.
    """

    __slots__ = ("_ctx", "_found", "_tokens")

    def __init__(self, ds: Dataset | None, ctx: DeidContext) -> None:
        self._ctx = ctx
        self._tokens: list[str] | None = None
        self._found: list[tuple[str, list[str]]] = []
        if ds is not None:
            for tag in CLEAN_SOURCE_TAGS:
                item: Any = ds.get_item(tag, keep_deferred=True)
                if item is None:
                    continue
                vr = str(item.VR or _entry(tag)[0])
                if vr == "SQ":
                    continue
                texts = None
                if type(item) is RawDataElement and item.value is not None:
                    texts = _raw_texts(ds, item, vr) if vr in _TEXT_VRS else None
                    if texts is None and vr in ("DA", "CS"):
                        texts = [bytes(item.value).decode("latin-1").strip(" \x00")]
                if texts is None:
                    texts = _text_values(ds[tag].value)
                self._found.append((vr, texts))

    def add_names(self, names: Sequence[str]) -> None:
        """Add person names found in the file's content (SR PNAME items, observers)."""
        names = [n for n in names if n]
        if names:
            self._found.append(("PN", list(names)))
            self._tokens = None

    def get(self) -> list[str]:
        if self._tokens is None:
            self._tokens = _gather_tokens(self._found, self._ctx.identifying_values)
        return self._tokens


def _gather_tokens(found: list[tuple[str, list[str]]], extra: Sequence[str]) -> list[str]:
    tokens: list[str] = []
    for vr, texts in found:
        for text in texts:
            tokens.append(text)
            if vr == "PN":
                tokens.extend(_pn_parts(text))
            elif vr == "DA" and len(text) == 8 and text.isdigit():
                tokens.append(f"{text[:4]}-{text[4:6]}-{text[6:]}")
                tokens.append(f"{text[4:6]}/{text[6:]}/{text[:4]}")
    for value in extra:
        if value:
            tokens.append(value)
            tokens.extend(_pn_parts(value))
    out: list[str] = []
    for tok in tokens:
        tok = tok.strip()
        if len(tok) >= 3 or (len(tok) >= 2 and not tok.isdigit()):
            low = tok.lower()
            if low not in out:
                out.append(low)
    out.sort(key=len, reverse=True)  # longest first: "doe^john" before "doe"
    return out


def _text_values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value if str(v)]
    text = str(value)
    return [text] if text else []


def _pn_parts(text: str) -> list[str]:
    return [p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 3]


class Recipe:
    """A set of deid recipes compiled for fast, repeatable de-identification.

    Use :meth:`load`; then :meth:`apply` de-identifies a dataset in place and
    :meth:`screen` evaluates the ``%filter`` groups.
    """

    def __init__(
        self,
        rules: list[_Rule],
        labels: list[_Label],
        files: list[Path],
        notes: Sequence[str] = (),
    ) -> None:
        self._rules = rules
        self._labels = labels
        self.files: tuple[Path, ...] = tuple(files)
        self._adds = [r for r in rules if r.action is Action.ADD]
        self._adds.extend(_implied_adds(self._adds, self.files))
        self._header = [r for r in rules if r.action is not Action.ADD]
        self._sources = sorted({r.source for r in self._header}, reverse=True)
        self._cache: dict[int, _Plan] = {}
        self._private_cache: dict[tuple[int, str | None], _Plan | None] = {}
        self._code_items: dict[str, list[Dataset]] = {}
        for rule in self._adds:  # validate literal ADD values once (pydicom warns)
            if rule.value is not None and rule.value.kind == _LIT:
                vr = _entry(rule.fields[0].tag)[0].split(" or ")[0]
                DataElement(rule.fields[0].tag, vr, _typed(rule.value.text, vr, rule, None, 0))
        self._default_source = 0 if files and Path(files[0]) == DEFAULT_RECIPE else None
        self._structured = frozenset(
            tag
            for tag in structured.STRUCTURED_TAGS
            if self._cleans_structured(self._resolve(tag, "SQ", *_entry(tag)[1:], None))
        )
        self._clean = bool(self._structured) or any(
            r.value is not None and r.value.text == "clean_text" for r in rules
        )
        groups: list[str] = []
        for lab in labels:
            if lab.group not in groups:
                groups.append(lab.group)
        self._groups = groups
        found = list(notes)
        self._identity_notes(found)
        self.warnings: tuple[str, ...] = tuple(found)
        """What loading warned about (also given as :class:`RecipeWarning`): old keywords
        resolved, lines ignored as deid ignores them, identity UIDs kept or replaced."""

    def _identity_notes(self, notes: list[str]) -> None:
        """Warn once per rule that would remove what makes a file a DICOM object."""
        reached: dict[str, list[int]] = {}
        rules: dict[str, _Rule] = {}
        for tag in IDENTITY_TAGS:
            vr, keyword, name = _entry(tag)
            rule = self._resolve(tag, vr, keyword, name, None)
            if rule is not None and _breaks_identity(rule):
                reached.setdefault(rule.where, []).append(tag)
                rules[rule.where] = rule
        for where, tags in reached.items():
            rule = rules[where]
            labels = ", ".join(tag_label(IDENTITY_TAGS[t], t) for t in tags)
            _warn(
                notes,
                f"{where}: {rule.action.value} {rule.field_text} reaches {labels}, which every "
                "DICOM file needs; class UIDs are kept and instance UIDs replaced by new UIDs "
                "(as func:uid) instead (KEEP or REPLACE them with func:uid to silence this)",
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path] = (),
        *,
        include_default: bool = True,
        include_deid_filters: bool = True,
    ) -> Recipe:
        """Load and compile recipes.

        Parameters
        ----------
        paths : sequence of str or Path
            Recipe files, applied in order (later files win, see the module
            docstring).
        include_default : bool
            Put :data:`DEFAULT_RECIPE` first.
        include_deid_filters : bool
            Add the ``%filter`` groups bundled with deid (``deid.dicom``; its
            ``%header`` section is not used).  A user's filter labels are
            evaluated before the bundled labels of the same group.

        Returns
        -------
        Recipe
            The compiled recipe.

        Raises
        ------
        RecipeError
            A file is missing or malformed; the message names file and line.
        """
        files = [Path(p) for p in paths]
        if include_default:
            files.insert(0, DEFAULT_RECIPE)
        rules: list[_Rule] = []
        notes: list[str] = []
        user_labels: list[list[_Label]] = []
        for index, path in enumerate(files):
            if not path.is_file():
                raise RecipeError(f"{path}: recipe file not found; check the recipe setting")
            parsed = _parse_file(path, index)
            rules.extend(parsed.rules)
            user_labels.append(parsed.labels)
            notes.extend(parsed.notes)
        labels: list[_Label] = []
        for parsed_labels in reversed(user_labels):  # later files first ("on top")
            labels.extend(parsed_labels)
        order: list[str] = []
        if include_deid_filters:
            from deid.data import data_base

            bundled = _parse_file(Path(data_base) / "deid.dicom", -1, header=False).labels
            order.extend(dict.fromkeys(lab.group for lab in bundled))
            labels.extend(bundled)
        for parsed_labels in user_labels:
            order.extend(
                g for g in dict.fromkeys(lab.group for lab in parsed_labels) if g not in order
            )
        labels.sort(key=lambda lab: order.index(lab.group))  # stable: keeps label order per group
        return cls(rules, labels, files, notes)

    @property
    def filter_groups(self) -> list[str]:
        """Filter group names in evaluation order."""
        return list(self._groups)

    # ------------------------------------------------------------------ plan
    def _resolve(
        self, tag: int, vr: str, keyword: str, name: str, creator: str | None
    ) -> _Rule | None:
        """The deciding rule for one tag (later file wins; KEEP protects within a file)."""
        for source in self._sources:
            chosen: _Rule | None = None
            for rule in self._header:
                if rule.source != source:
                    continue
                if any(f.matches(tag, vr, keyword, name, creator) for f in rule.fields):
                    if rule.action is Action.KEEP:
                        return rule
                    chosen = rule
            if chosen is not None:
                return chosen
        return None

    def _cleans_structured(self, rule: _Rule | None) -> bool:
        """Whether a structured sequence under ``rule`` gets the Clean Structured Content /
        Clean Graphics options (:mod:`.structured`): no rule, or the default profile's."""
        return rule is None or (
            rule.source == self._default_source and rule.action in (Action.BLANK, Action.REMOVE)
        )

    def _plan_for(self, rule: _Rule | None, tag: int, vr: str, keyword: str) -> _Plan:
        if vr == "SQ" and tag in self._structured:
            return (_K_STRUCT, None, rule, "", "")
        if rule is None:
            if vr == "SQ":
                return _PLAN_SEQ
            if tag == _AGE_TAG:
                return _PLAN_AGE
            if vr == "UI" and not (
                keyword.endswith(_UID_KEEP_SUFFIXES) or keyword in _UID_KEEP_KEYWORDS
            ):
                return _PLAN_UID_DEFAULT
            return _PLAN_KEEP
        if tag in IDENTITY_TAGS and _breaks_identity(rule):
            # What makes the file a file: replaced, not removed (warned at load).
            if keyword.endswith("ClassUID"):
                return (_K_KEEP, None, rule, "", "")
            return (_K_UID, None, rule, "", "")
        action, value = rule.action, rule.value
        if action is Action.KEEP:
            return (
                _PLAN_SEQ
                if vr == "SQ"
                else (_PLAN_AGE if tag == _AGE_TAG else (_K_KEEP, None, rule, "", ""))
            )
        if action is Action.REMOVE:
            return (_K_REMOVE, None, rule, "", "")
        if action is Action.BLANK:
            return (_K_BLANK, None, rule, "", "")
        if vr == "SQ":
            raise RecipeError(
                f"{rule.where}: {action.value} cannot be applied to the sequence "
                f"{tag_label(keyword, tag)}; use KEEP, BLANK or REMOVE"
            )
        assert value is not None
        if action is Action.JITTER:
            if value.kind == _LIT:
                return (_K_JITTER, int(value.text), rule, "", "")
            if value.kind == _VAR:
                return (_K_JITTER, value.text, rule, "", "")
            return (_K_JITTER, None, rule, "", "")
        if value.kind == _VAR:
            return (_K_VAR, value.text, rule, "", "")
        if value.kind == _FUNC:
            kind = {"uid": _K_UID, "clean_text": _K_CLEAN, "jitter": _K_FUNC_JITTER}.get(value.text)
            if kind is None:
                raise RecipeError(
                    f"{rule.where}: func:{value.text} cannot be used with {action.value}"
                )
            return (kind, None, rule, "", "")
        return (_K_LIT, value.text, rule, "", "")

    def _public_plan(self, tag: int, elem_vr: str) -> _Plan:
        vr, keyword, name = _entry(tag)
        if not vr:
            vr = elem_vr or "UN"
        elif " or " in vr:  # ambiguous (US or SS, OB or OW): the file's VR, else the first
            vr = elem_vr if elem_vr not in ("", "UN") else vr.split(" or ")[0]
        base = self._plan_for(self._resolve(tag, vr, keyword, name, None), tag, vr, keyword)
        anchor = iodtypes.overlay_anchor(tag)
        if anchor is not None and base[0] != _K_REMOVE:  # a removed overlay takes its group
            data = self._cache.get(anchor) or self._public_plan(anchor, "OW")
            if data[0] in (_K_REMOVE, _K_BLANK):
                base = (_K_REMOVE, None, data[2], "", "")
        plan = (base[0], base[1], base[2], vr, keyword)
        self._cache[tag] = plan
        return plan

    # ------------------------------------------------------------------ apply
    def apply(self, ds: Dataset, ctx: DeidContext) -> Changes:
        """De-identify ``ds`` in place.

        Parameters
        ----------
        ds : pydicom.Dataset
            The dataset (with ``file_meta`` when read from a file).
        ctx : DeidContext
            Pseudonyms, date shift, UID map and per-patient values.

        Returns
        -------
        Changes
            Removed free text and ``(old, new)`` identifier/UID pairs.

        Raises
        ------
        RecipeError
            A rule cannot be applied (e.g. a missing ``var:``); the message
            names the recipe line and the tag, never a value.
        """
        changes = Changes()
        sop_class = str(ds[_SOP_CLASS].value or "") if _SOP_CLASS in ds else ""
        if sop_class != ctx.sop_class_uid:
            ctx = dataclasses.replace(ctx, sop_class_uid=sop_class)
        self._walk(ds, ctx, changes, "", _Tokens(ds if self._clean else None, ctx))
        for rule in self._adds:
            self._add(ds, rule, ctx, changes)
        if self._structured:
            self._structured_codes(ds)
        sop = str(ds[_SOP_INSTANCE_UID].value or "") if _SOP_INSTANCE_UID in ds else ""
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in FILE_META_DROP:
                if tag in meta:
                    del meta[tag]
            if sop:
                meta[_MEDIA_SOP] = DataElement(_MEDIA_SOP, "UI", sop, validation_mode=_IGNORE)
            elif _MEDIA_SOP in meta and meta[_MEDIA_SOP].value:
                new = ctx.uid_map(str(meta[_MEDIA_SOP].value))
                meta[_MEDIA_SOP] = DataElement(_MEDIA_SOP, "UI", new, validation_mode=_IGNORE)
                ds.SOPInstanceUID = new
        return changes

    def _structured_codes(self, ds: Dataset) -> None:
        """List the structured-content options applied in DeidentificationMethodCodeSequence."""
        done = {
            tag
            for tag in self._structured
            if tag in ds._dict and ds[tag].VR == "SQ" and ds[tag].value
        }
        codes = structured.method_code_items(ds, done)
        if codes is not None:
            ds.DeidentificationMethodCodeSequence = codes

    def walk_item(
        self, item: Dataset, ctx: DeidContext, changes: Changes, prefix: str, tokens: _Tokens
    ) -> None:
        """Apply the recipe's rules to one sequence item, as :meth:`apply` does at any depth.

        Parameters
        ----------
        item : pydicom.Dataset
            The item, changed in place.
        ctx, changes, prefix, tokens
            The file's context, the changes so far, the item's path
            (``Seq[i].``) and the file's ``func:clean_text`` tokens.
        """
        self._walk(item, ctx, changes, prefix, tokens)

    def decides(self, tag: int, vr: str) -> bool:
        """Whether a rule of the recipe (or its UID / age default) decides the public ``tag``.

        False for an element no rule names (kept, or recursed into when a sequence).
        """
        plan = self._cache.get(tag)
        if plan is None:
            plan = self._public_plan(tag, vr)
        return plan[2] is not None or plan[0] in (_K_UID_DEFAULT, _K_AGE, _K_STRUCT)

    def _walk(
        self,
        ds: Dataset,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> None:
        cache = self._cache
        pcache = self._private_cache
        safe = ctx.safe_private
        kept_blocks: set[int] = set()
        creator_tags: list[int] = []
        creators: dict[int, str | None] = {}
        codec = text_codec(ds)  # the original character set, before any change
        for btag, raw in list(ds.items()):
            tag = int(btag)  # plain int: BaseTag.__eq__ is Python code, slow in dict lookups
            if not (tag >> 16) & 1:  # public
                plan = cache.get(tag)
                if plan is None:
                    plan = self._public_plan(tag, str(getattr(raw, "VR", "") or ""))
                if plan[0] != _K_KEEP:
                    self._public_step(ds, btag, raw, plan, ctx, changes, prefix, tokens, codec)
                continue
            # private group: creators (gggg,0010-00FF) are decided after their blocks
            elem_no = tag & 0xFFFF
            if 0x0010 <= elem_no <= 0x00FF:
                creator_tags.append(tag)
                continue
            block = (tag & 0xFFFF0000) | (elem_no >> 8)
            creator: str | None = None
            if elem_no >= 0x1000:
                if block in creators:
                    creator = creators[block]
                else:
                    creator = creators[block] = _creator(ds, block)
            key = (tag, creator)
            if key in pcache:
                pplan = pcache[key]
            else:
                pplan = self._private_plan(ds, tag, creator)
                pcache[key] = pplan
            if pplan is None:  # no rule: removed unless listed as safe
                if tag in safe:
                    kept_blocks.add(block)
                else:
                    _originals(ds, tag, "", changes.originals, codec)
                    del ds[btag]
                continue
            if pplan[0] == _K_REMOVE:
                _originals(ds, tag, "", changes.originals, codec)
                del ds[btag]
                continue
            if pplan[0] != _K_KEEP:
                _originals(ds, tag, "", changes.originals, codec)
                self._do(ds, tag, pplan, ctx, changes, prefix, tokens)
            if tag in ds:
                kept_blocks.add(block)
        for ctag in creator_tags:
            if ctag not in kept_blocks:
                _originals(ds, ctag, "", changes.originals, codec)
                del ds[ctag]

    def _public_step(
        self,
        ds: Dataset,
        btag: BaseTag,
        raw: Any,
        plan: _Plan,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
        codec: str | None,
    ) -> None:
        """Act on one public element whose plan is not KEEP."""
        tag = int(btag)
        if (plan[0] == _K_REMOVE or plan[0] == _K_BLANK) and ctx.sop_class_uid:
            plan = _iod_plan(plan, tag, raw, ctx.sop_class_uid, prefix)
        if plan[0] not in (_K_SEQ, _K_STRUCT):
            _originals(ds, tag, plan[3], changes.originals, codec)
        if type(raw) is RawDataElement and raw.value is not None:
            if self._fast(ds, btag, raw, plan, ctx, changes, prefix, tokens):
                return
        self._do(ds, tag, plan, ctx, changes, prefix, tokens)

    # ------------------------------------------------------------------ one element
    @property
    def add_tags(self) -> frozenset[int]:
        """Tags the recipe's ADD rules write."""
        return frozenset(rule.fields[0].tag for rule in self._adds)

    @property
    def cleans_text(self) -> bool:
        """Whether a rule uses ``func:clean_text`` (tokens from :data:`CLEAN_SOURCE_TAGS`)."""
        return self._clean

    def keeps(self, tag: int, vr: str) -> bool:
        """Whether the public element ``tag`` (read with VR ``vr``) is kept as it is."""
        plan = self._cache.get(tag)
        if plan is None:
            plan = self._public_plan(tag, vr)
        return plan[0] == _K_KEEP

    def clean_tokens(self, ds: Dataset, ctx: DeidContext) -> _Tokens:
        """The ``func:clean_text`` tokens of ``ds`` (its :data:`CLEAN_SOURCE_TAGS` are read)."""
        return _Tokens(ds if self._clean else None, ctx)

    def apply_element(
        self, ds: Dataset, tag: int, ctx: DeidContext, changes: Changes, tokens: _Tokens
    ) -> bool:
        """De-identify the one top-level element ``tag`` of ``ds`` exactly as :meth:`apply` would.

        For callers that de-identify a file element by element
        (:mod:`sendit_helpers.deid.elementcache`): ``ds`` holds the element (and,
        for a private one, its creator; for text, the character set); the
        result is the element left in ``ds`` (or gone) and what ``changes``
        received.  ADD rules and the file meta are not handled here.

        Returns
        -------
        bool
            False when the result depends on other elements: a private
            element (or creator) the recipe or the safe list keeps.
        """
        btag = BaseTag(tag)
        raw = ds.get_item(btag, keep_deferred=True)
        if raw is None:
            return True
        codec = text_codec(ds)
        if not (tag >> 16) & 1:
            plan = self._cache.get(tag)
            if plan is None:
                plan = self._public_plan(tag, str(getattr(raw, "VR", "") or ""))
            if plan[0] != _K_KEEP:
                self._public_step(ds, btag, raw, plan, ctx, changes, "", tokens, codec)
            return True
        elem_no = tag & 0xFFFF
        if 0x0010 <= elem_no <= 0x00FF:  # a creator: removed when its block keeps nothing
            _originals(ds, tag, "", changes.originals, codec)
            del ds[btag]
            return True
        block = (tag & 0xFFFF0000) | (elem_no >> 8)
        creator = _creator(ds, block) if elem_no >= 0x1000 else None
        key = (tag, creator)
        if key in self._private_cache:
            pplan = self._private_cache[key]
        else:
            pplan = self._private_cache[key] = self._private_plan(ds, tag, creator)
        removed = (pplan is None and tag not in ctx.safe_private) or (
            pplan is not None and pplan[0] == _K_REMOVE
        )
        if not removed:
            return False
        _originals(ds, tag, "", changes.originals, codec)
        del ds[btag]
        return True

    def apply_adds(self, ds: Dataset, ctx: DeidContext, changes: Changes) -> None:
        """Apply the ADD rules to ``ds`` as :meth:`apply` does after the walk."""
        for rule in self._adds:
            self._add(ds, rule, ctx, changes)

    def _fast(
        self,
        ds: Dataset,
        btag: BaseTag,
        raw: RawDataElement,
        plan: _Plan,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> bool:
        """Act on a not-yet-converted element without pydicom's conversion.

        Handles removal/blanking of non-text values, UID remapping, date
        shifting and the age cap from the raw bytes; returns False when the
        element needs the general path (text values, sequences).
        """
        kind, payload, rule, dvr, keyword = plan
        vr = raw.VR or dvr
        if vr in ("SQ", "UN") or not vr:
            return False  # UN: pydicom gives a known tag its VR when converting
        if vr in _TEXT_VRS:
            return self._fast_text(ds, btag, raw, plan, vr, ctx, changes, prefix, tokens)
        if kind == _K_REMOVE:
            del ds[btag]
            return True
        if kind == _K_BLANK:
            empty = "" if vr in _STRING_VRS else None
            _put(ds, btag, DataElement(btag, vr, empty, validation_mode=_IGNORE))
            return True
        if vr not in ("UI", "DA", "DT", "TM", "AS"):
            return False
        text = bytes(raw.value or b"").decode("ascii", "replace").strip("\x00 ")
        if not text:
            return True
        if kind in (_K_UID, _K_UID_DEFAULT) and vr == "UI":
            olds = [v.strip("\x00 ") for v in text.split("\\")]
            if kind == _K_UID_DEFAULT and all(v in UID_dictionary for v in olds):
                return True
            news = [ctx.uid_map(v) for v in olds]
            value: Any = news if len(news) > 1 else news[0]
            _put(ds, btag, DataElement(btag, "UI", value, validation_mode=_IGNORE))
            key = keyword or f"({btag >> 16:04X},{btag & 0xFFFF:04X})"
            changes.replaced[prefix + key] = ("\\".join(olds), "\\".join(news))
            return True
        if kind in (_K_JITTER, _K_FUNC_JITTER) and vr in ("DA", "DT", "TM"):
            days = ctx.date_shift_days
            if isinstance(payload, int):
                days = payload
            elif isinstance(payload, str):
                return False  # var: days, general path reports errors
            if vr == "TM" or not days:
                return True
            values = text.split("\\")
            shifted = _shift(values if len(values) > 1 else text, vr, days)
            _put(ds, btag, DataElement(btag, vr, shifted or "", validation_mode=_IGNORE))
            return True
        if kind == _K_AGE and vr == "AS":
            capped = age_over_89(text)
            if capped != text:
                _put(ds, btag, DataElement(btag, vr, capped, validation_mode=_IGNORE))
            return True
        return False

    def _fast_text(
        self,
        ds: Dataset,
        btag: BaseTag,
        raw: RawDataElement,
        plan: _Plan,
        vr: str,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> bool:
        """Text values (PN, LO, SH, ...) decoded from the raw bytes."""
        kind, payload, rule, _dvr, keyword = plan
        if kind not in (_K_REMOVE, _K_BLANK, _K_LIT, _K_VAR, _K_CLEAN):
            return False
        texts = _raw_texts(ds, raw, vr)
        if texts is None:
            return False
        if kind == _K_CLEAN:
            cleaned = [_clean_text(t, tokens.get(), changes) for t in texts]
            cleaned = _kept_value(cleaned, texts, ctx, prefix, keyword)
            if cleaned != texts:
                value: Any = cleaned if len(cleaned) > 1 else (cleaned[0] if cleaned else "")
                _put(ds, btag, DataElement(btag, vr, value))
            return True
        new = ""
        if kind == _K_VAR:
            found = ctx.variables.get(payload)
            if found is None:
                return False  # the general path raises the error
            new = found
        elif kind == _K_LIT:
            new = str(payload)
        _note_texts(changes, texts, vr)
        if kind == _K_REMOVE:
            del ds[btag]
        elif kind == _K_BLANK:
            _put(ds, btag, DataElement(btag, vr, "", validation_mode=_IGNORE))
        else:
            _put(ds, btag, DataElement(btag, vr, new))
            if texts:
                key = keyword or f"({btag >> 16:04X},{btag & 0xFFFF:04X})"
                changes.replaced[prefix + key] = ("\\".join(texts), new)
        return True

    def _private_plan(self, ds: Dataset, tag: int, creator: str | None) -> _Plan | None:
        rule = self._resolve(tag, "", "", "", creator)
        if rule is None:
            return None
        raw = ds.get_item(tag, keep_deferred=True)
        vr = str(getattr(raw, "VR", "") or "UN")
        base = self._plan_for(rule, tag, vr, "")
        return (base[0], base[1], base[2], vr, "")

    def _record_removed(self, elem: DataElement, changes: Changes) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value or ():
                codec = text_codec(item)
                for sub in sorted(int(t) for t in item._dict):
                    raw: Any = item._dict[sub]
                    sub_vr = raw.VR
                    if (
                        type(raw) is RawDataElement
                        and sub_vr in _TEXT_VRS
                        and (raw.value is not None or not raw.length)  # not deferred
                    ):
                        # decoded from the bytes: converting would cost more than the walk
                        texts = element_strings(raw.value or b"", sub_vr, codec)
                        if texts is not None:
                            _note_texts(changes, texts, sub_vr)
                            continue
                    self._record_removed(item[sub], changes)
        elif vr in _TEXT_VRS:
            _note_texts(changes, _text_values(elem.value), vr)

    def _do(
        self,
        ds: Dataset,
        tag: int,
        plan: _Plan,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> None:
        kind, payload, rule = plan[0], plan[1], plan[2]
        elem = ds[tag]
        vr = elem.VR
        if kind == _K_STRUCT:
            if not structured.clean_sequence(self, ds, tag, ctx, changes, prefix, tokens):
                self._record_removed(elem, changes)  # not a sequence in this file: dropped
                del ds[tag]
            return
        if kind == _K_SEQ:
            if vr != "SQ":  # dictionary says SQ, the file disagrees: nothing to recurse into
                return
            seq_name = elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            for i, item in enumerate(elem.value or ()):
                self._walk(item, ctx, changes, f"{prefix}{seq_name}[{i}].", tokens)
            return
        if kind == _K_REMOVE:
            self._record_removed(elem, changes)
            del ds[tag]
            return
        if kind == _K_BLANK:
            self._record_removed(elem, changes)
            if vr == "SQ":
                elem.value = DicomSequence([])
            else:
                elem.value = "" if vr in _STRING_VRS else None
            return
        if kind == _K_AGE:
            if elem.value:
                elem.value = age_over_89(str(elem.value))
            return
        value = elem.value
        if kind == _K_DUMMY:  # a Type 1 attribute the recipe removes or blanks
            if vr != "UI":
                self._record_removed(elem, changes)
                elem.value = payload
                return
            kind = _K_UID
        if kind in (_K_UID, _K_UID_DEFAULT):
            if not value:
                return
            olds = _text_values(value)
            if kind == _K_UID_DEFAULT and all(v in UID_dictionary for v in olds):
                return
            news = [ctx.uid_map(v) for v in olds]
            elem.value = news if len(news) > 1 else news[0]
            self._note(changes, prefix, elem, tag, "\\".join(olds), "\\".join(news))
            return
        if kind in (_K_JITTER, _K_FUNC_JITTER):
            if value in (None, ""):
                return
            days = ctx.date_shift_days
            if isinstance(payload, int):
                days = payload
            elif isinstance(payload, str):
                days = self._int_var(ctx, payload, rule, elem, tag)
            shifted = _shift(value, vr, days) if days else value
            if shifted is None:
                elem.value = ""
            elif shifted is not value:
                elem.value = shifted
            return
        if kind == _K_CLEAN:
            if value in (None, "") or vr not in _STRING_VRS:
                if value not in (None, ""):
                    self._record_removed(elem, changes)
                    elem.value = None
                return
            texts = _text_values(value)
            cleaned = [_clean_text(t, tokens.get(), changes) for t in texts]
            cleaned = _kept_value(cleaned, texts, ctx, prefix, elem.keyword)
            if cleaned != texts:
                elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
            return
        # literal or variable replacement
        if kind == _K_VAR:
            assert rule is not None
            new = ctx.variables.get(payload)
            if new is None:
                raise RecipeError(
                    f"{rule.where}: REPLACE {tag_label(elem.keyword, tag)} needs the variable "
                    f"'{payload}', which the de-identification context does not provide"
                )
        else:
            new = str(payload)
        old = "\\".join(_text_values(value))
        self._record_removed(elem, changes)
        elem.value = _typed(new, vr, rule, elem, tag)
        if old:
            self._note(changes, prefix, elem, tag, old, new)

    @staticmethod
    def _int_var(
        ctx: DeidContext, name: str, rule: _Rule | None, elem: DataElement, tag: int
    ) -> int:
        where = rule.where if rule is not None else "recipe"
        try:
            return int(ctx.variables[name])
        except (KeyError, ValueError):
            raise RecipeError(
                f"{where}: JITTER {tag_label(elem.keyword, tag)} needs an integer variable '{name}'"
            ) from None

    @staticmethod
    def _note(
        changes: Changes, prefix: str, elem: DataElement, tag: int, old: str, new: str
    ) -> None:
        key = elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        changes.replaced[prefix + key] = (old, new)

    def _add(self, ds: Dataset, rule: _Rule, ctx: DeidContext, changes: Changes) -> None:
        tag = rule.fields[0].tag
        btag = BaseTag(tag)
        vr, keyword, _name = _entry(tag)
        if tag in ds._dict:
            _originals(ds, tag, vr, changes.originals)
        value = rule.value
        assert value is not None
        if value.kind == _FUNC and value.text == "method_codes":
            items = self._code_items.get(rule.where)
            if items is None:
                items = self._code_items[rule.where] = _method_code_items(value.args)
            # The item datasets are built once per recipe and shared (read-only):
            # building four Datasets per file costs more than the whole walk.
            _put(ds, btag, DataElement(btag, "SQ", DicomSequence(items), validation_mode=_IGNORE))
            return
        if value.kind == _VAR:
            found = ctx.variables.get(value.text)
            if found is None:
                raise RecipeError(
                    f"{rule.where}: ADD {tag_label(keyword, tag)} needs the variable "
                    f"'{value.text}', which the de-identification context does not provide"
                )
            text = found
        else:
            text = value.text
        if vr == "SQ":
            raise RecipeError(
                f"{rule.where}: ADD cannot create the sequence {tag_label(keyword, tag)}"
            )
        existing = ds.get_item(btag, keep_deferred=True)
        vr = str(existing.VR) if existing is not None and existing.VR else vr.split(" or ")[0]
        typed = _typed(text, vr, rule, None, tag)
        mode = _IGNORE if value.kind == _LIT else None  # literals were validated at load
        _put(ds, btag, DataElement(btag, vr, typed, validation_mode=mode))

    # ------------------------------------------------------------------ screen
    def screen(self, ds: Dataset) -> ScreenResult:
        """Evaluate the ``%filter`` groups on an already-read dataset.

        Labels are evaluated group by group in :attr:`filter_groups` order;
        the first matching label decides.  A ``whitelist`` hit means clean.

        Parameters
        ----------
        ds : pydicom.Dataset
            The dataset (pixel data need not be loaded).

        Returns
        -------
        ScreenResult
            Whether the pixels need scrubbing, why, and where.
        """
        for lab in self._labels:
            if not _label_matches(lab, ds):
                continue
            if lab.group.lower() == "whitelist":
                return ScreenResult(False, lab.group, lab.name, lab.reason, ())
            return ScreenResult(True, lab.group, lab.name, lab.reason, _coordinates(lab, ds))
        return ScreenResult(False, None, None, "no filter label matched", ())


_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEID_METHOD = 0x00120063
_DEID_METHOD_CODES = 0x00120064


def _implied_adds(adds: Sequence[_Rule], files: Sequence[Path]) -> list[_Rule]:
    """ADD rules the recipe's own ADDs require for a valid file.

    ``PatientIdentityRemoved YES`` (deid's bundled recipes add it) makes
    DeidentificationMethod or its code sequence Type 1 (PS3.3 C.7.1.1): when
    no rule adds either, DeidentificationMethod names the recipe files.
    """
    added = {rule.fields[0].tag: rule for rule in adds}
    said = added.get(_PATIENT_IDENTITY_REMOVED)
    if (
        said is None
        or said.value is None
        or said.value.kind != _LIT
        or said.value.text.strip().upper() != "YES"
        or _DEID_METHOD in added
        or _DEID_METHOD_CODES in added
    ):
        return []
    text = ("sendit with " + ", ".join(Path(p).name for p in files))[:64].strip()
    field = _Field("tag", tag=_DEID_METHOD)
    value = _Value(_LIT, text)
    return [_Rule(Action.ADD, (field,), value, said.source, said.where, "DeidentificationMethod")]


def _breaks_identity(rule: _Rule) -> bool:
    """Whether ``rule`` would leave an identity UID (:data:`IDENTITY_TAGS`) missing or invalid."""
    action, value = rule.action, rule.value
    if action in (Action.REMOVE, Action.BLANK, Action.JITTER):
        return True
    if action is Action.REPLACE and value is not None:
        return value.kind == _VAR or (value.kind == _FUNC and value.text != "uid")
    return False


def _kept_value(
    cleaned: list[str], texts: list[str], ctx: DeidContext, prefix: str, keyword: str
) -> list[str]:
    """``cleaned``, or the dummy value when cleaning emptied an attribute the IOD requires
    with a value (Type 1 / 1C: StructureSetLabel, RTPlanLabel ...)."""
    if any(cleaned) or not any(texts):
        return cleaned
    required = iodtypes.requirement(ctx.sop_class_uid, prefix, keyword)
    return [iodtypes.DUMMY] if required is iodtypes.Requirement.VALUE else cleaned


def _iod_plan(plan: _Plan, tag: int, raw: Any, sop_class: str, prefix: str) -> _Plan:
    """REMOVE or BLANK as the attribute's Type in the object's IOD allows (:mod:`.iodtypes`)."""
    if iodtypes.overlay_group(tag):
        return plan  # overlays go whole (see Recipe._public_plan)
    vr = str(getattr(raw, "VR", "") or "")
    if vr in ("", "UN"):
        vr = plan[3]
    required = iodtypes.requirement(sop_class, prefix, plan[4])
    effect = iodtypes.effect(plan[0] == _K_REMOVE, required, vr)
    if effect is None:
        return plan
    return (_IOD_EFFECTS[effect], iodtypes.dummy_value(vr), plan[2], plan[3], plan[4])


def _typed(text: str, vr: str, rule: _Rule | None, elem: DataElement | None, tag: int) -> Any:
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        try:
            return int(text) if vr in _INT_VRS else float(text)
        except ValueError:
            where = rule.where if rule is not None else "recipe"
            keyword = elem.keyword if elem is not None else _entry(tag)[1]
            raise RecipeError(
                f"{where}: the value for {tag_label(keyword, tag)} must be a number (VR {vr})"
            ) from None
    return text


def clean_text(text: str, tokens: _Tokens, changes: Changes) -> str:
    """``func:clean_text`` of one value with the file's tokens (for :mod:`.structured`)."""
    return _clean_text(text, tokens.get(), changes)


def record_originals(ds: Dataset, tag: int, vr: str, changes: Changes) -> None:
    """Report the current values of element ``tag`` of ``ds`` as originals (for the gate)."""
    _originals(ds, tag, vr, changes.originals)


def shift_value(value: Any, vr: str, days: int) -> Any:
    """A DA / DT value moved by ``days`` (None when it cannot be parsed)."""
    return _shift(value, vr, days)


def _clean_text(text: str, tokens: list[str], changes: Changes) -> str:
    """Remove known identifying values and date/number patterns from ``text``."""
    low = text.lower()
    out = text
    for tok in tokens:
        if tok in low:
            pattern = re.compile(
                r"(?<![A-Za-z0-9])" + re.escape(tok) + r"(?![A-Za-z0-9])", re.IGNORECASE
            )
            found = pattern.findall(out)
            if found:
                changes.removed_text.extend(found)
                out = pattern.sub(" ", out)
                low = out.lower()
    if any(c.isdigit() for c in out):
        found = _GENERIC_PHI.findall(out)
        if found:
            changes.removed_text.extend(found)
            out = _GENERIC_PHI.sub(" ", out)
    out = descriptors.clean_words(out)
    if out == text:
        return text
    return re.sub(r"\s{2,}", " ", out).strip(" ^-_,;:/")


# --------------------------------------------------------------------------- filters


def _contenders(ds: Dataset, cond: _Cond) -> tuple[bool, list[str]]:
    """(present, string values) of the filter field; top level only, as deid."""
    if cond.tag is None:
        return False, []
    elem = ds.get(cond.tag)
    if elem is None:
        return False, []
    value = elem.value
    if elem.VR == "SQ":
        return True, []
    if isinstance(value, (MultiValue, list, tuple)):
        items = [str(v) for v in value]
        return True, [*items, "\\".join(items)]
    if value is None:
        return True, [""]
    if isinstance(value, bytes):
        return True, []
    return True, [str(value)]


def _cond_matches(cond: _Cond, ds: Dataset) -> bool:
    present, values = _contenders(ds, cond)
    action = cond.action
    if action == "missing":
        return not present
    if action == "present":
        return present
    if action == "empty":
        return present and all(not v.strip() for v in values)
    if action in ("contains", "notcontains"):
        assert cond.regex is not None
        hit = any(cond.regex.search(v.strip()) for v in values)
        return hit if action == "contains" else not hit
    term = cond.value.strip().lower()
    if action in ("equals", "notequals"):
        hit = any(v.strip().lower() == term for v in values)
        return hit if action == "equals" else not hit
    if action == "startswith":
        return any(v.strip().lower().startswith(term) for v in values)
    return any(v.strip().lower().endswith(term) for v in values)  # endswith


def _combine(flags: Iterable[bool], ops: Iterable[str]) -> bool:
    """Left-to-right and/or, as deid's ``evaluate_group``."""
    it = iter(flags)
    result = next(it)
    for op, flag in zip(ops, it, strict=False):
        result = (result or flag) if op == "or" else (result and flag)
    return result


def _label_matches(lab: _Label, ds: Dataset) -> bool:
    if not lab.lines:
        return bool(lab.coordinates)  # coordinates only: always applies
    result = False
    for i, line in enumerate(lab.lines):
        flag = _combine((_cond_matches(c, ds) for c in line.conds), line.inner)
        if i == 0:
            result = flag
        elif line.operator == "or":
            result = result or flag
        else:
            result = result and flag
    return result


def _coordinates(lab: _Label, ds: Dataset) -> tuple[tuple[int, int, int, int], ...]:
    return coordinate_boxes(lab.coordinates, ds)


def coordinate_boxes(specs: Sequence[str], ds: Dataset) -> tuple[tuple[int, int, int, int], ...]:
    """Scrub boxes ``(x0, y0, x1, y1)`` of a filter label's ``coordinates`` on ``ds``.

    A spec is ``"x0,y0,x1,y1"``, ``"all"`` (the whole image) or ``"from:Keyword"``
    (the regions of a sequence such as ``SequenceOfUltrasoundRegions``).
    """
    boxes: list[tuple[int, int, int, int]] = []
    for spec in specs:
        if spec == "all":
            cols, rows = ds.get("Columns"), ds.get("Rows")
            boxes.append((0, 0, int(cols or 0), int(rows or 0)))
        elif spec.startswith("from:"):
            regions = ds.get(spec[5:])
            items = list(regions) if isinstance(regions, DicomSequence) else []
            for region in items:
                try:
                    boxes.append(
                        (
                            int(region.RegionLocationMinX0),
                            int(region.RegionLocationMinY0),
                            int(region.RegionLocationMaxX1),
                            int(region.RegionLocationMaxY1),
                        )
                    )
                except AttributeError:
                    continue
        else:
            x0, y0, x1, y1 = (int(v) for v in spec.split(",") if v.strip())
            boxes.append((x0, y0, x1, y1))
    return tuple(boxes)
