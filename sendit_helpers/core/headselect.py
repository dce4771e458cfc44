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

import struct
from collections.abc import Collection
from functools import lru_cache
from typing import NamedTuple

from pydicom.uid import UID

_HEAD = struct.Struct("<HH2sH")
_UL = struct.Struct("<L")
_ITEM = struct.Struct("<HHL")
_UNDEFINED = 0xFFFFFFFF
#: VRs with a 4-byte length in explicit VR encoding (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
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


@lru_cache(maxsize=64)
def _explicit_little(syntax: str) -> bool:
    uid = UID(syntax)
    return (
        uid.is_transfer_syntax
        and not uid.is_private
        and uid.is_little_endian
        and not uid.is_implicit_VR
        and not uid.is_deflated
    )


def _element(data: bytes, pos: int, limit: int) -> tuple[int, int, bool] | None:
    """``(tag, end, undefined length)`` of the explicit VR little endian element at ``pos``."""
    if pos + 8 > limit:
        return None
    group, elem, vr, length = _HEAD.unpack_from(data, pos)
    if vr in _SHORT_VRS:
        end = pos + 8 + length
    elif vr in _LONG_VRS:
        if pos + 12 > limit:
            return None
        length = _UL.unpack_from(data, pos + 8)[0]
        if length == _UNDEFINED:
            if vr != b"SQ":
                return None  # undefined-length UN/OB: read it whole
            found = _sequence_end(data, pos + 12, limit)
            return None if found is None else (group << 16 | elem, found, True)
        end = pos + 12 + length
    else:
        return None
    return None if end > limit else (group << 16 | elem, end, False)


def _sequence_end(data: bytes, pos: int, limit: int) -> int | None:
    """End of an undefined-length sequence value, past its delimiter."""
    while pos + 8 <= limit:
        group, elem, length = _ITEM.unpack_from(data, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, elem) != (0xFFFE, 0xE000):
            return None
        pos += 8
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: elements up to its delimiter
            if pos + 8 > limit:
                return None
            group, elem, length = _ITEM.unpack_from(data, pos)
            if (group, elem) == (0xFFFE, 0xE00D):
                pos += 8
                break
            found = _element(data, pos, limit)
            if found is None:
                return None
            pos = found[1]
    return None


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
        found = _element(head, pos, limit)
        if found is None or found[2]:
            return None
        if found[0] == 0x00020010:
            syntax = head[pos + 8 : found[1]]
        pos = found[1]
    name = syntax.rstrip(b"\x00 ").decode("ascii", "replace")
    if not name or not _explicit_little(name):
        return None
    parts = [head[:pos]]
    append = parts.append
    unpack, unpack_ul = _HEAD.unpack_from, _UL.unpack_from
    short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
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
            if length != _UNDEFINED:
                end = pos + 12 + length
            elif vr == b"SQ":
                seq_end = _sequence_end(head, pos + 12, limit)
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
