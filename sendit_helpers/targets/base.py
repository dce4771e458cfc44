"""The upload-target interface shared by Orthanc, Google and the local store.

Modelled on papermill's I/O handlers and ploomber's storage clients: one
small abstract class, one implementation per destination, chosen by settings
(:func:`sendit_helpers.targets.make_targets`).  Every target is *create-once*:
putting an item that is already there with the same bytes is a success
(``status="exists"``), putting different bytes under the same name is an
:class:`~sendit_helpers.core.errors.UploadError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.settings import typed

CHUNK = 1 << 20
DEFAULT_COLLECTION = "sendit"
FREE_TEXT_MARKERS = ("Description", "Comment", "Text", "Meaning", "Note", "Reason", "Remark")
"""Property names containing one of these are free text: never indexed in Datastore."""
MAX_INDEXED_BYTES = 1500
"""Datastore refuses indexed string properties longer than this (UTF-8 bytes)."""
RACY_NS = 2_000_000_000
"""A file changed less than this long (ns) before the gate check is hashed again on
:meth:`Item.load` rather than trusted by its stat signature: file timestamps are as
coarse as a clock tick (2 s on some filesystems), so only a change older than this is
sure to differ in change time from any write after the check."""


class TargetKind(StrEnum):
    """Where released images can go."""

    ORTHANC = "orthanc"
    """An Orthanc PACS, over REST (``POST /instances``) or DICOM (C-STORE)."""
    GOOGLE = "google"
    """Google Cloud Storage (images) and Datastore (metadata)."""
    LOCAL = "local"
    """A folder plus a SQLite index; the embedded default."""
    DICOMWEB = "dicomweb"
    """A DICOMweb server (STOW-RS, many instances per request): Orthanc's DICOMweb
    plugin, Google Cloud Healthcare, dcm4chee."""


class TransientError(UploadError):
    """A failure worth retrying: HTTP 429/5xx, a dropped connection, a busy SCP.

    Parameters
    ----------
    message : str
        What failed, naming the target and the file.
    retry_after : float or None
        Seconds the server asked us to wait (``Retry-After``), if any.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChangedError(UploadError):
    """A released file's bytes differ from what the leak gate scanned: it is not sent."""


class ConflictError(UploadError):
    """The destination already holds this object (same name / SOPInstanceUID) with other bytes.

    The same source object in two batches (or in two encodings, e.g. pydicom's
    ``ExplVR_BigEndNoMeta.dcm`` and ``ExplVR_LitEndNoMeta.dcm``) de-identifies to the
    same SOPInstanceUID and output name with different bytes.  Create-once targets keep
    the first copy; the later item is recorded as ``conflict`` in the manifest (reason:
    already stored with different content), is not counted as a failure and is not sent
    again on later runs, and the batch's other items still go.

    Parameters
    ----------
    message : str
        What conflicts, naming the target, the stored object and the released file.
    remote_id : str
        The destination's identifier of the copy it keeps (object path, instance ID).
    """

    def __init__(self, message: str, remote_id: str = "") -> None:
        super().__init__(message)
        self.remote_id = remote_id


@dataclass(frozen=True)
class Item:
    """One released image, ready to upload.

    Attributes
    ----------
    key : str
        Path relative to ``release/`` (``<entity_id>/<name>``); unique in a batch.
    name : str
        File name, e.g. ``IR661f33_5_224.dcm``.
    entity_id : str
        The de-identified entity (study) the image belongs to.
    path : Path
        Absolute path of the file under ``release/``.
    size : int
        File size in bytes.
    metadata : Mapping[str, Any]
        The image's row of ``cleaned.parquet`` (de-identified header fields).

    sha256 : str
        Hex SHA-256 of the file as the leak gate scanned it (from its record,
        :func:`sendit_helpers.deid.gaterecord.passed_index`); empty: computed on first use.
    signature : tuple of int, optional
        ``(size, mtime_ns, ctime_ns, inode)`` of the file as the gate recorded it, set
        (by :func:`sendit_helpers.stages.upload.load_release`) only for a file last
        changed at least :data:`RACY_NS` before the gate check that found it unchanged.

    Notes
    -----
    What is sent is what was gated: :meth:`load` reads the file once into memory and
    returns an item carrying those bytes; targets send only :meth:`read`'s bytes (or
    :meth:`sent_file`, a private copy of them for clients that need a path), never the
    file under ``release/`` again.  The bytes read are the gate's when the open file's
    ``fstat`` before and after the read both give :attr:`signature` (the check the gate
    itself makes, :func:`~sendit_helpers.deid.gaterecord.passed_index`: any write to a
    file, or replacing it, gives it a new change time, which no program can set back;
    and a write after the gate check falls in a later timestamp tick than a change at
    least :data:`RACY_NS` older).  Otherwise (no signature, a fresh file, or the
    signature differs, e.g. after a ``chmod``) they are hashed and compared with
    :attr:`sha256`.  Bytes that are not the gate's raise :class:`ChangedError`.

    :attr:`checksum` (SHA-256) is what the upload manifest records: the gate's, which
    the bytes sent were checked against.  :attr:`md5` is computed on first use and
    kept, only for targets that need it (Cloud Storage and the local store record it;
    Orthanc's verification compares a sample with Orthanc's own).
    """

    key: str
    name: str
    entity_id: str
    path: Path
    size: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""
    data: bytes | None = field(default=None, repr=False, compare=False)
    """The gated bytes, once :meth:`load` read them; ``None`` before."""
    signature: tuple[int, int, int, int] | None = None

    @property
    def checksum(self) -> str:
        """Hex SHA-256 of the file's bytes: the gate's, else read and hashed on first use."""
        if self.sha256:
            return self.sha256
        known: str | None = self.__dict__.get("_sha256")
        if known is None:
            known = hashlib.sha256(self.read(md5=False)).hexdigest()
            object.__setattr__(self, "_sha256", known)
        return known

    @property
    def md5(self) -> str:
        """Hex MD5 of the item's bytes (hashed on first use, then kept)."""
        known: str | None = self.__dict__.get("_md5")
        if known is None:
            known = (
                file_md5(self.path)
                if self.data is None
                else hashlib.md5(self.data, usedforsecurity=False).hexdigest()
            )
            object.__setattr__(self, "_md5", known)
        return known

    def load(self) -> Item:
        """This item carrying its file's bytes, read once and checked against the gate.

        Returns
        -------
        Item
            A copy whose :attr:`data` holds the bytes to send (``self`` when already loaded).

        Raises
        ------
        ChangedError
            The bytes are not the ones the leak gate recorded (see the Notes of
            :class:`Item`), or the item has no gate record at all: the file changed
            after the gate passed.
        UploadError
            The file cannot be read.
        """
        if self.data is not None:
            return self
        what = f"release/{self.key}"
        try:
            with self.path.open("rb", buffering=0) as fh:
                before = os.fstat(fh.fileno())
                data = fh.readall()
                after = os.fstat(fh.fileno())
        except OSError as exc:
            raise UploadError(
                f"{what} cannot be read ({type(exc).__name__}); re-run deidentify"
            ) from exc
        unchanged = (
            self.signature is not None
            and len(data) == self.signature[0]
            and _stat_signature(before) == self.signature == _stat_signature(after)
        )
        if not self.sha256 or (
            not unchanged and hashlib.sha256(data).hexdigest() != self.sha256
        ):
            raise ChangedError(
                f"{what} changed after the leak gate passed; re-run deidentify (or review) so "
                "the gate scans it again (not sent: its SHA-256 is not the one the gate recorded)"
            )
        return replace(self, size=len(data), data=data)

    def read(self, md5: bool = True) -> bytes:
        """The bytes to send: :attr:`data` when loaded, else the file's (unchecked).

        With ``md5``, their MD5 becomes :attr:`md5` unless already known.
        """
        data = self.path.read_bytes() if self.data is None else self.data
        if md5 and "_md5" not in self.__dict__:
            object.__setattr__(self, "_md5", hashlib.md5(data, usedforsecurity=False).hexdigest())
        return data

    @contextmanager
    def sent_file(self) -> Iterator[Path]:
        """A private file holding exactly :meth:`read`'s bytes, for clients that need a path.

        An anonymous in-memory file (``memfd``) where the system has them, else an
        owner-only temporary file; gone when the ``with`` block ends.  The file under
        ``release/`` is never handed to a client: it could change after the check.
        """
        data = self.read(md5=False)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("sendit-item", getattr(os, "MFD_CLOEXEC", 0))
            try:
                _write_all(fd, data)
                yield Path(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            return
        fd, name = tempfile.mkstemp(suffix=".dcm")
        try:
            _write_all(fd, data)
            os.close(fd)
            fd = -1
            yield Path(name)
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(name)


def _stat_signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)``, as the leak gate records a file."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class Entity:
    """One entity (study) of ``entities.parquet`` with its rough, searchable metadata."""

    id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """What a target answered for one stored item.

    Attributes
    ----------
    key, name, entity_id : str
        Copied from the :class:`Item`.
    target : TargetKind
        The target that stored the item.
    status : str
        ``"stored"`` (new) or ``"exists"`` (was already there, same bytes).
    checksum : str
        Hex MD5 of the bytes sent.
    remote_id : str
        Orthanc instance ID / SOPInstanceUID, GCS generation, or local relative path.
    url : str
        Link to the stored object (``gs://``, ``file://`` or Orthanc REST URL).
    fields : Mapping[str, Any]
        Storage fields: ``md5``, ``crc32c``, ``size``, ``generation``, ``content_type``.
    """

    key: str
    name: str
    entity_id: str
    target: TargetKind
    status: str
    checksum: str
    remote_id: str
    url: str
    fields: Mapping[str, Any] = field(default_factory=dict)


T = TypeVar("T")


def request_chunks(items: Sequence[T], most: int, threads: int) -> list[Sequence[T]]:
    """Split ``items`` into requests of at most ``most``, a whole number of rounds of ``threads``.

    ``threads`` requests go at once, so the requests come in rounds (waves) of
    ``threads``.  Cutting ``most`` at a time leaves threads idle when there are fewer
    requests than threads (500 items in requests of 50 keep 10 of 16 threads busy) and
    in the last round.  Here the number of rounds is the one ``most`` at a time needs,
    ``ceil(ceil(n / most) / threads)``, and every round is full: ``rounds * threads``
    requests (at most one per item) of sizes differing by at most one (500 items, at
    most 50, 16 threads: 16 requests of 31 or 32).  No request holds more than
    ``most`` and no thread makes more round trips than with ``most`` at a time, so a
    high-latency link pays no more latency than before; a large batch still goes
    ``most`` per request.

    Parameters
    ----------
    items : Sequence
        What to send, in order; each request is a consecutive slice.
    most : int
        Items per request at most (values below 1 count as 1).
    threads : int
        Requests sent at once (values below 1 count as 1).

    Returns
    -------
    list[Sequence]
        The requests' items, in order; empty when ``items`` is.
    """
    n = len(items)
    if not n:
        return []
    most, threads = max(1, most), max(1, threads)
    rounds = math.ceil(math.ceil(n / most) / threads)
    count = min(n, rounds * threads)
    size, bigger = divmod(n, count)
    chunks: list[Sequence[T]] = []
    start = 0
    for k in range(count):
        end = start + size + (1 if k < bigger else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


class Target(ABC):
    """One upload destination.

    Implementations must make :meth:`put` safe to call from several threads at once;
    every other method is called from one thread at a time (with :attr:`entity_batch`
    set, :meth:`put_entities` runs in a background thread while :meth:`put` calls go on).
    """

    kind: TargetKind
    put_batch: int = 0
    """When > 0, items are sent at most ``put_batch`` at a time with :meth:`put_many` (one
    request each, sized by :func:`request_chunks`) instead of one by one with :meth:`put`."""
    entity_batch: int = 0
    """When > 0, :meth:`put_entities` is called for every ``entity_batch`` stored items,
    from one background thread while :meth:`put` calls go on (0: once, after every put)."""

    @property
    def label(self) -> str:
        """Name in messages and the manifest's ``target`` column: the kind (``"orthanc"``)."""
        return str(self.kind)

    @property
    @abstractmethod
    def destination_id(self) -> str:
        """Where this target stores, as the manifest's ``destination`` column names it.

        The kind plus what tells one destination of that kind from another: the REST
        URL, or host:port with the called and calling AE titles; project, bucket and
        collection; the store folder and collection.  Never credentials (a URL's user
        and password are left out).  The upload manifest is keyed by it, so a new
        destination receives everything.  Examples: ``orthanc http://127.0.0.1:8042``,
        ``orthanc-dicom ORTHANC@127.0.0.1:4242 from SENDIT``,
        ``google gs://bucket/collection project=p``, ``local /data/storage/sendit``.
        """

    @abstractmethod
    def present(self, items: Sequence[Item], remote_ids: Mapping[str, str]) -> set[str]:
        """Keys of ``items`` the destination holds now, found cheaply (no upload).

        Called on a rerun for the items the manifest records as verified here, before
        anything is sent: those not found are sent again.  One listing per target (or
        per entity), never a request per item: Orthanc's instance list, a Storage
        prefix listing, the local index, a C-FIND.  Presence only: content was checked
        when the item was verified.

        Parameters
        ----------
        items : Sequence[Item]
            The items to look for (not loaded: use their metadata or headers).
        remote_ids : Mapping[str, str]
            Item key -> the ``remote_id`` the manifest recorded when it was verified.
        """

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`UploadError` (with the fix) unless the target is reachable and writable."""

    def prepare(self, items: Sequence[Item]) -> None:  # noqa: B027 - optional hook
        """Look at the items about to be put (e.g. to negotiate DICOM contexts)."""

    @abstractmethod
    def put(self, item: Item) -> Receipt:
        """Store one item, create-once; raise :class:`TransientError` for retryable failures.

        ``item`` is loaded (:meth:`Item.load`): send exactly :meth:`Item.read`'s bytes
        (or :meth:`Item.sent_file`), never ``item.path``, which may have changed since.
        """

    def put_many(self, items: Sequence[Item]) -> list[Receipt | UploadError]:
        """Store several items in one request, create-once (used when :attr:`put_batch` > 0).

        Raise :class:`TransientError` when the whole request is worth retrying (it is sent
        again as it is: the destination must keep one copy of what it already stored).

        Returns
        -------
        list
            For each item, in order, its :class:`Receipt` or the :class:`UploadError`
            that kept it out.
        """
        return [self.put(item) for item in items]

    def put_entities(  # noqa: B027 - optional hook
        self, entities: Sequence[Entity], stored: Sequence[tuple[Item, Receipt]]
    ) -> None:
        """Write entity and per-image metadata records for stored items (default: nothing).

        Called once per :attr:`entity_batch` stored items (or once for all), so it must
        upsert: writing a record twice leaves one record.

        Parameters
        ----------
        entities : Sequence[Entity]
            The entities the stored items belong to.
        stored : Sequence[tuple[Item, Receipt]]
            Each stored item with the receipt :meth:`put` returned for it.
        """

    def finish_entities(self, entities: Sequence[Entity]) -> None:  # noqa: B027 - optional hook
        """Write what of the entity records depends on the whole destination (default: nothing).

        Called once per run, after every :meth:`put_entities`, with the entities whose
        items were stored in this run: e.g. ``IMAGE_COUNT``, counted from the Image
        records under each entity in the destination, so that it is right after any
        number of batches of that entity and any number of reruns.
        """

    @abstractmethod
    def verify(self, receipts: Sequence[Receipt]) -> set[str]:
        """Return the keys of the receipts whose item is present remotely with the same bytes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and clients."""


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment (what may be named in a manifest).

    >>> public_url("http://user:secret@127.0.0.1:8042/orthanc/?token=x")
    'http://127.0.0.1:8042/orthanc'
    """
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path.rstrip("/"), "", ""))


def collection_name(settings: Mapping[str, Any]) -> str:
    """The collection (top-level key) images are stored under."""
    return typed(settings).targets.google.collection or DEFAULT_COLLECTION


def object_name(collection: str, item: Item) -> str:
    """Object path of an item: ``<collection>/<entity_id>/<name>``."""
    return f"{collection}/{item.entity_id}/{item.name}"


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def age_years(value: Any) -> int | None:
    """Whole years of a DICOM age string (``"056Y"`` -> 56, ``"006M"`` -> 0), or ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float):
        return int(value)
    match = _AGE.match(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    divisor = {"Y": 1, "M": 12, "W": 52, "D": 365}[unit]
    return number // divisor


def is_free_text(name: str) -> bool:
    """Whether a property holds free text (descriptions, comments, code meanings)."""
    return any(marker in name for marker in FREE_TEXT_MARKERS)


def plain(value: Any) -> Any:
    """Turn numpy / pandas scalars into plain Python values; NaN and NA become ``None``."""
    if value is None:
        return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        value = item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value.__class__.__name__ in ("NAType", "NaTType"):
        return None
    return value


def searchable(item: Item, entity: Entity | None) -> dict[str, Any]:
    """The few indexed fields of an image: sex, age in years, modality, descriptions."""
    meta = dict(item.metadata)
    ent = dict(entity.metadata) if entity else {}
    sex = meta.get("PatientSex") or ent.get("PatientSex")
    age = meta.get("PatientAge") or ent.get("PatientAge")
    return {
        "PatientSex": sex,
        "PatientAge": age,
        "PatientAgeYears": age_years(age),
        "Modality": meta.get("Modality"),
        "SeriesDescription": meta.get("SeriesDescription"),
        "StudyDescription": meta.get("StudyDescription"),
    }


def missing_client(target: str, module: str, extra: str) -> UploadError:
    """The error raised when an optional client library is not installed."""
    return UploadError(
        f"{target} target needs the Python package providing `{module}`, which is not "
        f"installed; run `pip install 'sendit-notebooks[{extra}]'`"
    )
