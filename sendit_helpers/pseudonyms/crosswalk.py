"""The ``crosswalk`` provider: a CSV from an honest broker."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sendit_helpers.core.errors import IdentifierError
from sendit_helpers.pseudonyms.provider import (
    _TOKEN,
    ITEM_HEX,
    Pseudonyms,
    StudyKey,
    _check_keys,
    _check_secret,
    _group_by_patient,
    _item_ref,
    _mac,
    _norm,
    unique_codes,
)

__all__ = [
    "CrosswalkProvider",
]


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
        derived = {k: self.prefix + v for k, v in unique_codes(item_digests, ITEM_HEX).items()}
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
