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
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from ..errors import UploadError
from ..retry import retry_after_seconds
from .base import (
    ConflictError,
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    missing_client,
    public_url,
    setting,
)

TIMEOUT = 60.0
VERIFY_CHUNK = 200
VERIFY_SAMPLE = 8
"""Stored REST instances whose attachment MD5 is read back at verification (all if one differs)."""
MAX_CONTEXTS = 128
MAX_ASSOCIATIONS = 4
"""Concurrent associations per upload; Orthanc serves 4 at once by default (DicomThreadsCount)."""
ID_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
"""The only dataset elements :meth:`OrthancDicomTarget.prepare` parses (besides the file meta)."""


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
        url = str(setting(settings, "ORTHANC_URL", "") or "")
        if not url:
            raise UploadError(
                "orthanc target: ORTHANC_URL is empty but ORTHANC_PROTOCOL is 'rest'; set "
                "ORTHANC_URL (e.g. http://127.0.0.1:8042) or use ORTHANC_PROTOCOL=dicom"
            )
        self.threads = max(1, int(setting(settings, "UPLOAD_THREADS", 16)))
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
    """C-STORE to ``ORTHANC_IPADDRESS:ORTHANC_PORT`` over a small pool of reused associations.

    ``TCP_NODELAY`` is set on each association's socket (pynetdicom leaves Nagle on,
    which costs ~90 ms per store), and a :class:`ReplyGuard` keeps pynetdicom's reactor
    thread from taking C-STORE answers (a 30 s stall otherwise).  Files are streamed as
    they are on disk (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``), never decoded and
    re-encoded; the PDU size is the one Orthanc accepts (``MaximumPduLength``, 16 KiB by
    default: raising it to 128 KiB makes each store cheaper for every DICOM client).
    Verification uses one REST ``GET /instances`` when ``ORTHANC_URL`` is set, else a
    C-FIND at IMAGE level.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``ORTHANC_IPADDRESS``, ``ORTHANC_PORT``, ``ORTHANC_AE_TITLE``,
        ``SENDIT_AE_TITLE`` and optionally ``ORTHANC_URL``.
    """

    kind = TargetKind.ORTHANC

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.host = str(setting(settings, "ORTHANC_IPADDRESS", "127.0.0.1") or "127.0.0.1")
        self.port = int(setting(settings, "ORTHANC_PORT", 4747))
        self.called = str(setting(settings, "ORTHANC_AE_TITLE", "ORTHANC"))
        self.calling = str(setting(settings, "SENDIT_AE_TITLE", "SENDIT"))
        url = str(setting(settings, "ORTHANC_URL", "") or "")
        self.threads = max(1, int(setting(settings, "UPLOAD_THREADS", 16)))
        self.rest = OrthancRest(url, self.threads) if url else None
        self.where = f"{self.called}@{self.host}:{self.port}"
        self._contexts: set[tuple[str, str]] = set()
        self._uids: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(min(MAX_ASSOCIATIONS, self.threads))
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
        """Read each file's SOP class, transfer syntax and identifiers (header only)."""
        from pydicom import dcmread

        for item in items:
            ds = dcmread(item.path, stop_before_pixels=True, specific_tags=ID_TAGS)
            meta = ds.file_meta
            self._contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
            self._uids[item.key] = str(meta.MediaStorageSOPInstanceUID)
            self._ids[item.key] = orthanc_id(
                str(ds.get("PatientID", "") or ""),
                str(ds.get("StudyInstanceUID", "") or ""),
                str(ds.get("SeriesInstanceUID", "") or ""),
                str(ds.get("SOPInstanceUID", "") or meta.MediaStorageSOPInstanceUID),
            )

    def check(self) -> None:
        """C-ECHO the SCP; raise :class:`UploadError` naming the AE titles on refusal."""
        sop = _pynetdicom().sop_class
        ae = self._new_ae([(sop.Verification, "1.2.840.10008.1.2")])
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise UploadError(f"orthanc target: C-ECHO to {self.where} failed; check Orthanc's log")

    def prepare(self, items: Sequence[Item]) -> None:
        """Read each file's SOP class, transfer syntax and SOPInstanceUID to propose contexts."""
        self._identify(items)
        if len(self._contexts) > MAX_CONTEXTS:
            raise UploadError(
                f"orthanc target: the batch needs {len(self._contexts)} (SOP class, transfer "
                f"syntax) pairs, more than one association can propose ({MAX_CONTEXTS}); "
                "split the batch or use ORTHANC_PROTOCOL=rest"
            )
        self._ae = self._new_ae(sorted(self._contexts))
        # send each file's encoded dataset in chunks, without decoding and re-encoding it
        # (process-wide pynetdicom setting; every released file has its file meta)
        _pynetdicom()._config.STORE_SEND_CHUNKED_DATASET = True

    def _new_ae(self, contexts: Sequence[tuple[str, str]]) -> Any:
        ae = _pynetdicom().AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        for abstract, syntax in contexts:
            ae.add_requested_context(abstract, syntax)
        return ae

    def _associate(self, ae: Any) -> Any:
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if assoc.is_established:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ReplyGuard.install(assoc)
            return assoc
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

    def _acquire(self) -> Any:
        """An idle established association, or a new one (the caller holds a slot)."""
        while True:
            try:
                assoc = self._idle.get_nowait()
            except queue.Empty:
                break
            if assoc.is_established:
                return assoc
        if self._ae is None:
            raise UploadError("orthanc target: prepare(items) must run before put()")
        return self._associate(self._ae)

    def put(self, item: Item) -> Receipt:
        """C-STORE one item over an idle pooled association, streamed as is.

        The bytes streamed are the item's checked bytes (:meth:`Item.sent_file`), never
        the file under ``release/`` read again.
        """
        with self._slots, item.sent_file() as path:
            assoc = self._acquire()
            status = self._store(assoc, path, f"release/{item.key}")
            self._idle.put(assoc)
        return self._stored(item, status, self._uids.get(item.key, ""))

    def _store(self, assoc: Any, path: Path, what: str) -> Any:
        try:
            status = assoc.send_c_store(path)
        except (OSError, RuntimeError) as exc:
            assoc.abort()
            raise TransientError(
                f"orthanc target: C-STORE of {what} to {self.where} broke off"
            ) from exc
        if not status or "Status" not in status:
            assoc.abort()
            raise TransientError(f"orthanc target: no C-STORE answer for {what} from {self.where}")
        return status

    def _stored(self, item: Item, status: Any, sop_uid: str) -> Receipt:
        what = f"release/{item.key}"
        code = int(status.Status)
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
            assoc.release()
        return present

    def _release_idle(self) -> None:
        while True:
            try:
                assoc = self._idle.get_nowait()
            except queue.Empty:
                return
            if assoc.is_established:
                assoc.release()

    def close(self) -> None:
        """Release every idle association and the REST sessions."""
        self._release_idle()
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


def _instances(rest: OrthancRest, why: str) -> set[str]:
    """Every instance ID Orthanc holds (one ``GET /instances``)."""
    listing = rest.request("GET", "/instances", what="GET /instances")
    if listing.status_code != 200:
        raise TransientError(
            f"orthanc target: GET {rest.url}/instances answered HTTP "
            f"{listing.status_code} while {why}"
        )
    return set(map(str, listing.json()))


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
