"""Structured content and graphics: SR content items, acquisition context, GSPS text.

PS3.15 Table E.1-1 gives four sequences the code *C* under its **Clean
Structured Content** option (``ContentSequence``, ``AcquisitionContextSequence``,
``SpecimenPreparationSequence``) and its **Clean Graphics** option
(``GraphicAnnotationSequence``).  The Basic Profile alone empties them, which
leaves every Structured Report (SR of every class, Key Object Selection, TID 1500
measurement reports) without its content and every presentation state without
its annotations.  With these options the recipe engine keeps the sequences and
de-identifies each item like the header:

The verifying observers of an SR (``VerifyingObserverSequence``, which the Basic
Profile also empties although a verified SR requires it) are kept the same way, and
the annotations of a waveform (``WaveformAnnotationSequence``: an ECG's
interpretation as free text, which the profile does not list) are cleaned too.

* the recipe's own rules apply at every depth (the engine walks each item):
  ``PersonName`` (PNAME items, e.g. Person Observer Name) is replaced, ``Date``
  and ``DateTime`` (DATE / DATETIME items) and ``ObservationDateTime`` move by
  the patient's date shift, ``UID`` (UIDREF items), ``ObservationUID`` and every
  ``ReferencedSOPInstanceUID`` go through the batch's UID map, so the references
  of IMAGE / COMPOSITE / SCOORD3D items resolve to the de-identified objects;
* then what no rule decided is cleaned here (:func:`clean_item`): free text
  (``TextValue`` of TEXT items, ``UnformattedTextValue`` of GSPS text objects,
  any LO / SH / LT / ST / UT / UC value) goes through ``func:clean_text``, the
  Clean Descriptors machinery (the file's names, IDs and dates cut out, then
  only known or technical words kept); person names become ``ANONYMIZED``;
  dates are shifted; a text that cleaning empties becomes ``ANONYMIZED`` (a content
  item's value is required).  Coded entries (any ``...CodeSequence``) are kept as they
  are: they come from controlled terminologies.

Every name and date changed here, and every identifying value ``func:clean_text``
cuts out of a text, is reported in :class:`~.recipemodel.Changes` like the engine's
own, so the leak gate searches ``release/`` for it (words dropped from a text
only because they are unknown are not: see :mod:`.descriptors`).

The options apply where the recipe leaves these sequences to the default
profile (the default recipe's ``BLANK``, or no rule at all); a rule in a user's
recipe (``KEEP``, ``REMOVE``, ``BLANK``) is obeyed as written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

if TYPE_CHECKING:
    from sendit_helpers.deid.cleantext import _Tokens
    from sendit_helpers.deid.recipemodel import Changes, DeidContext
    from sendit_helpers.deid.recipes import Recipe

__all__ = [
    "CLEAN_GRAPHICS_CODE",
    "CLEAN_STRUCTURED_CODE",
    "DUMMY_NAME",
    "STRUCTURED_TAGS",
    "clean_item",
    "clean_sequence",
    "method_code_items",
    "person_names",
]

#: The sequences whose items are de-identified here: ContentSequence (0040,A730),
#: AcquisitionContextSequence (0040,0555), SpecimenPreparationSequence (0040,0610)
#: (Clean Structured Content), GraphicAnnotationSequence (0070,0001) (Clean Graphics)
#: VerifyingObserverSequence (0040,A073), whose items the profile's rules clean
#: (observer name and organization replaced, date shifted, identification code emptied)
#: where emptying the sequence would break a verified SR (Type 1C), and
#: WaveformAnnotationSequence (0040,B020), whose free-text annotations (an ECG's
#: interpretation) the profile does not name at all.
STRUCTURED_TAGS: frozenset[int] = frozenset(
    {0x0040A730, 0x00400555, 0x00400610, 0x00700001, 0x0040A073, 0x0040B020}
)
#: Free-text value representations cleaned with ``func:clean_text``.
FREE_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
#: The replacement of a person's name no rule decided, and of a text that cleaning
#: emptied (the profile's dummy value).
DUMMY_NAME = "ANONYMIZED"
#: PS3.16 CID 7050 codes added to DeidentificationMethodCodeSequence when the
#: options were applied.
CLEAN_STRUCTURED_CODE = ("113104", "Clean Structured Content Option")
CLEAN_GRAPHICS_CODE = ("113103", "Clean Graphics Option")
_GRAPHICS = 0x00700001


def clean_sequence(
    recipe: Recipe,
    ds: Dataset,
    tag: int,
    ctx: DeidContext,
    changes: Changes,
    prefix: str,
    tokens: _Tokens,
) -> bool:
    """De-identify the items of the structured sequence ``tag`` of ``ds`` in place.

    Parameters
    ----------
    recipe : Recipe
        The recipe whose rules apply inside the items.
    ds : pydicom.Dataset
        The data set (or item) holding the sequence.
    tag : int
        One of :data:`STRUCTURED_TAGS`.
    ctx, changes, prefix, tokens
        As the engine's walk: pseudonyms, date shift and UID map; what was
        changed; the path of ``ds``; the ``func:clean_text`` tokens of the file.

    Returns
    -------
    bool
        False when the element is not a sequence in this file (nothing was done).
    """
    elem = ds[tag]
    if elem.VR != "SQ":
        return False
    name = elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    tokens.add_names(person_names(elem.value or ()))
    for index, item in enumerate(elem.value or ()):
        recipe.walk_item(item, ctx, changes, f"{prefix}{name}[{index}].", tokens)
        clean_item(recipe, item, ctx, changes, tokens)
    return True


def person_names(items: Iterable[Dataset]) -> list[str]:
    """Every person name (PN value) in ``items`` at any depth: PNAME items, observer names.

    They join the file's ``func:clean_text`` tokens before the items are cleaned, so a
    name given in a PNAME item is cut out of the TEXT items beside it as the patient's
    name is (pydicom's ``reportsi.dcm``: a Person Observer Name ``Enter text`` and a
    TEXT item ``Enter text``).
    """
    names: list[str] = []
    for item in items:
        for elem in item.iterall():
            if elem.VR == "PN" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                names.extend(str(v) for v in values if str(v))
    return names


def clean_item(
    recipe: Recipe, item: Dataset, ctx: DeidContext, changes: Changes, tokens: _Tokens
) -> None:
    """Clean what no recipe rule decided in one (already walked) item, and in its sequences.

    Parameters
    ----------
    recipe : Recipe
        The recipe that walked ``item``; elements it has a rule for are left
        as it made them.
    item : pydicom.Dataset
        A content item, text object, graphic annotation ... (in place).
    ctx : DeidContext
        The date shift.
    changes : Changes
        Receives the original values of what is changed here.
    tokens : _Tokens
        The file's identifying values for ``func:clean_text``.
    """
    from sendit_helpers.deid.cleantext import clean_text
    from sendit_helpers.deid.dateshift import shift_value
    from sendit_helpers.deid.recipeplan import record_originals

    for btag in list(item.keys()):
        tag = int(btag)
        if (tag >> 16) & 1:
            continue  # private: the walk removed it unless the safe list keeps it
        elem = item[btag]
        vr = str(elem.VR)
        if vr == "SQ":
            if (
                tag in STRUCTURED_TAGS  # nested content: its own clean_sequence did it
                or elem.keyword.endswith("CodeSequence")  # controlled terminology: kept
                or recipe.decides(tag, vr)
            ):
                continue
            for sub in elem.value or ():
                clean_item(recipe, sub, ctx, changes, tokens)
            continue
        if recipe.decides(tag, vr) or elem.value in (None, ""):
            continue
        if vr in FREE_TEXT_VRS:
            # What clean_text cuts out (the file's names, IDs, dates) is reported by it;
            # words it drops only because they are unknown are not identifying values.
            texts = [str(v) for v in elem.value] if elem.VM > 1 else [str(elem.value)]
            cleaned = [clean_text(t, tokens, changes) for t in texts]
            if not any(cleaned):  # a content item's value is required (TextValue: Type 1C)
                cleaned = [DUMMY_NAME]
            if cleaned != texts:
                elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
        elif vr == "PN":
            record_originals(item, tag, vr, changes)
            changes.removed_text.append(str(elem.value))
            elem.value = DUMMY_NAME
        elif vr in ("DA", "DT") and ctx.date_shift_days:
            record_originals(item, tag, vr, changes)
            shifted = shift_value(elem.value, vr, ctx.date_shift_days)
            elem.value = "" if shifted is None else shifted


def method_code_items(ds: Dataset, cleaned: set[int]) -> DicomSequence | None:
    """DeidentificationMethodCodeSequence with the codes of the options applied to ``ds``.

    Parameters
    ----------
    ds : pydicom.Dataset
        A de-identified data set.
    cleaned : set of int
        The :data:`STRUCTURED_TAGS` cleaned in it.

    Returns
    -------
    pydicom.sequence.Sequence or None
        A new sequence: the existing items (shared, unchanged) and one item
        per option code not yet listed; None when nothing is to be added or the
        data set has no such sequence (the recipe did not ask for method codes).
    """
    existing = ds.get("DeidentificationMethodCodeSequence")
    if existing is None or not cleaned:
        return None
    wanted = []
    if cleaned - {_GRAPHICS}:
        wanted.append(CLEAN_STRUCTURED_CODE)
    if _GRAPHICS in cleaned:
        wanted.append(CLEAN_GRAPHICS_CODE)
    have = {str(item.get("CodeValue", "")) for item in existing}
    items = list(existing)
    for value, meaning in wanted:
        if value in have:
            continue
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        items.append(code)
    return None if len(items) == len(existing) else DicomSequence(items)
