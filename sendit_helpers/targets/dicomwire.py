"""The DICOM wire format a C-STORE needs: a file's meta group and the P-DATA PDUs.

Read without pydicom, from the bytes sent: :func:`parse_file_meta` /
:func:`read_file_meta` (also used by the DICOMweb target), and the C-STORE-RQ
command and its P-DATA-TF fragments (:func:`c_store_parts`, :func:`c_store_pdus`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from sendit_helpers.core.errors import UploadError, tag_label


@dataclass(frozen=True)
class FileMeta:
    """What a C-STORE needs from a DICOM file's meta group (0002)."""

    offset: int
    """Where the dataset starts: the bytes sent, as they are."""
    sop_class: str
    sop_instance: str
    transfer_syntax: str


META_ELEMENTS = {
    0x0002: "MediaStorageSOPClassUID",
    0x0003: "MediaStorageSOPInstanceUID",
    0x0010: "TransferSyntaxUID",
}
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})  # fmt: skip
"""Explicit VRs with a 4-byte length (after 2 reserved bytes)."""
META_READ = 8192
"""Bytes :func:`read_file_meta` reads first (file meta groups are a few hundred bytes)."""


def _scan_meta(data: bytes | memoryview) -> tuple[int, dict[int, str]] | None:
    """End offset and UID values of the file meta group, ``None`` if it runs past ``data``."""
    values: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return pos, values
        if bytes(data[pos + 4 : pos + 6]) in LONG_VRS:
            (length,), head = struct.unpack_from("<I", data, pos + 8), 12
        else:
            (length,), head = struct.unpack_from("<H", data, pos + 6), 8
        start = pos + head
        if elem in META_ELEMENTS:
            values[elem] = bytes(data[start : start + length]).rstrip(b"\0 ").decode("ascii")
        pos = start + length
    return None


def parse_file_meta(data: bytes | memoryview, what: str) -> FileMeta:
    """The file meta of a whole DICOM file's bytes (explicit VR little endian, PS3.10 7.1).

    Raises
    ------
    UploadError
        No ``DICM`` prefix, a truncated meta group, or a missing UID; names the element.
    """
    if bytes(data[128:132]) != b"DICM":
        raise UploadError(
            f"orthanc target: {what} has no DICOM file meta ('DICM' missing at byte 128); "
            "re-run de-identification for this file"
        )
    scanned = _scan_meta(data)
    if scanned is None:
        raise UploadError(
            f"orthanc target: {what} ends inside its file meta; re-run de-identification "
            "for this file"
        )
    offset, values = scanned
    for elem, keyword in META_ELEMENTS.items():
        if not values.get(elem):
            raise UploadError(
                f"orthanc target: {what} has no {tag_label(keyword, 0x00020000 | elem)} in "
                "its file meta; re-run de-identification for this file"
            )
    return FileMeta(offset, values[0x0002], values[0x0003], values[0x0010])


def read_file_meta(path: Path) -> FileMeta:
    """:func:`parse_file_meta` of a file, reading only its first bytes when they suffice."""
    with path.open("rb") as fh:
        head = fh.read(META_READ)
        if len(head) == META_READ and _scan_meta(head) is None:
            head += fh.read()
    return parse_file_meta(head, str(path))


def command_values(command: bytes | bytearray) -> dict[int, int]:
    """The 2-byte (US) elements of a DIMSE command set, by element number.

    Parameters
    ----------
    command : bytes or bytearray
        A command set (group 0000, implicit VR little endian), e.g. a C-STORE-RSP.

    Returns
    -------
    dict of int to int
        ``element -> value`` (``0x0110`` MessageID, ``0x0900`` Status ...).
    """
    values: dict[int, int] = {}
    pos = 0
    while pos + 8 <= len(command):
        _, elem, length = struct.unpack_from("<HHI", command, pos)
        if length == 2:
            values[elem] = struct.unpack_from("<H", command, pos + 8)[0]
        pos += 8 + length
    return values


def _element(elem: int, value: bytes) -> bytes:
    """One command-group element, implicit VR little endian."""
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), implicit VR little endian.

    Priority medium, a dataset follows; byte for byte what pynetdicom encodes.
    """
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class)),  # AffectedSOPClassUID
            _element(0x0100, struct.pack("<H", 0x0001)),  # CommandField: C-STORE-RQ
            _element(0x0110, struct.pack("<H", message_id)),  # MessageID
            _element(0x0700, struct.pack("<H", 0x0000)),  # Priority: medium
            _element(0x0800, struct.pack("<H", 0x0001)),  # CommandDataSetType: present
            _element(0x1000, _uid(sop_instance)),  # AffectedSOPInstanceUID
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _fragments(
    out: list[bytes | memoryview],
    context_id: int,
    data: bytes | memoryview,
    command: bool,
    max_pdu: int,
) -> None:
    """Append P-DATA-TF PDUs (one PDV each) carrying ``data`` to ``out`` (PS3.8 9.3.5)."""
    size = max_pdu - 6 if max_pdu > 6 else max(1, len(data))
    total = len(data)
    start = 0
    while True:
        chunk = data[start : start + size]
        start += size
        last = start >= total
        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        out.append(struct.pack(">BBIIBB", 0x04, 0x00, len(chunk) + 6, len(chunk) + 2,
                               context_id, control))  # fmt: skip
        out.append(chunk)
        if last:
            return


def c_store_parts(
    context_id: int, message_id: int, meta: FileMeta, dataset: bytes | memoryview, max_pdu: int
) -> list[bytes | memoryview]:
    """:func:`c_store_pdus` as the buffers to write one after the other, not joined.

    The dataset's fragments are views of ``dataset`` (no copy), for one ``sendmsg``.
    """
    out: list[bytes | memoryview] = []
    command = c_store_command(meta.sop_class, meta.sop_instance, message_id)
    _fragments(out, context_id, command, True, max_pdu)
    _fragments(out, context_id, dataset, False, max_pdu)
    return out


def c_store_pdus(
    context_id: int, message_id: int, meta: FileMeta, dataset: bytes | memoryview, max_pdu: int
) -> bytes:
    """A whole C-STORE-RQ as P-DATA-TF PDUs: the command set, then the encoded dataset.

    Parameters
    ----------
    context_id : int
        The accepted presentation context for the file's SOP class and transfer syntax.
    message_id : int
        The request's message ID on its association.
    meta : FileMeta
        The file's SOP class and instance UIDs.
    dataset : bytes or memoryview
        The file's bytes after its file meta, sent as they are.
    max_pdu : int
        The peer's maximum PDU length (0: no limit).
    """
    return b"".join(c_store_parts(context_id, message_id, meta, dataset, max_pdu))
