"""The ``cleaned`` table: one row per de-identified image, and the values it keeps.

:func:`describe` reads a de-identified data set once and gives its row
(nested sequences flattened as ``Sequence.Keyword``) and the values still in
it, which the de-identify stage subtracts from the values the recipe removed
before they become the leak gate's.  Raw elements are decoded from their
bytes where that gives what pydicom's conversion would.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from sendit_helpers.deid.dicomwrite import item_strings, plain_tag, table_text, text_codec
from sendit_helpers.deid.recipemodel import GATE_VRS

__all__ = [
    "KEPT_VRS",
    "TABLE_SKIP_VRS",
    "TECHNICAL_KEYWORDS",
    "WORDS",
    "describe",
    "describe_element",
    "flatten",
]

#: Value representations whose kept values are never treated as identifying.
KEPT_VRS = GATE_VRS | {"CS", "AS", "IS", "DS"}
#: Technical (device and station) fields whose values and words, where the
#: outputs keep them, are never treated as identifying (an InstitutionName
#: "TOSHIBA" beside a Manufacturer "TOSHIBA_MEC"); see :class:`.gatepolicy.Policy`.
#: A field the recipe removes or blanks (StationName, DeviceSerialNumber in the
#: default recipe) keeps nothing, so it gives nothing here.
TECHNICAL_KEYWORDS = frozenset(
    {
        "Manufacturer",
        "ManufacturerModelName",
        "ManufacturerModelVersion",
        "SoftwareVersions",
        "ConvolutionKernel",
        "ImplementationVersionName",
        "SecondaryCaptureDeviceManufacturer",
        "SecondaryCaptureDeviceManufacturerModelName",
        "SecondaryCaptureDeviceSoftwareVersions",
        "StationName",
        "DeviceSerialNumber",
        "DeviceDescription",
        "DeviceLabel",
        "DetectorDescription",
        "DetectorManufacturerName",
        "DetectorManufacturerModelName",
        "TransducerData",
        "ReceiveCoilName",
        "ReceiveCoilManufacturerName",
        "TransmitCoilName",
        "SequenceName",
        "PulseSequenceName",
    }
)
#: What separates the words of a kept value.
WORDS = re.compile(r"[^0-9a-z]+")
#: Value representations copied into the ``cleaned`` table.
TABLE_SKIP_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"})
_MAX_TABLE_TEXT = 256


_KEYWORDS: dict[int, str] = {}


def _key(tag: int) -> str:
    """``Keyword``, or ``ggggeeee`` for a tag pydicom does not know (as ``flatten`` names it)."""
    found = _KEYWORDS.get(tag)
    if found is None:
        keyword = dictionary_keyword(tag) if dictionary_has_tag(tag) else ""  # as elem.keyword
        found = _KEYWORDS[tag] = keyword or f"{tag >> 16:04X}{tag & 0xFFFF:04X}"
    return found


def _vr(elem: Any, tag: int) -> str:
    """The VR pydicom gives the element once converted, or "" when only converting tells."""
    vr = elem.VR
    if type(elem) is RawDataElement:
        if vr == "UN":
            return ""
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                return ""
            if " or " in vr:
                return ""
    return str(vr)


def describe(
    ds: Dataset,
    prefix: str = "",
    out: dict[str, Any] | None = None,
    kept: set[str] | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """The cleaned-table row of a de-identified data set and its kept values, in one pass.

    Parameters
    ----------
    ds : pydicom.Dataset
        The de-identified data set (raw elements are decoded without being
        converted where the bytes suffice).
    prefix, out, kept
        Used by the recursion into sequence items.

    Returns
    -------
    row : dict of str to str
        :func:`flatten`'s row.
    kept : set of str
        Case-folded values of every element (any depth, private ones too)
        with a :data:`KEPT_VRS` VR, plus the words of CS values and of
        :data:`TECHNICAL_KEYWORDS` fields: values still in the output are not
        identifying under this recipe.
    """
    out = {} if out is None else out
    kept = set() if kept is None else kept
    items = ds._dict
    codec: str | None = None
    codec_known = False
    for btag, elem in sorted(items.items(), key=plain_tag):
        tag = btag.real
        vr = _vr(elem, tag)
        if not vr:
            elem = ds[tag]
            vr = str(elem.VR)
        group = tag >> 16
        public = not group & 1 and group != 0x7FE0
        if vr == "SQ":
            key = f"{prefix}{_key(tag)}." if public else ""
            for item in ds[tag].value or ():
                if public:
                    describe(item, key, out, kept)
                else:
                    describe(item, "", {}, kept)
            continue
        if vr in TABLE_SKIP_VRS:
            continue
        if not codec_known:
            codec, codec_known = text_codec(ds), True
        describe_element(ds, tag, elem, vr, codec, prefix if public else None, out, kept)
    return out, kept


def describe_element(
    ds: Dataset,
    tag: int,
    elem: Any,
    vr: str,
    codec: str | None,
    prefix: str | None,
    out: dict[str, Any],
    kept: set[str],
) -> None:
    """:func:`describe` for one element that is not a sequence (``prefix`` None: private).

    ``ds`` is only used when the raw bytes do not suffice and pydicom must
    convert the element.
    """
    if vr in KEPT_VRS:
        values = item_strings(ds, tag, elem, vr, codec)[1]
        folded = [v.casefold() for v in values]
        kept.update(folded)
        if vr == "CS" or (prefix is not None and _key(tag) in TECHNICAL_KEYWORDS):
            kept.update(t for v in folded for t in WORDS.split(v) if t)
    if prefix is None:
        return
    text = table_text(elem, vr, codec, functools.partial(ds.__getitem__, tag))
    if text is None:
        return
    key = prefix + _key(tag)
    text = text[:_MAX_TABLE_TEXT]
    out[key] = f"{out[key]} | {text}" if key in out and out[key] != text else text


def flatten(ds: Dataset, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """De-identified header as a flat dict; nested sequences as ``Seq.Keyword``."""
    return describe(ds, prefix, out)[0]
