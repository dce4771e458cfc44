"""Stepping over explicit VR little endian elements as raw bytes, without pydicom.

The pieces both raw-byte readers share: :mod:`sendit_helpers.core.headselect`
(inspect's cut-down header) and :mod:`sendit_helpers.deid.headerscan` (the
element cache's header map).  Each returns None for anything odd, so that its
caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.uid import UID

__all__ = [
    "HEAD",
    "ITEM",
    "LONG_VRS",
    "SHORT_VRS",
    "UL",
    "UNDEFINED",
    "element",
    "explicit_little",
    "sequence_end",
]

#: An explicit VR element's head: group, element, VR and a 2-byte length.
HEAD = struct.Struct("<HH2sH")
#: A 4-byte length (after the 2 reserved bytes of a long VR's head).
UL = struct.Struct("<L")
#: An item or delimiter head: group, element, 4-byte length.
ITEM = struct.Struct("<HHL")
#: The undefined length (a sequence or item ended by a delimiter).
UNDEFINED = 0xFFFFFFFF
#: VRs with a 4-byte length in explicit VR encoding (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: VRs with a 2-byte length.
SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip


@lru_cache(maxsize=64)
def explicit_little(syntax: str) -> bool:
    """Whether ``syntax`` is a public, uncompressed-header explicit VR little endian syntax."""
    uid = UID(syntax)
    return (
        uid.is_transfer_syntax
        and not uid.is_private
        and uid.is_little_endian
        and not uid.is_implicit_VR
        and not uid.is_deflated
    )


def element(data: bytes, pos: int, limit: int) -> tuple[int, int, bool] | None:
    """``(tag, end, undefined length)`` of the element at ``pos``; None if odd.

    An undefined-length sequence ends past its delimiter (:func:`sequence_end`);
    any other undefined length (UN, OB) is odd: its contents are not stepped over.
    """
    if pos + 8 > limit:
        return None
    group, elem, vr, length = HEAD.unpack_from(data, pos)
    if vr in SHORT_VRS:
        end = pos + 8 + length
    elif vr in LONG_VRS:
        if pos + 12 > limit:
            return None
        length = UL.unpack_from(data, pos + 8)[0]
        if length == UNDEFINED:
            if vr != b"SQ":
                return None
            found = sequence_end(data, pos + 12, limit)
            return None if found is None else (group << 16 | elem, found, True)
        end = pos + 12 + length
    else:
        return None
    return None if end > limit else (group << 16 | elem, end, False)


def sequence_end(data: bytes, pos: int, limit: int) -> int | None:
    """End of an undefined-length sequence value starting at ``pos``, past its delimiter."""
    while pos + 8 <= limit:
        group, elem, length = ITEM.unpack_from(data, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, elem) != (0xFFFE, 0xE000):
            return None
        pos += 8
        if length != UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: elements up to its delimiter
            if pos + 8 > limit:
                return None
            group, elem, length = ITEM.unpack_from(data, pos)
            if (group, elem) == (0xFFFE, 0xE00D):
                pos += 8
                break
            found = element(data, pos, limit)
            if found is None:
                return None
            pos = found[1]
    return None
