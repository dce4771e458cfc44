"""Inspect's per-file work: read one file's header, make its table row, screen it.

:func:`read_one` probes a file (:func:`sendit_helpers.core.dicomio.probe`,
parsing only the elements the table and the screen read), extracts the
:data:`FIELDS` of the files table and screens the image with the ``%filter``
rules (:class:`~sendit_helpers.deid.screening.Screener`); :func:`read_all`
runs it over a batch's files on the local pool or Dask.  The stage itself
(:mod:`sendit_helpers.stages.inspect`) spools the rows and builds the tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from sendit_helpers.core import executors
from sendit_helpers.core.dicomio import probe
from sendit_helpers.core.resources import content_digests
from sendit_helpers.deid.screening import FieldError, FieldReader, Screener, parse_tags

if TYPE_CHECKING:
    from sendit_helpers.deid.recipes import Recipe

#: Header fields kept in ``files.parquet``: (column, keyword).
FIELDS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "StudyTime",
    "PatientBirthDate",
    "StudyDescription",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "Modality",
    "BodyPartExamined",
    "PatientSex",
    "PatientAge",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "PhotometricInterpretation",
    "BurnedInAnnotation",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
)
#: Header fields stored as integers in the files table.
INT_FIELDS: tuple[str, ...] = (
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
)
FIELD_TAGS: tuple[int, ...] = tuple(int(tag_for_keyword(k) or 0) for k in FIELDS)
_INT_TAGS = frozenset(int(tag_for_keyword(k) or 0) for k in INT_FIELDS)
_IMAGE_TYPE = 0x00080008


@lru_cache(maxsize=4)
def screen_recipe(
    filter_recipes: tuple[str, ...], use_deid: bool, digests: tuple[str, ...] = ()
) -> Recipe:
    """The loaded filter recipes (the reference screen, :meth:`Recipe.screen`).

    ``digests`` (:func:`~sendit_helpers.core.resources.content_digests` of the
    files) only key the cache: a file edited at the same path is loaded again.
    """
    from sendit_helpers.deid.recipes import Recipe

    return Recipe.load(filter_recipes, include_default=False, include_deid_filters=use_deid)


class ReadPlan(NamedTuple):
    reader: FieldReader
    """Reads the table columns and every screened field once per file."""
    screener: Screener | None
    tags: frozenset[int] | None
    """The elements to parse (:func:`~sendit_helpers.deid.screening.parse_tags`); None: all."""


@lru_cache(maxsize=4)
def read_plan(
    filter_recipes: tuple[str, ...], use_deid: bool, digests: tuple[str, ...] = ()
) -> ReadPlan:
    """Per-process compiled work for :func:`read_one` (one per recipe set and content)."""
    screener = (
        Screener(screen_recipe(filter_recipes, use_deid, digests))
        if filter_recipes or use_deid
        else None
    )
    tags = [*FIELD_TAGS, *(screener.tags if screener is not None else ())]
    boxes = screener.box_tags if screener is not None else ()
    parse = parse_tags([*tags, *boxes])
    return ReadPlan(
        FieldReader(tags, cell=table_cell), screener, None if parse is None else frozenset(parse)
    )


def table_cell(tag: int, value: Any) -> Hashable:
    """A header value as a table cell: None, int (for :data:`INT_FIELDS`) or str."""
    if value is None or value == "":
        return None
    if tag in _INT_TAGS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if tag == _IMAGE_TYPE:
        return "\\".join(str(v) for v in value) if not isinstance(value, str) else value
    return str(value)


def reference_value(ds: Dataset, keyword: str) -> Any:
    """One table cell read with ``Dataset.get``: the reference :func:`table_cell` agrees with."""
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return None
    if keyword in INT_FIELDS:
        try:
            return int(elem)
        except (TypeError, ValueError):
            return None
    if keyword == "ImageType":
        return "\\".join(str(v) for v in elem) if not isinstance(elem, str) else elem
    return str(elem)


@lru_cache(maxsize=64)
def _syntax_name(uid: str) -> str:
    return str(UID(uid).name)


def _transfer_syntax(ds: Dataset) -> str:
    """The name of the file's transfer syntax (from its file meta)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        tsyntax = None
    else:
        # dcmread has already decoded it (to choose the encoding): skip the keyword look-up.
        elem = meta._dict.get(0x00020010)
        tsyntax = elem.value if isinstance(elem, DataElement) else meta.get("TransferSyntaxUID")
    return _syntax_name(str(tsyntax)) if tsyntax else "(none: implicit VR little endian assumed)"


@lru_cache(maxsize=1024)
def _coordinates_json(boxes: tuple[tuple[int, int, int, int], ...]) -> str:
    return json.dumps([list(c) for c in boxes])


def read_one(
    path: str,
    filter_recipes: tuple[str, ...] = (),
    use_deid: bool = True,
    digests: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Probe one file and, if DICOM, extract its row and screen it.

    Returns a plain dict (cheap to send between processes) with ``kind`` and
    ``reason`` always set.  A header value pydicom cannot decode makes the
    file an ``error`` (the reason names the field, never its value).
    ``digests`` are the filter files' :func:`content_digests` (read now when None).
    """
    if digests is None:
        digests = content_digests(filter_recipes)
    plan = read_plan(filter_recipes, use_deid, digests)
    found = probe(path, plan.tags)
    row: dict[str, Any] = {
        "source_path": path,
        "size_bytes": found.size,
        "kind": found.kind,
        "reason": found.reason,
    }
    ds = found.dataset
    if found.kind != "dicom" or ds is None:
        return row
    try:
        fields = plan.reader.read(ds)
        screen = plan.screener.screen(ds, fields) if plan.screener is not None else None
    except FieldError as exc:
        row.update(kind="error", reason=f"unreadable header value: {exc}")
        return row
    row["transfer_syntax"] = _transfer_syntax(ds)
    row["has_pixels"] = found.pixel_offset is not None
    row.update(zip(FIELDS, [fields[tag].cell for tag in FIELD_TAGS], strict=True))
    if screen is not None:
        row.update(
            flagged=bool(screen.flagged),
            group=screen.group,
            label=screen.label,
            reason_screen=screen.reason,
            coordinates=_coordinates_json(screen.coordinates),
        )
    return row


def _read_chunk(
    paths: list[str], filter_recipes: tuple[str, ...], use_deid: bool, digests: tuple[str, ...]
) -> list[dict[str, Any]]:
    return [read_one(p, filter_recipes, use_deid, digests) for p in paths]


def read_all(
    paths: Sequence[Path],
    *,
    workers: int = 1,
    filter_recipes: Sequence[str] = (),
    use_deid: bool = True,
    progress: bool = True,
    executor: str = "local",
    scheduler: str = "",
) -> list[dict[str, Any]]:
    """Run :func:`read_one` over many files, in order, on a process pool or Dask when
    ``workers`` > 1 (see :func:`sendit_helpers.core.executors.map_chunks`)."""
    return map_read(
        _read_chunk,
        [os.fspath(p) for p in paths],
        workers=workers,
        filter_recipes=filter_recipes,
        use_deid=use_deid,
        progress=progress,
        executor=executor,
        scheduler=scheduler,
    )


def map_read(
    chunk: Callable[..., list[Any]],
    names: Sequence[str],
    *,
    workers: int,
    filter_recipes: Sequence[str],
    use_deid: bool,
    progress: bool,
    executor: str,
    scheduler: str,
    **fixed: Any,
) -> list[Any]:
    """``chunk`` over the files ``names``, in order, with inspect's read plan (the per-file
    work of :func:`read_all` and of the inspect stage's spooled read).

    ``chunk`` is called with a list of names and ``filter_recipes``, ``use_deid``,
    ``digests`` and ``fixed`` as keywords, and returns one result per name, on a
    process pool or Dask when ``workers`` > 1
    (:func:`sendit_helpers.core.executors.map_chunks`).  The filter files'
    digests are read once, and the read plan compiled, before the pool starts.
    """
    recipes = tuple(os.fspath(r) for r in filter_recipes)
    digests = content_digests(recipes)  # once per batch: an edited filter file is seen
    read_plan(recipes, use_deid, digests)  # compiled before the pool starts: workers inherit it
    return executors.map_chunks(
        partial(chunk, filter_recipes=recipes, use_deid=use_deid, digests=digests, **fixed),
        names,
        workers=workers,
        executor=executor,
        scheduler=scheduler,
        progress=progress,
        desc="inspect",
        serial_below=64,
    )
