"""A header cut down to the elements a reader needs, from a file's first bytes (:func:`select`).

pydicom's parse of a header costs about the same for every element, read or
not (``specific_tags`` still decodes each element head in Python).  For the
common file (``DICM`` preamble, explicit VR little endian, pixel data after
the header), :func:`select` steps over the elements with :mod:`struct` and
returns the file's own bytes with only the wanted elements kept: pydicom then
parses a few dozen elements instead of every one, into the data set it would
have built for those elements (same bytes, same encoding).

Elements of undefined length are always kept (pydicom parses their items when
it reads the file; kept, its warnings and errors stay those of the full read).
Anything else (another transfer syntax, tags out of order, an unknown VR, a
header longer than the bytes given, no pixel data) gives None: read it whole.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from sendit_helpers.core.explicitvr import (
    HEAD,
    LONG_VRS,
    SHORT_VRS,
    UL,
    UNDEFINED,
    element,
    explicit_little,
    sequence_end,
)

#: Where pydicom's ``stop_before_pixels`` stops (the first of these).
_FIRST_PIXEL_TAG = 0x7FE00008
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_CHARSET = 0x00080005


class Selected(NamedTuple):
    """A cut-down header (see :func:`select`)."""

    data: bytes
    """Preamble and file meta, the kept elements, then the pixel data element's 12-byte head."""
    pixel_at: int
    """Offset of the pixel data element in the file."""


def select(head: bytes, tags: Collection[int]) -> Selected | None:
    """The header of ``head`` with only ``tags`` (and Specific Character Set) kept.

    Parameters
    ----------
    head : bytes
        The first bytes of a file (the whole header and the pixel data
        element's head must be in them).
    tags : collection of int
        The top-level elements to keep (a set: looked up once per element).

    Returns
    -------
    Selected or None
        None when the file is not the common case this handles (see the module
        docstring): parse ``head`` itself.
    """
    if head[128:132] != b"DICM":
        return None
    limit = len(head)
    pos = 132
    syntax = b""
    while True:  # the file meta: group 0002, as pydicom reads it (until another group)
        if pos + 4 > limit:
            return None
        if head[pos : pos + 2] != b"\x02\x00":
            break
        found = element(head, pos, limit)
        if found is None or found[2]:
            return None
        if found[0] == 0x00020010:
            syntax = head[pos + 8 : found[1]]
        pos = found[1]
    name = syntax.rstrip(b"\x00 ").decode("ascii", "replace")
    if not name or not explicit_little(name):
        return None
    parts = [head[:pos]]
    append = parts.append
    unpack, unpack_ul = HEAD.unpack_from, UL.unpack_from
    short_vrs, long_vrs = SHORT_VRS, LONG_VRS
    last = 0x0002FFFF  # groups 0000-0002 after the file meta: read it whole
    while True:
        if pos + 12 > limit:
            return None
        group, elem, vr, length = unpack(head, pos)
        tag = group << 16 | elem
        if tag >= _FIRST_PIXEL_TAG:
            if tag not in _PIXEL_TAGS:
                return None
            append(head[pos : pos + 12])
            return Selected(b"".join(parts), pos)
        if tag <= last:
            return None
        keep = tag in tags or tag == _CHARSET
        if vr in short_vrs:
            end = pos + 8 + length
        elif vr in long_vrs:
            length = unpack_ul(head, pos + 8)[0]
            if length != UNDEFINED:
                end = pos + 12 + length
            elif vr == b"SQ":
                seq_end = sequence_end(head, pos + 12, limit)
                if seq_end is None:
                    return None
                end, keep = seq_end, True
            else:
                return None  # undefined-length UN/OB: read it whole
        else:
            return None
        if end > limit:
            return None
        if keep:
            append(head[pos:end])
        last, pos = tag, end
