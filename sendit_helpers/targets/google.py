"""Google target: images to Cloud Storage, metadata to Datastore (sendit's storage design).

Each image becomes one Storage object ``<collection>/<entity_id>/<name>`` in
``GOOGLE_CLOUD_STORAGE`` (content type ``application/dicom``, predefined ACL
``projectPrivate``), uploaded create-once with ``if_generation_match=0``: a 412
means the object is already there, and it counts as uploaded only when its MD5
equals ours.  Datastore holds ``Collection(GOOGLE_STORAGE_COLLECTION) >
Entity(id) > Image(name)``; every Image carries the object's link and Storage
fields plus its cleaned header fields.  An Entity holds the design document's
properties (``id``, ``PatientSex``, ``PatientAge``, ``IMAGE_COUNT``,
``UPLOAD_AGENT``, plus ``PatientAgeYears`` for age queries); it is written after
its Images, with ``IMAGE_COUNT`` counted from the Image records under it (a
keys-only ancestor query, strongly consistent), so the count is right after any
number of batches of that entity and any number of reruns.  Commits hold at most
:data:`MAX_MUTATIONS` entities and :data:`MAX_COMMIT_BYTES` bytes (the emulator
enforces neither, production refuses more than 500 mutations or 10 MiB).

Speed: objects go in parallel (``UPLOAD_THREADS``), each file read and hashed
once, its MD5 sent in the object's metadata so Cloud Storage checks the bytes;
Image records of every :data:`ENTITY_BATCH` stored images are committed in the
background while uploads go on; verification reads one listing per entity and
parallel Datastore lookups.  The clients' own retries are off: the upload
stage retries (``UPLOAD_RETRIES``), so a dead server fails in seconds.

A 401/403 names the credentials file (``GOOGLE_APPLICATION_CREDENTIALS`` and
its service account) and the IAM role to check (:func:`translate_error`).

Credentials come from ``GOOGLE_APPLICATION_CREDENTIALS``, read with the settings
(:func:`~sendit_helpers.core.settings.typed`): the key file it names is loaded and
handed to the clients (unset: Application Default Credentials); with
``STORAGE_EMULATOR_HOST`` / ``DATASTORE_EMULATOR_HOST`` set (read by Google's clients
themselves), anonymous credentials and the explicit project are used instead.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import requests

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.retry import retry_after_seconds
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    MAX_INDEXED_BYTES,
    ConflictError,
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
)

CONTENT_TYPE = "application/dicom"
ACL = "projectPrivate"
TIMEOUT = 120.0
MAX_MUTATIONS = 500
"""Datastore's per-commit mutation limit."""
MAX_COMMIT_BYTES = 3_500_000
"""Per-commit payload cap: under the emulator's 4 MiB request cap, so under production's 10 MiB."""
SINGLE_REQUEST_BYTES = 8 << 20
"""Files up to this size are read once and sent in one multipart request (the client's limit)."""
LOOKUP_CHUNK = 100
"""Keys per Datastore lookup when verifying (production allows 1000); chunks go in parallel."""
ENTITY_BATCH = 200
"""Stored images per metadata write while the uploads go on (one commit of <= 500 mutations)."""
COUNT_ROUNDS = 5
"""Writes of an Entity's IMAGE_COUNT before giving up on a count that keeps moving."""
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


def _credentials(path: str) -> Any:
    """The credentials of the key file ``path`` (``GOOGLE_APPLICATION_CREDENTIALS``).

    None when ``path`` is empty: the clients then use Application Default Credentials.
    """
    if not path:
        return None
    if not os.path.isfile(path):
        raise UploadError(
            f"google target: GOOGLE_APPLICATION_CREDENTIALS names {path}, which does not exist; "
            "point it at the service-account JSON key file"
        )
    auth = importlib.import_module("google.auth")
    credentials, _project = auth.load_credentials_from_file(path)
    return credentials


def _key_account(path: str) -> str:
    """The ``client_email`` of a service-account key file, or ``""`` when unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return ""
    return str(data.get("client_email", "")) if isinstance(data, dict) else ""


def permission_fix(service: str, bucket: str, project: str, credentials: str = "") -> str:
    """What to check after a 401/403: the credentials file and the IAM role it needs.

    Parameters
    ----------
    service : str
        ``"storage"`` or ``"datastore"``.
    bucket, project : str
        ``GOOGLE_CLOUD_STORAGE`` and ``GOOGLE_PROJECT_NAME``.
    credentials : str
        ``GOOGLE_APPLICATION_CREDENTIALS`` from the settings (empty: not set).

    Returns
    -------
    str
        A sentence naming ``GOOGLE_APPLICATION_CREDENTIALS`` (its file and account, when
        set) and the role: ``roles/storage.objectAdmin`` on the bucket or
        ``roles/datastore.user`` in the project.
    """
    path = credentials
    role = (
        f"IAM role roles/storage.objectAdmin on bucket {bucket}"
        if service == "storage"
        else f"IAM role roles/datastore.user in project {project}"
    )
    if not path:
        return (
            "GOOGLE_APPLICATION_CREDENTIALS is not set, so Application Default Credentials "
            "(gcloud login or the VM's service account) were used; set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON key file whose account "
            f"has the {role}"
        )
    account = _key_account(path)
    who = f"its account {account}" if account else "its service account"
    return (
        f"check that GOOGLE_APPLICATION_CREDENTIALS={path} is the right key file and that "
        f"{who} has the {role}"
    )


def translate_error(
    exc: BaseException,
    *,
    service: str,
    what: str,
    bucket: str,
    project: str,
    credentials: str = "",
) -> UploadError | None:
    """Map a Google client exception to the error the upload stage raises.

    Parameters
    ----------
    exc : BaseException
        What the Storage or Datastore client raised.
    service : str
        ``"storage"`` or ``"datastore"``.
    what : str
        What was being done, e.g. ``"uploading release/IR1/IR1_5_1.dcm"``.
    bucket, project : str
        ``GOOGLE_CLOUD_STORAGE`` and ``GOOGLE_PROJECT_NAME``, named in the message.
    credentials : str
        ``GOOGLE_APPLICATION_CREDENTIALS`` from the settings, named after a 401/403.

    Returns
    -------
    UploadError or None
        A :class:`TransientError` for 429/5xx and dropped connections (with the
        ``Retry-After`` of a 429 or 503 answer); an
        :class:`UploadError` naming the fix for 401/403 (the credentials file and IAM
        role), 404 and missing credentials; ``None`` for anything else (re-raise it).
    """
    exc_mod = importlib.import_module("google.api_core.exceptions")
    auth_exc = importlib.import_module("google.auth.exceptions")
    where = f"google target ({service}, bucket {bucket}, project {project})"
    if isinstance(exc, exc_mod.TooManyRequests | exc_mod.ServerError | exc_mod.RetryError):
        asked = None
        if isinstance(exc, exc_mod.TooManyRequests | exc_mod.ServiceUnavailable):
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            asked = retry_after_seconds(headers.get("Retry-After"))
        return TransientError(f"{where}: {type(exc).__name__} while {what}", asked)
    if isinstance(exc, requests.ConnectionError | requests.Timeout | auth_exc.TransportError):
        return TransientError(f"{where}: connection failed while {what}")
    if isinstance(exc, exc_mod.Forbidden | exc_mod.Unauthorized):
        code = getattr(exc, "code", None)
        status = f"HTTP {int(code)}" if isinstance(code, int) else type(exc).__name__
        return UploadError(
            f"{where}: permission denied ({status}) while {what}; "
            + permission_fix(service, bucket, project, credentials)
        )
    if isinstance(exc, exc_mod.NotFound):
        return UploadError(
            f"{where}: not found while {what}; create bucket {bucket} "
            "or fix GOOGLE_CLOUD_STORAGE / GOOGLE_PROJECT_NAME"
        )
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return UploadError(
            f"{where}: no credentials while {what}; set GOOGLE_APPLICATION_CREDENTIALS to "
            "a service-account JSON key file"
        )
    return None


class GoogleTarget(Target):
    """Cloud Storage objects plus Datastore Collection > Entity > Image records.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Uses ``GOOGLE_CLOUD_STORAGE``, ``GOOGLE_PROJECT_NAME``,
        ``GOOGLE_STORAGE_COLLECTION``, ``GOOGLE_APPLICATION_CREDENTIALS`` and
        ``UPLOAD_THREADS``.
    """

    kind = TargetKind.GOOGLE
    entity_batch = ENTITY_BATCH

    def __init__(self, settings: Mapping[str, Any]) -> None:
        cfg = typed(settings)
        self.bucket_name = cfg.targets.google.bucket
        self.project = cfg.targets.google.project
        required = {"GOOGLE_CLOUD_STORAGE": self.bucket_name, "GOOGLE_PROJECT_NAME": self.project}
        for key, value in required.items():
            if not value:
                raise UploadError(
                    f"google target: setting {key} is empty; set it (SEND_TO_GOOGLE is on)"
                )
        self.collection = collection_name(cfg)
        self.threads = max(1, cfg.upload.threads)
        self._key_file = cfg.targets.google.credentials
        self._credentials: Any = None
        """Loaded from :attr:`_key_file` on first use (None: Application Default Credentials)."""
        self._storage_mod, self._datastore_mod, self._exc = _modules()
        self._no_retry = importlib.import_module("google.api_core.retry").Retry(predicate=_never)
        """Datastore calls are not retried by the client: :func:`upload.with_retries` does."""
        self._local = threading.local()
        self._ds: Any = None
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.commits: list[tuple[int, int]] = []
        """(mutations, estimated bytes) of every Datastore commit sent, for inspection."""

    @property
    def destination_id(self) -> str:
        """``google gs://<bucket>/<collection> project=<project>``."""
        return f"google gs://{self.bucket_name}/{self.collection} project={self.project}"

    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys whose object is in a Storage prefix listing and whose Image record exists.

        One object listing and one keys-only ancestor query per entity.
        """
        entity_ids = {i.entity_id for i in items}
        objects = self._storage_md5s(entity_ids)
        records = self._image_names(entity_ids)
        return {
            i.key
            for i in items
            if object_name(self.collection, i) in objects and (i.entity_id, i.name) in records
        }

    def _image_names(self, entity_ids: set[str]) -> set[tuple[str, str]]:
        """``(entity_id, name)`` of every Image record under the entities (keys only)."""
        client = self.datastore_client()
        coll = client.key("Collection", self.collection)
        found: set[tuple[str, str]] = set()
        for eid in sorted(entity_ids):
            with self._errors("datastore", f"listing the images of entity {eid}"):
                query = client.query(kind="Image", ancestor=client.key("Entity", eid, parent=coll))
                query.keys_only()
                found.update(
                    (eid, str(e.key.name))
                    for e in query.fetch(retry=self._no_retry, timeout=TIMEOUT)
                )
        return found

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
                    client = self._storage_mod.Client(
                        project=self.project, credentials=self._loaded_credentials()
                    )
            self._local.storage = client
            with self._lock:
                self._clients.append(client)
        return client

    def _loaded_credentials(self) -> Any:
        """The key file's credentials, loaded once (None without a key file)."""
        with self._lock:
            if self._credentials is None and self._key_file:
                self._credentials = _credentials(self._key_file)
            return self._credentials

    def datastore_client(self) -> Any:
        """The Datastore client (emulator-aware, credentials from the settings)."""
        if self._ds is None:
            with self._errors("datastore", "creating the Datastore client"):
                if os.environ.get("DATASTORE_EMULATOR_HOST"):
                    self._ds = self._datastore_mod.Client(project=self.project)
                else:
                    credentials = self._loaded_credentials()
                    self._ds = self._datastore_mod.Client(
                        project=self.project, credentials=credentials
                    )
        return self._ds

    @contextmanager
    def _errors(self, service: str, what: str) -> Iterator[None]:
        """Translate Google client errors into Transient / Upload errors naming the fix."""
        try:
            yield
        except UploadError:
            raise
        except Exception as exc:
            mapped = translate_error(
                exc,
                service=service,
                what=what,
                bucket=self.bucket_name,
                project=self.project,
                credentials=self._key_file,
            )
            if mapped is None:
                raise
            raise mapped from exc

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
                key = client.key("Collection", self.collection)
                client.get(key, retry=self._no_retry, timeout=TIMEOUT)
        except TransientError as exc:
            raise UploadError(f"{exc}; check the network or the emulator hosts") from exc

    def put(self, item: Item) -> Receipt:
        """Upload one object create-once; an existing object with the same MD5 is ``exists``."""
        name = object_name(self.collection, item)
        blob = self._storage().bucket(self.bucket_name).blob(name)
        what = f"uploading release/{item.key}"
        status = "stored"
        options: dict[str, Any] = {
            "content_type": CONTENT_TYPE,
            "if_generation_match": 0,
            "predefined_acl": ACL,
            "retry": None,
            "timeout": TIMEOUT,
        }
        with self._errors("storage", what):
            try:
                data = item.read()
                if len(data) <= SINGLE_REQUEST_BYTES:
                    # one read, one hash: the MD5 goes with the object's metadata and
                    # Cloud Storage refuses the upload when the bytes do not match it
                    blob.md5_hash = _b64(item.md5)
                    blob.upload_from_string(data, checksum=None, **options)
                else:
                    blob.upload_from_file(
                        io.BytesIO(data), size=len(data), checksum="md5", **options
                    )
            except self._exc.PreconditionFailed:
                blob.reload(retry=None, timeout=TIMEOUT)
                status = "exists"
        if status == "exists" and blob.md5_hash != _b64(item.md5):
            raise ConflictError(
                f"google target: release/{item.key} not stored: gs://{self.bucket_name}/{name} "
                "is already stored with different content (the same object from another "
                "batch or encoding); the stored copy is kept. To replace it, delete that "
                "object or upload under a new GOOGLE_STORAGE_COLLECTION",
                name,
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
        """The Datastore records to write: the collection and each image.

        Entity records are written by :meth:`finish_entities`, once their images are.
        """
        ds = self._datastore_mod
        coll_key = client.key("Collection", self.collection)
        out = [_record(ds, coll_key, {"name": self.collection})]
        by_id = {e.id: e for e in entities}
        for item, receipt in stored:
            ent_key = client.key("Entity", item.entity_id, parent=coll_key)
            props = {k: plain(v) for k, v in item.metadata.items()}
            props.update({k: v for k, v in searchable(item, by_id.get(item.entity_id)).items()})
            props.update({k: receipt.fields.get(k) for k in STORAGE_FIELDS})
            props["entity_id"] = item.entity_id
            out.append(_record(ds, client.key("Image", item.name, parent=ent_key), props))
        return out

    def finish_entities(self, entities: Sequence[Entity]) -> None:
        """Write each Entity record with ``IMAGE_COUNT`` counted from its Image records.

        Properties: ``id``, ``PatientSex``, ``PatientAge``, ``IMAGE_COUNT``,
        ``UPLOAD_AGENT`` (the design document's) and ``PatientAgeYears``.

        Another batch of the same entity may be uploading at the same time (two studies
        of one patient in one ``sendit run``), so each written count is checked by
        counting again after the write, and written again until the two agree: the last
        write to an Entity is then followed by a count that saw every Image committed
        before it, whichever upload wrote last.

        Raises
        ------
        TransientError
            The count still moved after :data:`COUNT_ROUNDS` writes (retried by the caller).
        """
        client = self.datastore_client()
        pending = list(entities)
        written: dict[str, int] = {}
        for _ in range(COUNT_ROUNDS):
            counts = self.image_counts({e.id for e in pending})
            pending = [e for e in pending if written.get(e.id) != counts[e.id]]
            if not pending:
                return
            records = [self.entity_record(client, e, counts[e.id]) for e in pending]
            for chunk in chunk_commits(records, self._datastore_mod):
                self._commit(client, chunk)
            written.update({e.id: counts[e.id] for e in pending})
        raise TransientError(
            f"google target: IMAGE_COUNT of entity {pending[0].id} kept changing while it was "
            "counted (another upload of this entity is running)"
        )

    def entity_record(self, client: Any, entity: Entity, image_count: int) -> Any:
        """The Entity record of ``entity`` holding ``image_count`` as ``IMAGE_COUNT``."""
        props = {k: plain(v) for k, v in entity.metadata.items()}
        props["id"] = entity.id
        props["IMAGE_COUNT"] = int(image_count)
        props["PatientAgeYears"] = age_years(props.get("PatientAge"))
        key = client.key("Entity", entity.id, parent=client.key("Collection", self.collection))
        return _record(self._datastore_mod, key, props)

    def image_counts(self, entity_ids: set[str]) -> dict[str, int]:
        """Image records under each entity in Datastore (keys-only ancestor queries)."""
        counts = dict.fromkeys(entity_ids, 0)
        for eid, _ in self._image_names(entity_ids):
            counts[eid] += 1
        return counts

    def _commit(self, client: Any, chunk: list[tuple[Any, int]]) -> None:
        with self._errors("datastore", f"committing {len(chunk)} records"):
            batch = client.batch()
            batch.begin()
            for entity, _ in chunk:
                batch.put(entity)
            batch.commit(retry=self._no_retry, timeout=TIMEOUT)
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
                    self.bucket_name,
                    prefix=f"{self.collection}/{eid}/",
                    retry=None,
                    timeout=TIMEOUT,
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
        chunks = [key_list[i : i + LOOKUP_CHUNK] for i in range(0, len(key_list), LOOKUP_CHUNK)]

        def lookup(chunk: list[Any]) -> list[Any]:
            with self._errors("datastore", "reading image records"):
                return list(client.get_multi(chunk, retry=self._no_retry, timeout=TIMEOUT))

        found: dict[str, str] = {}
        with ThreadPoolExecutor(min(self.threads, max(1, len(chunks)))) as pool:
            for got in pool.map(lookup, chunks):
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


def _never(exc: BaseException) -> bool:
    """Retry predicate that never retries."""
    return False


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
