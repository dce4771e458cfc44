"""``%filter`` screening: deid's filter labels evaluated on one data set.

``%filter`` screening (:meth:`~sendit_helpers.deid.recipes.Recipe.screen`) re-implements
deid's filter evaluation instead of calling ``deid.dicom.filter``/``has_burned_pixels``:
deid's parser silently drops ``startswith``/``endswith`` criteria, its
``load_combined_deid`` loses filter groups when combining files, and its
evaluator ANDs every line of a label (ignoring a leading ``||``) and
recompiles every regular expression for every file (~1 ms per file for the
~500 bundled criteria, against ~60 us here with precompiled patterns).
:meth:`~sendit_helpers.deid.recipes.Recipe.screen` and
:mod:`~sendit_helpers.deid.screening` use it; :func:`coordinate_boxes` resolves a label's
``coordinates`` into pixel boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from sendit_helpers.deid.recipemodel import _Cond, _Label

__all__ = [
    "coordinate_boxes",
]


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
