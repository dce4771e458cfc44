"""Google target: images to Cloud Storage, metadata to Datastore (sendit's storage design).

Each image becomes one Storage object ``<collection>/<entity_id>/<name>`` in
``GOOGLE_CLOUD_STORAGE`` (content type ``application/dicom``, predefined ACL
``projectPrivate``), uploaded create-once with ``if_generation_match=0``: a 412
means the object is already there, and it counts as uploaded only when its MD5
equals ours.  Datastore holds ``Collection(GOOGLE_STORAGE_COLLECTION) >
Entity(id) > Image(name)``; every Image carries the object's link and Storage
fields plus its cleaned header fields.  Commits hold at most
:data:`MAX_MUTATIONS` entities and :data:`MAX_COMMIT_BYTES` bytes (the emulator
enforces neither, production refuses more than 500 mutations or 10 MiB).

Credentials come from ``GOOGLE_APPLICATION_CREDENTIALS``; with
``STORAGE_EMULATOR_HOST`` / ``DATASTORE_EMULATOR_HOST`` set, anonymous
credentials and the explicit project are used instead.
"""

from __future__ import annotations

import base64
import importlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import requests

from ..errors import UploadError
from .base import (
    MAX_INDEXED_BYTES,
    Entity,
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
    age_years,
    collection_name,
    is_free_text,
    missing_client,
    object_name,
    plain,
    searchable,
    setting,
)

CONTENT_TYPE = "application/dicom"
ACL = "projectPrivate"
TIMEOUT = 120.0
MAX_MUTATIONS = 500
"""Datastore's per-commit mutation limit."""
MAX_COMMIT_BYTES = 3_500_000
"""Per-commit payload cap: under the emulator's 4 MiB request cap, so under production's 10 MiB."""
MAX_LOOKUP = 1000
STORAGE_FIELDS = ("url", "md5", "crc32c", "size", "generation", "content_type")
INSTALL_EXTRA = "google"


def _modules() -> tuple[Any, Any, Any]:
    try:
        exceptions = importlib.import_module("google.api_core.exceptions")
        datastore = importlib.import_module("google.cloud.datastore")
        storage = importlib.import_module("google.cloud.storage")
    except ImportError as exc:
        module = "google-cloud-storage / google-cloud-datastore"
        raise missing_client("google", module, INSTALL_EXTRA) from exc
    return storage, datastore, exceptions


def _credentials_file() -> str:
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if path and not os.path.isfile(path):
        raise UploadError(
            f"google target: GOOGLE_APPLICATION_CREDENTIALS names {path}, which does not exist; "
            "point it at the service-account JSON key file"
        )
    return path


def _permission_fix(service: str, bucket: str, project: str) -> str:
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "") or "(not set)"
    role = (
        f"roles/storage.objectAdmin on bucket {bucket}"
        if service == "storage"
        else f"roles/datastore.user in project {project}"
    )
    return (
        f"check that GOOGLE_APPLICATION_CREDENTIALS={path} is the right service-account key "
        f"and that its account has {role}"
    )


class GoogleTarget(Target):
    """Cloud Storage objects plus Datastore Collection > Entity > Image records.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``GOOGLE_CLOUD_STORAGE``, ``GOOGLE_PROJECT_NAME``,
        ``GOOGLE_STORAGE_COLLECTION`` and ``UPLOAD_THREADS``.
    """

    kind = TargetKind.GOOGLE

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.bucket_name = str(setting(settings, "GOOGLE_CLOUD_STORAGE", "") or "")
        self.project = str(setting(settings, "GOOGLE_PROJECT_NAME", "") or "")
        required = {"GOOGLE_CLOUD_STORAGE": self.bucket_name, "GOOGLE_PROJECT_NAME": self.project}
        for key, value in required.items():
            if not value:
                raise UploadError(
                    f"google target: setting {key} is empty; set it (SEND_TO_GOOGLE is on)"
                )
        self.collection = collection_name(settings)
        self.threads = max(1, int(setting(settings, "UPLOAD_THREADS", 8)))
        self._storage_mod, self._datastore_mod, self._exc = _modules()
        self._local = threading.local()
        self._ds: Any = None
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.commits: list[tuple[int, int]] = []
        """(mutations, estimated bytes) of every Datastore commit sent, for inspection."""

    # -- clients -------------------------------------------------------------------------
    def _storage(self) -> Any:
        client = getattr(self._local, "storage", None)
        if client is None:
            with self._errors("storage", "creating the Storage client"):
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    creds = importlib.import_module("google.auth.credentials")
                    client = self._storage_mod.Client(
                        project=self.project, credentials=creds.AnonymousCredentials()
                    )
                else:
                    _credentials_file()
                    client = self._storage_mod.Client(project=self.project)
            self._local.storage = client
            with self._lock:
                self._clients.append(client)
        return client

    def datastore_client(self) -> Any:
        """The Datastore client (emulator-aware, credentials from the environment)."""
        if self._ds is None:
            with self._errors("datastore", "creating the Datastore client"):
                if not os.environ.get("DATASTORE_EMULATOR_HOST"):
                    _credentials_file()
                self._ds = self._datastore_mod.Client(project=self.project)
        return self._ds

    @contextmanager
    def _errors(self, service: str, what: str) -> Iterator[None]:
        """Translate Google client errors into Transient / Upload errors naming the fix."""
        exc_mod = self._exc
        from google.auth.exceptions import DefaultCredentialsError, TransportError

        where = f"google target ({service}, bucket {self.bucket_name}, project {self.project})"
        try:
            yield
        except (exc_mod.TooManyRequests, exc_mod.ServerError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__} while {what}") from exc
        except (requests.ConnectionError, requests.Timeout, TransportError) as exc:
            raise TransientError(f"{where}: connection failed while {what}") from exc
        except (exc_mod.Forbidden, exc_mod.Unauthorized) as exc:
            raise UploadError(
                f"{where}: permission denied while {what}; "
                + _permission_fix(service, self.bucket_name, self.project)
            ) from exc
        except exc_mod.NotFound as exc:
            raise UploadError(
                f"{where}: not found while {what}; create bucket {self.bucket_name} "
                "or fix GOOGLE_CLOUD_STORAGE / GOOGLE_PROJECT_NAME"
            ) from exc
        except DefaultCredentialsError as exc:
            raise UploadError(
                f"{where}: no credentials while {what}; set GOOGLE_APPLICATION_CREDENTIALS to "
                "a service-account JSON key file"
            ) from exc

    # -- interface -----------------------------------------------------------------------
    def check(self) -> None:
        """List one object of the bucket and look up the collection key."""
        try:
            with self._errors("storage", "listing the bucket"):
                blobs = self._storage().list_blobs(
                    self.bucket_name, max_results=1, retry=None, timeout=TIMEOUT
                )
                list(blobs)
            with self._errors("datastore", "reading the collection"):
                client = self.datastore_client()
                client.get(client.key("Collection", self.collection), retry=None, timeout=TIMEOUT)
        except TransientError as exc:
            raise UploadError(f"{exc}; check the network or the emulator hosts") from exc

    def put(self, item: Item) -> Receipt:
        """Upload one object create-once; an existing object with the same MD5 is ``exists``."""
        name = object_name(self.collection, item)
        blob = self._storage().bucket(self.bucket_name).blob(name)
        what = f"uploading release/{item.key}"
        status = "stored"
        with self._errors("storage", what):
            try:
                blob.upload_from_filename(
                    str(item.path),
                    content_type=CONTENT_TYPE,
                    if_generation_match=0,
                    predefined_acl=ACL,
                    checksum="md5",
                    retry=None,
                    timeout=TIMEOUT,
                )
            except self._exc.PreconditionFailed:
                blob.reload(retry=None, timeout=TIMEOUT)
                status = "exists"
        if status == "exists" and blob.md5_hash != _b64(item.md5):
            raise UploadError(
                f"google target: gs://{self.bucket_name}/{name} already exists with different "
                f"content than release/{item.key}; delete that object or upload under a new "
                "GOOGLE_STORAGE_COLLECTION"
            )
        return self._receipt(item, name, blob, status)

    def _receipt(self, item: Item, name: str, blob: Any, status: str) -> Receipt:
        url = f"gs://{self.bucket_name}/{name}"
        fields = {
            "url": url,
            "md5": item.md5,
            "crc32c": blob.crc32c,
            "size": int(blob.size if blob.size is not None else item.size),
            "generation": str(blob.generation),
            "content_type": blob.content_type or CONTENT_TYPE,
        }
        return Receipt(
            key=item.key,
            name=item.name,
            entity_id=item.entity_id,
            target=self.kind,
            status=status,
            checksum=item.md5,
            remote_id=str(blob.generation),
            url=url,
            fields=fields,
        )

    def put_entities(
        self, entities: Sequence[Entity], stored: Sequence[tuple[Item, Receipt]]
    ) -> None:
        """Write Collection, Entity and Image records in bounded commits."""
        client = self.datastore_client()
        records = self.records(client, entities, stored)
        chunks = list(chunk_commits(records, self._datastore_mod))
        with ThreadPoolExecutor(min(self.threads, max(1, len(chunks)))) as pool:
            for _ in pool.map(lambda c: self._commit(client, c), chunks):
                pass

    def records(
        self, client: Any, entities: Sequence[Entity], stored: Sequence[tuple[Item, Receipt]]
    ) -> list[Any]:
        """The Datastore entities to write: the collection, each entity, each image."""
        ds = self._datastore_mod
        coll_key = client.key("Collection", self.collection)
        out = [_record(ds, coll_key, {"name": self.collection})]
        by_id = {e.id: e for e in entities}
        for ent in entities:
            props = {k: plain(v) for k, v in ent.metadata.items()}
            props["PatientAgeYears"] = age_years(props.get("PatientAge"))
            out.append(_record(ds, client.key("Entity", ent.id, parent=coll_key), props))
        for item, receipt in stored:
            ent_key = client.key("Entity", item.entity_id, parent=coll_key)
            props = {k: plain(v) for k, v in item.metadata.items()}
            props.update({k: v for k, v in searchable(item, by_id.get(item.entity_id)).items()})
            props.update({k: receipt.fields.get(k) for k in STORAGE_FIELDS})
            props["entity_id"] = item.entity_id
            out.append(_record(ds, client.key("Image", item.name, parent=ent_key), props))
        return out

    def _commit(self, client: Any, chunk: list[tuple[Any, int]]) -> None:
        with self._errors("datastore", f"committing {len(chunk)} records"):
            batch = client.batch()
            batch.begin()
            for entity, _ in chunk:
                batch.put(entity)
            batch.commit(timeout=TIMEOUT)
        self.commits.append((len(chunk), sum(size for _, size in chunk)))

    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Keys whose object has our MD5 and whose Image record holds the same MD5."""
        in_storage = self._storage_md5s({r.entity_id for r in receipts})
        in_datastore = self._datastore_md5s(receipts)
        ok: set[str] = set()
        for r in receipts:
            name = f"{self.collection}/{r.entity_id}/{r.name}"
            if in_storage.get(name) == _b64(r.checksum) and in_datastore.get(r.key) == r.checksum:
                ok.add(r.key)
        return ok

    def _storage_md5s(self, entity_ids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        client = self._storage()
        for eid in sorted(entity_ids):
            with self._errors("storage", f"listing entity {eid}"):
                blobs = client.list_blobs(
                    self.bucket_name, prefix=f"{self.collection}/{eid}/", timeout=TIMEOUT
                )
                found.update({b.name: b.md5_hash for b in blobs})
        return found

    def _datastore_md5s(self, receipts: Sequence[Receipt]) -> dict[str, str]:
        client = self.datastore_client()
        coll = client.key("Collection", self.collection)
        keys = {
            client.key("Entity", r.entity_id, "Image", r.name, parent=coll): r.key for r in receipts
        }
        key_list = list(keys)
        found: dict[str, str] = {}
        for start in range(0, len(key_list), MAX_LOOKUP):
            with self._errors("datastore", "reading image records"):
                got = client.get_multi(key_list[start : start + MAX_LOOKUP], timeout=TIMEOUT)
            found.update({keys[e.key]: str(e.get("md5")) for e in got})
        return found

    def close(self) -> None:
        """Close every thread's Storage client and the Datastore client."""
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()
        if self._ds is not None:
            self._ds.close()
            self._ds = None


def _b64(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def _record(ds: Any, key: Any, props: Mapping[str, Any]) -> Any:
    """A Datastore entity; free text and long strings are excluded from indexes."""
    excluded = [
        name
        for name, value in props.items()
        if is_free_text(name)
        or (isinstance(value, str) and len(value.encode()) > MAX_INDEXED_BYTES)
        or isinstance(value, bytes)
    ]
    entity = ds.Entity(key=key, exclude_from_indexes=tuple(excluded))
    entity.update(props)
    return entity


def entity_bytes(ds_module: Any, entity: Any) -> int:
    """Serialized size of one entity (what a commit carries for it)."""
    return int(ds_module.helpers.entity_to_protobuf(entity)._pb.ByteSize()) + 16


def chunk_commits(records: Sequence[Any], ds_module: Any) -> Iterator[list[tuple[Any, int]]]:
    """Split records into commits of at most :data:`MAX_MUTATIONS` and :data:`MAX_COMMIT_BYTES`."""
    chunk: list[tuple[Any, int]] = []
    size = 0
    for record in records:
        n = entity_bytes(ds_module, record)
        if chunk and (len(chunk) >= MAX_MUTATIONS or size + n > MAX_COMMIT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((record, n))
        size += n
    if chunk:
        yield chunk
