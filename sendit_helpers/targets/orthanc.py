"""Orthanc's REST target (``POST /instances``) and the REST client both Orthanc targets use.

Credentials come only from the environment (``ORTHANC_USERNAME``,
``ORTHANC_PASSWORD``), read with the settings (:func:`~sendit_helpers.core.settings.typed`)
and handed to :class:`OrthancRest`.  Orthanc answers a second upload of the same instance
with ``AlreadyStored``, so the target is create-once.  The DICOM (C-STORE)
target is :mod:`sendit_helpers.targets.dicom`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.retry import retry_after_seconds
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    ConflictError,
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    public_url,
)

TIMEOUT = 60.0
VERIFY_CHUNK = 200
VERIFY_SAMPLE = 8
"""Stored REST instances whose attachment MD5 is read back at verification (all if one differs)."""
ID_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
"""The identifiers of Orthanc's instance ID (:func:`orthanc_id`)."""


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
    """Thread-safe REST client over one urllib3 connection pool, with HTTP basic auth.

    urllib3 directly, not requests: about a third of the client CPU per request,
    which is what limits an upload of many small files.

    Parameters
    ----------
    url : str
        Orthanc's REST root, e.g. ``http://127.0.0.1:8042``.
    connections : int
        Kept-alive connections (one per upload thread).
    username, password : str
        ``ORTHANC_USERNAME`` and ``ORTHANC_PASSWORD`` (from the settings); no
        authentication when the user name is empty.  Kept only in the request headers.
    """

    def __init__(
        self, url: str, connections: int = 8, username: str = "", password: str = ""
    ) -> None:
        self.url = url.rstrip("/")
        auth = f"{username}:{password}"
        self._headers = urllib3.make_headers(basic_auth=auth) if username else {}
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
        orthanc = cfg.targets.orthanc
        self.rest = OrthancRest(url, self.threads, orthanc.username, orthanc.password)
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
