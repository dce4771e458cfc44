"""What de-identification keeps of the files it writes, so the leak gate reads nothing twice.

While a released file's bytes are in memory, :func:`written` keeps its SHA-256,
its stat signature after writing, every header byte and, of the pixel data,
nothing (16-bit native pixel data without a printable word) or its runs of
text bytes; :func:`clean_written` scans those with the batch's values.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from sendit_helpers.deid.gaterecord import FileEntry, signature
from sendit_helpers.deid.gatescan import (
    MIN_LENGTH,
    MIN_NAME_PART,
    TEXT_BYTES,
    Scanner,
    native_words_printable,
)

_TEXT_LUT = np.zeros(256, dtype=bool)
_TEXT_LUT[list(TEXT_BYTES)] = True
#: Text runs of a file's pixel data above this many bytes: the gate reads the file instead.
RUNS_LIMIT = 1 << 16
#: Shortest run that can hold a searched value (name parts are 3 characters or more).
_MIN_RUN = min(MIN_LENGTH, MIN_NAME_PART)


class Tail(StrEnum):
    """What :class:`Written` keeps of the bytes from the pixel data value on."""

    CLEAN16 = "clean16"
    """16-bit native pixel data without a printable word: nothing to search there
    (when every value holds three printable ASCII bytes, :attr:`Scanner.prefilter_ok`)."""
    RUNS = "runs"
    """The runs of :data:`TEXT_BYTES` (3 bytes or longer), NUL-separated."""
    FILE = "file"
    """Nothing kept: the gate reads the file."""


@dataclass(frozen=True, slots=True)
class Written:
    """One file de-identification wrote into ``release/``, as the gate needs it.

    Taken from the bytes while they are in memory (:func:`written`), so the
    gate neither reads the file again nor hashes it again: the gate scans
    :attr:`header` and :attr:`tail` with the batch's values once they are all
    known, as long as the file still has the size, times and inode recorded
    in :attr:`entry` (else it reads the file).  A hit there makes the gate
    read the file, to name the field.

    Attributes
    ----------
    path : str
        ``<entity>/<name>`` relative to ``release/``.
    entry : FileEntry
        SHA-256 of the bytes written and the file's stat signature after writing.
    header : bytes
        Every byte before the pixel data value.
    tail : bytes
        What :attr:`kind` says of the bytes from the pixel data value on.
    kind : Tail
        What :attr:`tail` holds.
    """

    path: str
    entry: FileEntry
    header: bytes
    tail: bytes
    kind: Tail


def _text_runs(tail: memoryview) -> bytes | None:
    """The runs of :data:`TEXT_BYTES` in ``tail``, NUL-separated; None above :data:`RUNS_LIMIT`."""
    mask = _TEXT_LUT[np.frombuffer(tail, dtype=np.uint8)]
    if not bool(mask.any()):
        return b""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= _MIN_RUN
    if int((ends - starts)[keep].sum()) > RUNS_LIMIT:
        return None
    return b"\0".join(bytes(tail[a:b]) for a, b in zip(starts[keep], ends[keep], strict=True))


def written(
    relative: str,
    output: str,
    header: bytes,
    tail: memoryview,
    pixel_start: int,
    native16: bool,
) -> Written:
    """The :class:`Written` of a file just written as ``header + tail``.

    Parameters
    ----------
    relative : str
        ``<entity>/<name>`` relative to ``release/``.
    output : str
        The file (stat'ed here, after it was written and renamed into place).
    header, tail : bytes
        The file's bytes, in two parts.
    pixel_start : int
        Offset of the pixel data value in the file (at or after ``len(header)``).
    native16 : bool
        Pixel data is 16-bit and not compressed.
    """
    digest = hashlib.sha256(header)
    digest.update(tail)
    entry: FileEntry = (digest.hexdigest(), *signature(os.stat(output)))
    at = pixel_start - len(header)
    if not 0 <= at <= len(tail):
        return Written(relative, entry, b"", b"", Tail.FILE)
    head = header + tail[:at].tobytes()
    rest = tail[at:]
    if native16 and not native_words_printable(rest):
        return Written(relative, entry, head, b"", Tail.CLEAN16)
    runs = _text_runs(rest)
    if runs is None:
        return Written(relative, entry, b"", b"", Tail.FILE)
    return Written(relative, entry, head, runs, Tail.RUNS)


def clean_written(item: Written, scanner: Scanner) -> bool:
    """True when ``item`` is known clean: its name, header and kept tail hold no value.

    False when a value is there, or when what was kept cannot tell (the file
    must be read then).
    """
    if item.kind is Tail.FILE:
        return False
    if item.kind is Tail.CLEAN16 and not scanner.prefilter_ok:
        return False
    if item.kind is Tail.RUNS and not scanner.summary_ok:
        return False
    return not (
        scanner.found_any(item.path.encode("utf-8"))
        or scanner.found_any(item.header)
        or (item.tail and scanner.found_any(item.tail))
    )
