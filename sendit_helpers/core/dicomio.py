"""Reading DICOM files robustly and fast, without touching pixel data.

Every input file ends up as a :class:`Probe`: DICOM (readable header, with a
note when something is odd), non-DICOM, or an error with a reason.  Reasons
name what was wrong, never a value from the file.

:func:`probe` reads the first :data:`HEAD_BYTES` of a file once and lets
pydicom parse them from memory (faster than from a file object); it reads the
file itself whenever that could give a different answer (see :func:`_probe_head`).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import config
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from sendit_helpers.core import headselect
from sendit_helpers.core.errors import one_line, tag_label

# Odd values are read and written as they are: validation warnings would quote
# values (possibly identifying) into logs, and refusing them would lose data.
config.settings.reading_validation_mode = config.IGNORE
config.settings.writing_validation_mode = config.IGNORE

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
#: Errors pydicom raises on malformed input.
READ_ERRORS = (
    InvalidDicomError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    struct.error,
    NotImplementedError,
    AttributeError,
    IndexError,
    OverflowError,
)

#: Errors a header parse or a value conversion may raise (pydicom's, a wrong-length binary value).
PARSE_ERRORS: tuple[type[Exception], ...] = (*READ_ERRORS, BytesLengthException)
#: ... and zlib's, when a deflated data set is cut by the in-memory head.
_HEAD_ERRORS: tuple[type[BaseException], ...] = (*PARSE_ERRORS, zlib.error)
#: Bytes read at once from each file: its header is parsed from memory when it fits.
HEAD_BYTES = 1 << 16


@dataclass
class Probe:
    """What reading one file's header found."""

    path: Path
    size: int
    kind: str
    """``"dicom"``, ``"non_dicom"`` or ``"error"``."""
    reason: str = ""
    dataset: Dataset | None = None
    pixel_offset: int | None = None
    """Byte offset of the pixel data element, when the file has one (-1: deflated, no offset)."""


def safe_reason(exc: BaseException) -> str:
    """An exception as one PHI-safe line (:func:`~sendit_helpers.core.errors.one_line`)."""
    return one_line(exc)


def file_reason(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """:func:`safe_reason` for a failure on one file, with the element it failed on.

    A value that cannot be converted raises without naming its element
    (``ValueError``, ``TypeError`` ...); the file's elements are then read one
    by one and the first one that fails to convert is named, with its VR.

    Parameters
    ----------
    exc : BaseException
        What processing the file raised.
    path : path-like
        The file.

    Returns
    -------
    str
        One line: type, ``Keyword (gggg,eeee)`` and VR when found, what was
        expected and the fix; never a value.
    """
    reason = one_line(exc)
    if isinstance(exc, (AttributeError, KeyError, OSError)) or " on " in reason:
        return reason
    found = first_bad_element(path)
    if found is None:
        return reason
    tag, vr = found
    keyword = "" if (tag >> 16) & 1 else str(keyword_for_tag(tag))
    return (
        f"{type(exc).__name__} on {tag_label(keyword, tag)}: its value cannot be read as VR {vr}; "
        "fix it at the source, or REMOVE or BLANK it in the recipe"
    )


def first_bad_element(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """``(tag, VR)`` of the first element of ``path`` whose value pydicom cannot convert.

    Sequences are searched depth first; pixel data is not read.  None when every
    value converts or the header itself cannot be read.
    """
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except PARSE_ERRORS:
        return None
    return _first_bad(ds)


def _first_bad(ds: Dataset) -> tuple[int, str] | None:
    for tag in list(ds._dict):
        raw = ds.get_item(tag, keep_deferred=True)
        vr = str(getattr(raw, "VR", "") or "UN")
        try:
            elem = ds[tag]
            value = elem.value
        except PARSE_ERRORS:
            return int(tag), vr
        if elem.VR == "SQ":
            for item in value or ():
                found = _first_bad(item)
                if found is not None:
                    return found
    return None


def probe(path: str | os.PathLike[str], tags: Collection[int] | None = None) -> Probe:
    """Read a file's header (no pixel data) and classify it.

    Parameters
    ----------
    path : path-like
        Any file.
    tags : collection of int, optional
        The elements the caller reads.  When the header is the common case
        :func:`~sendit_helpers.core.headselect.select` handles, only these (and
        elements pydicom must parse anyway) are parsed; the data set then lacks
        the others.  Kind, reason and pixel offset are those of a full read.
        None parses every element.

    Returns
    -------
    Probe
        ``kind`` is ``"dicom"`` when a data set was read; ``reason`` then holds
        notes such as a missing file meta or truncated pixel data (which makes
        the kind ``"error"``).
    """
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO put in a file's place is not waited on (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return Probe(
            path,
            0,
            "error",
            f"cannot open the file ({safe_reason(exc)}); give the user running sendit read "
            "access (chmod u+r) and rerun",
        )
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        why = "not a regular file (a folder, FIFO, socket or device); not read"
        return Probe(path, 0, "non_dicom", why)
    with open(fd, "rb") as fh:
        size = st.st_size
        if size == 0:
            return Probe(path, size, "non_dicom", "empty file (0 bytes)")
        head = fh.read(HEAD_BYTES)
        found = _probe_head(path, size, head, fh, tags)
        if found is not None:
            return found
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except InvalidDicomError:
            return _probe_raw(path, size, fh)
        except READ_ERRORS as exc:
            return Probe(path, size, "error", f"unreadable DICOM header ({safe_reason(exc)})")
        offset = fh.tell()
        return _check_pixels(Probe(path, size, "dicom", "", ds), fh, offset, fh.read(12))


def _probe_head(
    path: Path, size: int, head: bytes, fh: BinaryIO, tags: Collection[int] | None = None
) -> Probe | None:
    """Parse the header from the file's first bytes, already in memory.

    pydicom parses an in-memory buffer markedly faster than a file object.  The
    result is the one reading the file gives when ``head`` is the whole file, or
    when pydicom stopped at the pixel data element with its element header
    inside ``head`` (every byte it read was then in ``head``).  Otherwise (a
    header longer than :data:`HEAD_BYTES`, no pixel data, any error or warning
    on a partial buffer) this returns None and :func:`probe` reads the file
    itself, so reasons and warnings are those of the plain read.

    With ``tags``, the cut-down header of :func:`headselect.select` is parsed
    first (when it applies and parses without a warning or error).
    """
    if tags is not None:
        found = _probe_selected(path, size, head, fh, tags)
        if found is not None:
            return found
    buffer = io.BytesIO(head)
    whole = len(head) >= size
    try:
        if whole:
            ds = pydicom.dcmread(buffer, stop_before_pixels=True)
        else:
            ds, warned = _read_warned(buffer)
            if warned:
                return None
    except _HEAD_ERRORS:
        return None
    offset = buffer.tell()
    tail = head[offset : offset + 12]
    if not whole and (len(tail) < 12 or not _at_pixels(tail, ds)):
        return None
    return _check_pixels(Probe(path, size, "dicom", "", ds), fh, offset, tail)


def _probe_selected(
    path: Path, size: int, head: bytes, fh: BinaryIO, tags: Collection[int]
) -> Probe | None:
    """:func:`_probe_head` on the elements ``tags`` only; None: parse the whole header."""
    selected = headselect.select(head, tags)
    if selected is None:
        return None
    buffer = io.BytesIO(selected.data)
    try:
        ds, warned = _read_warned(buffer)
    except _HEAD_ERRORS:
        return None
    if warned or buffer.tell() != len(selected.data) - 12:
        return None
    at = selected.pixel_at
    return _check_pixels(Probe(path, size, "dicom", "", ds), fh, at, head[at : at + 12])


def _read_warned(buffer: io.BytesIO) -> tuple[FileDataset, bool]:
    """The header in ``buffer`` (up to the pixel data) and whether pydicom warned reading it.

    (``catch_warnings`` is process-wide; the inspect stage reads files on one thread.)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(buffer, stop_before_pixels=True)
    return ds, bool(caught)


def _probe_raw(path: Path, size: int, fh: BinaryIO) -> Probe:
    """A file without the ``DICM`` preamble: accept it only if it parses as a data set."""
    fh.seek(0)
    head = fh.read(8)
    if len(head) < 8 or not _plausible_first_tag(head):
        return Probe(
            path, size, "non_dicom", "not DICOM: no 'DICM' preamble and no data set at the start"
        )
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    except READ_ERRORS as exc:
        return Probe(
            path,
            size,
            "non_dicom",
            f"not DICOM: no preamble and no readable data set ({safe_reason(exc)})",
        )
    if len(ds) == 0 or "SOPClassUID" not in ds and "Modality" not in ds:
        return Probe(path, size, "non_dicom", "not DICOM: no preamble and no SOP class or modality")
    probe_ = Probe(path, size, "dicom", "no DICOM preamble/file meta; read as a raw data set", ds)
    offset = fh.tell()
    return _check_pixels(probe_, fh, offset, fh.read(12))


def _plausible_first_tag(head: bytes) -> bool:
    """True when the first bytes look like a little- or big-endian group 0x0002-0x0010 tag."""
    little: int = struct.unpack("<H", head[:2])[0]
    big: int = struct.unpack(">H", head[:2])[0]
    return 0x0002 <= little <= 0x0010 or 0x0002 <= big <= 0x0010


def _at_pixels(head: bytes, ds: Dataset) -> bool:
    """True when ``head`` starts with a pixel data tag (in the data set's byte order)."""
    group, elem = struct.unpack("<HH" if _encoding(ds)[1] else ">HH", head[:4])
    return (group << 16 | elem) in PIXEL_TAGS


def _check_pixels(probe_: Probe, fh: BinaryIO, offset: int, head: bytes) -> Probe:
    """Check the pixel data element after the header is complete.

    ``offset`` is where dcmread stopped (at the pixel data element, if any) and
    ``head`` the (up to) 12 bytes found there.
    """
    ds = probe_.dataset
    assert ds is not None
    if _deflated(ds):
        return _check_deflated(probe_)
    if len(head) < 8:
        return probe_
    implicit, little = _encoding(ds)
    fmt = "<HH" if little else ">HH"
    group, elem = struct.unpack(fmt, head[:4])
    if (group << 16 | elem) not in PIXEL_TAGS:
        return probe_
    probe_.pixel_offset = offset
    if implicit or not head[4:6].isalpha():  # some writers put an implicit element in explicit data
        length, header = struct.unpack("<I" if little else ">I", head[4:8])[0], 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return _truncated(probe_, "the pixel data element header is cut off")
        length, header = struct.unpack("<I" if little else ">I", head[8:12])[0], 12
    else:
        length, header = struct.unpack("<H" if little else ">H", head[6:8])[0], 8
    if length == 0xFFFFFFFF:
        if not _has_delimiter(fh, probe_.size, little):
            return _truncated(probe_, "encapsulated pixel data has no sequence delimiter")
    elif offset + header + length > probe_.size:
        missing = offset + header + length - probe_.size
        return _truncated(probe_, f"pixel data is {missing} bytes shorter than its declared length")
    return probe_


def _deflated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _check_deflated(probe_: Probe) -> Probe:
    """A deflated data set: the bytes read tell nothing, so inflate the whole file and look.

    ``pixel_offset`` is then ``-1``: the file has pixel data, at no offset of its own bytes.
    """
    try:
        whole = pydicom.dcmread(probe_.path, force=True, defer_size=1024)
    except (*READ_ERRORS, zlib.error) as exc:
        probe_.kind = "error"
        probe_.reason = f"unreadable deflated data set ({safe_reason(exc)}); re-export it"
        return probe_
    if any(tag in whole for tag in PIXEL_TAGS):
        probe_.pixel_offset = -1
    return probe_


def _truncated(probe_: Probe, why: str) -> Probe:
    probe_.kind = "error"
    probe_.reason = f"truncated file: {why} (PixelData (7FE0,0010)); re-export it from the PACS"
    return probe_


def _has_delimiter(fh: BinaryIO, size: int, little: bool) -> bool:
    tail = min(size, 1 << 16)
    fh.seek(size - tail)
    return (_DELIMITER_LE if little else _DELIMITER_BE) in fh.read(tail)


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return False, True
    return bool(implicit), bool(little)


def read_full(path: str | os.PathLike[str], defer_size: int | None = 4096) -> FileDataset:
    """Read a whole file, leaving large values (pixel data) on disk until written.

    ``defer_size`` keeps pixel data unread (pydicom reads it from the file
    when the data set is written), so copying it costs no decode.
    """
    return pydicom.dcmread(os.fspath(path), defer_size=defer_size, force=True)
