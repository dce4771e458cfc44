"""The C-STORE request the DICOM target writes itself: command set, PDUs, file meta."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from sendit_helpers.core.errors import UploadError
from sendit_helpers.targets.dicom import IOV_MAX, send_parts
from sendit_helpers.targets.dicomwire import (
    FileMeta,
    c_store_command,
    c_store_parts,
    c_store_pdus,
    command_values,
    parse_file_meta,
    read_file_meta,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ct_small() -> Path:
    return Path(str(get_testdata_file("CT_small.dcm")))


def test_command_set_is_what_pynetdicom_encodes() -> None:
    req = C_STORE()
    req.MessageID, req.Priority = 7, 0
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CT, "1.2.3.45"
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    message.command_set.CommandDataSetType = 0x0001  # pynetdicom sets it when a dataset follows
    assert c_store_command(CT, "1.2.3.45", 7) == encode(message.command_set, True, True)
    assert command_values(c_store_command(CT, "1.2.3.45", 7))[0x0110] == 7


def test_file_meta_of_a_real_file_matches_pydicom() -> None:
    path = _ct_small()
    meta = read_file_meta(path)
    ds = dcmread(path)
    assert meta.sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert meta.sop_instance == ds.file_meta.MediaStorageSOPInstanceUID
    assert meta.transfer_syntax == ds.file_meta.TransferSyntaxUID
    data = path.read_bytes()
    # the dataset starts right after the meta group: its first element is group 0008
    assert struct.unpack_from("<H", data, meta.offset)[0] == 0x0008


def test_pdus_carry_command_then_dataset_within_the_pdu_limit() -> None:
    dataset = bytes(range(256)) * 200  # 51,200 bytes
    meta = FileMeta(0, CT, "1.2.3.45", "1.2.840.10008.1.2.1")
    stream = c_store_pdus(3, 9, meta, dataset, 16384)
    pdus, pos, data, command = [], 0, b"", b""
    while pos < len(stream):
        (length,) = struct.unpack_from(">I", stream, pos + 2)
        pdu = P_DATA_TF()
        pdu.decode(stream[pos : pos + 6 + length])
        pdus.append(pdu)
        assert 6 + length <= 16384 + 6
        pos += 6 + length
    for pdu in pdus:
        (item,) = pdu.presentation_data_value_items  # one PDV per PDU
        assert item.presentation_context_id == 3
        value = item.presentation_data_value
        if value[0] & 0x01:
            command += value[1:]
        else:
            data += value[1:]
    assert command == c_store_command(CT, "1.2.3.45", 9) and data == dataset
    last = pdus[-1].presentation_data_value_items[0].presentation_data_value[0]
    assert last == 0x02 and len(pdus) == 1 + 4  # command, then 4 dataset fragments


def test_file_without_meta_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="no DICOM file meta.*re-run de-identification"):
        parse_file_meta(b"\0" * 200, "release/x.dcm")
    data = bytearray(_ct_small().read_bytes())
    meta = read_file_meta(_ct_small())
    cut = bytes(data[:132]) + bytes(data[meta.offset :])  # no group 0002 at all
    with pytest.raises(UploadError, match=r"no MediaStorageSOPClassUID \(0002,0002\)"):
        parse_file_meta(cut, "release/x.dcm")


def test_parts_are_the_pdus_with_views_of_the_dataset() -> None:
    dataset = bytes(range(256)) * 200
    meta = FileMeta(0, CT, "1.2.3.45", "1.2.840.10008.1.2.1")
    parts = c_store_parts(3, 9, meta, memoryview(dataset), 16384)
    assert b"".join(parts) == c_store_pdus(3, 9, meta, dataset, 16384)
    fragments = [p for p in parts if isinstance(p, memoryview)]
    assert len(fragments) == 4 and all(f.obj is dataset for f in fragments)  # no copies


def test_send_parts_writes_every_byte_in_order_over_a_real_socket() -> None:
    parts = [bytes([k % 251]) * (1 + k * 37 % 5000) for k in range(IOV_MAX + 300)]
    parts.insert(5, b"")
    expected = b"".join(parts)
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # forces partial writes
    got = bytearray()

    def drain() -> None:
        while len(got) < len(expected):
            chunk = right.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        send_parts(left, [memoryview(p) if k % 2 else p for k, p in enumerate(parts)])
        reader.join(10)
    finally:
        left.close()
        right.close()
    assert bytes(got) == expected
