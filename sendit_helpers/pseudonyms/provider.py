"""The pseudonym provider interface, its shared helpers and :func:`make_provider`.

Three providers give every study a :class:`Pseudonyms` triple (entity id,
item id, date jitter):

``local`` (:class:`~sendit_helpers.pseudonyms.local.KeyedProvider`)
    HMAC-SHA256 with the site secret.  No network, stable across runs and
    batches for as long as the secret is kept.
``crosswalk`` (:class:`~sendit_helpers.pseudonyms.crosswalk.CrosswalkProvider`)
    A CSV from an honest broker maps each ``patient_id`` to an ``entity_id``
    and a ``jitter_days`` (optionally ``accession`` to ``item_id``).
``rest`` (:class:`~sendit_helpers.pseudonyms.rest.RestProvider`)
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

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sendit_helpers.core.errors import IdentifierError, SettingsError

__all__ = [
    "ITEM_SOURCE",
    "IdentifierProvider",
    "ProviderKind",
    "Pseudonyms",
    "StudyKey",
    "make_provider",
    "unique_codes",
]


ITEM_SOURCE = "DCM Accession #"
"""``id_source`` of the study items sent to the REST service."""

ENTITY_HEX = 6
ITEM_HEX = 6
_TOKEN = re.compile(r"^[A-Za-z0-9-]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9]*$")


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


def unique_codes(digests: Mapping[str, str], width: int) -> dict[str, str]:
    """Shortest-prefix codes of ``digests`` (owner -> hex digest), unique per owner.

    Every owner starts with ``width`` characters; members of a group that
    share a code are all extended by one character, until no two owners share
    one.

    Parameters
    ----------
    digests : mapping of str to str
        ``owner -> hex digest`` (HMAC-SHA256 of the owner's identifier).
    width : int
        The shortest code (:data:`ENTITY_HEX`, :data:`ITEM_HEX`).

    Returns
    -------
    dict of str to str
        ``owner -> code``: a prefix of its digest, no two owners alike.

    Raises
    ------
    IdentifierError
        When two owners' full digests are equal (they cannot be told apart).
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
    from sendit_helpers.pseudonyms.crosswalk import CrosswalkProvider
    from sendit_helpers.pseudonyms.local import KeyedProvider
    from sendit_helpers.pseudonyms.rest import RestProvider

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
