"""Orthanc targets: REST (``POST /instances``) and DICOM (C-STORE with pynetdicom).

Credentials come only from the environment (``ORTHANC_USERNAME``,
``ORTHANC_PASSWORD``).  Orthanc answers a second upload of the same instance
with ``AlreadyStored`` (REST) or success without overwriting (C-STORE), so
both targets are create-once.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from sendit_helpers.core.errors import UploadError, tag_label
from sendit_helpers.core.retry import retry_after_seconds
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    ConflictError,
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    missing_client,
    public_url,
)

TIMEOUT = 60.0
VERIFY_CHUNK = 200
VERIFY_SAMPLE = 8
"""Stored REST instances whose attachment MD5 is read back at verification (all if one differs)."""
MAX_CONTEXTS = 128
MAX_ASSOCIATIONS = 4
"""Default ``DICOM_ASSOCIATIONS``: Orthanc serves 4 at once by default (DicomThreadsCount)."""
DUL_WAIT = 0.01
JOIN_TIMEOUT = 5.0
"""Seconds :meth:`Link.close` waits for each of an association's two threads to end."""
"""Seconds pynetdicom's DUL thread sleeps between looks at its queue while a :class:`Link` has
the socket."""
ID_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
"""The identifiers of Orthanc's instance ID (:func:`orthanc_id`)."""


def _auth() -> tuple[str, str] | None:
    user = os.environ.get("ORTHANC_USERNAME", "")
    return (user, os.environ.get("ORTHANC_PASSWORD", "")) if user else None


@dataclass(frozen=True)
class Answer:
    """One HTTP answer from Orthanc, read completely."""

    status_code: int
    data: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        """The body as text."""
        return self.data.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.data)


def _retry_after(answer: Answer) -> float | None:
    """Seconds a 429 or 503 answer's ``Retry-After`` (seconds or HTTP date) asks to wait."""
    if answer.status_code not in (429, 503):
        return None
    return retry_after_seconds(answer.headers.get("Retry-After"))


class OrthancRest:
    """Thread-safe REST client over one urllib3 connection pool, basic auth from env.

    urllib3 directly, not requests: about a third of the client CPU per request,
    which is what limits an upload of many small files.

    Parameters
    ----------
    url : str
        Orthanc's REST root, e.g. ``http://127.0.0.1:8042``.
    connections : int
        Kept-alive connections (one per upload thread).
    """

    def __init__(self, url: str, connections: int = 8) -> None:
        self.url = url.rstrip("/")
        auth = _auth()
        self._headers = urllib3.make_headers(basic_auth=":".join(auth)) if auth else {}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=max(1, connections) + 2, retries=False, timeout=TIMEOUT
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a request; map connection errors, 429 and 5xx to :class:`TransientError`."""
        try:
            resp = self._pool.request(
                method, self.url + path, body=body, headers={**self._headers, **(headers or {})}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError(
                f"orthanc target: cannot reach {self.url} while sending {what} "
                f"({type(exc).__name__}); start Orthanc or fix ORTHANC_URL"
            ) from exc
        answer = Answer(resp.status, resp.data, resp.headers)
        if answer.status_code == 429 or answer.status_code >= 500:
            raise TransientError(
                f"orthanc target: {self.url} answered HTTP {answer.status_code} for {what}",
                _retry_after(answer),
            )
        if answer.status_code in (401, 403):
            raise UploadError(
                f"orthanc target: {self.url} refused the credentials (HTTP {answer.status_code}) "
                f"for {what}; set ORTHANC_USERNAME and ORTHANC_PASSWORD in the environment to "
                "a user listed in Orthanc's RegisteredUsers"
            )
        return answer

    def check(self) -> None:
        """GET /system; raise :class:`UploadError` with the fix when it fails."""
        try:
            resp = self.request("GET", "/system", what="GET /system")
        except TransientError as exc:
            raise UploadError(str(exc)) from exc
        if resp.status_code != 200:
            raise UploadError(
                f"orthanc target: GET {self.url}/system answered HTTP {resp.status_code}; "
                "check ORTHANC_URL points at Orthanc's REST port"
            )

    def md5_of(self, instance_id: str) -> str | None:
        """MD5 Orthanc recorded for the instance's DICOM attachment, ``None`` if absent."""
        what = f"instance {instance_id}"
        resp = self.request("GET", f"/instances/{instance_id}/attachments/dicom/md5", what=what)
        return resp.text.strip() if resp.status_code == 200 else None

    def lookup(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOPInstanceUID, ``None`` if absent."""
        resp = self.request("POST", "/tools/lookup", body=sop_instance_uid, what="/tools/lookup")
        if resp.status_code != 200:
            return None
        for hit in resp.json():
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()


class OrthancRestTarget(Target):
    """Upload with ``POST /instances``; verify in bulk (one listing plus sampled MD5s).

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``ORTHANC_URL`` and ``UPLOAD_THREADS``.
    """

    kind = TargetKind.ORTHANC

    def __init__(self, settings: Mapping[str, Any]) -> None:
        cfg = typed(settings)
        url = cfg.targets.orthanc.url
        if not url:
            raise UploadError(
                "orthanc target: ORTHANC_URL is empty but ORTHANC_PROTOCOL is 'rest'; set "
                "ORTHANC_URL (e.g. http://127.0.0.1:8042) or use ORTHANC_PROTOCOL=dicom"
            )
        self.threads = max(1, cfg.upload.threads)
        self.rest = OrthancRest(url, self.threads)
        self._sent: dict[str, tuple[Path, str]] = {}
        """Item key -> (file, SHA-256 of the bytes sent), for the MD5 checks of :meth:`verify`."""

    @property
    def destination_id(self) -> str:
        """``orthanc <REST URL>`` (no credentials)."""
        return f"orthanc {public_url(self.rest.url)}"

    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys whose recorded Orthanc instance ID is in one ``GET /instances`` listing."""
        held = _instances(self.rest, "confirming earlier uploads")
        return {i.key for i in items if remote_ids.get(i.key, "") in held}

    def check(self) -> None:
        """GET /system with the environment's credentials."""
        self.rest.check()

    def put(self, item: Item) -> Receipt:
        """POST the file to /instances; ``AlreadyStored`` counts as ``exists``.

        An instance Orthanc already stores with other bytes (its attachment MD5 differs
        from the sent file's) raises :class:`ConflictError`.
        """
        data = item.read(md5=False)  # MD5s are computed only for the files verify() checks
        self._sent[item.key] = (item.path, item.checksum)
        what = f"release/{item.key}"
        headers = {"Content-Type": "application/dicom"}
        resp = self.rest.request("POST", "/instances", body=data, headers=headers, what=what)
        if resp.status_code != 200:
            raise UploadError(
                f"orthanc target: {self.rest.url} refused {what} (HTTP {resp.status_code}); "
                "Orthanc could not parse it as DICOM: re-run de-identification for this file"
            )
        answer = resp.json()
        status = "exists" if answer.get("Status") == "AlreadyStored" else "stored"
        instance = str(answer["ID"])
        if status == "exists":
            stored_md5 = self.rest.md5_of(instance)
            sent_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if stored_md5 is not None and stored_md5 != sent_md5:
                raise ConflictError(
                    f"orthanc target: {what} not stored: {self.rest.url} already stores "
                    f"instance {instance} with different content (the same object from "
                    "another batch or encoding); the stored copy is kept. To replace it, "
                    "delete that instance in Orthanc and upload again",
                    instance,
                )
        return Receipt(
            key=item.key,
            name=item.name,
            entity_id=item.entity_id,
            target=self.kind,
            status=status,
            checksum=item.checksum,
            remote_id=instance,
            url=f"{self.rest.url}/instances/{instance}",
            fields={"size": item.size, "content_type": "application/dicom"},
        )

    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys whose instance Orthanc holds, with the bytes sent (in bulk, see Notes).

        Notes
        -----
        A key is verified when both hold:

        * **presence**: the instance ID Orthanc answered to our ``POST /instances`` is in
          one ``GET /instances`` listing taken after every upload.  Orthanc derives that ID
          from the patient, study, series and SOP instance UIDs of the file it parsed, so
          presence proves Orthanc indexed an instance with this file's identity;
        * **content**: Orthanc's own MD5 of the stored DICOM attachment
          (``/instances/{id}/attachments/dicom/md5``, computed by Orthanc from the bytes it
          received) equals the MD5 of the file we sent.  It is read for *every* receipt
          whose status is ``"exists"`` (Orthanc kept an earlier copy, which may differ)
          and for a random sample of :data:`VERIFY_SAMPLE` ``"stored"`` ones.  A
          ``"stored"`` receipt means Orthanc answered ``Success`` to the request carrying
          exactly these bytes, so its attachment is those bytes unless something rewrites
          them on the way or on ingest (a proxy, ``IngestTranscoding``): such a rewrite
          affects every file, the sample catches it, and then every receipt's MD5 is read.
        """
        if not receipts:
            return set()
        held = _instances(self.rest, "verifying")
        present = [r for r in receipts if r.remote_id in held]
        fresh = [r for r in present if r.status == "stored"]
        check = [r for r in present if r.status != "stored"]
        sample = random.sample(fresh, min(VERIFY_SAMPLE, len(fresh)))
        bad = self._md5_mismatches(check + sample)
        if bad & {r.key for r in sample}:
            sampled = {r.key for r in sample}
            bad |= self._md5_mismatches([r for r in fresh if r.key not in sampled])
        return {r.key for r in present} - bad

    def _md5_mismatches(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys whose stored attachment MD5 (read in parallel) differs from the sent bytes'.

        The MD5 of the bytes sent is that of the file, read again, when its SHA-256 is
        still the one sent (a file changed since counts as a mismatch).
        """

        def one(receipt: Receipt) -> str | None:
            path, sha = self._sent.get(receipt.key, (None, ""))
            try:
                data = path.read_bytes() if path is not None else b""
            except OSError:
                return receipt.key
            if not data or hashlib.sha256(data).hexdigest() != sha:
                return receipt.key
            sent_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            return receipt.key if self.rest.md5_of(receipt.remote_id) != sent_md5 else None

        if not receipts:
            return set()
        with ThreadPoolExecutor(min(self.threads, len(receipts))) as pool:
            return {key for key in pool.map(one, receipts) if key}

    def close(self) -> None:
        """Close the HTTP sessions."""
        self.rest.close()


class OrthancDicomTarget(Target):
    """C-STORE to ``ORTHANC_IPADDRESS:ORTHANC_PORT`` over several reused associations.

    ``DICOM_ASSOCIATIONS`` associations (4 by default: Orthanc serves 4 at once,
    ``DicomThreadsCount``) are opened on demand and reused for every file of the
    batch; each proposes, once, the (SOP class, transfer syntax) pairs the batch needs
    (read from the file meta in :meth:`prepare`).  pynetdicom negotiates and releases
    the associations, answers C-ECHO and C-FIND, and decodes the C-STORE answers
    (a :class:`ReplyGuard` keeps its reactor thread from taking them: a 30 s stall
    otherwise).  The request itself is written by :func:`c_store_pdus`: the command set
    and the file's encoded dataset (the bytes after its file meta, never decoded),
    cut into P-DATA-TF PDUs of the size Orthanc accepts (``MaximumPduLength``, 16 KiB
    by default) and sent with one ``sendall`` on a ``TCP_NODELAY`` socket.  Sending
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
        self.rest = OrthancRest(url, self.threads) if url else None
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
        pdus = c_store_pdus(
            context, message_id, meta, memoryview(data)[meta.offset :], link.max_pdu
        )
        try:
            return link.store(pdus, message_id)
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


def _instances(rest: OrthancRest, why: str) -> set[str]:
    """Every instance ID Orthanc holds (one ``GET /instances``)."""
    listing = rest.request("GET", "/instances", what="GET /instances")
    if listing.status_code != 200:
        raise TransientError(
            f"orthanc target: GET {rest.url}/instances answered HTTP "
            f"{listing.status_code} while {why}"
        )
    return set(map(str, listing.json()))


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

    def store(self, pdus: bytes, message_id: int) -> int:
        """Send a C-STORE-RQ's PDUs and read its C-STORE-RSP; return the status.

        Raises
        ------
        OSError
            The connection broke, timed out (``TIMEOUT``), or the peer sent anything but
            the answer to this request (A-ABORT, A-RELEASE-RQ, another message ID).
        """
        self.sock.sendall(pdus)
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
                        return _command_values(command)
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


def _command_values(command: bytes | bytearray) -> dict[int, int]:
    """The 2-byte (US) elements of a command set (implicit VR LE), by element number."""
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
    out: list[bytes | memoryview] = []
    command = c_store_command(meta.sop_class, meta.sop_instance, message_id)
    _fragments(out, context_id, command, True, max_pdu)
    _fragments(out, context_id, dataset, False, max_pdu)
    return b"".join(out)


def orthanc_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The ID Orthanc gives an instance: SHA-1 of its four identifiers, in 5 dashed groups.

    Orthanc's ``DicomInstanceHasher``: ``sha1("PatientID|StudyUID|SeriesUID|SOPUID")``
    as lower-case hex, ``-`` after every 8 digits.
    """
    text = "|".join(v.strip() for v in (patient_id, study_uid, series_uid, sop_uid))
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _pynetdicom() -> Any:
    try:
        import pynetdicom
        import pynetdicom.sop_class  # noqa: F401
    except ImportError as exc:
        raise missing_client("orthanc (dicom protocol)", "pynetdicom", "orthanc") from exc
    return pynetdicom
