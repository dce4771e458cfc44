"""Pseudonyms for patients and studies, and consistent UID replacement.

Three providers give every study a :class:`Pseudonyms` triple (entity id,
item id, date jitter):

``local`` (:class:`KeyedProvider`)
    HMAC-SHA256 with the site secret.  No network, stable across runs and
    batches for as long as the secret is kept.
``crosswalk`` (:class:`CrosswalkProvider`)
    A CSV from an honest broker maps each ``patient_id`` to an ``entity_id``
    and a ``jitter_days`` (optionally ``accession`` to ``item_id``).
``rest`` (:class:`RestProvider`)
    The identifier service the original sendit called (Stanford's "SOM
    identifiers" / DASHER API): one POST carrying the patients and their
    studies, answered with a coded ``suid`` and a ``jitter`` for each.

Identifier formats
------------------
* entity id: ``<prefix>`` + at least 6 lowercase hex characters, e.g.
  ``IR661f32`` (``local``; ``rest`` prefixes the service's ``suid`` unless it
  already starts with the prefix; ``crosswalk`` keeps the broker's value).
* item id (the study code used in image names): 8 lowercase hex characters
  or more (``local``, and ``crosswalk`` rows without ``item_id``).

Collisions.  Six hex characters give 16.7 million values, so two patients of
one batch share a code with probability about ``n**2 / 3.4e7``.  Each call
checks its own output: when two *different* patients (or studies) obtained
the same code, every member of the colliding group is extended by one more
hex character of its own HMAC digest (repeatedly, until unique).  The
extension is deterministic for a given set of patients, but a patient that
collided in one call and not in another gets the longer code only in the
first; the lookup table of each batch records what was used.

Patient ids and accession numbers are compared after stripping surrounding
whitespace.  Error messages never carry them: they refer to studies and
patients by count or position only.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import requests

from sendit_helpers.core import retry
from sendit_helpers.core.errors import IdentifierError, SettingsError

__all__ = [
    "ITEM_SOURCE",
    "SECRET_ENV",
    "CrosswalkProvider",
    "IdentifierProvider",
    "KeyedProvider",
    "ProviderKind",
    "Pseudonyms",
    "RestProvider",
    "StudyKey",
    "UidMapper",
    "load_site_secret",
    "make_provider",
    "site_secret_path",
]

SECRET_ENV = "SENDIT_SITE_SECRET"
"""Environment variable that, when set and non-empty, is the site secret."""

ITEM_SOURCE = "DCM Accession #"
"""``id_source`` of the study items sent to the REST service."""

ENTITY_HEX = 6
ITEM_HEX = 6
_TOKEN = re.compile(r"^[A-Za-z0-9-]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9]*$")
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")


class ProviderKind(StrEnum):
    """Which backend gives pseudonyms (setting ``IDENTIFIER_PROVIDER``)."""

    LOCAL = "local"
    """Keyed hash (HMAC-SHA256) with the site secret."""
    CROSSWALK = "crosswalk"
    """A CSV crosswalk from an honest broker."""
    REST = "rest"
    """The REST identifier service of the original sendit."""


@dataclass(frozen=True)
class StudyKey:
    """One study to pseudonymize.

    Parameters
    ----------
    patient_id : str
        PatientID (0010,0020): the entity.
    accession : str
        AccessionNumber (0008,0050): the item.  When a study has none, pass a
        fallback such as StudyInstanceUID; the local provider then tells
        accession-less studies of one patient apart by ``study_date``.
    study_date : str
        StudyDate (0008,0020) as ``YYYYMMDD`` or ``""``; the ``id_timestamp``
        sent to the REST service.
    """

    patient_id: str
    accession: str
    study_date: str = ""


@dataclass(frozen=True)
class Pseudonyms:
    """The replacement identifiers of one study.

    Parameters
    ----------
    entity_id : str
        The patient's pseudonym (folder name under ``release/``).
    item_id : str
        The study code used in image names.
    jitter_days : int
        Days to add to every date of the study (never 0 for ``local``).
    """

    entity_id: str
    item_id: str
    jitter_days: int


class IdentifierProvider(Protocol):
    """Anything that maps studies to pseudonyms."""

    def pseudonymize(self, keys: Sequence[StudyKey]) -> dict[StudyKey, Pseudonyms]:
        """Return pseudonyms for every key (duplicates allowed)."""
        ...


# --------------------------------------------------------------------------- helpers


def _norm(value: str) -> str:
    return value.strip()


def _item_ref(key: StudyKey) -> str:
    """What identifies the study within its patient."""
    acc = _norm(key.accession)
    return f"acc:{acc}" if acc else f"date:{_norm(key.study_date)}"


def _mac(secret: bytes, *parts: str) -> bytes:
    msg = b"\x00".join(p.encode("utf-8") for p in parts)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise SettingsError(
            "the site secret is empty; set SENDIT_SITE_SECRET or let load_site_secret() "
            "create WORK/.site/phi/site_secret.key"
        )


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.match(prefix):
        raise SettingsError(
            f"ENTITY_PREFIX is {prefix!r}; use letters and digits only (default 'IR')"
        )


def _unique_codes(digests: Mapping[str, str], width: int) -> dict[str, str]:
    """Shortest-prefix codes of ``digests`` (owner -> hex digest), unique per owner.

    Every owner starts with ``width`` characters; members of a group that
    share a code are all extended by one character, until no two owners share
    one.  Owners whose full digests are equal cannot be told apart and raise.
    """
    length = dict.fromkeys(digests, width)
    while True:
        groups: dict[str, list[str]] = {}
        for owner, digest in digests.items():
            groups.setdefault(digest[: length[owner]], []).append(owner)
        clashes = [owners for owners in groups.values() if len(owners) > 1]
        if not clashes:
            return {owner: digests[owner][: length[owner]] for owner in digests}
        for owners in clashes:
            for owner in owners:
                if length[owner] >= len(digests[owner]):
                    raise IdentifierError(
                        f"{len(owners)} different identifiers hash to the same code; "
                        "this cannot happen with HMAC-SHA256 unless the inputs repeat"
                    )
                length[owner] += 1


def _group_by_patient(keys: Iterable[StudyKey]) -> dict[str, list[StudyKey]]:
    by_patient: dict[str, list[StudyKey]] = {}
    for key in keys:
        by_patient.setdefault(_norm(key.patient_id), []).append(key)
    return by_patient


def _check_keys(keys: Sequence[StudyKey]) -> None:
    empty = sum(1 for k in keys if not _norm(k.patient_id))
    if empty:
        raise IdentifierError(
            f"{empty} of {len(keys)} studies have an empty PatientID (0010,0020); "
            "give them a patient id (or screen them out) before pseudonymizing"
        )


# --------------------------------------------------------------------------- local


class KeyedProvider:
    """``local`` provider: HMAC-SHA256 of the patient id with the site secret.

    ``entity_id = prefix + hex(HMAC(secret, "entity", id_source, PatientID))[:6]``,
    ``item_id = prefix + hex(HMAC(secret, "item", id_source, PatientID, accession))[:6]``
    (extended on collision, see the module docstring) and one jitter per
    patient, ``HMAC(secret, "jitter", id_source, PatientID)`` mapped onto
    ``[-max_jitter_days, -1] U [1, max_jitter_days]``, so every study of a
    patient is shifted by the same number of days and intervals are kept.

    Parameters
    ----------
    secret : bytes
        The site secret (:func:`load_site_secret`).
    prefix : str
        Entity id prefix, letters and digits.
    max_jitter_days : int
        Largest date shift in days, at least 1.
    id_source : str
        Scopes the patient ids (like the REST ``id_source``): the same id from
        another source system gets other pseudonyms.
    """

    def __init__(
        self,
        secret: bytes,
        prefix: str = "IR",
        max_jitter_days: int = 365,
        id_source: str = "sendit",
    ) -> None:
        _check_secret(secret)
        _check_prefix(prefix)
        if (
            isinstance(max_jitter_days, bool)
            or not isinstance(max_jitter_days, int)
            or (max_jitter_days < 1)
        ):
            raise SettingsError(
                f"MAX_JITTER_DAYS is {max_jitter_days!r}; use a whole number of days >= 1"
            )
        self._secret = bytes(secret)
        self.prefix = prefix
        self.max_jitter_days = max_jitter_days
        self.id_source = id_source

    def jitter_for(self, patient_id: str) -> int:
        """Return the patient's date shift in days (never 0)."""
        mac = _mac(self._secret, "jitter", self.id_source, _norm(patient_id))
        span = self.max_jitter_days
        n = int.from_bytes(mac[:8], "big") % (2 * span)
        return n - span if n < span else n - span + 1

    def pseudonymize(self, keys: Sequence[StudyKey]) -> dict[StudyKey, Pseudonyms]:
        """Return pseudonyms for ``keys``.

        Parameters
        ----------
        keys : Sequence[StudyKey]
            Studies, duplicates allowed.

        Returns
        -------
        dict[StudyKey, Pseudonyms]
            One entry per distinct key.

        Raises
        ------
        IdentifierError
            A key has an empty patient id.
        """
        _check_keys(keys)
        by_patient = _group_by_patient(keys)
        entity_digests = {
            pid: _mac(self._secret, "entity", self.id_source, pid).hex() for pid in by_patient
        }
        entities = _unique_codes(entity_digests, ENTITY_HEX)
        item_digests: dict[str, str] = {}
        item_owner: dict[StudyKey, str] = {}
        for pid, pkeys in by_patient.items():
            for key in pkeys:
                ref = f"{pid}\x00{_item_ref(key)}"
                item_owner[key] = ref
                item_digests.setdefault(
                    ref, _mac(self._secret, "item", self.id_source, pid, _item_ref(key)).hex()
                )
        items = _unique_codes(item_digests, ITEM_HEX)
        out: dict[StudyKey, Pseudonyms] = {}
        for pid, pkeys in by_patient.items():
            jitter = self.jitter_for(pid)
            for key in pkeys:
                out[key] = Pseudonyms(
                    self.prefix + entities[pid], self.prefix + items[item_owner[key]], jitter
                )
        return out


# --------------------------------------------------------------------------- crosswalk


@dataclass(frozen=True)
class _CrossRow:
    entity_id: str
    jitter_days: int
    line: int


class CrosswalkProvider:
    """``crosswalk`` provider: pseudonyms from an honest broker's CSV.

    Columns ``patient_id``, ``entity_id``, ``jitter_days`` (required) and
    ``accession``, ``item_id`` (optional).  A patient may have several rows
    (one per accession) that must agree on ``entity_id`` and ``jitter_days``.
    A study whose accession has no ``item_id`` gets
    ``prefix + hex(HMAC(secret, "crosswalk-item", entity_id, accession))[:6]``.

    Use :meth:`from_csv` to build one.

    Parameters
    ----------
    patients : Mapping[str, tuple[str, int]]
        patient id -> (entity id, jitter days).
    items : Mapping[tuple[str, str], str]
        (patient id, accession) -> item id.
    secret : bytes
        Site secret, for derived item ids.
    source : str
        Where the crosswalk came from (the CSV path), for messages.
    prefix : str
        Kept for symmetry with the other providers; the broker's entity ids
        are used as they are.
    """

    def __init__(
        self,
        patients: Mapping[str, tuple[str, int]],
        items: Mapping[tuple[str, str], str],
        secret: bytes,
        source: str = "crosswalk",
        prefix: str = "IR",
    ) -> None:
        _check_secret(secret)
        self._patients = {_norm(k): v for k, v in patients.items()}
        self._items = {(_norm(p), _norm(a)): v for (p, a), v in items.items()}
        self._secret = bytes(secret)
        self.source = source
        self.prefix = prefix

    @classmethod
    def from_csv(cls, path: Path, secret: bytes, prefix: str = "IR") -> CrosswalkProvider:
        """Read the crosswalk CSV.

        Parameters
        ----------
        path : Path
            The CSV (UTF-8, an Excel BOM is accepted).
        secret : bytes
            Site secret, for derived item ids.
        prefix : str
            Entity id prefix (informative; broker ids are kept as they are).

        Returns
        -------
        CrosswalkProvider

        Raises
        ------
        IdentifierError
            The file is missing, lacks a column, or a row is malformed or
            contradicts another (rows are named by line number).
        """
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [(h or "").strip() for h in (reader.fieldnames or [])]
                rows = [
                    {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
                    for row in reader
                ]
        except FileNotFoundError:
            raise IdentifierError(
                f"crosswalk {path} does not exist; set CROSSWALK_CSV to the honest "
                "broker's CSV (columns patient_id, entity_id, jitter_days)"
            ) from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise IdentifierError(
                f"crosswalk {path} cannot be read ({type(exc).__name__}); save it as a UTF-8 CSV"
            ) from None
        missing = [c for c in ("patient_id", "entity_id", "jitter_days") if c not in header]
        if missing:
            raise IdentifierError(
                f"crosswalk {path} lacks column(s) {', '.join(missing)}; found "
                f"{', '.join(header) or 'none'}. Required: patient_id, entity_id, jitter_days "
                "(optional: accession, item_id)"
            )
        patients: dict[str, _CrossRow] = {}
        owners: dict[str, str] = {}
        items: dict[tuple[str, str], str] = {}
        item_lines: dict[str, int] = {}
        for n, row in enumerate(rows, start=2):
            pid, eid, jit = (
                row.get("patient_id", ""),
                row.get("entity_id", ""),
                row.get("jitter_days", ""),
            )
            if not pid and not eid and not jit:
                continue
            where = f"crosswalk {path} line {n}"
            if not pid or not eid:
                raise IdentifierError(f"{where}: patient_id or entity_id is empty; fill it in")
            if not _TOKEN.match(eid):
                raise IdentifierError(
                    f"{where}: entity_id has characters other than letters, digits and '-'; "
                    "it names a folder, fix it in the crosswalk"
                )
            try:
                jitter = int(jit)
            except ValueError:
                raise IdentifierError(
                    f"{where}: jitter_days is not a whole number of days; fix it"
                ) from None
            seen = patients.get(pid)
            if seen is None:
                if eid in owners and owners[eid] != pid:
                    raise IdentifierError(
                        f"{where}: entity_id is already used for another patient "
                        "(two patients would merge); give each patient its own entity_id"
                    )
                patients[pid] = _CrossRow(eid, jitter, n)
                owners[eid] = pid
            elif (seen.entity_id, seen.jitter_days) != (eid, jitter):
                raise IdentifierError(
                    f"{where}: the patient has another entity_id or jitter_days on line "
                    f"{seen.line}; one patient needs one entity_id and one jitter_days"
                )
            acc, iid = row.get("accession", ""), row.get("item_id", "")
            if acc and iid:
                if not _TOKEN.match(iid):
                    raise IdentifierError(
                        f"{where}: item_id has characters other than letters, digits and '-'; "
                        "it is used in file names, fix it in the crosswalk"
                    )
                ikey = f"{eid}\x00{iid}"
                if ikey in item_lines and items.get((pid, acc)) != iid:
                    raise IdentifierError(
                        f"{where}: item_id repeats line {item_lines[ikey]} for another study "
                        "of the same patient; give each study its own item_id"
                    )
                if (pid, acc) in items and items[(pid, acc)] != iid:
                    raise IdentifierError(
                        f"{where}: the study has another item_id on an earlier line; "
                        "keep one item_id per accession"
                    )
                items[(pid, acc)] = iid
                item_lines[ikey] = n
        return cls(
            {p: (r.entity_id, r.jitter_days) for p, r in patients.items()},
            items,
            secret,
            source=str(path),
            prefix=prefix,
        )

    def pseudonymize(self, keys: Sequence[StudyKey]) -> dict[StudyKey, Pseudonyms]:
        """Return pseudonyms for ``keys`` from the crosswalk.

        Raises
        ------
        IdentifierError
            A patient of ``keys`` has no row in the crosswalk (the message
            gives how many, never which).
        """
        _check_keys(keys)
        by_patient = _group_by_patient(keys)
        absent = [pid for pid in by_patient if pid not in self._patients]
        if absent:
            studies = sum(len(by_patient[p]) for p in absent)
            raise IdentifierError(
                f"crosswalk {self.source}: {len(absent)} of {len(by_patient)} patients "
                f"({studies} studies) of this batch have no row; ask the honest broker to add "
                "rows (patient_id, entity_id, jitter_days) for them, or screen those studies out"
            )
        item_digests: dict[str, str] = {}
        given: dict[str, str] = {}
        owner: dict[StudyKey, str] = {}
        for pid, pkeys in by_patient.items():
            eid = self._patients[pid][0]
            for key in pkeys:
                ref = f"{eid}\x00{_item_ref(key)}"
                owner[key] = ref
                iid = self._items.get((pid, _norm(key.accession))) if _norm(key.accession) else None
                if iid is not None:
                    given[ref] = iid
                else:
                    item_digests.setdefault(
                        ref, _mac(self._secret, "crosswalk-item", eid, _item_ref(key)).hex()
                    )
        derived = {k: self.prefix + v for k, v in _unique_codes(item_digests, ITEM_HEX).items()}
        clash = set(derived.values()) & set(given.values())
        if clash:
            raise IdentifierError(
                f"crosswalk {self.source}: {len(clash)} derived study code(s) equal an item_id "
                "given in the crosswalk; add item_id for the remaining accessions"
            )
        codes = {**derived, **given}
        return {
            key: Pseudonyms(self._patients[pid][0], codes[owner[key]], self._patients[pid][1])
            for pid, pkeys in by_patient.items()
            for key in pkeys
        }


# --------------------------------------------------------------------------- rest


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


# --------------------------------------------------------------------------- UIDs


class UidMapper:
    """Consistent UID replacement.

    ``new = root + str(int.from_bytes(HMAC-SHA256(secret, old)[:16], "big"))``:
    at most 39 digits after ``2.25.``, so a valid UID of at most 44
    characters; the same input gives the same output in every batch and run
    with the same secret.  Surrounding spaces and NUL padding of ``old`` are
    ignored; an empty UID stays empty.

    Parameters
    ----------
    secret : bytes
        The site secret.
    root : str
        UID root ending in ``.``; ``len(root) + 39`` must not exceed 64.
    """

    def __init__(self, secret: bytes, root: str = "2.25.") -> None:
        _check_secret(secret)
        if not _UID_ROOT.match(root) or len(root) + 39 > 64:
            raise SettingsError(
                f"UID root {root!r} is not a dotted numeric root ending in '.' of at most "
                "25 characters; use the default '2.25.'"
            )
        self._secret = bytes(secret)
        self.root = root
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        """Return the replacement of ``uid``."""
        old = str(uid).strip(" \x00")
        if not old:
            return ""
        new = self._cache.get(old)
        if new is None:
            mac = hmac.new(self._secret, old.encode("utf-8"), hashlib.sha256).digest()
            new = self.root + str(int.from_bytes(mac[:16], "big"))
            self._cache[old] = new
        return new


# --------------------------------------------------------------------------- site secret


def site_secret_path(work: Path) -> Path:
    """Return ``WORK/.site/phi/site_secret.key``."""
    return Path(work) / ".site" / "phi" / "site_secret.key"


def _parse_secret(text: str) -> bytes:
    t = text.strip()
    if t and len(t) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", t):
        return bytes.fromhex(t)
    return t.encode("utf-8")


def _read_secret_file(path: Path) -> bytes:
    # A racing creator writes before linking, so the file is complete; the
    # short wait only covers filesystems without hard links (O_EXCL fallback).
    for _ in range(50):
        data = path.read_bytes()
        if data.strip():
            try:
                return _parse_secret(data.decode("ascii"))
            except UnicodeDecodeError:
                return data
        time.sleep(0.05)
    raise SettingsError(
        f"site secret {path} is empty; delete it only if no batch was released with it "
        "(pseudonyms would change), or restore it from backup"
    )


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        pass


def load_site_secret(work: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """Return the site secret, creating it on first use.

    ``SENDIT_SITE_SECRET`` wins when set and non-blank: an even-length hex
    string is decoded, anything else is taken as UTF-8 text.  Otherwise the
    secret is ``WORK/.site/phi/site_secret.key`` (64 hex characters, so its
    contents can be copied into ``SENDIT_SITE_SECRET`` unchanged), created
    with 32 random bytes on first use: folder 0700, file 0600, created
    atomically (written to a unique temporary file then hard-linked into
    place, which fails if another process won the race; the loser re-reads
    the winner's file).

    Parameters
    ----------
    work : Path
        The work root.
    environ : Mapping[str, str]
        Environment to read ``SENDIT_SITE_SECRET`` from.

    Returns
    -------
    bytes
        The secret.
    """
    env = environ.get(SECRET_ENV, "")
    if env.strip():
        return _parse_secret(env)
    path = site_secret_path(work)
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten(folder, 0o700)
    if path.exists():
        _tighten(path, 0o600)
        return _read_secret_file(path)
    text = (secrets.token_bytes(32).hex() + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret_file(path)
        except OSError:
            # No hard links here: fall back to creating the file itself exclusively.
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return _read_secret_file(path)
            with os.fdopen(fd2, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    return _parse_secret(text.decode("ascii"))


# --------------------------------------------------------------------------- factory


def make_provider(
    kind: ProviderKind | str,
    *,
    secret: bytes,
    prefix: str = "IR",
    crosswalk_csv: Path | None = None,
    url: str = "",
    id_source: str = "sendit",
    token: str | None = None,
    timeout: float = 10.0,
    retries: int = 4,
    max_jitter_days: int = 365,
) -> IdentifierProvider:
    """Build the provider named by ``IDENTIFIER_PROVIDER``.

    Parameters
    ----------
    kind : ProviderKind or str
        ``local``, ``crosswalk`` or ``rest``.
    secret : bytes
        The site secret.
    prefix : str
        Entity id prefix.
    crosswalk_csv : Path or None
        The crosswalk (``crosswalk`` only).
    url : str
        The service's identifiers endpoint (``rest`` only).
    id_source : str
        ``id_source`` of patient ids.
    token : str or None
        Bearer token (``rest`` only).
    timeout : float
        Seconds per attempt (``rest`` only).
    retries : int
        Retries after the first attempt (``rest`` only).
    max_jitter_days : int
        Largest date shift (``local`` only).

    Returns
    -------
    IdentifierProvider

    Raises
    ------
    SettingsError
        ``kind`` is unknown, or a setting it needs is missing.
    IdentifierError
        The crosswalk cannot be read.
    """
    try:
        which = ProviderKind(str(kind).strip().lower())
    except ValueError:
        raise SettingsError(
            f"IDENTIFIER_PROVIDER is {str(kind)!r}; use one of "
            f"{', '.join(k.value for k in ProviderKind)}"
        ) from None
    if which is ProviderKind.LOCAL:
        return KeyedProvider(secret, prefix, max_jitter_days, id_source)
    if which is ProviderKind.CROSSWALK:
        if crosswalk_csv is None or not str(crosswalk_csv).strip():
            raise SettingsError(
                "IDENTIFIER_PROVIDER is 'crosswalk' but CROSSWALK_CSV is empty; set it "
                "to the honest broker's CSV (columns patient_id, entity_id, jitter_days)"
            )
        return CrosswalkProvider.from_csv(Path(crosswalk_csv), secret, prefix)
    if not url.strip():
        raise SettingsError(
            "IDENTIFIER_PROVIDER is 'rest' but IDENTIFIER_URL is empty; set IDENTIFIER_URL "
            "to the service's /identifiers endpoint"
        )
    return RestProvider(url.strip(), id_source, token, timeout, retries, prefix=prefix)
