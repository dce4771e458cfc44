"""Orthanc targets against a real Orthanc (REST and DICOM)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pydicom
import pytest
import requests

from sendit_helpers.core.errors import UploadError
from sendit_helpers.stages.upload import load_release, upload_batch
from sendit_helpers.targets.dicom import OrthancDicomTarget, ReplyGuard
from sendit_helpers.targets.orthanc import OrthancRestTarget
from tests.conftest_servers import ReleaseFactory
from tests.servers import OrthancServer

pytestmark = pytest.mark.servers


def _settings(
    base: dict[str, Any], server: OrthancServer, protocol: str, url: bool = True
) -> dict[str, Any]:
    return {
        **base,
        "SEND_TO_ORTHANC": True,
        "ORTHANC_PROTOCOL": protocol,
        "ORTHANC_URL": server.url if url else "",
        "ORTHANC_PORT": server.dicom_port,
        "ORTHANC_AE_TITLE": server.aet,
    }


@pytest.mark.parametrize(("protocol", "url"), [("rest", True), ("dicom", True), ("dicom", False)])
def test_upload_verify_and_rerun(
    orthanc: OrthancServer,
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    protocol: str,
    url: bool,
) -> None:
    layout = make_release(entities=2, images=4)
    settings = _settings(upload_settings, orthanc, protocol, url)
    manifest = upload_batch(layout, settings, progress=False)
    latest = manifest.drop_duplicates("item", keep="last")
    assert (latest["status"] == "verified").sum() == 8
    assert orthanc.instance_count() == 8
    (layout.upload_dir / "manifest.csv").unlink()  # forget everything: create-once must hold
    upload_batch(layout, settings, progress=False)
    assert orthanc.instance_count() == 8


def test_rest_put_reports_already_stored_and_md5(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=1)
    (item,), _ = load_release(layout, upload_settings)
    target = OrthancRestTarget(_settings(upload_settings, orthanc, "rest"))
    try:
        first, second = target.put(item), target.put(item)
        assert (first.status, second.status) == ("stored", "exists")
        assert first.remote_id == second.remote_id
        md5 = requests.get(
            f"{orthanc.url}/instances/{first.remote_id}/attachments/dicom/md5",
            auth=orthanc.auth,
            timeout=5,
        ).text
        assert md5 == item.md5
        assert target.verify([first]) == {item.key}
    finally:
        target.close()


def test_rest_bad_credentials_name_the_fix(
    orthanc: OrthancServer, upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORTHANC_PASSWORD", "wrong")
    target = OrthancRestTarget(_settings(upload_settings, orthanc, "rest"))
    with pytest.raises(
        UploadError, match="refused the credentials.*ORTHANC_USERNAME and ORTHANC_PASSWORD"
    ):
        target.check()


def test_unreachable_orthanc_names_setting(upload_settings: dict[str, Any]) -> None:
    from tests.servers import free_port

    target = OrthancRestTarget(
        {**upload_settings, "ORTHANC_URL": f"http://127.0.0.1:{free_port()}"}
    )
    with pytest.raises(UploadError, match="cannot reach .* start Orthanc or fix ORTHANC_URL"):
        target.check()


def test_dicom_socket_has_tcp_nodelay(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    import socket

    layout = make_release(entities=1, images=2)
    items, _ = load_release(layout, upload_settings)
    target = OrthancDicomTarget(_settings(upload_settings, orthanc, "dicom"))
    try:
        target.prepare(items)
        receipts = [target.put(i) for i in items]
        link = target._idle.get_nowait()
        assert link.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        target._idle.put(link)
        assert target.verify(receipts) == {i.key for i in items}
    finally:
        target.close()


def test_rest_verify_in_bulk_rejects_absent_and_changed(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """Absent IDs fail presence; every ``exists`` and a sample of ``stored`` get an MD5 check."""
    from dataclasses import replace

    layout = make_release(entities=1, images=3)
    items, _ = load_release(layout, upload_settings)
    target = OrthancRestTarget(_settings(upload_settings, orthanc, "rest"))
    try:
        good, other, last = (target.put(i) for i in items)
        absent = replace(other, remote_id="0" * 8 + "-" + "0" * 8)
        changed = replace(last, status="exists")  # an earlier, different copy in Orthanc
        items[2].path.write_bytes(items[2].path.read_bytes() + b"\0\0")
        assert target.verify([good, absent, changed]) == {good.key}
        # in the sample: every MD5 is read
        items[0].path.write_bytes(items[0].path.read_bytes() + b"\0\0")
        assert target.verify([good, other]) == {other.key}
        assert target.verify([]) == set()
    finally:
        target.close()


def test_dicom_verify_computes_orthanc_ids(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """The IDs computed in prepare() are Orthanc's: verify needs no per-instance lookup."""
    from dataclasses import replace

    layout = make_release(entities=1, images=2)
    items, _ = load_release(layout, upload_settings)
    target = OrthancDicomTarget(_settings(upload_settings, orthanc, "dicom"))
    try:
        target.prepare(items)
        receipts = [target.put(i) for i in items]
        listed = requests.get(f"{orthanc.url}/instances", auth=orthanc.auth, timeout=5).json()
        assert sorted(target._ids.values()) == sorted(listed)
        for item in items:  # from the cleaned row's identifiers, when it has them: the same
            ds = pydicom.dcmread(item.path, stop_before_pixels=True)
            ids = {
                k: str(ds.get(k)) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
            }
            with_ids = replace(item, metadata={**item.metadata, **ids})
            computed = target._orthanc_id(with_ids, str(ds.SOPInstanceUID))
            assert computed == target._ids[item.key]
        target._ids[items[0].key] = "not-an-id"  # falls back to /tools/lookup, still found
        ghost = replace(receipts[1], key="ghost", remote_id="1.2.3.4")
        assert target.verify([*receipts, ghost]) == {i.key for i in items}
    finally:
        target.close()


def test_dicom_reactor_leaves_replies_to_the_store(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """pynetdicom's reactor thread must not take a reply a C-STORE waits for (30 s stall)."""
    from pynetdicom.dimse_messages import C_STORE_RSP

    layout = make_release(entities=1, images=2)
    items, _ = load_release(layout, upload_settings)
    target = OrthancDicomTarget(_settings(upload_settings, orthanc, "dicom"))
    try:
        target.prepare(items)
        link = target._acquire()
        assoc = link.assoc
        assert isinstance(assoc.dimse.get_msg, ReplyGuard) and assoc.dimse.get_msg.owner is assoc
        reply = C_STORE_RSP()
        assoc.dimse.msg_queue.put((1, reply))
        time.sleep(0.1)  # the reactor polls every millisecond: it would have taken it by now
        assert assoc.dimse.get_msg(block=True) == (1, reply)
        target._idle.put(link)
        receipts = [target.put(item) for item in items]
        assert set(target._ids.values()) == set(orthanc.instances())  # IDs computed locally
        assert target.verify(receipts) == {item.key for item in items}
    finally:
        target.close()


def test_dicom_broken_association_is_transient_and_replaced(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """A connection lost mid-batch fails that store as retryable; the next gets a new one."""
    import socket

    from sendit_helpers.targets import TransientError

    layout = make_release(entities=1, images=2)
    items, _ = load_release(layout, upload_settings)
    target = OrthancDicomTarget(
        {**_settings(upload_settings, orthanc, "dicom"), "DICOM_ASSOCIATIONS": 1}
    )
    try:
        target.prepare(items)
        first = target.put(items[0])
        link = target._idle.get_nowait()
        link.sock.shutdown(socket.SHUT_RDWR)
        target._idle.put(link)
        with pytest.raises(TransientError, match=r"C-STORE of release/.* broke off"):
            target.put(items[1])
        second = target.put(items[1])
        replaced = target._idle.get_nowait()
        target._idle.put(replaced)
        assert replaced is not link
        assert not link.assoc.is_alive() and not link.assoc.dul.is_alive()
        assert target.verify([first, second]) == {i.key for i in items}
    finally:
        target.close()
    assert not _association_threads()


def _association_threads() -> list[threading.Thread]:
    """pynetdicom's threads still running (its DUL thread is not a daemon: exit waits)."""
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    return [t for t in threading.enumerate() if isinstance(t, Association | DULServiceProvider)]


def test_dicom_close_ends_every_association_thread(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """Associations idle, held by a caller, or after a refused file all end at close()."""
    from dataclasses import replace

    layout = make_release(entities=1, images=3)
    items, _ = load_release(layout, upload_settings)
    assert not _association_threads()
    target = OrthancDicomTarget(
        {**_settings(upload_settings, orthanc, "dicom"), "DICOM_ASSOCIATIONS": 2}
    )
    try:
        target.prepare(items)
        target.put(items[0])
        held = target._acquire()  # in use when close() comes
        data = items[1].path.read_bytes()
        broken = replace(items[1], data=data[:128] + b"XXXX" + data[132:])
        with pytest.raises(UploadError, match="has no DICOM file meta"):
            target.put(broken)
        assert target._idle.qsize() == 1  # the association survived the refused file
        assert len(_association_threads()) == 4
    finally:
        target.close()
    assert not _association_threads()
    assert not held.assoc.is_established
