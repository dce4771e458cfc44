"""The compiled plan: what the engine does to one element, as small integers, and its helpers.

Each tag's rule resolves once into a plan ``(kind, payload, rule, VR, keyword)`` (kinds
``_K_*``); REMOVE and BLANK follow the attribute's Type in the object's IOD
(:mod:`~sendit_helpers.deid.iodtypes`, ``_iod_plan``).  The helpers record the original
values of what the engine removes or changes (for the leak gate), write elements and
type literal values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from sendit_helpers.core.errors import RecipeError, tag_label
from sendit_helpers.deid import iodtypes
from sendit_helpers.deid.cleantext import _pn_parts
from sendit_helpers.deid.dicomwrite import item_strings
from sendit_helpers.deid.recipefields import _entry
from sendit_helpers.deid.recipemodel import (
    _FLOAT_VRS,
    _INT_VRS,
    _METHOD_CODES,
    GATE_VRS,
    Changes,
    DeidContext,
    _Rule,
)

__all__ = [
    "record_originals",
]

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


def record_originals(ds: Dataset, tag: int, vr: str, changes: Changes) -> None:
    """Report the current values of element ``tag`` of ``ds`` as originals (for the gate)."""
    _originals(ds, tag, vr, changes.originals)
