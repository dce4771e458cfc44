"""The ``rest`` provider: the SOM / DASHER identifier service of the original sendit."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import requests

from sendit_helpers.core import retry
from sendit_helpers.core.errors import IdentifierError, SettingsError
from sendit_helpers.pseudonyms.provider import (
    _TOKEN,
    ITEM_SOURCE,
    Pseudonyms,
    StudyKey,
    _check_keys,
    _check_prefix,
    _norm,
)

__all__ = [
    "RestProvider",
]


def _iso(study_date: str) -> str | None:
    """``YYYYMMDD`` -> ``YYYY-MM-DDT00:00:00Z`` (``None`` when empty or invalid)."""
    d = _norm(study_date)
    try:
        return datetime.strptime(d, "%Y%m%d").strftime("%Y-%m-%dT00:00:00Z") if d else None
    except ValueError:
        return None


BACKOFF_CAP = 30.0
"""Longest wait between attempts of the ``rest`` provider, seconds (``Retry-After`` included)."""


class _Unanswered(IdentifierError):
    """A retryable failure of one request: no answer, HTTP 429 or 5xx (never leaves _post)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestProvider:
    """``rest`` provider: the SOM / DASHER identifier service of the original sendit.

    Request (one POST of JSON, ``Authorization: Bearer <token>`` when given)::

        {"identifiers": [{"id": <PatientID>, "id_source": <id_source>,
                          "id_timestamp": <ISO time>,
                          "items": [{"id": <AccessionNumber>,
                                     "id_source": "DCM Accession #",
                                     "id_timestamp": <ISO time>}, ...]}, ...]}

    ``id_timestamp`` is the StudyDate as ``YYYY-MM-DDT00:00:00Z`` (the
    entity's is its earliest study date) and is left out when unknown.

    Assumed answer (the shape ``som.api.identifiers`` consumed, from its
    docstrings and ``prepare_identifiers``)::

        {"results": [{"id": <PatientID>, "id_source": ..., "suid": "10f5",
                      "jitter": -19, "jittered_timestamp": "1961-07-08T...",
                      "items": [{"id": <AccessionNumber>, "id_source": ...,
                                 "suid": "10f6", "jitter": -19,
                                 "jittered_timestamp": "..."}]}]}

    Entities and items are matched by ``id`` (not by position).  The entity id
    is ``prefix + suid`` (unless ``suid`` already starts with ``prefix``); the
    item id is the item's ``suid``; the jitter is the item's ``jitter``
    (falling back to the entity's), as the original sendit used it.

    A request carries at most ``max_items`` items in total (so at most that
    many per entity); larger inputs are split, a patient spread over several
    requests is sent in each, and the service must give it the same ``suid``
    every time.  Connection errors, timeouts, HTTP 429 and 5xx are retried
    ``retries`` times with exponential backoff and jitter (``backoff * 2**n``
    seconds times 0.5 to 1), at least what a 429 or 503 answer's
    ``Retry-After`` asks (seconds or HTTP date), at most :data:`BACKOFF_CAP`
    (:func:`sendit_helpers.core.retry.call`); a set ``stop`` event ends them at once.
    Other HTTP errors fail at once.

    Parameters
    ----------
    url : str
        The service's identifiers endpoint.
    id_source : str
        ``id_source`` of the patients.
    token : str or None
        Bearer token.
    timeout : float
        Connect and read timeout per attempt, seconds.
    retries : int
        Retries after the first attempt.
    backoff : float
        First backoff delay, seconds.
    max_items : int
        Items per request.
    session : requests.Session or None
        HTTP session (a new one by default).
    prefix : str
        Entity id prefix.
    stop : threading.Event or None
        When set (e.g. on shutdown), retries end and a wait in progress ends at once.
    """

    def __init__(
        self,
        url: str,
        id_source: str = "Stanford MRN",
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_items: int = 1000,
        session: requests.Session | None = None,
        *,
        prefix: str = "IR",
        stop: threading.Event | None = None,
    ) -> None:
        if not url:
            raise SettingsError(
                "IDENTIFIER_URL is empty; set it to the service's /identifiers endpoint"
            )
        if max_items < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise SettingsError(
                "REST identifier options out of range: need max_items >= 1, retries >= 0, "
                "timeout > 0 and backoff >= 0"
            )
        _check_prefix(prefix)
        self.url = url
        self.id_source = id_source
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_items = max_items
        self.session = session if session is not None else requests.Session()
        self.prefix = prefix
        self.stop = stop

    # -- request building

    def _chunks(
        self, by_patient: Mapping[str, Mapping[str, StudyKey]]
    ) -> list[list[tuple[str, list[str]]]]:
        """Split (patient -> accessions) into requests of at most ``max_items`` items."""
        chunks: list[list[tuple[str, list[str]]]] = []
        current: list[tuple[str, list[str]]] = []
        room = self.max_items
        for pid, accs in by_patient.items():
            pending = list(accs)
            while pending:
                take, pending = pending[:room], pending[room:]
                current.append((pid, take))
                room -= len(take)
                if room == 0:
                    chunks.append(current)
                    current, room = [], self.max_items
        if current:
            chunks.append(current)
        return chunks

    def _body(
        self, chunk: list[tuple[str, list[str]]], by_patient: Mapping[str, Mapping[str, StudyKey]]
    ) -> dict[str, Any]:
        entities = []
        for pid, accs in chunk:
            dates = [d for k in by_patient[pid].values() if (d := _iso(k.study_date))]
            entity: dict[str, Any] = {"id": pid, "id_source": self.id_source}
            if dates:
                entity["id_timestamp"] = min(dates)
            items = []
            for acc in accs:
                item: dict[str, Any] = {"id": acc, "id_source": ITEM_SOURCE}
                stamp = _iso(by_patient[pid][acc].study_date)
                if stamp:
                    item["id_timestamp"] = stamp
                items.append(item)
            entity["items"] = items
            entities.append(entity)
        return {"identifiers": entities}

    # -- transport

    def _post(self, body: dict[str, Any], which: str) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        attempts = self.retries + 1
        made = 0

        def attempt() -> Any:
            nonlocal made
            made += 1
            try:
                resp = self.session.post(
                    self.url, json=body, headers=headers, timeout=(self.timeout, self.timeout)
                )
            except requests.Timeout:
                raise _Unanswered(f"timed out after {self.timeout:g} s") from None
            except requests.RequestException as exc:
                raise _Unanswered(f"connection failed ({type(exc).__name__})") from None
            code = resp.status_code
            if code < 400:
                try:
                    return resp.json()
                except ValueError:
                    raise IdentifierError(
                        f"identifier service {self.url} answered {which} with HTTP {code} "
                        "but not JSON; check IDENTIFIER_URL points at the /identifiers "
                        "endpoint"
                    ) from None
            if code != 429 and code < 500:
                hint = {
                    401: "check IDENTIFIER_TOKEN",
                    403: "check IDENTIFIER_TOKEN and the study's permissions",
                    404: "check IDENTIFIER_URL",
                    413: "lower the items per request (max_items)",
                }.get(code, "check IDENTIFIER_URL and IDENTIFIER_ID_SOURCE")
                raise IdentifierError(
                    f"identifier service {self.url} refused {which} with HTTP {code} "
                    f"(attempt {made} of {attempts}, not retried); {hint}"
                )
            asked = resp.headers.get("Retry-After") if code in (429, 503) else None
            raise _Unanswered(f"HTTP {code}", retry.retry_after_seconds(asked))

        backoff = retry.Backoff(self.retries, self.backoff, BACKOFF_CAP)
        try:
            return retry.call(attempt, backoff, (_Unanswered,), self.stop)
        except _Unanswered as exc:
            last = str(exc)
        stopped = " (stopped)" if self.stop is not None and self.stop.is_set() else ""
        raise IdentifierError(
            f"identifier service {self.url} failed {which} after {made} "
            f"attempt{'s' if made != 1 else ''}{stopped} "
            f"(last: {last}); the batch got no pseudonyms. Check the service is up and "
            "reachable, or raise IDENTIFIER_TIMEOUT / retries"
        )

    # -- public

    def pseudonymize(self, keys: Sequence[StudyKey]) -> dict[StudyKey, Pseudonyms]:
        """Ask the service for pseudonyms of ``keys``.

        Raises
        ------
        IdentifierError
            Empty patient id or accession, the service failed after all
            retries, refused the request, or answered without a requested
            patient or study, or inconsistently across split requests.
        """
        _check_keys(keys)
        no_acc = sum(1 for k in keys if not _norm(k.accession))
        if no_acc:
            raise IdentifierError(
                f"{no_acc} of {len(keys)} studies have an empty AccessionNumber (0008,0050); "
                "the REST service needs one per study: pass a fallback (e.g. StudyInstanceUID) "
                "as the accession or use IDENTIFIER_PROVIDER 'local'"
            )
        by_patient: dict[str, dict[str, StudyKey]] = {}
        for key in keys:
            by_patient.setdefault(_norm(key.patient_id), {}).setdefault(_norm(key.accession), key)
        chunks = self._chunks(by_patient)
        entity_code: dict[str, str] = {}
        entity_jitter: dict[str, int] = {}
        item_answer: dict[tuple[str, str], tuple[str, int]] = {}
        for n, chunk in enumerate(chunks, start=1):
            which = f"request {n} of {len(chunks)}"
            answer = self._post(self._body(chunk, by_patient), which)
            self._absorb(answer, chunk, which, entity_code, entity_jitter, item_answer)
        per_patient: dict[str, set[str]] = {}
        for (pid, _acc), (code, _jit) in item_answer.items():
            per_patient.setdefault(pid, set()).add(code)
        dupes = sum(len(by_patient[p]) - len(c) for p, c in per_patient.items())
        if dupes:
            raise IdentifierError(
                f"identifier service {self.url} gave {dupes} studies the 'suid' of another "
                "study of the same patient; image names would clash. Fix the service"
            )
        out: dict[StudyKey, Pseudonyms] = {}
        for key in keys:
            pid, acc = _norm(key.patient_id), _norm(key.accession)
            code, jitter = item_answer[(pid, acc)]
            item = code if self.prefix and code.startswith(self.prefix) else self.prefix + code
            out[key] = Pseudonyms(entity_code[pid], item, jitter)
        return out

    def _absorb(
        self,
        answer: Any,
        chunk: list[tuple[str, list[str]]],
        which: str,
        entity_code: dict[str, str],
        entity_jitter: dict[str, int],
        item_answer: dict[tuple[str, str], tuple[str, int]],
    ) -> None:
        def bad(what: str) -> IdentifierError:
            return IdentifierError(
                f"identifier service {self.url} answered {which} without {what}; "
                "check the service version matches the SOM identifiers API"
            )

        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise bad("a 'results' list")
        got: dict[str, dict[str, Any]] = {}
        for entity in results:
            if isinstance(entity, dict) and isinstance(entity.get("id"), str):
                got[_norm(entity["id"])] = entity
        for pos, (pid, accs) in enumerate(chunk, start=1):
            entity = got.get(pid)
            if entity is None:
                raise bad(f"patient {pos} of {len(chunk)}")
            code = self._entity_code(entity.get("suid"))
            if code is None:
                raise bad(f"a usable 'suid' for patient {pos} of {len(chunk)}")
            if entity_code.setdefault(pid, code) != code:
                raise IdentifierError(
                    f"identifier service {self.url} gave patient {pos} of {which} another "
                    "suid than an earlier request; the split requests disagree. Raise "
                    "max_items or fix the service"
                )
            ejit = entity.get("jitter")
            if isinstance(ejit, int) and not isinstance(ejit, bool):
                entity_jitter.setdefault(pid, ejit)
            items: dict[str, dict[str, Any]] = {}
            for item in entity.get("items") or []:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    items[_norm(item["id"])] = item
            missing = [a for a in accs if a not in items]
            if missing:
                raise bad(f"{len(missing)} of the {len(accs)} studies of patient {pos}")
            for ipos, acc in enumerate(accs, start=1):
                item = items[acc]
                isuid = item.get("suid")
                ijit = item.get("jitter", entity_jitter.get(pid))
                if not isinstance(isuid, str) or not _TOKEN.match(isuid):
                    raise bad(f"a usable 'suid' for study {ipos} of patient {pos}")
                if isinstance(ijit, bool) or not isinstance(ijit, int):
                    raise bad(f"an integer 'jitter' for study {ipos} of patient {pos}")
                item_answer[(pid, acc)] = (isuid, ijit)

    def _entity_code(self, suid: Any) -> str | None:
        if not isinstance(suid, str) or not _TOKEN.match(suid):
            return None
        return suid if self.prefix and suid.startswith(self.prefix) else self.prefix + suid
