"""The ``local`` provider: HMAC-SHA256 of the patient id with the site secret."""

from __future__ import annotations

from collections.abc import Sequence

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.pseudonyms.provider import (
    ENTITY_HEX,
    ITEM_HEX,
    Pseudonyms,
    StudyKey,
    _check_keys,
    _check_prefix,
    _check_secret,
    _group_by_patient,
    _item_ref,
    _mac,
    _norm,
    unique_codes,
)

__all__ = [
    "KeyedProvider",
]


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
        entities = unique_codes(entity_digests, ENTITY_HEX)
        item_digests: dict[str, str] = {}
        item_owner: dict[StudyKey, str] = {}
        for pid, pkeys in by_patient.items():
            for key in pkeys:
                ref = f"{pid}\x00{_item_ref(key)}"
                item_owner[key] = ref
                item_digests.setdefault(
                    ref, _mac(self._secret, "item", self.id_source, pid, _item_ref(key)).hex()
                )
        items = unique_codes(item_digests, ITEM_HEX)
        out: dict[StudyKey, Pseudonyms] = {}
        for pid, pkeys in by_patient.items():
            jitter = self.jitter_for(pid)
            for key in pkeys:
                out[key] = Pseudonyms(
                    self.prefix + entities[pid], self.prefix + items[item_owner[key]], jitter
                )
        return out
