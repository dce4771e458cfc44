"""Fast, exact header reads and ``%filter`` screening for the inspect stage.

:meth:`sendit_helpers.deid.recipes.Recipe.screen` is the reference: it evaluates
every filter label condition by condition, each one a ``Dataset.get`` (about
540 look-ups and a few dozen value conversions per file for the deid bundled
filters).  This module gives the same answers much faster:

* :class:`FieldReader` reads the few header fields a stage needs (the table
  columns and every field a filter label names) once per file into a dict of
  :class:`Field`.  A field's decoded form is memoized on its *raw* encoding
  (tag, VR, value bytes, VR/endian encoding and the data set's character set),
  which fully determines pydicom's conversion for public tags with an
  unambiguous VR.  Files of one batch share most values (modality,
  manufacturer, series, image size ...), so most fields are never converted.
* :class:`Screener` compiles the recipe's labels once into closures over those
  fields (left-to-right ``and``/``or`` with short-circuit, as deid), and
  memoizes the first matching label on the screened fields' values: the
  screen is a pure function of them.  Coordinates that depend on the file
  (``all``, ``from:Field``) are computed per file, as :meth:`Recipe.screen`.

``tests/test_screening.py`` checks :meth:`Screener.screen` against
:meth:`Recipe.screen` on generated batches and on every file bundled with
pydicom.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, MutableSequence
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from sendit_helpers.core.dicomio import PARSE_ERRORS, safe_reason
from sendit_helpers.core.errors import SenditError, tag_label
from sendit_helpers.deid.recipefilters import coordinate_boxes
from sendit_helpers.deid.recipemodel import ScreenResult
from sendit_helpers.deid.recipes import Recipe

__all__ = ["ABSENT", "Field", "FieldError", "FieldReader", "Screener", "field_of", "parse_tags"]

#: Errors a value conversion may raise (pydicom's plus a wrong-length binary value).
CONVERT_ERRORS = PARSE_ERRORS
_Box = tuple[int, int, int, int]
_Fields = Mapping[int, "Field"]
_NO_MATCH = ScreenResult(False, None, None, "no filter label matched", ())


class Field(NamedTuple):
    """One header field of one file, decoded once.

    Attributes
    ----------
    present : bool
        The element is in the data set (top level).
    texts : tuple of str
        The candidate strings deid's filters compare, stripped: each value of a
        multi-valued element and all of them joined with ``\\``; ``("",)`` for
        an empty value; none for sequences and binary values.
    lowered : tuple of str
        ``texts`` in lower case (for ``equals``, ``startswith``, ``endswith``).
    blank : bool
        Every candidate is blank (deid's ``empty``, together with ``present``).
    cell : Hashable
        The value as a table cell (what the reader's ``cell`` function made of
        it; None when absent or without a ``cell`` function).
    """

    present: bool
    texts: tuple[str, ...]
    lowered: tuple[str, ...]
    blank: bool
    cell: Hashable


#: An element not in the data set.
ABSENT = Field(False, (), (), True, None)


class FieldError(SenditError):
    """A header value pydicom cannot decode (the message names the tag, never the value)."""


def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or "(unknown)"


def field_of(ds: Dataset, tag: int, cell: Callable[[int, Any], Hashable] | None = None) -> Field:
    """Decode one top-level field with pydicom, exactly as ``Recipe.screen`` sees it.

    Parameters
    ----------
    ds : pydicom.Dataset
        The data set (converted in place, as ``Dataset.get`` does).
    tag : int
        The element's tag.
    cell : callable, optional
        ``cell(tag, value)`` -> the table cell for a present element.

    Returns
    -------
    Field

    Raises
    ------
    FieldError
        pydicom cannot decode the value.
    """
    try:
        elem = ds.get(tag)
    except CONVERT_ERRORS as exc:
        raise FieldError(_decode_error(tag, exc)) from None
    return ABSENT if elem is None else _field(elem, tag, cell)


def _decode_error(tag: int, exc: BaseException) -> str:
    """``cannot decode Keyword (gggg,eeee) (<cause>)``, the tag named once."""
    label = tag_label(_keyword(tag), tag)
    return f"cannot decode {label} ({safe_reason(exc).replace(f' on {label}', '', 1)})"


def _decode(
    tag: int,
    raw: RawDataElement,
    encoding: str | MutableSequence[str],
    ds: Dataset,
    cell: Callable[[int, Any], Hashable] | None,
) -> Field:
    """Decode a raw element as ``ds.get`` would, without storing it in ``ds``.

    Only for tags :func:`_memoizable` accepts: for them ``Dataset.__getitem__``
    is exactly this conversion (no ambiguous-VR correction applies).
    """
    try:
        elem = convert_raw_data_element(raw, encoding=encoding, ds=ds)
    except CONVERT_ERRORS as exc:
        raise FieldError(_decode_error(tag, exc)) from None
    return _field(elem, tag, cell)


def _field(elem: DataElement, tag: int, cell: Callable[[int, Any], Hashable] | None) -> Field:
    """The :class:`Field` of a decoded element (the candidates of ``Recipe.screen``)."""
    value = elem.value
    texts: list[str]
    if elem.VR == "SQ":
        texts = []
    elif isinstance(value, (str, int, float)):  # the common case first (no ABC check)
        texts = [str(value)]
    elif isinstance(value, (MultiValue, list, tuple)):
        items = [str(v) for v in value]
        texts = [*items, "\\".join(items)]
    elif value is None:
        texts = [""]
    elif isinstance(value, bytes):
        texts = []
    else:
        texts = [str(value)]
    stripped = tuple(v.strip() for v in texts)
    return Field(
        True,
        stripped,
        tuple(v.lower() for v in stripped),
        all(not v for v in stripped),
        cell(tag, value) if cell is not None else None,
    )


def _memoizable(tag: int) -> bool:
    """True when a raw element of ``tag`` decodes the same whatever else the data set holds.

    Private tags (their VR may come from the private creator) and tags with an
    ambiguous VR (``US or SS`` ..., corrected from other elements) are not.
    """
    if tag >> 16 & 1 or tag == 0x00080005:  # private; Specific Character Set decodes by default
        return False
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return True  # decoded by its own VR, or as UN
    return " or " not in vr


def parse_tags(tags: Iterable[int]) -> tuple[int, ...] | None:
    """The elements to parse so that :class:`FieldReader` reads ``tags`` as from a full parse.

    Every field in ``tags`` decodes from its own raw element when it is public
    with an unambiguous VR (:func:`_memoizable`), so a data set holding only
    those elements (pydicom's ``specific_tags``; Specific Character Set is
    always kept) gives the same fields.  A private tag (its VR may come from
    the private creator) or an ambiguous VR (corrected from Pixel
    Representation ...) needs other elements: then None, parse them all.

    Parameters
    ----------
    tags : iterable of int
        The fields read.

    Returns
    -------
    tuple of int or None
        ``tags`` without repeats, or None.
    """
    wanted = tuple(dict.fromkeys(int(t) for t in tags))
    if all(_memoizable(t) or t == 0x00080005 for t in wanted):
        return wanted
    return None


class FieldReader:
    """Reads a fixed set of top-level fields from data sets, memoizing decoded values.

    Parameters
    ----------
    tags : iterable of int
        The fields to read.
    cell : callable, optional
        ``cell(tag, value)`` -> hashable table cell of a present element (see
        :attr:`Field.cell`).
    max_entries : int
        Memo size; it is emptied when full (a batch rarely has that many
        distinct values in the fields read).
    max_per_tag : int
        Distinct values memoized per field: a field whose value differs in every
        file (``SOPInstanceUID``) would otherwise grow the memo by one entry
        per file without a single hit.  Values met later are decoded each time.
    """

    def __init__(
        self,
        tags: Iterable[int],
        cell: Callable[[int, Any], Hashable] | None = None,
        max_entries: int = 20_000,
        max_per_tag: int = 256,
    ) -> None:
        self.tags: tuple[int, ...] = tuple(dict.fromkeys(int(t) for t in tags))
        self._cell = cell
        # Look elements up by BaseTag: Dataset._dict's keys compare cheaply with their own type.
        self._plan = tuple((t, BaseTag(t), _memoizable(t)) for t in self.tags)
        self._memo: dict[tuple[Any, ...], Field] = {}
        self._max = max_entries
        self._per_tag = max_per_tag
        self._stored: dict[int, int] = {}
        """Entries of :attr:`_memo` per tag."""

    def read(self, ds: Dataset) -> dict[int, Field]:
        """The fields of ``ds``: tag -> :class:`Field` (:data:`ABSENT` when missing).

        Raises
        ------
        FieldError
            A value pydicom cannot decode.
        """
        # Dataset._dict holds what dcmread found (RawDataElement until first access);
        # reading it directly avoids pydicom's per-access tag parsing and conversion.
        elements: Mapping[Any, Any] = ds._dict
        memo, cell = self._memo, self._cell
        charset: Any = None
        encoding: str | MutableSequence[str] = ""
        out: dict[int, Field] = {}
        for tag, btag, cacheable in self._plan:
            raw = elements.get(btag)
            if raw is None:
                out[tag] = ABSENT
                continue
            if (
                cacheable
                and raw.__class__ is RawDataElement
                and (raw.value is not None or not raw.length)
            ):
                if charset is None:
                    encoding = ds.original_character_set or ds._character_set
                    charset = encoding if isinstance(encoding, str) else tuple(encoding)
                key = (
                    tag,
                    raw.VR,
                    raw.value,
                    raw.is_implicit_VR,
                    raw.is_little_endian,
                    charset,
                )
                found = memo.get(key)
                if found is None:
                    found = _decode(tag, raw, encoding, ds, cell)
                    self._remember(tag, key, found)
                out[tag] = found
            else:
                out[tag] = field_of(ds, tag, cell)
        return out

    def _remember(self, tag: int, key: tuple[Any, ...], found: Field) -> None:
        """Memoize a decoded value, unless ``tag`` has :attr:`_per_tag` values memoized."""
        stored = self._stored.get(tag, 0)
        if stored >= self._per_tag:
            return
        if len(self._memo) >= self._max:
            self._memo.clear()
            self._stored.clear()
            stored = 0
        self._memo[key] = found
        self._stored[tag] = stored + 1


# ------------------------------------------------------------------ compiled labels
_Test = Callable[[_Fields], bool]


def _absent_result(action: str) -> bool:
    """What a condition on a field that is not in the data set evaluates to."""
    return action in ("missing", "notcontains", "notequals")


def _compile_cond(action: str, tag: int | None, value: str, regex: Any) -> _Test:
    """One filter criterion as a function of the fields (same semantics as ``Recipe.screen``)."""
    if tag is None:  # a field name the dictionary does not know: never present
        const = _absent_result(action)
        return lambda _f: const
    term = value.strip().lower()
    if action == "missing":
        return lambda f: not f[tag].present
    if action == "present":
        return lambda f: f[tag].present
    if action == "empty":
        return lambda f: f[tag].present and f[tag].blank
    if action == "contains":
        search = regex.search
        return lambda f: any(map(search, f[tag].texts))
    if action == "notcontains":
        search = regex.search
        return lambda f: not any(map(search, f[tag].texts))
    if action == "equals":
        return lambda f: term in f[tag].lowered
    if action == "notequals":
        return lambda f: term not in f[tag].lowered
    if action == "startswith":
        return lambda f: any(v.startswith(term) for v in f[tag].lowered)
    if action == "endswith":
        return lambda f: any(v.endswith(term) for v in f[tag].lowered)
    raise ValueError(f"unknown filter criterion {action!r}")


def _chain(tests: list[_Test], ops: list[str]) -> _Test:
    """Left-to-right ``and``/``or`` of ``tests`` (deid's ``evaluate_group``), short-circuited.

    ``ops[i]`` joins ``tests[i + 1]`` to the result so far; a test is skipped
    when it cannot change the result (the tests have no side effects).
    """
    if len(tests) == 1:
        return tests[0]
    first, rest = tests[0], list(zip([op == "or" for op in ops], tests[1:], strict=True))

    def run(f: _Fields) -> bool:
        result = first(f)
        for is_or, test in rest:
            if result is is_or:  # True or x -> True; False and x -> False
                continue
            result = test(f)
        return result

    return run


def _compile_label(lab: Any) -> _Test:
    if not lab.lines:
        const = bool(lab.coordinates)  # coordinates only: always applies
        return lambda _f: const
    lines = [
        _chain(
            [_compile_cond(c.action, c.tag, c.value, c.regex) for c in line.conds],
            list(line.inner),
        )
        for line in lab.lines
    ]
    return _chain(lines, [line.operator for line in lab.lines[1:]])


def _static_boxes(specs: tuple[str, ...]) -> tuple[_Box, ...] | None:
    """The boxes when none depends on the file, else None."""
    boxes: list[_Box] = []
    for spec in specs:
        if spec == "all" or spec.startswith("from:"):
            return None
        try:
            x0, y0, x1, y1 = (int(v) for v in spec.split(",") if v.strip())
        except ValueError:
            return None  # let the per-file path meet the error as Recipe.screen would
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def _box_tags(specs: Iterable[tuple[str, ...]]) -> tuple[int, ...]:
    """Tags :func:`_boxes` reads for these coordinate specs (Rows/Columns for ``all``)."""
    tags: dict[int, None] = {}
    for spec in (one for label in specs for one in label):
        if spec == "all":
            tags.update({0x00280010: None, 0x00280011: None})
        elif spec.startswith("from:"):
            tag = tag_for_keyword(spec[5:])
            if tag is not None:
                tags[int(tag)] = None
    return tuple(tags)


def _boxes(specs: tuple[str, ...], ds: Dataset) -> tuple[_Box, ...]:
    """Scrub boxes of a label on ``ds`` (as ``Recipe.screen``)."""
    return coordinate_boxes(specs, ds)


class _Compiled(NamedTuple):
    test: _Test
    group: str
    name: str
    reason: str
    specs: tuple[str, ...]
    result: ScreenResult | None
    """The result when this label decides and its boxes do not depend on the file."""


class Screener:
    """The ``%filter`` labels of a :class:`~sendit_helpers.deid.recipes.Recipe`, compiled.

    :meth:`screen` returns what ``recipe.screen(ds)`` returns, faster.

    Parameters
    ----------
    recipe : Recipe
        The loaded recipe (its filter labels, in evaluation order).
    max_entries : int
        Size of the memo of decisions and of the field reader used when
        :meth:`screen` gets no fields (each emptied when full).
    """

    def __init__(self, recipe: Recipe, max_entries: int = 20_000) -> None:
        compiled: list[_Compiled] = []
        tags: dict[int, None] = {}
        for lab in recipe._labels:
            for line in lab.lines:
                tags.update((c.tag, None) for c in line.conds if c.tag is not None)
            boxes = _static_boxes(lab.coordinates)
            if lab.group.lower() == "whitelist":
                result: ScreenResult | None = ScreenResult(
                    False, lab.group, lab.name, lab.reason, ()
                )
            elif boxes is not None:
                result = ScreenResult(True, lab.group, lab.name, lab.reason, boxes)
            else:
                result = None
            compiled.append(
                _Compiled(
                    _compile_label(lab), lab.group, lab.name, lab.reason, lab.coordinates, result
                )
            )
        self._labels = tuple(compiled)
        self.tags: tuple[int, ...] = tuple(tags)
        """Every field a label condition names (what :meth:`screen` needs read)."""
        self.box_tags: tuple[int, ...] = _box_tags(c.specs for c in compiled)
        """The elements a matching label's boxes are read from (``all``, ``from:Keyword``)."""
        self._reader = FieldReader(self.tags, max_entries=max_entries)
        self._memo: dict[tuple[Field, ...], int] = {}
        self._max = max_entries

    def first_match(self, fields: _Fields) -> int:
        """Index of the first label matching ``fields``, -1 when none does (not memoized)."""
        for index, lab in enumerate(self._labels):
            if lab.test(fields):
                return index
        return -1

    def screen(self, ds: Dataset, fields: _Fields | None = None) -> ScreenResult:
        """Screen one data set; the same result as ``Recipe.screen(ds)``.

        Parameters
        ----------
        ds : pydicom.Dataset
            The data set (pixel data need not be loaded).
        fields : mapping of int to Field, optional
            Its fields as read by a :class:`FieldReader` covering :attr:`tags`
            (read here when not given).

        Returns
        -------
        ScreenResult

        Raises
        ------
        FieldError
            A screened value pydicom cannot decode.
        """
        if fields is None:
            fields = self._reader.read(ds)
        key = tuple(map(fields.__getitem__, self.tags))
        index = self._memo.get(key)
        if index is None:
            index = self.first_match(fields)
            if len(self._memo) >= self._max:
                self._memo.clear()
            self._memo[key] = index
        if index < 0:
            return _NO_MATCH
        lab = self._labels[index]
        if lab.result is not None:
            return lab.result
        return ScreenResult(True, lab.group, lab.name, lab.reason, _boxes(lab.specs, ds))
