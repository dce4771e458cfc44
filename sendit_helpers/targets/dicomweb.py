"""DICOMweb target: STOW-RS, many instances per ``multipart/related`` request.

What cloud DICOM stores accept (Google Cloud Healthcare, dcm4chee) and Orthanc with its
DICOMweb plugin.  ``DICOMWEB_BATCH`` is the most instances one request holds; upload
cuts a batch into :func:`~sendit_helpers.targets.base.request_chunks`: rounds of
``UPLOAD_THREADS`` requests sent at once, as few rounds as ``DICOMWEB_BATCH`` per request
needs, every thread busy in each (500 files, 50 at most, 16 threads: 16 requests of 31-32
rather than 10 of 50 leaving 6 threads idle).  No thread makes more round trips than
with ``DICOMWEB_BATCH`` per request, so a high-latency link (a cloud store over a WAN)
still gets up to ``DICOMWEB_BATCH`` instances per request and no extra latency.
Credentials come only from the environment (``DICOMWEB_USERNAME`` and
``DICOMWEB_PASSWORD``, HTTP basic; or ``DICOMWEB_TOKEN``, a bearer token), read with the
settings (:func:`~sendit_helpers.core.settings.typed`).  A server
keeps one copy of an instance it already holds (same SOPInstanceUID), so a request sent
again after a transient failure stores nothing twice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.retry import retry_after_seconds
from sendit_helpers.core.settings import DicomwebSettings, typed
from sendit_helpers.targets.base import (
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    public_url,
)
from sendit_helpers.targets.dicomwire import parse_file_meta, read_file_meta

TIMEOUT = 120.0
STOW_BATCH = 50
"""Default ``DICOMWEB_BATCH``: instances per STOW-RS request at most."""
FAILURE_TRANSIENT = 0xA700
"""Failure reasons ``A7xx`` (out of resources) are worth a retry."""
REFERENCED = "00081199"  # ReferencedSOPSequence
FAILED = "00081198"  # FailedSOPSequence
SOP_UID = "00081155"  # ReferencedSOPInstanceUID
RETRIEVE_URL = "00081190"  # RetrieveURL
REASON = "00081197"  # FailureReason
ID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
SERIES_UID = "0020000E"  # SeriesInstanceUID
SERIES_COUNT = "00201209"  # NumberOfSeriesRelatedInstances


def _headers(cfg: DicomwebSettings) -> dict[str, str]:
    if cfg.token:
        return {"Authorization": f"Bearer {cfg.token}"}
    if cfg.username:
        return dict(urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.password}"))
    return {}


def _values(element: Mapping[str, Any] | None) -> list[Any]:
    return list((element or {}).get("Value", []) or [])


class DicomWebTarget(Target):
    """STOW-RS at most ``DICOMWEB_BATCH`` instances per request to ``DICOMWEB_URL``.

    Each request is one ``multipart/related; type="application/dicom"`` body holding
    the files' bytes as they are; the answer's ReferencedSOPSequence and
    FailedSOPSequence say, per SOPInstanceUID, what was stored.  HTTP 429 and 5xx, a
    dropped connection and failure reasons ``A7xx`` make the whole request retryable
    (upload's retry policy); a request refused as a whole (HTTP 400) is sent again one
    file per request, so that only the bad file fails.  Presence (on a rerun) uses
    QIDO-RS, one ``GET /studies/{uid}/instances`` per study; verification confirms the
    STOW-RS answers with the series' instance counts, one ``GET /studies/{uid}/series``
    per study (:meth:`verify`).

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``DICOMWEB_URL``, ``DICOMWEB_BATCH`` and ``UPLOAD_THREADS``.
    """

    kind = TargetKind.DICOMWEB

    def __init__(self, settings: Mapping[str, Any]) -> None:
        cfg = typed(settings)
        url = cfg.targets.dicomweb.url.rstrip("/")
        if not url:
            raise UploadError(
                "dicomweb target: DICOMWEB_URL is empty but SEND_TO_DICOMWEB is true; set it "
                "to the server's DICOMweb root (e.g. http://127.0.0.1:8042/dicom-web)"
            )
        self.url = url
        self.public = public_url(url)
        """``url`` as messages and the manifest may name it (no credentials)."""
        self.put_batch = max(1, cfg.targets.dicomweb.batch)
        self.threads = max(1, cfg.upload.threads)
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=self.threads + 2, retries=False, timeout=TIMEOUT
        )
        self._headers = _headers(cfg.targets.dicomweb)
        self._study: dict[str, str] = {}
        """Item key -> StudyInstanceUID (for QIDO-RS)."""
        self._series: dict[str, str] = {}
        """Item key -> SeriesInstanceUID (for the verification's series counts)."""

    @property
    def destination_id(self) -> str:
        """``dicomweb <DICOMweb root URL>`` (no credentials)."""
        return f"dicomweb {self.public}"

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        body: bytes | Sequence[bytes] | None = None,
        **headers: str,
    ) -> urllib3.BaseHTTPResponse:
        """One request; a list ``body`` is written part after part (its ``Content-Length``
        given in ``headers``), so the files' bytes are never joined into one copy."""
        try:
            resp = self._pool.request(
                method, self.url + path, body=body, headers={**self._headers, **headers}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError(
                f"dicomweb target: cannot reach {self.public} while sending {what} "
                f"({type(exc).__name__}); start the server or fix DICOMWEB_URL"
            ) from exc
        if resp.status == 429 or resp.status >= 500:
            raise TransientError(
                f"dicomweb target: {self.public} answered HTTP {resp.status} for {what}",
                retry_after_seconds(resp.headers.get("Retry-After")),
            )
        if resp.status in (401, 403):
            raise UploadError(
                f"dicomweb target: {self.public} refused the credentials (HTTP "
                f"{resp.status}) for {what}; set DICOMWEB_USERNAME and DICOMWEB_PASSWORD "
                "(or DICOMWEB_TOKEN) in the environment"
            )
        return resp

    def check(self) -> None:
        """One QIDO-RS ``GET /studies?limit=1``: the server answers and takes our credentials."""
        try:
            resp = self._request("GET", "/studies?limit=1", "GET /studies")
        except TransientError as exc:
            raise UploadError(str(exc)) from exc
        if resp.status not in (200, 204):
            raise UploadError(
                f"dicomweb target: GET {self.public}/studies answered HTTP "
                f"{resp.status}; check DICOMWEB_URL points at the DICOMweb root"
            )

    def _identify(self, item: Item) -> str:
        """The item's StudyInstanceUID (its series' UID noted too): from its cleaned row,
        else from its header."""
        study, series = (item.metadata.get(k) for k in ID_TAGS[:2])
        if not (isinstance(study, str) and study and isinstance(series, str) and series):
            from pydicom import dcmread

            ds = dcmread(item.path, stop_before_pixels=True, specific_tags=list(ID_TAGS))
            study, series = (str(ds.get(k, "") or "") for k in ID_TAGS[:2])
        self._study[item.key], self._series[item.key] = study, series
        return study

    def prepare(self, items: Sequence[Item]) -> None:
        """Note each item's study (for verification)."""
        for item in items:
            self._identify(item)

    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys whose recorded SOPInstanceUID the server lists under the item's study."""
        uids = {i.key: remote_ids.get(i.key) or read_file_meta(i.path).sop_instance for i in items}
        studies = {i.key: self._study.get(i.key) or self._identify(i) for i in items}
        held = self._held(set(studies.values()))
        return {k for k in uids if uids[k] in held.get(studies[k], set())}

    def _held(self, studies: set[str]) -> dict[str, set[str]]:
        """SOPInstanceUIDs the server holds per study (QIDO-RS, in parallel)."""

        def one(study: str) -> tuple[str, set[str]]:
            path = f"/studies/{study}/instances?includefield=00080018"
            resp = self._request("GET", path, f"QIDO-RS of study {study}")
            if resp.status == 204 or resp.status == 404:
                return study, set()
            if resp.status != 200:
                raise TransientError(
                    f"dicomweb target: QIDO-RS {self.public}/studies/.../instances "
                    f"answered HTTP {resp.status}"
                )
            found = json.loads(resp.data or b"[]")
            return study, {str(v) for ds in found for v in _values(ds.get("00080018"))}

        if not studies:
            return {}
        with ThreadPoolExecutor(min(self.threads, len(studies))) as pool:
            return dict(pool.map(one, sorted(studies)))

    def put(self, item: Item) -> Receipt:
        """STOW-RS one item (see :meth:`put_many`)."""
        (result,) = self.put_many([item])
        if isinstance(result, UploadError):
            raise result
        return result

    def put_many(self, items: Sequence[Item]) -> list[Receipt | UploadError]:
        """STOW-RS the items in one ``multipart/related`` request; one outcome per item."""
        boundary = secrets.token_hex(16)
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        parts: list[bytes] = []
        uids: list[str] = []
        for item in items:
            data = item.read(md5=False)
            uids.append(parse_file_meta(data, f"release/{item.key}").sop_instance)
            parts += [b"\r\n" + head if parts else head, data]
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        what = (
            f"release/{items[0].key}"
            if len(items) == 1
            else f"{len(items)} files from release/{items[0].key}"
        )
        resp = self._request(
            "POST",
            "/studies",
            what,
            parts,
            **{
                "Content-Length": str(sum(map(len, parts))),
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        if resp.status == 400 and len(items) > 1:
            # the server refused the whole request (Orthanc does, for one unreadable
            # file): each file alone, so only the bad one fails
            return [result for item in items for result in self._alone(item)]
        if resp.status == 400:
            raise UploadError(
                f"dicomweb target: {self.public} refused {what} (HTTP 400): it could "
                "not read it as DICOM; re-run de-identification for this file"
            )
        if resp.status not in (200, 202, 409):
            raise UploadError(
                f"dicomweb target: {self.public} refused {what} (HTTP {resp.status}); "
                "check DICOMWEB_URL points at the DICOMweb root and the server accepts STOW-RS"
            )
        answer = json.loads(resp.data or b"{}")
        if isinstance(answer, list):  # some servers wrap the dataset in a list
            answer = answer[0] if answer else {}
        stored = {
            str(_values(ref.get(SOP_UID))[0]): str((_values(ref.get(RETRIEVE_URL)) or [""])[0])
            for ref in _values(answer.get(REFERENCED))
            if _values(ref.get(SOP_UID))
        }
        failed = {
            str(_values(ref.get(SOP_UID))[0]): int((_values(ref.get(REASON)) or [0x0110])[0])
            for ref in _values(answer.get(FAILED))
            if _values(ref.get(SOP_UID))
        }
        if any(code & 0xFF00 == FAILURE_TRANSIENT for code in failed.values()):
            raise TransientError(f"dicomweb target: {self.public} is out of resources")
        results: list[Receipt | UploadError] = []
        for item, uid in zip(items, uids, strict=True):
            if uid in stored:
                results.append(self._receipt(item, uid, stored[uid]))
            else:
                code = failed.get(uid)
                reason = f"failure reason 0x{code:04X}" if code is not None else "no answer for it"
                results.append(
                    UploadError(
                        f"dicomweb target: {self.public} did not store "
                        f"release/{item.key} ({reason}); see the server's log for the cause"
                    )
                )
        return results

    def _alone(self, item: Item) -> list[Receipt | UploadError]:
        """:meth:`put_many` of one item, its refusal returned (a transient error raised)."""
        try:
            return self.put_many([item])
        except TransientError:
            raise
        except UploadError as exc:
            return [exc]

    def _receipt(self, item: Item, uid: str, url: str) -> Receipt:
        if item.key not in self._study:
            self._identify(item)
        return Receipt(
            key=item.key,
            name=item.name,
            entity_id=item.entity_id,
            target=self.kind,
            status="stored",
            checksum=item.checksum,
            remote_id=uid,
            url=public_url(url)
            if url
            else f"{self.public}/studies/{self._study[item.key]}",
            fields={"size": item.size, "content_type": "application/dicom"},
        )

    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys the server holds: its STOW-RS answers, confirmed by one series listing per study.

        Each receipt is an instance the server's answer named in its
        ReferencedSOPSequence (stored).  One QIDO-RS ``GET /studies/{uid}/series`` per
        study then gives each series' NumberOfSeriesRelatedInstances, which the server
        keeps in its index: a series holding at least the instances stored into it here
        confirms them.  The instances of any other series (fewer there than stored, or
        no series known) are looked for one by one in the study's instance listing
        (what :meth:`present` reads): a listing costs the server a read of every
        instance's file (Orthanc: about 1.3 ms each, more than storing it), the series
        counts nothing.  Presence only: STOW-RS gives no checksum to compare.
        """
        if not receipts:
            return set()
        studies = {r.key: self._study.get(r.key, "") for r in receipts}
        stored: dict[tuple[str, str], list[Receipt]] = {}
        for r in receipts:
            stored.setdefault((studies[r.key], self._series.get(r.key, "")), []).append(r)
        counts = self._series_counts({study for study, _ in stored if study})
        found: set[str] = set()
        doubtful: list[Receipt] = []
        for (study, series), group in stored.items():
            if study and series and counts.get((study, series), 0) >= len(group):
                found.update(r.key for r in group)
            else:
                doubtful += group
        if doubtful:
            held = self._held({studies[r.key] for r in doubtful if studies[r.key]})
            found.update(
                r.key for r in doubtful if r.remote_id in held.get(studies[r.key], set())
            )
        return found

    def _series_counts(self, studies: set[str]) -> dict[tuple[str, str], int]:
        """``(study, series) -> NumberOfSeriesRelatedInstances`` (QIDO-RS, in parallel)."""

        def one(study: str) -> list[tuple[tuple[str, str], int]]:
            path = f"/studies/{study}/series?includefield={SERIES_COUNT}"
            resp = self._request("GET", path, f"QIDO-RS of the series of study {study}")
            if resp.status in (204, 404):
                return []
            if resp.status != 200:
                raise TransientError(
                    f"dicomweb target: QIDO-RS {self.public}/studies/.../series "
                    f"answered HTTP {resp.status}"
                )
            out = []
            for ds in json.loads(resp.data or b"[]"):
                uid, count = _values(ds.get(SERIES_UID)), _values(ds.get(SERIES_COUNT))
                if uid and count:
                    out.append(((study, str(uid[0])), int(count[0])))
            return out

        if not studies:
            return {}
        with ThreadPoolExecutor(min(self.threads, len(studies))) as pool:
            return dict(pair for pairs in pool.map(one, sorted(studies)) for pair in pairs)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()
