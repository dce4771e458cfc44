"""The recipe engine's actions: one element's plan carried out.

:class:`~sendit_helpers.deid.recipes.Recipe` resolves, per tag, the plan
(:mod:`~sendit_helpers.deid.recipeplan`) its rules give and walks a data set;
this module carries a plan out on one element: from the raw bytes when it can
(:func:`_fast`: removal, blanking, UID mapping, date shifting, the age cap, text
replaced or cleaned), else on the converted element (:func:`_act`), noting what
it removed or replaced in :class:`~sendit_helpers.deid.recipemodel.Changes` for
the leak gate; and the ADD rules (:func:`_add`).  Errors name the recipe line
and the tag, never a value.
"""

from __future__ import annotations

from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.config import IGNORE as _IGNORE
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from sendit_helpers.core.errors import RecipeError, tag_label
from sendit_helpers.deid.cleantext import _clean_text, _raw_texts, _text_values, _Tokens
from sendit_helpers.deid.dateshift import _shift, age_over_89
from sendit_helpers.deid.dicomwrite import element_strings, text_codec
from sendit_helpers.deid.recipefields import _entry
from sendit_helpers.deid.recipemodel import (
    _FUNC,
    _LIT,
    _STRING_VRS,
    _TEXT_VRS,
    _VAR,
    Changes,
    DeidContext,
    _Rule,
)
from sendit_helpers.deid.recipeplan import (
    _K_AGE,
    _K_BLANK,
    _K_CLEAN,
    _K_DUMMY,
    _K_FUNC_JITTER,
    _K_JITTER,
    _K_LIT,
    _K_REMOVE,
    _K_UID,
    _K_UID_DEFAULT,
    _K_VAR,
    _kept_value,
    _method_code_items,
    _note_texts,
    _originals,
    _Plan,
    _put,
    _typed,
)

__all__: list[str] = []


def _fast(
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
        return _fast_text(ds, btag, raw, plan, vr, ctx, changes, prefix, tokens)
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


def _record_removed(elem: DataElement, changes: Changes) -> None:
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
                _record_removed(item[sub], changes)
    elif vr in _TEXT_VRS:
        _note_texts(changes, _text_values(elem.value), vr)


def _act(
    ds: Dataset,
    tag: int,
    elem: DataElement,
    plan: _Plan,
    ctx: DeidContext,
    changes: Changes,
    prefix: str,
    tokens: _Tokens,
) -> None:
    """Carry out ``plan`` on the element ``elem`` (``ds[tag]``, converted): every action but
    recursing into a sequence (the recipe's walk does that)."""
    kind, payload, rule = plan[0], plan[1], plan[2]
    vr = elem.VR
    if kind == _K_REMOVE:
        _record_removed(elem, changes)
        del ds[tag]
        return
    if kind == _K_BLANK:
        _record_removed(elem, changes)
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
            _record_removed(elem, changes)
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
        _note(changes, prefix, elem, tag, "\\".join(olds), "\\".join(news))
        return
    if kind in (_K_JITTER, _K_FUNC_JITTER):
        if value in (None, ""):
            return
        days = ctx.date_shift_days
        if isinstance(payload, int):
            days = payload
        elif isinstance(payload, str):
            days = _int_var(ctx, payload, rule, elem, tag)
        shifted = _shift(value, vr, days) if days else value
        if shifted is None:
            elem.value = ""
        elif shifted is not value:
            elem.value = shifted
        return
    if kind == _K_CLEAN:
        if value in (None, "") or vr not in _STRING_VRS:
            if value not in (None, ""):
                _record_removed(elem, changes)
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
    _record_removed(elem, changes)
    elem.value = _typed(new, vr, rule, elem, tag)
    if old:
        _note(changes, prefix, elem, tag, old, new)


def _int_var(ctx: DeidContext, name: str, rule: _Rule | None, elem: DataElement, tag: int) -> int:
    where = rule.where if rule is not None else "recipe"
    try:
        return int(ctx.variables[name])
    except (KeyError, ValueError):
        raise RecipeError(
            f"{where}: JITTER {tag_label(elem.keyword, tag)} needs an integer variable '{name}'"
        ) from None


def _note(changes: Changes, prefix: str, elem: DataElement, tag: int, old: str, new: str) -> None:
    key = elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    changes.replaced[prefix + key] = (old, new)


def _add(
    ds: Dataset,
    rule: _Rule,
    ctx: DeidContext,
    changes: Changes,
    code_items: dict[str, list[Dataset]],
) -> None:
    """Carry out one ADD rule on the top-level ``ds`` (``code_items``: the recipe's
    DeidentificationMethodCodeSequence items per rule, built once and shared read-only)."""
    tag = rule.fields[0].tag
    btag = BaseTag(tag)
    vr, keyword, _name = _entry(tag)
    if tag in ds._dict:
        _originals(ds, tag, vr, changes.originals)
    value = rule.value
    assert value is not None
    if value.kind == _FUNC and value.text == "method_codes":
        items = code_items.get(rule.where)
        if items is None:
            items = code_items[rule.where] = _method_code_items(value.args)
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
        raise RecipeError(f"{rule.where}: ADD cannot create the sequence {tag_label(keyword, tag)}")
    existing = ds.get_item(btag, keep_deferred=True)
    vr = str(existing.VR) if existing is not None and existing.VR else vr.split(" or ")[0]
    typed = _typed(text, vr, rule, None, tag)
    mode = _IGNORE if value.kind == _LIT else None  # literals were validated at load
    _put(ds, btag, DataElement(btag, vr, typed, validation_mode=mode))
