"""De-identification element by element, remembered: the de-identify stage's fast path.

The files of one series (or study) share nearly their whole header: of the
~110 top-level elements of a CT image, a handful differ from slice to slice
(SOPInstanceUID, InstanceNumber, ImagePositionPatient, SliceLocation, a few
times and window values).  Under the default recipe, and any recipe whose
rules act on elements by tag, what de-identification does to one top-level
element depends only on its own bytes and on a small *context*: the
pseudonyms and date shift of the job, the character set, the SOP class
(REMOVE and BLANK follow the attribute's Type in the object's IOD,
:mod:`~sendit_helpers.deid.iodtypes`), and (for
``func:clean_text``) the file's identifying values
(:data:`~sendit_helpers.deid.recipemodel.CLEAN_SOURCE_TAGS`).

:class:`ElementCache` therefore scans a file's header as raw bytes (no
pydicom data set), and for each top-level element looks up what the recipe
made of the same bytes in the same context: the element as written, its
cells of the ``cleaned`` table, the values it leaves in the output and what
it removed or replaced (:class:`~sendit_helpers.deid.recipemodel.Changes`).  Elements
seen for the first time are de-identified by the recipe engine itself
(:meth:`~sendit_helpers.deid.recipes.Recipe.apply_element` on a data set holding
just that element and its character set), written by
:mod:`~sendit_helpers.deid.dicomwrite` and described by
:func:`sendit_helpers.deid.cleaned.describe`: the result is by construction
the engine's, only computed once per distinct element.  Elements that differ
in every file are computed every time and not remembered.

Files the cache cannot reproduce exactly return None and take the general
path: anything but explicit VR little endian (uncompressed or encapsulated),
no ``DICM`` preamble, elements after the pixel data, elements out of order,
a private element the recipe keeps, an element an ADD rule would overwrite,
a recipe that changes the character set, structured content (SR, GSPS: see
:mod:`.structured`).  ``tests/test_elementcache.py``
checks that both paths give the same bytes, rows, lookup and gate values on
generated batches with planted identifiers and on pydicom's test files.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from sendit_helpers.core.explicitvr import LONG_VRS, UL, UNDEFINED
from sendit_helpers.deid import cleaned
from sendit_helpers.deid.dicomwrite import (
    encode_meta,
    text_codec,
    write_elements,
)
from sendit_helpers.deid.fragments import (
    SHORTCUT_CHECKS,
    Fragment,
    UidShortcut,
    same_fragment,
    uid_element,
    uid_value,
)
from sendit_helpers.deid.headerscan import (
    HeaderScan,
    is_compressed,
    scan_header,
    top_elements,
)
from sendit_helpers.deid.recipemodel import CLEAN_SOURCE_TAGS, FILE_META_DROP, Changes, DeidContext
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.deid.structured import STRUCTURED_TAGS

__all__ = ["CacheStats", "CachedResult", "ElementCache"]

_SQ_UN = ("SQ", "UN", None)
_CHARSET = 0x00080005
_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_BITS_ALLOCATED = 0x00280100
_IMPLEMENTATION_CLASS = 0x00020012
_SPECIAL = frozenset({_SOP_CLASS, _SOP_INSTANCE, _BITS_ALLOCATED})
_META_GL_HEAD = b"\x02\x00\x00\x00UL\x04\x00"
#: Distinct values of one tag remembered per context (a study): enough for its series;
#: per-image values (SOPInstanceUID, positions) stop being remembered after as many.
VOLATILE_AFTER = 64
#: Contexts (pseudonyms x character set x identifying values) remembered per worker.
MAX_CONTEXTS = 8
#: Elements remembered per context (a safety bound; a series needs ~120).
MAX_ELEMENTS = 20_000


@dataclass(slots=True)
class _Context:
    """Everything remembered for one context (see the module docstring)."""

    ctx: DeidContext
    charset: bytes
    base: dict[BaseTag, Any]
    """The character set element as read (empty without one)."""
    encoding: Any
    """The character set's Python encodings, as the reader sets them."""
    codec: str | None
    """Python codec of the text values (:func:`~sendit_helpers.deid.dicomwrite.text_codec`)."""
    tokens: Any
    adds: list[tuple[int, Fragment]]
    memo: dict[bytes, Fragment]
    misses: dict[int, int]
    scratch: Dataset | None = None
    """The data set :meth:`ElementCache._kept_public` reuses (the character set alone at rest)."""
    shortcuts: dict[int, UidShortcut | None] = dataclasses.field(default_factory=dict)
    """Per UID tag: how a remapped UID's fragment is made without the engine (None: never)."""


@dataclass(slots=True)
class CacheStats:
    """What an :class:`ElementCache` did (for tests and benchmarks)."""

    files: int = 0
    """Files offered to :meth:`ElementCache.deidentify`."""
    general: int = 0
    """Of those, files left to the general path."""
    elements: int = 0
    """Elements of the files it de-identified."""
    computed: int = 0
    """Elements the recipe engine had to de-identify (the rest were remembered)."""


@dataclass(frozen=True, slots=True)
class CachedResult:
    """A de-identified header, ready to be followed by the original pixel data bytes."""

    header: bytes
    pixel_at: int
    """Offset of the pixel data element in the source (the tail to copy)."""
    pixel_value_offset: int
    """Bytes from the pixel data element's tag to its value."""
    cleaned: dict[str, Any]
    kept: set[str]
    changes: Changes
    native16: bool


def _dataset(chunks: bytes) -> Dataset:
    """Read top-level explicit VR little endian elements as the file reader would."""
    return read_dataset(BytesIO(chunks), False, True)


def _tiny(context: _Context, tag: int, raw: bytes) -> Dataset:
    """A data set holding the element ``raw`` and the character set, as the file reader gives it.

    Public elements other than sequences are made directly (the reader's
    :class:`~pydicom.dataelem.RawDataElement`); the rest are read by pydicom.
    """
    vr = raw[4:6]
    if tag == _CHARSET or (tag >> 16) & 1 or vr in (b"SQ", b"UN") or len(raw) < 8:
        return _dataset(raw if tag == _CHARSET else context.charset + raw)
    head = 12 if vr in LONG_VRS else 8
    length = len(raw) - head
    btag = BaseTag(tag)
    elem = RawDataElement(
        btag, vr.decode("ascii"), length, raw[head:] if length else None, head, False, True
    )
    ds = Dataset(dict(context.base))
    ds._dict[btag] = elem
    ds.set_original_encoding(False, True, context.encoding)
    return ds


def _encoded(ds: Dataset, tag: int, raw: bytes, before: Any, charset: bytes) -> bytes:
    """The bytes the writer gives element ``tag`` of ``ds`` (``raw`` when untouched)."""
    elem = ds._dict[BaseTag(tag)]
    if (
        elem is before
        and type(elem) is RawDataElement
        and elem.VR not in ("UN", None)
        and elem.length != UNDEFINED
        and (tag & 0xFFFF or tag >> 16 <= 6)
        and tag != _CHARSET
    ):
        return raw  # written as read (dicomwrite.write_elements)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_elements(fp, ds, False, True)
    data = fp.getvalue()
    if tag == _CHARSET or not charset:
        return data
    if tag > _CHARSET and data.startswith(charset):
        return data[len(charset) :]
    if tag < _CHARSET and data.endswith(charset):
        return data[: len(data) - len(charset)]
    return _written(ds, tag)


def _written(ds: Dataset, tag: int) -> bytes:
    """The bytes :func:`~sendit_helpers.deid.dicomwrite.write_elements` writes for ``tag``."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_elements(fp, ds, False, True)
    data = fp.getvalue()
    found = top_elements(data, 0, len(data), 1 << 32)
    if found is None:
        raise RuntimeError("element cache: could not re-read a written element")
    for each, start, end in found[0]:
        if each == tag:
            return data[start:end]
    return b""


class ElementCache:
    """Remembers, per context, what the recipe makes of each distinct header element.

    Parameters
    ----------
    recipe : Recipe
        The compiled recipe.
    """

    def __init__(self, recipe: Recipe) -> None:
        self._recipe = recipe
        self._adds = recipe.add_tags
        sources = _SOURCE_SET if recipe.cleans_text else ()
        self._context_last = max(_CHARSET, _SOP_CLASS, _SOP_INSTANCE, *self._adds, *sources)
        """The highest tag :meth:`_context` looks at."""
        self.stats = CacheStats()
        self._contexts: OrderedDict[Hashable, _Context] = OrderedDict()
        self._meta: dict[tuple[bytes, str], tuple[bytes, bytes, bytes] | None] = {}
        """Output file meta around its SOP instance UID, per input meta and SOP class."""

    # ------------------------------------------------------------------ per file
    def deidentify(self, data: bytes, ctx: DeidContext) -> CachedResult | None:
        """De-identify the header of the whole file ``data``; None when the general path must.

        Raises
        ------
        RecipeError, and what pydicom raises on a malformed value
            As :meth:`Recipe.apply` and ``describe`` would on the same element.
        """
        stats = self.stats
        stats.files += 1
        found = scan_header(data)
        context = None if found is None else self._context(data, found.elements, ctx)
        done = None if found is None or context is None else self._fold(data, found, context)
        if done is None:
            stats.general += 1
        else:
            stats.elements += len(found.elements) if found is not None else 0
        return done

    def _context(
        self, data: bytes, elements: list[tuple[int, int, int]], ctx: DeidContext
    ) -> _Context | None:
        charset = b""
        sop_class = ""
        sources: list[bytes] = []
        present: set[int] = set()
        clean = self._recipe.cleans_text
        last = self._context_last
        for tag, start, end in elements:  # ascending (scan_header): stop past the last one wanted
            if tag > last:
                break
            if tag == _CHARSET:
                charset = data[start:end]
            elif clean and tag in _SOURCE_SET:
                sources.append(data[start:end])
            if tag in self._adds or tag in (_SOP_CLASS, _SOP_INSTANCE):
                present.add(tag)
                if tag == _SOP_CLASS:  # REMOVE/BLANK follow the Types of the object's IOD
                    head = 12 if data[start + 4 : start + 6] in LONG_VRS else 8  # UN too
                    sop_class = data[start + head : end].rstrip(b"\x00 ").decode("ascii", "replace")
        if present & self._adds or not {_SOP_CLASS, _SOP_INSTANCE} <= present:
            return None
        if sop_class != ctx.sop_class_uid:
            ctx = dataclasses.replace(ctx, sop_class_uid=sop_class)
        key = (
            tuple(sorted(ctx.variables.items())),
            ctx.date_shift_days,
            tuple(ctx.identifying_values),
            ctx.safe_private,
            ctx.uid_map,  # the mapper itself (an id could be reused once it is gone)
            ctx.sop_class_uid,
            charset,
            tuple(sources),
        )
        context = self._contexts.get(key)
        if context is not None:
            self._contexts.move_to_end(key)
            return context
        context = self._new_context(ctx, charset, b"".join(sources))
        if context is None:
            return None
        self._contexts[key] = context
        if len(self._contexts) > MAX_CONTEXTS:
            self._contexts.popitem(last=False)
        return context

    def _new_context(self, ctx: DeidContext, charset: bytes, sources: bytes) -> _Context | None:
        base = _dataset(charset)
        if charset:  # the character set must come through unchanged
            probe, changes = _dataset(charset), Changes()
            tokens = self._recipe.clean_tokens(probe, ctx)
            self._recipe.apply_element(probe, _CHARSET, ctx, changes, tokens)
            if _CHARSET not in probe or _written(probe, _CHARSET) != charset or _noted(changes):
                return None
        tokens = self._recipe.clean_tokens(_dataset(charset + sources), ctx)
        context = _Context(
            ctx,
            charset,
            dict(base._dict),
            base.original_character_set,
            text_codec(base),
            tokens,
            [],
            {},
            {},
        )
        context.adds = self._add_fragments(context)
        return context

    def _add_fragments(self, context: _Context) -> list[tuple[int, Fragment]]:
        ds = _dataset(context.charset)
        changes = Changes()
        self._recipe.apply_adds(ds, context.ctx, changes)
        row, kept = cleaned.describe(ds)
        out: list[tuple[int, Fragment]] = []
        for tag in sorted(self._adds):
            if tag not in ds:
                continue
            key = ds[tag].keyword or f"{tag >> 16:04X}{tag & 0xFFFF:04X}"
            cells = {k: v for k, v in row.items() if k == key or k.startswith(key + ".")}
            first = not out  # the rules' changes and kept values go with the first fragment
            out.append(
                (
                    tag,
                    Fragment(
                        _written(ds, tag),
                        cells,
                        kept if first else frozenset(),
                        changes if first else None,
                    ),
                )
            )
        return out

    # ------------------------------------------------------------------ elements
    def _fragment(self, context: _Context, tag: int, raw: bytes) -> Fragment | None:
        """The remembered fragment of ``raw`` (computed and remembered when new)."""
        shortcut = context.shortcuts.get(tag)
        fragment = None if shortcut is None else shortcut.make(context.ctx, tag, raw)
        if fragment is None or shortcut is None or shortcut.checked < SHORTCUT_CHECKS:
            computed = self._compute(context, tag, raw)
            if computed is None:
                return None
            if shortcut is not None and fragment is not None:
                if same_fragment(fragment, computed):
                    shortcut.checked += 1
                else:  # the recipe does more than remap this UID: always ask the engine
                    context.shortcuts[tag] = None
            elif tag not in context.shortcuts and raw[4:6] == b"UI" and not (tag >> 16) & 1:
                context.shortcuts[tag] = UidShortcut.learn(context.ctx, tag, raw, computed)
            fragment = computed
        self.stats.computed += 1
        seen = context.misses.get(tag, 0) + 1
        context.misses[tag] = seen
        if seen <= VOLATILE_AFTER and len(context.memo) < MAX_ELEMENTS:
            context.memo[raw] = fragment
        return fragment

    def _compute(self, context: _Context, tag: int, raw: bytes) -> Fragment | None:
        """What the recipe engine makes of one element (``raw``: creator + element if private)."""
        if tag in STRUCTURED_TAGS:
            return None  # SR / GSPS content: the engine also lists the options applied
        vr = raw[4:6]
        if (
            not (tag >> 16) & 1
            and tag & 0xFFFF
            and tag != _CHARSET
            and vr != b"SQ"
            and vr != b"UN"
            and self._recipe.keeps(tag, vr.decode("ascii"))
        ):
            return self._kept_public(context, tag, raw)  # as below, without a data set per element
        ds = _tiny(context, tag, raw)
        elem = ds._dict.get(BaseTag(tag))
        if (
            type(elem) is RawDataElement
            and not (tag >> 16) & 1
            and tag & 0xFFFF  # group lengths: the writer drops most of them
            and tag != _CHARSET
            and elem.VR not in _SQ_UN
            and self._recipe.keeps(tag, elem.VR)
        ):
            return self._kept(context, ds, tag, elem, raw)
        before = ds._dict.get(BaseTag(tag))
        changes = Changes()
        if not self._recipe.apply_element(ds, tag, context.ctx, changes, context.tokens):
            return None
        if tag not in ds:
            return Fragment(b"", {}, frozenset(), changes)
        row, kept = cleaned.describe(ds)
        if tag != _CHARSET:
            row.pop("SpecificCharacterSet", None)
        return Fragment(_encoded(ds, tag, raw, before, context.charset), row, kept, changes)

    def _kept_public(self, context: _Context, tag: int, raw: bytes) -> Fragment:
        """:meth:`_kept` for a public element, in the context's one scratch data set.

        The element is what :func:`_tiny` would hold (a raw element beside the
        character set); the data set is only read (and an element pydicom
        converts stored back), then emptied back to the character set.
        """
        ds = context.scratch
        if ds is None:
            ds = context.scratch = _tiny(context, tag, raw)
            del ds._dict[BaseTag(tag)]
        vr = raw[4:6]
        head = 12 if vr in LONG_VRS else 8
        length = len(raw) - head
        btag = BaseTag(tag)
        elem = RawDataElement(
            btag, vr.decode("ascii"), length, raw[head:] if length else None, head, False, True
        )
        ds._dict[btag] = elem
        try:
            return self._kept(context, ds, tag, elem, raw)
        finally:
            items = ds._dict
            items.clear()
            items.update(context.base)

    @staticmethod
    def _kept(
        context: _Context, ds: Dataset, tag: int, elem: RawDataElement, raw: bytes
    ) -> Fragment:
        """A public element the recipe keeps: written as read, described from its bytes."""
        row: dict[str, Any] = {}
        kept: set[str] = set()
        group = tag >> 16
        vr = str(elem.VR)
        if vr not in cleaned.TABLE_SKIP_VRS:
            prefix = "" if group != 0x7FE0 else None
            cleaned.describe_element(ds, tag, elem, vr, context.codec, prefix, row, kept)
        return Fragment(raw, row, kept)

    # ------------------------------------------------------------------ output
    def _fold(self, data: bytes, found: HeaderScan, context: _Context) -> CachedResult | None:
        """Put the file's fragments (and the ADD rules') together, in one pass over the elements."""
        memo = context.memo
        adds, n_adds, next_add = context.adds, len(context.adds), 0
        body: list[bytes] = [data[:128], b"DICM", b""]  # [2]: the file meta, made last
        row: dict[str, Any] = {}
        kept: set[str] = set()
        noted: list[Fragment] = []
        creators: list[Fragment] = []  # decided after their blocks: noted after the rest
        blocks: dict[int, bytes] = {}
        special: dict[int, bytes] = {}
        append, row_update, kept_update, memo_get = body.append, row.update, kept.update, memo.get
        specials = _SPECIAL
        for tag, start, end in found.elements:
            if next_add < n_adds:
                while next_add < n_adds and adds[next_add][0] < tag:
                    _tag, add = adds[next_add]
                    append(add.out)
                    row_update(add.row)
                    kept_update(add.kept)
                    next_add += 1
            raw = data[start:end]
            creator = False
            if (tag >> 16) & 1:
                elem_no = tag & 0xFFFF
                if 0x0010 <= elem_no <= 0x00FF:
                    blocks[tag] = raw
                    creator = True
                elif elem_no >= 0x1000:  # the creator decides the rule: part of the key
                    raw = blocks.get((tag & 0xFFFF0000) | (elem_no >> 8), b"") + raw
            fragment = memo_get(raw) or self._fragment(context, tag, raw)
            if fragment is None:
                return None
            append(fragment.out)
            if fragment.row:
                row_update(fragment.row)
            if fragment.kept:
                kept_update(fragment.kept)
            if fragment.noted:
                (creators if creator else noted).append(fragment)
            if tag in specials:
                special[tag] = fragment.out
        for _tag, add in adds[next_add:]:
            body.append(add.out)
            row.update(add.row)
            kept.update(add.kept)
        changes = Changes()
        for fragment in [*noted, *creators, *(add for _tag, add in adds)]:
            changes.originals.extend(fragment.originals)
            changes.removed_text.extend(fragment.removed_text)
            changes.replaced.update(fragment.replaced)
        sop_class = uid_value(special.get(_SOP_CLASS, b""))
        sop = uid_value(special.get(_SOP_INSTANCE, b""))
        if not sop_class or not sop:
            return None
        body[2] = self._file_meta(data, found.meta, sop_class, sop)
        for tag, start, end in found.meta:  # as engine.meta_kept on the general path
            if tag == _IMPLEMENTATION_CLASS:
                uid = data[start + 8 : end].rstrip(b"\x00 ").decode("ascii", "replace")
                if uid.strip():
                    kept.add(uid.strip().casefold())
        header = b"".join(body)
        native16 = special.get(_BITS_ALLOCATED, b"")[8:] == b"\x10\x00" and not (
            is_compressed(found.syntax)
        )
        return CachedResult(
            header,
            found.pixel_at,
            found.pixel_value_at - found.pixel_at,
            row,
            kept,
            changes,
            native16,
        )

    def _file_meta(
        self, data: bytes, meta: list[tuple[int, int, int]], sop_class: str, sop: str
    ) -> bytes:
        """The output file meta, as the general path writes it (remembered around the UID)."""
        rest = b"".join(data[s:e] for tag, s, e in meta if tag != 0x00020003)
        key = (rest, sop_class)
        if key not in self._meta:
            written = _meta_bytes(data, meta, sop_class, sop)
            if len(self._meta) >= MAX_ELEMENTS:
                self._meta.clear()
            self._meta[key] = _template(written, sop)
            return written
        template = self._meta[key]
        if template is None:
            return _meta_bytes(data, meta, sop_class, sop)
        head, before, after = template
        elem = uid_element(0x00020003, sop)
        return b"".join([head, UL.pack(len(before) + len(elem) + len(after)), before, elem, after])


_SOURCE_SET = frozenset(CLEAN_SOURCE_TAGS)


def _noted(changes: Changes) -> bool:
    return bool(changes.originals or changes.removed_text or changes.replaced)


def _meta_bytes(data: bytes, meta: list[tuple[int, int, int]], sop_class: str, sop: str) -> bytes:
    """File meta as the general path writes it: dropped tags gone, SOP class/instance set."""
    ds = FileMetaDataset(_dataset(b"".join(data[s:e] for _t, s, e in meta)))
    for tag in FILE_META_DROP:
        if tag in ds:
            del ds[tag]
    ds[0x00020003] = DataElement(0x00020003, "UI", sop)
    ds.MediaStorageSOPClassUID = UID(sop_class)
    return encode_meta(ds)


def _template(written: bytes, sop: str) -> tuple[bytes, bytes, bytes] | None:
    """Split written file meta around its MediaStorageSOPInstanceUID element."""
    elem = uid_element(0x00020003, sop)
    at = written.find(elem, 12)
    if written[:8] != _META_GL_HEAD or at < 0 or written.find(elem, at + 1) >= 0:
        return None
    return written[:8], written[12:at], written[at + len(elem) :]
