"""``func:clean_text``: identifying values cut out of free text.

The file's own names, IDs and dates (:data:`~sendit_helpers.deid.recipemodel.CLEAN_SOURCE_TAGS`,
captured before the walk changes them) and the context's identifying values become
tokens (``_Tokens``); :func:`clean_text` removes them, date and long-number patterns,
and words :mod:`~sendit_helpers.deid.descriptors` does not allow, recording what it cut
in :class:`~sendit_helpers.deid.recipemodel.Changes`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from sendit_helpers.deid import descriptors
from sendit_helpers.deid.dicomwrite import simple_codec
from sendit_helpers.deid.recipefields import _entry
from sendit_helpers.deid.recipemodel import _TEXT_VRS, CLEAN_SOURCE_TAGS, Changes, DeidContext

__all__ = [
    "clean_text",
]

_GENERIC_PHI = re.compile(
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"  # 2021-03-04
    r"|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # 03/04/2021
    r"|\d{6,}"  # long digit runs (MRNs, accession numbers, compact dates)
)


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


def clean_text(text: str, tokens: _Tokens, changes: Changes) -> str:
    """``func:clean_text`` of one value with the file's tokens (for :mod:`.structured`)."""
    return _clean_text(text, tokens.get(), changes)


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
