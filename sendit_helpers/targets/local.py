"""The embedded default target: a folder of objects plus a SQLite index.

Objects use the same layout as Google Storage (``<collection>/<entity_id>/<name>``)
under ``LOCAL_STORAGE_DIR`` (default ``<work>/storage``) and are written
atomically and create-once (temporary file + ``os.link``).  ``index.sqlite``
mirrors Datastore's Collection > Entity > Image shape in three tables; an entity's
``IMAGE_COUNT`` is the number of its image rows in the index, recounted whenever
images are written, so it stays right across batches and reruns.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    ConflictError,
    Entity,
    Item,
    Receipt,
    Target,
    TargetKind,
    age_years,
    collection_name,
    file_md5,
    object_name,
    plain,
    searchable,
)

INDEX_NAME = "index.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS collection (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entity (
    collection TEXT NOT NULL REFERENCES collection(id),
    id TEXT NOT NULL,
    PatientSex TEXT,
    PatientAge TEXT,
    PatientAgeYears INTEGER,
    IMAGE_COUNT INTEGER,
    UPLOAD_AGENT TEXT,
    metadata TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS image (
    collection TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    md5 TEXT NOT NULL,
    crc32c TEXT,
    size INTEGER NOT NULL,
    generation TEXT,
    content_type TEXT NOT NULL,
    PatientSex TEXT,
    PatientAge TEXT,
    PatientAgeYears INTEGER,
    Modality TEXT,
    SeriesDescription TEXT,
    StudyDescription TEXT,
    metadata TEXT NOT NULL,
    PRIMARY KEY (collection, entity_id, name),
    FOREIGN KEY (collection, entity_id) REFERENCES entity(collection, id)
);
CREATE INDEX IF NOT EXISTS image_sex ON image(PatientSex);
CREATE INDEX IF NOT EXISTS image_age ON image(PatientAgeYears);
CREATE INDEX IF NOT EXISTS image_modality ON image(Modality);
CREATE INDEX IF NOT EXISTS entity_sex_age ON entity(PatientSex, PatientAgeYears);
"""


def storage_dir(settings: Mapping[str, Any], work: Path) -> Path:
    """``LOCAL_STORAGE_DIR``, or ``<work>/storage`` when it is empty."""
    configured = typed(settings).targets.local.storage_dir
    return Path(configured).expanduser() if configured else Path(work) / "storage"


@contextmanager
def connect(root: Path) -> Iterator[sqlite3.Connection]:
    """Open (creating if needed) the SQLite index under ``root``; commit on success."""
    root.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(root / INDEX_NAME, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        with conn:
            yield conn


class LocalTarget(Target):
    """Objects in a folder plus ``index.sqlite``.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``LOCAL_STORAGE_DIR`` and ``GOOGLE_STORAGE_COLLECTION`` (the collection name).
    work : Path
        The work root; the default store is ``<work>/storage``.
    """

    kind = TargetKind.LOCAL

    def __init__(self, settings: Mapping[str, Any], work: Path) -> None:
        self.root = storage_dir(settings, work)
        self.collection = collection_name(settings)

    @property
    def destination_id(self) -> str:
        """``local <store folder>/<collection>`` (absolute)."""
        return f"local {(self.root.resolve() / self.collection).as_posix()}"

    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys with an image row in the index (one query) and a stored file."""
        if not (self.root / INDEX_NAME).is_file():
            return set()
        with connect(self.root) as conn:
            rows = conn.execute(
                "SELECT entity_id, name FROM image WHERE collection = ?", (self.collection,)
            ).fetchall()
        indexed = set(rows)
        return {
            i.key for i in items if (i.entity_id, i.name) in indexed and self._dest(i).is_file()
        }

    def check(self) -> None:
        """Create the store folder and index; fail if it is not writable."""
        try:
            with connect(self.root):
                pass
        except (OSError, sqlite3.Error) as exc:
            raise UploadError(
                f"local target: cannot write the store {self.root} ({type(exc).__name__}); "
                "set LOCAL_STORAGE_DIR to a writable folder"
            ) from exc

    def _dest(self, item: Item) -> Path:
        return self.root / object_name(self.collection, item)

    def put(self, item: Item) -> Receipt:
        """Write the item's bytes into the store atomically; an identical existing copy is fine."""
        dest = self._dest(item)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        data = item.read()
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, dest)
                status = "stored"
            except FileExistsError:
                status = self._existing(dest, item)
        finally:
            tmp.unlink(missing_ok=True)
        return self._receipt(item, dest, status)

    def _existing(self, dest: Path, item: Item) -> str:
        if file_md5(dest) != item.md5:
            raise ConflictError(
                f"local target: release/{item.key} not stored: {dest} is already stored with "
                "different content (the same object from another batch or encoding); the "
                "stored copy is kept. To replace it, remove it or upload under a new "
                "collection (GOOGLE_STORAGE_COLLECTION)",
                dest.relative_to(self.root).as_posix(),
            )
        return "exists"

    def _receipt(self, item: Item, dest: Path, status: str) -> Receipt:
        rel = dest.relative_to(self.root).as_posix()
        fields = {
            "md5": item.md5,
            "crc32c": None,
            "size": item.size,
            "generation": None,
            "content_type": "application/dicom",
        }
        return Receipt(
            key=item.key,
            name=item.name,
            entity_id=item.entity_id,
            target=self.kind,
            status=status,
            checksum=item.md5,
            remote_id=rel,
            url=dest.resolve().as_uri(),
            fields=fields,
        )

    def put_entities(
        self, entities: Sequence[Entity], stored: Sequence[tuple[Item, Receipt]]
    ) -> None:
        """Upsert the collection, its entities and one image row per receipt in one transaction."""
        by_id = {e.id: e for e in entities}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with connect(self.root) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO collection(id, created) VALUES (?, ?)",
                (self.collection, now),
            )
            conn.executemany(_ENTITY_SQL, [self._entity_row(e) for e in entities])
            rows = [self._image_row(i, r, by_id.get(i.entity_id)) for i, r in stored]
            conn.executemany(_IMAGE_SQL, rows)
            touched = sorted({e.id for e in entities} | {i.entity_id for i, _ in stored})
            conn.executemany(_COUNT_SQL, [(self.collection, eid) for eid in touched])

    def _entity_row(self, entity: Entity) -> tuple[Any, ...]:
        meta = {k: plain(v) for k, v in entity.metadata.items()}
        return (
            self.collection,
            entity.id,
            meta.get("PatientSex"),
            meta.get("PatientAge"),
            age_years(meta.get("PatientAge")),
            meta.get("IMAGE_COUNT"),
            meta.get("UPLOAD_AGENT"),
            # IMAGE_COUNT is the store's own count (recounted after writing), not the batch's
            json.dumps({k: v for k, v in meta.items() if k != "IMAGE_COUNT"}, default=str),
        )

    def _image_row(self, item: Item, receipt: Receipt, entity: Entity | None) -> tuple[Any, ...]:
        found = searchable(item, entity)
        fields = receipt.fields
        return (
            self.collection,
            receipt.entity_id,
            receipt.name,
            receipt.url,
            fields["md5"],
            fields.get("crc32c"),
            fields["size"],
            fields.get("generation"),
            fields["content_type"],
            found["PatientSex"],
            found["PatientAge"],
            found["PatientAgeYears"],
            found["Modality"],
            found["SeriesDescription"],
            found["StudyDescription"],
            json.dumps({k: plain(v) for k, v in item.metadata.items()}, default=str),
        )

    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys whose stored file has the same MD5 and whose image row is in the index."""
        with connect(self.root) as conn:
            rows = conn.execute(
                "SELECT entity_id, name, md5 FROM image WHERE collection = ?", (self.collection,)
            ).fetchall()
        indexed = {(e, n): m for e, n, m in rows}
        ok: set[str] = set()
        for r in receipts:
            path = self.root / r.remote_id
            if indexed.get((r.entity_id, r.name)) != r.checksum or not path.is_file():
                continue
            if file_md5(path) == r.checksum:
                ok.add(r.key)
        return ok


_ENTITY_SQL = """
INSERT INTO entity(collection, id, PatientSex, PatientAge, PatientAgeYears, IMAGE_COUNT,
                   UPLOAD_AGENT, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(collection, id) DO UPDATE SET
    PatientSex=excluded.PatientSex, PatientAge=excluded.PatientAge,
    PatientAgeYears=excluded.PatientAgeYears, IMAGE_COUNT=excluded.IMAGE_COUNT,
    UPLOAD_AGENT=excluded.UPLOAD_AGENT, metadata=excluded.metadata
"""

_COUNT_SQL = """
UPDATE entity SET IMAGE_COUNT = (
    SELECT COUNT(*) FROM image
    WHERE image.collection = entity.collection AND image.entity_id = entity.id
)
WHERE collection = ? AND id = ?
"""

_IMAGE_SQL = """
INSERT OR REPLACE INTO image(collection, entity_id, name, url, md5, crc32c, size, generation,
                             content_type, PatientSex, PatientAge, PatientAgeYears, Modality,
                             SeriesDescription, StudyDescription, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
