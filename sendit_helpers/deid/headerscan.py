"""A DICOM file's header located as raw bytes, without pydicom (:func:`scan_header`).

Explicit VR little endian only: the file meta, each top-level element before
the pixel data as ``(tag, start, end)``, and where the pixel data element and
its value start.  Anything else gives None (the element cache's general path
takes those files).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from pydicom.uid import UID

from sendit_helpers.core.explicitvr import (
    HEAD,
    LONG_VRS,
    SHORT_VRS,
    UL,
    UNDEFINED,
    explicit_little,
    sequence_end,
)
from sendit_helpers.deid.dicomwrite import (
    PIXEL_DATA,
    encapsulated_end,
)


class HeaderScan(NamedTuple):
    """Where things are in a file read as bytes (see :func:`scan_header`)."""

    meta: list[tuple[int, int, int]]
    """``(tag, start, end)`` of each file meta element."""
    elements: list[tuple[int, int, int]]
    """``(tag, start, end)`` of each top-level data set element before the pixel data."""
    syntax: str
    pixel_at: int
    pixel_value_at: int


def top_elements(
    data: bytes, pos: int, limit: int, below: int
) -> tuple[list[tuple[int, int, int]], int] | None:
    """Top-level elements from ``pos`` while their tag is below ``below``; tags must ascend.

    Returns the ``(tag, start, end)`` list and where the first tag not below
    ``below`` starts (``limit`` when the data ends first); None if anything is odd.
    """
    out: list[tuple[int, int, int]] = []
    append = out.append
    head, ul, long_vrs, short_vrs = HEAD.unpack_from, UL.unpack_from, LONG_VRS, SHORT_VRS
    last = -1
    while pos < limit:
        if pos + 8 > limit:
            return None
        group, elem, vr, length = head(data, pos)
        tag = group << 16 | elem
        if tag >= below:
            break
        if tag <= last:
            return None
        if vr in short_vrs:
            end = pos + 8 + length
        elif vr in long_vrs and pos + 12 <= limit:
            length = ul(data, pos + 8)[0]
            if length != UNDEFINED:
                end = pos + 12 + length
            elif vr == b"SQ":
                found = sequence_end(data, pos + 12, limit)
                if found is None:
                    return None
                end = found
            else:
                return None  # undefined-length UN is implicit VR inside: general path
        else:
            return None
        if end > limit:
            return None
        append((tag, pos, end))
        last, pos = tag, end
    return out, pos


@lru_cache(maxsize=64)
def is_compressed(syntax: str) -> bool:
    """Whether the transfer syntax ``syntax`` compresses pixel data."""
    return bool(UID(syntax).is_compressed)


def scan_header(data: bytes) -> HeaderScan | None:
    """Locate file meta, header elements and pixel data of a whole file, without pydicom.

    Returns None for anything :class:`ElementCache` does not handle (see the
    module docstring): the general path takes those files.
    """
    if data[128:132] != b"DICM":
        return None
    found = top_elements(data, 132, len(data), 0x00030000)
    if found is None:
        return None
    meta, pos = found
    syntax = ""
    for tag, start, end in meta:
        if tag == 0x00020010:
            syntax = data[start + 8 : end].rstrip(b"\x00 ").decode("ascii", "replace")
    if not meta or meta[0][0] != 0x00020000 or not syntax or not explicit_little(syntax):
        return None
    found = top_elements(data, pos, len(data), PIXEL_DATA)
    if found is None:
        return None
    elements, pixel_at = found
    for tag, _s, _e in elements:  # ascending: groups 0 and 2 come first if at all
        if tag >= 0x00030000:
            break
        if tag >> 16 in (0, 2):
            return None
    head = data[pixel_at : pixel_at + 12]
    if len(head) < 12 or head[4:6] not in (b"OB", b"OW", b"UN"):
        return None
    group, elem, _vr, _zero = HEAD.unpack_from(head)
    if (group << 16 | elem) != PIXEL_DATA:
        return None
    length = UL.unpack_from(head, 8)[0]
    value_at = pixel_at + 12
    if length == UNDEFINED:
        stop = encapsulated_end(data, value_at, "<")
    else:
        stop = value_at + length
    if stop != len(data):
        return None
    return HeaderScan(meta, elements, syntax, pixel_at, value_at)
