"""From review back to policy: a rectangle drawn on one image becomes a site ``%filter`` rule.

A scanner burns its text at the same place on every image of the same kind.
When a reviewer has drawn the rectangle once, :func:`add_rule` writes a deid
``%filter`` label that matches every image "like this one" (same
Manufacturer, ManufacturerModelName, Rows and Columns, as CTP's pixel
anonymizer and deid's ``coordinates`` rules do) with the rectangle as its
``coordinates``, into the site's filter file (setting ``SITE_FILTERS``;
default ``params/site-filters.deid``), with who made it and when.  The
inspect stage screens with that file before every other filter, so the next
batch from that scanner arrives in review with the rectangle suggested.

The values written are those of the de-identified header in quarantine
(device make, model and image size: technical values the recipe keeps),
never a name, an ID or the batch's name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from sendit_helpers.core.errors import RecipeError, ReviewError, tag_label
from sendit_helpers.core.resources import repo_root
from sendit_helpers.core.settings import typed
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.deid.scrub import Box, check_box

__all__ = ["SiteRule", "add_rule", "site_filters_path"]

#: The fields that say "an image like this one": the device and the image size.
MATCH_FIELDS = (
    ("Manufacturer", 0x00080070),
    ("ManufacturerModelName", 0x00081090),
    ("Rows", 0x00280010),
    ("Columns", 0x00280011),
)
#: Characters a value on a ``%filter`` line cannot carry (comment, operators, line breaks).
_UNSAFE = re.compile(r"[#\r\n\x00-\x1f]|\|\||\+")
_HEADER = (
    "FORMAT dicom\n\n"
    "# This site's pixel rules, made in review (03_review_phi: 'Make a rule').\n"
    "# The inspect stage screens with this file before every other %filter rule.\n"
)


@dataclass(frozen=True)
class SiteRule:
    """A rule :func:`add_rule` wrote.

    Attributes
    ----------
    label : str
        The ``LABEL`` name (device and size).
    path : Path
        The site filter file it went into.
    text : str
        The lines written.
    """

    label: str
    path: Path
    text: str


def site_filters_path(settings: Mapping[str, Any]) -> Path:
    """The site's filter file: ``SITE_FILTERS``, else ``params/site-filters.deid``."""
    configured = typed(settings).inspect.site_filters
    if configured:
        return Path(configured).expanduser()
    return repo_root() / "params" / "site-filters.deid"


def _condition(ds: Dataset, keyword: str, tag: int) -> str:
    """The ``%filter`` condition that ``ds``'s value of ``keyword`` satisfies."""
    if keyword not in ds:
        return f"missing {keyword}"
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    if not text:
        return f"empty {keyword}"
    if _UNSAFE.search(text):
        raise ReviewError(
            f"{tag_label(keyword, tag)} holds a character a %filter line cannot carry "
            "('#', '+', '||' or a control character); write this rule into the site filter "
            "file by hand"
        )
    return f"equals {keyword} {text}"


def add_rule(
    settings: Mapping[str, Any],
    ds: Dataset,
    boxes: Sequence[Box],
    who: str,
    when: datetime | None = None,
) -> SiteRule:
    """Append a ``%filter`` rule for images like ``ds`` with ``boxes`` as coordinates.

    A rule the file already has for the same device and image size is replaced.

    Parameters
    ----------
    settings : mapping
        Resolved settings (``SITE_FILTERS``).
    ds : pydicom.Dataset
        The image, as its de-identified header is in quarantine.
    boxes : sequence of Box
        The rectangles to scrub, in source pixels; each must fit the image.
    who : str
        The reviewer's name, written with the rule.
    when : datetime, optional
        When (default now, UTC).

    Returns
    -------
    SiteRule

    Raises
    ------
    ReviewError
        No rectangle, a rectangle outside the image, a value that cannot go on a
        filter line, or a file that does not parse afterwards (nothing is written then).
    """
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not boxes:
        raise ReviewError("a rule needs at least one rectangle; draw one on the image first")
    for box in boxes:
        problem = check_box(box, columns, rows)
        if problem:
            raise ReviewError(f"cannot make a rule: {problem}")
    conditions = [_condition(ds, keyword, tag) for keyword, tag in MATCH_FIELDS]
    device = " ".join(
        str(ds.get(k) or "").strip() for k in ("Manufacturer", "ManufacturerModelName")
    ).strip()
    label = f"Site rule: {device or 'unknown device'} {columns}x{rows}"
    stamp = (when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    who = re.sub(r"[#\r\n]", " ", who).strip() or "unknown"
    lines = [
        "",
        "%filter graylist",
        "",
        f"LABEL {label} # (made in review by {who}, {stamp})",
        "  " + conditions[0],
        *(f"  + {c}" for c in conditions[1:]),
        *(f"  coordinates {b.x},{b.y},{b.x + b.width},{b.y + b.height}" for b in boxes),
        "",
    ]
    text = "\n".join(lines)
    path = site_filters_path(settings)
    before = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    # a rule for the same device and size is replaced: the first matching label would win
    blocks = re.split(r"(?=\n%filter graylist\n\nLABEL )", before)
    before = "".join(b for b in blocks if f"\nLABEL {label} #" not in b)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(before + text, encoding="utf-8")
    try:
        recipe = Recipe.load([tmp], include_default=False, include_deid_filters=False)
        found = recipe.screen(ds)
    except RecipeError as exc:
        tmp.unlink()
        raise ReviewError(f"the rule would break {path}: {exc}") from None
    if found.label != label:
        tmp.unlink()
        raise ReviewError(
            f"the new rule does not match its own image in {path} (an earlier rule there, "
            f"{found.label!r}, matches first); edit that file"
        )
    os.replace(tmp, path)
    return SiteRule(label, path, text)
