"""Attribute Types per IOD: what REMOVE and BLANK become so that a valid file stays valid.

PS3.15 E.1.1 ties the de-identification actions to the Type of the attribute in the object's
IOD (PS3.3): ``X`` removes, ``Z`` leaves zero length (allowed for Type 2), ``D`` puts a dummy
value of the right VR (Type 1); the combined codes of the profile (``X/Z``, ``X/D``,
``X/Z/D``) pick the one the Type allows.  A recipe's REMOVE and BLANK are read the same way
for the attribute as it is in the file being de-identified:

========================  =============================  ===================================
Type in the object's IOD  REMOVE                         BLANK
========================  =============================  ===================================
1, 1C (present: needed)   dummy value (:data:`DUMMY`)    dummy value
2, 2C                     zero length                    zero length (a sequence: no items)
3, or not in the IOD      removed                        removed (never an empty Type 3)
unknown                   as written                     as written
========================  =============================  ===================================

A Type 1 sequence is kept and its items de-identified by the recipe (the dummy of a
sequence).  "Unknown" is an object whose SOP class the table does not list, an attribute
nested more than one sequence deep, or a VR without a dummy (OB, OW, ...).

The table is ``params/reference/iod-attribute-types.json``, generated from the standard's
tables (as highdicom ships them) by ``scripts/generate_iod_types.py``; an attribute listed in
several modules of an IOD takes its strictest Type.

A removed overlay takes its whole group: :func:`overlay_anchor` names the Overlay Data element
whose action every other element of the same ``60xx`` group follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DUMMY",
    "TYPES_TABLE",
    "Effect",
    "Requirement",
    "dummy_value",
    "effect",
    "overlay_anchor",
    "overlay_group",
    "requirement",
    "types_for",
]

_NAME = "iod-attribute-types.json"
_SOURCE = Path(__file__).resolve().parents[2] / "params" / "reference" / _NAME
_BUNDLED = Path(__file__).resolve().parents[1] / "_bundled" / "params" / "reference" / _NAME
TYPES_TABLE: Path = _SOURCE if _SOURCE.exists() else _BUNDLED
"""The generated table (see :mod:`scripts.generate_iod_types`)."""

#: The dummy text of a Type 1 attribute the recipe removes or blanks (as the default recipe's).
DUMMY = "ANONYMIZED"
_ORDER = ("1", "1C", "2", "2C", "3")
_INDEX = re.compile(r"\[\d+\]$")
_CONTENT = "ContentSequence"


class Requirement(StrEnum):
    """What the object's IOD requires of an attribute present in the file."""

    VALUE = "value"
    """Type 1 or 1C: it must stay, with a value (a dummy when the recipe removes it)."""
    PRESENT = "present"
    """Type 2 or 2C: it must stay, zero length allowed."""
    OPTIONAL = "optional"
    """Type 3, or not part of the IOD: it may go, and goes rather than stay empty."""
    UNKNOWN = "unknown"
    """Not known here: the recipe's action is used as written."""


_REQUIREMENTS = {
    "1": Requirement.VALUE,
    "1C": Requirement.VALUE,
    "2": Requirement.PRESENT,
    "2C": Requirement.PRESENT,
    "3": Requirement.OPTIONAL,
}


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TYPES_TABLE.read_text())
    return data


@lru_cache(maxsize=256)
def types_for(sop_class_uid: str) -> Mapping[str, str] | None:
    """The Types of the attributes of one SOP class's IOD.

    Parameters
    ----------
    sop_class_uid : str
        The object's SOPClassUID.

    Returns
    -------
    mapping of str to str or None
        ``keyword`` (top level, every Type) or ``Sequence/keyword`` (items of a top-level
        sequence, Types 1, 1C, 2, 2C) -> the strictest Type over the IOD's modules; None
        when the SOP class is not in the table.
    """
    table = _table()
    iod = table["sop_classes"].get(sop_class_uid.strip("\x00 "))
    if iod is None or iod not in table["iods"]:
        return None
    merged: dict[str, str] = {}
    for module in table["iods"][iod]:
        for path, kind in table["modules"].get(module, {}).items():
            known = merged.get(path)
            if known is None or _ORDER.index(kind) < _ORDER.index(known):
                merged[path] = kind
    return merged


@lru_cache(maxsize=4096)
def requirement(sop_class_uid: str, prefix: str, keyword: str) -> Requirement:
    """What the IOD of ``sop_class_uid`` requires of ``keyword`` where it was found.

    Parameters
    ----------
    sop_class_uid : str
        The object's SOPClassUID (empty: unknown).
    prefix : str
        Where the attribute sits, as the recipe engine names it: ``""`` at the top level,
        ``"Sequence[0]."`` in an item of a top-level sequence, deeper prefixes beyond (only
        the SR content tree, ``ContentSequence`` in ``ContentSequence``, is known there:
        each level is the same content item macro).
    keyword : str
        The attribute's keyword (empty for private attributes: unknown).

    Returns
    -------
    Requirement
        VALUE, PRESENT, OPTIONAL, or UNKNOWN when the table cannot tell.
    """
    if not sop_class_uid or not keyword:
        return Requirement.UNKNOWN
    types = types_for(sop_class_uid)
    if types is None:
        return Requirement.UNKNOWN
    path = [_INDEX.sub("", part) for part in prefix.split(".") if part]
    if len(path) > 1 and all(part == _CONTENT for part in path):
        path = [_CONTENT]  # the SR content tree: every level is the same content item macro
    if not path:
        return _REQUIREMENTS[types.get(keyword, "3")]
    if len(path) == 1 and path[0] in types:  # the items of a sequence the IOD lists
        return _REQUIREMENTS[types.get(f"{path[0]}/{keyword}", "3")]
    return Requirement.UNKNOWN


#: Dummy values per VR (PS3.15 E.1.1 D: "a non-zero length value ... consistent with the VR").
_DUMMIES: dict[str, Any] = {
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"), DUMMY),
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "http://localhost/",
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV"), 0),
    **dict.fromkeys(("FL", "FD"), 0.0),
}


class Effect(StrEnum):
    """What a recipe's REMOVE or BLANK does once the attribute's Type is known."""

    REMOVE = "remove"
    BLANK = "blank"
    DUMMY = "dummy"
    """A dummy value of the VR (:func:`dummy_value`; UIDs through the UID map)."""
    ITEMS = "items"
    """A sequence kept, its items de-identified by the recipe."""


def effect(remove: bool, required: Requirement, vr: str) -> Effect | None:
    """What REMOVE (``remove``) or BLANK does to an attribute the IOD requires as ``required``.

    Returns
    -------
    Effect or None
        None: the recipe's action as written (unknown requirement, or no dummy for the VR).
    """
    if required is Requirement.VALUE:
        if vr == "SQ":
            return Effect.ITEMS
        return Effect.DUMMY if vr == "UI" or dummy_value(vr) is not None else None
    if required is Requirement.PRESENT:
        return Effect.BLANK if remove else None
    if required is Requirement.OPTIONAL:
        return None if remove else Effect.REMOVE
    return None


def dummy_value(vr: str) -> Any:
    """The dummy value of a VR, or None when it has none here (UI, SQ and binary VRs).

    UIDs are replaced through the de-identification's UID map and sequences keep their
    de-identified items instead (see the module docstring).
    """
    return _DUMMIES.get(vr)


def overlay_group(tag: int) -> bool:
    """Whether ``tag`` belongs to an overlay group (even groups ``6000``-``60FF``)."""
    group = tag >> 16
    return 0x6000 <= group <= 0x60FF and not group & 1


def overlay_anchor(tag: int) -> int | None:
    """The Overlay Data tag ``(60xx,3000)`` of the overlay group ``tag`` belongs to.

    Returns
    -------
    int or None
        ``(60xx,3000)`` for any other element of an overlay group (even groups 6000-60FF);
        None for Overlay Data itself and for tags outside overlays.
    """
    if overlay_group(tag) and tag & 0xFFFF != 0x3000:
        return (tag & 0xFFFF0000) | 0x3000
    return None
