"""Orthanc's DICOM target: C-STORE over a pool of reused associations (pynetdicom).

:class:`OrthancDicomTarget` holds the pool, :class:`Link` one association in the data
phase, :class:`ReplyGuard` keeps pynetdicom's reactor off our answers, and
:func:`end_association` ends an association with its threads.  Orthanc answers a
second C-STORE of the same instance with success without overwriting, so the target
is create-once.  pynetdicom is imported only when this target is used (the ``orthanc``
extra); the wire encoding is :mod:`sendit_helpers.targets.dicomwire`.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    missing_client,
)
from sendit_helpers.targets.dicomwire import (
    c_store_parts,
    command_values,
    parse_file_meta,
    read_file_meta,
)
from sendit_helpers.targets.orthanc import (
    ID_TAGS,
    TIMEOUT,
    VERIFY_CHUNK,
    OrthancRest,
    _instances,
    orthanc_id,
)

MAX_CONTEXTS = 128
IOV_MAX = 1024
"""Buffers per ``sendmsg`` (POSIX guarantees at least 16; Linux takes 1024)."""
MAX_ASSOCIATIONS = 4
"""Default ``DICOM_ASSOCIATIONS``: Orthanc serves 4 at once by default (DicomThreadsCount)."""
DUL_WAIT = 0.01
JOIN_TIMEOUT = 5.0
"""Seconds :meth:`Link.close` waits for each of an association's two threads to end."""
"""Seconds pynetdicom's DUL thread sleeps between looks at its queue while a :class:`Link` has
the socket."""


class OrthancDicomTarget(Target):
    """C-STORE to ``ORTHANC_IPADDRESS:ORTHANC_PORT`` over several reused associations.

    ``DICOM_ASSOCIATIONS`` associations (4 by default: Orthanc serves 4 at once,
    ``DicomThreadsCount``) are opened on demand and reused for every file of the
    batch; each proposes, once, the (SOP class, transfer syntax) pairs the batch needs
    (read from the file meta in :meth:`prepare`).  pynetdicom negotiates and releases
    the associations, answers C-ECHO and C-FIND, and decodes the C-STORE answers
    (a :class:`ReplyGuard` keeps its reactor thread from taking them: a 30 s stall
    otherwise).  The request itself is written by :func:`c_store_parts`: the command set
    and the file's encoded dataset (the bytes after its file meta, never decoded),
    cut into P-DATA-TF PDUs of the size Orthanc accepts (``MaximumPduLength``, 16 KiB
    by default), the PDU headers and views of the file's bytes sent with ``sendmsg``
    (no copy) on a ``TCP_NODELAY`` socket.  Sending
    through pynetdicom's reactor instead (one queue hop and state-machine step per
    PDU) cost about 5 ms of client CPU per 512x512 CT image, four times dcmtk's
    ``storescu``.  Verification uses one REST ``GET /instances`` when ``ORTHANC_URL``
    is set, else a C-FIND at IMAGE level.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``ORTHANC_IPADDRESS``, ``ORTHANC_PORT``, ``ORTHANC_AE_TITLE``,
        ``SENDIT_AE_TITLE``, ``DICOM_ASSOCIATIONS`` and optionally ``ORTHANC_URL``.
    """

    kind = TargetKind.ORTHANC

    def __init__(self, settings: Mapping[str, Any]) -> None:
        cfg = typed(settings)
        orthanc = cfg.targets.orthanc
        self.host = orthanc.ipaddress or "127.0.0.1"
        self.port = orthanc.port
        self.called = orthanc.ae_title
        self.calling = orthanc.calling_ae_title
        url = orthanc.url
        self.threads = max(1, cfg.upload.threads)
        self.associations = max(1, orthanc.associations)
        auth = (orthanc.username, orthanc.password)
        self.rest = OrthancRest(url, self.threads, *auth) if url else None
        self.where = f"{self.called}@{self.host}:{self.port}"
        self._contexts: set[tuple[str, str]] = set()
        self._uids: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._idle: queue.LifoQueue[Link] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.associations)
        self._links: set[Link] = set()
        """Every association opened for C-STORE and not yet closed (idle or in use)."""
        self._links_lock = threading.Lock()
        self._ae: Any = None

    @property
    def destination_id(self) -> str:
        """``orthanc-dicom <called AE>@<host>:<port> from <calling AE>``."""
        return f"orthanc-dicom {self.called}@{self.host}:{self.port} from {self.calling}"

    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys Orthanc holds: one REST listing when ``ORTHANC_URL`` is set, else C-FIND.

        Over REST the instance IDs are computed from the files' identifiers
        (:func:`orthanc_id`); over DICOM the recorded SOPInstanceUIDs are looked for
        with C-FIND at IMAGE level, :data:`VERIFY_CHUNK` at a time.
        """
        if not items:
            return set()
        if self.rest is not None:
            self._identify(items)
            held = _instances(self.rest, "confirming earlier uploads")
            return {i.key for i in items if self._ids.get(i.key) in held}
        uids = {i.key: remote_ids.get(i.key, "") for i in items}
        missing = [i for i in items if not uids[i.key]]
        if missing:
            self._identify(missing)
            uids.update({i.key: self._uids[i.key] for i in missing})
        keys = list(uids)
        found: set[str] = set()
        for start in range(0, len(keys), VERIFY_CHUNK):
            chunk = keys[start : start + VERIFY_CHUNK]
            present = self._find([uids[k] for k in chunk])
            found.update(k for k in chunk if uids[k] in present)
        return found

    def _identify(self, items: Sequence[Item]) -> None:
        """Each file's SOP class, transfer syntax, SOPInstanceUID and Orthanc ID.

        Only the first bytes of each file are read (:func:`read_file_meta`); the Orthanc
        ID comes from the item's cleaned row (the identifiers of the released header),
        else from the file's header.
        """
        for item in items:
            meta = read_file_meta(item.path)
            self._contexts.add((meta.sop_class, meta.transfer_syntax))
            self._uids[item.key] = meta.sop_instance
            self._ids[item.key] = self._orthanc_id(item, meta.sop_instance)

    def check(self) -> None:
        """C-ECHO the SCP; raise :class:`UploadError` naming the AE titles on refusal."""
        sop = _pynetdicom().sop_class
        ae = self._new_ae([(sop.Verification, "1.2.840.10008.1.2")])
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
        finally:
            end_association(assoc)
        if not status or status.Status != 0:
            raise UploadError(f"orthanc target: C-ECHO to {self.where} failed; check Orthanc's log")

    def prepare(self, items: Sequence[Item]) -> None:
        """Read each file's meta (SOP class, transfer syntax, UID) to propose the contexts."""
        self._identify(items)
        if len(self._contexts) > MAX_CONTEXTS:
            raise UploadError(
                f"orthanc target: the batch needs {len(self._contexts)} (SOP class, transfer "
                f"syntax) pairs, more than one association can propose ({MAX_CONTEXTS}); "
                "split the batch or use ORTHANC_PROTOCOL=rest"
            )
        self._ae = self._new_ae(sorted(self._contexts))

    @staticmethod
    def _orthanc_id(item: Item, sop_uid: str) -> str:
        meta = item.metadata
        ids = [meta.get(tag) for tag in ID_TAGS[:3]]
        if not all(isinstance(v, str) and v for v in ids[1:]) or not isinstance(ids[0], str):
            from pydicom import dcmread

            ds = dcmread(item.path, stop_before_pixels=True, specific_tags=ID_TAGS)
            ids = [str(ds.get(tag, "") or "") for tag in ID_TAGS[:3]]
        return orthanc_id(str(ids[0]), str(ids[1]), str(ids[2]), sop_uid)

    def _new_ae(self, contexts: Sequence[tuple[str, str]]) -> Any:
        ae = _pynetdicom().AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        for abstract, syntax in contexts:
            ae.add_requested_context(abstract, syntax)
        return ae

    def _associate(self, ae: Any) -> Any:
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if assoc.is_established:
            try:
                assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ReplyGuard.install(assoc)
            except BaseException:
                end_association(assoc, release=False)
                raise
            return assoc
        end_association(assoc, release=False)  # rejected or refused: its threads end too
        if assoc.is_rejected:
            raise UploadError(
                f"orthanc target: {self.where} rejected the association from calling AE "
                f"{self.calling}; fix ORTHANC_AE_TITLE / SENDIT_AE_TITLE or add {self.calling} "
                "to Orthanc's DicomModalities"
            )
        raise TransientError(
            f"orthanc target: cannot associate with {self.where}; start Orthanc or fix "
            "ORTHANC_IPADDRESS / ORTHANC_PORT"
        )

    def _acquire(self) -> Link:
        """An idle established association, or a new one (the caller holds a slot)."""
        while True:
            try:
                link = self._idle.get_nowait()
            except queue.Empty:
                break
            if link.usable:
                return link
            self._close_link(link, release=False)
        if self._ae is None:
            raise UploadError("orthanc target: prepare(items) must run before put()")
        assoc = self._associate(self._ae)
        try:
            link = Link(assoc)
        except BaseException:
            end_association(assoc, release=False)
            raise
        with self._links_lock:
            self._links.add(link)
        return link

    def _close_link(self, link: Link, release: bool) -> None:
        with self._links_lock:
            if link not in self._links:
                return  # closed already
            self._links.remove(link)
        link.close(release=release)

    def put(self, item: Item) -> Receipt:
        """C-STORE one file over an idle pooled association, its dataset sent as it is.

        The association goes back to the idle pool after the answer, or after an error
        that left it usable (a file without the meta a C-STORE needs, a context Orthanc
        did not accept); any other error aborts it and ends its threads.
        """
        what = f"release/{item.key}"
        data = item.read(md5=False)
        with self._slots:
            link = self._acquire()
            try:
                code = self._store(link, data, what)
            except BaseException:
                if link.usable:
                    self._idle.put(link)
                else:
                    self._close_link(link, release=False)
                raise
            self._idle.put(link)
        return self._stored(item, code, self._uids.get(item.key, ""))

    def _store(self, link: Link, data: bytes, what: str) -> int:
        """Send one C-STORE-RQ with the file's bytes and wait for its answer's status."""
        meta = parse_file_meta(data, what)
        try:
            context = link.context(meta.sop_class, meta.transfer_syntax)
        except ValueError as exc:
            raise UploadError(
                f"orthanc target: {self.where} accepted no presentation context for {what} "
                f"(SOP class {meta.sop_class}, transfer syntax {meta.transfer_syntax}); "
                "enable that transfer syntax in Orthanc or use ORTHANC_PROTOCOL=rest"
            ) from exc
        message_id = link.next_id()
        parts = c_store_parts(
            context, message_id, meta, memoryview(data)[meta.offset :], link.max_pdu
        )
        try:
            return link.store(parts, message_id)
        except OSError as exc:
            self._close_link(link, release=False)
            raise TransientError(
                f"orthanc target: C-STORE of {what} to {self.where} broke off "
                f"({type(exc).__name__}); Orthanc's log may say why"
            ) from exc

    def _stored(self, item: Item, code: int, sop_uid: str) -> Receipt:
        what = f"release/{item.key}"
        if code & 0xFF00 == 0xA700:
            raise TransientError(f"orthanc target: {self.where} is out of resources (0x{code:04X})")
        if code not in (0x0000, 0xB000, 0xB006, 0xB007):
            raise UploadError(
                f"orthanc target: {self.where} refused {what} with C-STORE status 0x{code:04X}; "
                "see Orthanc's log for the reason"
            )
        uid = self._uids.get(item.key) or sop_uid
        return Receipt(
            key=item.key,
            name=item.name,
            entity_id=item.entity_id,
            target=self.kind,
            status="stored",
            checksum=item.checksum,
            remote_id=uid,
            url=f"dicom://{self.where}/{uid}",
            fields={"size": item.size, "content_type": "application/dicom"},
        )

    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys whose SOPInstanceUID Orthanc holds (over REST when set, else C-FIND).

        Presence only: C-STORE gives no checksum to compare.  Over REST, one
        ``GET /instances`` listing is compared with the Orthanc IDs computed in
        :meth:`prepare` (:func:`orthanc_id`); a receipt whose ID is not listed is
        looked up by SOPInstanceUID (``/tools/lookup``), so a wrongly computed ID
        costs a request, never a false answer.
        """
        self._release_idle()
        if not receipts:
            return set()
        if self.rest is not None:
            rest = self.rest
            listing = rest.request("GET", "/instances", what="GET /instances")
            held = set(map(str, listing.json())) if listing.status_code == 200 else set()
            listed = {r.key for r in receipts if self._ids.get(r.key) in held}
            rest_of = [r for r in receipts if r.key not in listed]

            def one(receipt: Receipt) -> str | None:
                return receipt.key if rest.lookup(receipt.remote_id) is not None else None

            if rest_of:
                with ThreadPoolExecutor(min(self.threads, len(rest_of))) as pool:
                    listed.update(key for key in pool.map(one, rest_of) if key)
            return listed
        found: set[str] = set()
        for start in range(0, len(receipts), VERIFY_CHUNK):
            chunk = receipts[start : start + VERIFY_CHUNK]
            present = self._find([r.remote_id for r in chunk])
            found.update(r.key for r in chunk if r.remote_id in present)
        return found

    def _find(self, uids: Sequence[str]) -> set[str]:
        from pydicom import Dataset

        model = _pynetdicom().sop_class.StudyRootQueryRetrieveInformationModelFind
        ae = self._new_ae([(model, "1.2.840.10008.1.2.1")])
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = ""
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = list(uids)
        assoc = self._associate(ae)
        present: set[str] = set()
        try:
            for status, identifier in assoc.send_c_find(query, model):
                if status and int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
                    present.add(str(identifier.SOPInstanceUID))
        finally:
            end_association(assoc)
        return present

    def _release_idle(self) -> None:
        while True:
            try:
                link = self._idle.get_nowait()
            except queue.Empty:
                return
            self._close_link(link, release=link.usable)

    def close(self) -> None:
        """Release every association (idle ones, and any a caller still holds) and end
        their threads; close the REST sessions."""
        try:
            self._release_idle()
            with self._links_lock:
                left = list(self._links)
            for link in left:
                self._close_link(link, release=link.usable)
        finally:
            if self.rest is not None:
                self.rest.close()


class ReplyGuard:
    """Keep pynetdicom's association reactor from taking the answers our requests wait for.

    pynetdicom's requestor pauses the association's reactor thread around each
    ``send_c_*`` call, but the pause is racy (the reactor can pass its checkpoint just
    before the pause and still poll the DIMSE queue): when Orthanc answers fast, the
    reactor takes the C-STORE response, logs "Received unexpected C-STORE service
    message" and drops it, and the store waits until Orthanc closes the idle
    association (``DicomScpTimeout``, 30 s) -- seen in about one upload of 250 files
    in five (pynetdicom issue #875 reports the same for C-FIND).  Our associations
    never serve requests from Orthanc, so the reactor thread (the
    :class:`pynetdicom.association.Association` thread itself) gets nothing from
    non-blocking polls; blocking reads (those of ``send_c_*``) are passed through.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An established association whose ``dimse.get_msg`` is wrapped.
    """

    def __init__(self, assoc: Any) -> None:
        self.owner = assoc
        self.get_msg = assoc.dimse.get_msg

    @classmethod
    def install(cls, assoc: Any) -> None:
        """Wrap ``assoc.dimse.get_msg`` (once)."""
        if not isinstance(assoc.dimse.get_msg, cls):
            assoc.dimse.get_msg = cls(assoc)

    def __call__(self, block: bool = False) -> tuple[Any, Any]:
        """pynetdicom's ``get_msg``, but ``(None, None)`` for the reactor's own polls."""
        if not block and threading.current_thread() is self.owner:
            return None, None
        return self.get_msg(block)  # type: ignore[no-any-return]


def end_association(assoc: Any, release: bool = True) -> None:
    """Release or abort a pynetdicom association and wait for both its threads to end.

    pynetdicom's DUL thread is not a daemon: one left running (an association neither
    released nor aborted, or a release that did not finish) keeps the interpreter from
    exiting.  Whatever happened before, the DUL and association threads are told to
    stop and joined (:data:`JOIN_TIMEOUT` each).

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        The association, in any state.
    release : bool
        Try an A-RELEASE first when it is established; an A-ABORT otherwise or after.
    """
    try:
        if release and assoc.is_established:
            assoc.release()
    finally:
        try:
            if not (assoc.is_released or assoc.is_aborted) and assoc.dul.is_alive():
                assoc.abort()
        finally:
            assoc.dul.kill_dul()
            assoc.kill()
            for thread in (assoc.dul, assoc):
                if thread.is_alive() and thread is not threading.current_thread():
                    thread.join(JOIN_TIMEOUT)


class Link:
    """One established association in the data phase: the C-STORE exchanges are ours.

    pynetdicom negotiates the association (and releases or aborts it); in between, the
    C-STORE requests are written and their answers read here, on the association's
    socket, by the thread that stores the file: no queue hop or state-machine step per
    PDU, no handing an answer from pynetdicom's DUL thread to the storing thread (each
    hop waits for the GIL).  Meanwhile pynetdicom's two per-association threads are
    kept from the socket and from polling it every millisecond (an idle association
    cost about 5 % of a core): the association reactor, which only serves requests from
    the peer (a C-STORE SCU gets none), is paused as pynetdicom pauses it around each
    ``send_c_*``, and the DUL thread waits instead of reading.  :meth:`release` and
    :meth:`abort` give the socket back to pynetdicom first.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        Established, with :class:`ReplyGuard` installed.
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.max_pdu = int(assoc.acceptor.maximum_length or 0)
        """The largest P-DATA-TF PDU the peer accepts (0: no limit)."""
        self.sock: socket.socket = assoc.dul.socket.socket
        self._message_id = 0
        self._contexts: dict[tuple[str, str], int] = {}
        self._ours = threading.Event()
        self._take_over()

    def _take_over(self) -> None:
        assoc, dul = self.assoc, self.assoc.dul
        assoc._reactor_checkpoint.clear()
        deadline = time.monotonic() + TIMEOUT
        while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0001)
        poll, ours = dul._is_transport_event, self._ours

        def poll_unless_ours() -> bool:
            if ours.is_set():
                time.sleep(DUL_WAIT)  # pynetdicom's queued primitives wait at most this
                return False
            return bool(poll())

        dul._is_transport_event = poll_unless_ours
        self.sock.settimeout(TIMEOUT)
        ours.set()

    def _give_back(self) -> None:
        """Let pynetdicom read the socket again (for release and abort)."""
        self._ours.clear()

    @property
    def usable(self) -> bool:
        """Whether the association is still up (its DUL in state Sta6, data transfer)."""
        assoc = self.assoc
        return bool(
            self._ours.is_set()
            and assoc.is_established
            and assoc.dul.is_alive()
            and assoc.dul.state_machine.current_state == "Sta6"
        )

    def store(self, parts: Sequence[bytes | memoryview], message_id: int) -> int:
        """Send a C-STORE-RQ's PDUs and read its C-STORE-RSP; return the status.

        Parameters
        ----------
        parts : Sequence of bytes or memoryview
            The request's bytes in order (:func:`c_store_parts`), written with
            ``sendmsg`` as they are (no joined copy of the dataset).
        message_id : int
            The request's message ID.

        Raises
        ------
        OSError
            The connection broke, timed out (``TIMEOUT``), or the peer sent anything but
            the answer to this request (A-ABORT, A-RELEASE-RQ, another message ID).
        """
        send_parts(self.sock, parts)
        answer = self._read_command()
        if answer.get(0x0120) != message_id or 0x0900 not in answer:
            raise ConnectionError("the C-STORE answer does not answer this request")
        return answer[0x0900]

    def _read_exact(self, size: int) -> memoryview:
        buf = memoryview(bytearray(size))
        got = 0
        while got < size:
            n = self.sock.recv_into(buf[got:])
            if n == 0:
                raise ConnectionError("the peer closed the connection")
            got += n
        return buf

    def _read_command(self) -> dict[int, int]:
        """The next DIMSE command from the peer: its US elements, by element number."""
        command = bytearray()
        while True:
            head = self._read_exact(6)
            kind, length = head[0], struct.unpack_from(">I", head, 2)[0]
            body = self._read_exact(length)
            if kind != 0x04:  # not P-DATA-TF: A-ABORT (0x07), A-RELEASE-RQ (0x05), ...
                raise ConnectionError(f"the peer sent PDU type 0x{kind:02X}")
            pos = 0
            while pos + 6 <= length:
                (size,) = struct.unpack_from(">I", body, pos)
                control = body[pos + 5]
                if control & 0x01:
                    command += body[pos + 6 : pos + 4 + size]
                    if control & 0x02:
                        return command_values(command)
                pos += 4 + size

    def close(self, release: bool = True) -> None:
        """Release (or abort) the association through pynetdicom and end its threads.

        Parameters
        ----------
        release : bool
            Negotiate an A-RELEASE first (the association is usable); else, or when the
            release fails, send an A-ABORT.
        """
        self._give_back()
        end_association(self.assoc, release=release)

    def next_id(self) -> int:
        """The next DIMSE message ID of this association (1 to 65535, then again 1)."""
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def context(self, sop_class: str, transfer_syntax: str) -> int:
        """ID of the accepted presentation context for this SOP class and transfer syntax.

        Raises
        ------
        ValueError
            The peer accepted no such context.
        """
        key = (sop_class, transfer_syntax)
        found = self._contexts.get(key)
        if found is None:
            for ctx in self.assoc.accepted_contexts:
                if (
                    ctx.abstract_syntax == sop_class
                    and ctx.transfer_syntax
                    and ctx.transfer_syntax[0] == transfer_syntax
                    and ctx.as_scu
                ):
                    found = int(ctx.context_id)
                    break
            else:
                raise ValueError(f"no accepted context for {sop_class} in {transfer_syntax}")
            self._contexts[key] = found
        return found


def send_parts(sock: socket.socket, parts: Sequence[bytes | memoryview]) -> None:
    """Write ``parts`` in order with as few ``sendmsg`` calls as the kernel allows.

    Each call takes up to :data:`IOV_MAX` buffers; a partial write goes on from the
    first byte not written.
    """
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    start = 0
    while start < len(views):
        sent = sock.sendmsg(views[start : start + IOV_MAX])
        while sent:
            size = views[start].nbytes
            if sent < size:
                views[start] = views[start][sent:]
                break
            sent -= size
            start += 1


def _pynetdicom() -> Any:
    try:
        import pynetdicom
        import pynetdicom.sop_class  # noqa: F401
    except ImportError as exc:
        raise missing_client("orthanc (dicom protocol)", "pynetdicom", "orthanc") from exc
    return pynetdicom
