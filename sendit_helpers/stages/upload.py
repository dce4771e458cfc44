"""The upload stage: send ``release/`` to the configured targets, exactly once.

:func:`upload_batch` refuses to read anything unless the leak gate passed on
``release/`` as it is now, and what is sent is what was gated: each file is read
once into memory, its SHA-256 compared with the one the gate recorded, and those
very bytes are sent (:meth:`Item.load`); a file changed since is refused with a
clear error and never marked verified, the others still go.

The batch's append-only manifest (``phi/upload/manifest.csv``) names each
destination (:attr:`Target.destination_id`: URL, host:port and AE titles,
project/bucket/collection, store folder; never credentials).  Each destination
gets the items not yet recorded as uploaded *and verified* there, so a new
destination receives everything and a killed run resumes where it stopped.
Before sending, a rerun confirms with one listing per target
(:meth:`Target.present`) that what the manifest calls verified is still there,
and sends again what is missing.  Retryable failures (HTTP 429/5xx, dropped
connections) are retried with exponential backoff and jitter, at least the
``Retry-After`` a 429 or 503 answer asks (:func:`with_retries`), at most
``UPLOAD_RETRIES`` times per item; once an item has given up, the others stop
retrying at once.

Targets go one after the other; a target whose ``check()`` fails (unreachable,
refused credentials) gets nothing, the others still go, and one
:class:`~sendit_helpers.core.errors.UploadError` at the end says, per target, how
many items did not go and why.  Files are hashed once, by the thread sending
them; metadata records of a target with ``entity_batch`` (Google) are written
in the background while its uploads go on.
"""

from __future__ import annotations

import csv
import math
import os
import stat
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from sendit_helpers.core import retry
from sendit_helpers.core.errors import SenditError, UploadError, UploadWarning
from sendit_helpers.core.layout import ENTITIES_FILE, BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import gaterecord
from sendit_helpers.targets import (
    ConflictError,
    Entity,
    Item,
    Receipt,
    Target,
    TransientError,
    make_targets,
)
from sendit_helpers.targets.base import RACY_NS, plain, request_chunks

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["item", "target", "destination", "status", "checksum", "remote_id", "time"]
VERIFIED = "verified"
UNVERIFIED = "unverified"
FAILED = "failed"
MISSING = "missing"
"""Recorded on a rerun for a verified item the destination no longer holds (sent again)."""
CONFLICT = "conflict"
"""Not stored: the destination already stores this object (same output name /
SOPInstanceUID) with different content, e.g. the same source object from another batch
or in another encoding.  The stored copy is kept, the item is not a failure, and later
runs do not send it again (``remote_id`` names the stored copy)."""
BACKOFF_BASE = 0.5
"""Seconds before the first retry; doubles with each further attempt."""
BACKOFF_CAP = 30.0
"""Longest wait between attempts, seconds (a longer ``Retry-After`` included)."""
ROW_KEYS = ("name", "entity_id", "path")

T = TypeVar("T")
ItemHook = Callable[[Receipt], None]
Row = tuple[str, str, str, str, str, str]
"""``(item, target, destination, status, checksum, remote_id)``."""


# -- manifest ------------------------------------------------------------------------------
class Manifest:
    """The append-only upload manifest of one batch (CSV, one row per event).

    Parameters
    ----------
    path : Path
        ``phi/upload/manifest.csv``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        self._writer: Any = None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def append(
        self, item: str, target: str, destination: str, status: str, checksum: str, remote_id: str
    ) -> None:
        """Append one row and flush it to the OS, so a killed run keeps it."""
        self.append_many([(item, target, destination, status, checksum, remote_id)])

    def append_many(self, rows: Sequence[Row]) -> None:
        """Append ``(item, target, destination, status, checksum, remote_id)`` rows, one flush.

        Rows are flushed to the OS (not fsynced): a killed process keeps them, and a row
        lost with the machine only makes the next run send and verify that item again.
        A manifest written before destinations were recorded is first rewritten with an
        empty ``destination``: its items then count as verified nowhere and are sent
        again (create-once targets answer ``exists``).
        """
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            if self._fh is None:
                new = not self.path.exists() or self.path.stat().st_size == 0
                if not new:
                    self._upgrade()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._fh = os.fdopen(fd, "a", newline="")
                self._writer = csv.writer(self._fh)
                if new:
                    self._writer.writerow(MANIFEST_COLUMNS)
            self._writer.writerows([*row, now] for row in rows)
            self._fh.flush()

    def _upgrade(self) -> None:
        """Rewrite a manifest whose header is not :data:`MANIFEST_COLUMNS` with these columns."""
        with self.path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        if header == MANIFEST_COLUMNS:
            return
        old = pd.read_csv(self.path, dtype=str, keep_default_na=False, on_bad_lines="skip")
        old = old.reindex(columns=MANIFEST_COLUMNS, fill_value="")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as fh:
            old.to_csv(fh, index=False)
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Close the file (the next :meth:`append` opens it again)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh, self._writer = None, None

    def read(self) -> pd.DataFrame:
        """Every row so far (an empty table with the columns when there is none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in MANIFEST_COLUMNS})
        table = pd.read_csv(self.path, dtype=str, keep_default_na=False, on_bad_lines="skip")
        return table.reindex(columns=MANIFEST_COLUMNS, fill_value="")

    def verified(
        self, destination: str, status: str = VERIFIED
    ) -> dict[str, tuple[str, str]]:
        """``item -> (checksum, remote_id)`` of items whose latest row for ``destination``
        (a :attr:`Target.destination_id`) is ``status`` (``verified``, or ``conflict``)."""
        latest = _latest(self.read())
        done = latest[(latest["destination"] == destination) & (latest["status"] == status)]
        return {
            item: (checksum, remote)
            for item, checksum, remote in zip(
                done["item"], done["checksum"], done["remote_id"], strict=True
            )
        }


def _latest(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.drop_duplicates(["item", "target", "destination"], keep="last")


def summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Count items per destination and latest status.

    Parameters
    ----------
    manifest : pandas.DataFrame
        The table :func:`upload_batch` returns (or :meth:`Manifest.read`).

    Returns
    -------
    pandas.DataFrame
        Columns ``target``, ``destination``, ``status``, ``count``.
    """
    keys = ["target", "destination", "status"]
    if manifest.empty or manifest[["item", *keys]].isna().any(axis=None):
        counts = _latest(manifest).groupby(keys).size()
        return counts.rename("count").reset_index()
    # What the group-by above gives, counted in Python: a batch's manifest is small and
    # pandas' group-by machinery costs more than the count (the latest row per item and
    # destination, as drop_duplicates(keep="last") keeps it; groups sorted by their keys).
    latest: dict[tuple[Any, Any, Any], tuple[Any, Any, Any]] = {}
    for item, target, destination, status in zip(
        *(manifest[k] for k in ["item", *keys]), strict=True
    ):
        latest[(item, target, destination)] = (target, destination, status)
    found = Counter(latest.values())
    groups = sorted(found)
    columns: dict[str, Any] = {k: [g[i] for g in groups] for i, k in enumerate(keys)}
    columns["count"] = pd.Series([found[g] for g in groups], dtype="int64")
    return pd.DataFrame(columns)


# -- release -------------------------------------------------------------------------------
def load_release(
    layout: BatchLayout,
    settings: Mapping[str, Any],
    scanned: Mapping[str, gaterecord.FileEntry] | None = None,
    checked_ns: int | None = None,
) -> tuple[list[Item], list[Entity]]:
    """Read ``release/cleaned.parquet`` and ``entities.parquet`` into items and entities.

    ``scanned`` is the leak gate's index of ``release/`` (:func:`gaterecord.passed_index`):
    each item gets the SHA-256 the gate computed, so the upload does not hash it again.
    ``checked_ns`` is ``time.time_ns()`` taken just before that gate check: an item
    whose file was last changed at least :data:`~sendit_helpers.targets.base.RACY_NS`
    earlier also gets the gate's stat signature, so that :meth:`Item.load` can tell
    its bytes are the gate's without hashing them (see :class:`Item`).

    Raises
    ------
    UploadError
        A table is missing, or it names a file that is not in ``release/``.
    """
    release = layout.release
    root = release.resolve()
    folders: dict[str, tuple[str, bool]] = {}
    columns = _columns(layout.cleaned_table)
    names = [n for n in columns if n not in ROW_KEYS]
    metas: list[dict[str, Any]] = (
        [dict(zip(names, values, strict=True)) for values in
         zip(*(columns[n] for n in names), strict=True)]  # fmt: skip
        if names
        else [{} for _ in columns.get("path", [])]
    )
    items = [
        _item(release, str(rel), str(eid), meta, root, folders)
        for rel, eid, meta in zip(columns["path"], columns["entity_id"], metas, strict=True)
    ]
    if scanned:
        trusted = -1 if checked_ns is None else checked_ns - RACY_NS
        items = [_gated(i, scanned[i.key], trusted) if i.key in scanned else i for i in items]
    listed = {str(i.path) for i in items}
    extra = [p for p in release.rglob("*.dcm") if str(p) not in listed]
    if extra:
        raise UploadError(
            f"{len(extra)} file(s) in {release} (e.g. {extra[0].relative_to(release)}) are not "
            "listed in cleaned.parquet; re-run de-identification so the tables match release/"
        )
    return items, _entities(release, items, settings)


def _gated(item: Item, entry: gaterecord.FileEntry, trusted: int) -> Item:
    """``item`` with the gate's SHA-256, and its stat signature if changed before ``trusted``."""
    sha, size, mtime, ctime, inode = entry
    signature = (size, mtime, ctime, inode) if ctime < trusted else None
    return replace(item, sha256=sha, signature=signature)


def _columns(path: Path) -> dict[str, list[Any]]:
    """The columns of a parquet table as lists of plain Python values (pandas' index left out).

    Read with pyarrow directly, a column at a time: ``pandas.DataFrame.to_dict`` plus
    :func:`plain` on each value cost about 0.2 ms per image (of the ~2 ms of client CPU
    an image cost on its way to a local Orthanc).  Floating-point NaN becomes ``None``
    (what :func:`plain` does); pyarrow gives no other value :func:`plain` would change.
    """
    if not path.is_file():
        raise UploadError(f"{path} is missing; run `sendit deidentify` on this batch first")
    table = pq.read_table(path)
    index = (table.schema.pandas_metadata or {}).get("index_columns", [])
    table = table.drop_columns([c for c in index if isinstance(c, str)])
    out: dict[str, list[Any]] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        values = column.to_pylist()
        if pa.types.is_floating(column.type):
            values = [None if v is not None and math.isnan(v) else v for v in values]
        out[str(name)] = values
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    """The rows of a parquet table as dicts of plain Python values (see :func:`_columns`)."""
    columns = _columns(path)
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in
            zip(*columns.values(), strict=True)]  # fmt: skip


def _item(
    release: Path,
    rel: str,
    entity_id: str,
    meta: dict[str, Any],
    root: Path,
    folders: dict[str, tuple[str, bool]],
) -> Item:
    """The :class:`Item` of one row of ``cleaned.parquet``.

    ``root`` is ``release.resolve()``, computed once; ``folders`` caches the resolved
    folder of each relative parent and whether it lies in ``release/``, so only a file
    that is itself a symlink is resolved.
    """
    path, info = _release_file(release, rel, root, folders)
    if info is None or not stat.S_ISREG(info.st_mode):
        raise UploadError(
            f"cleaned.parquet names {rel}, which is not a file under {release}; "
            "re-run de-identification so the tables match release/"
        )
    return Item(
        key=Path(rel).as_posix(),
        name=os.path.basename(path),
        entity_id=entity_id,
        path=Path(path),
        size=info.st_size,
        metadata=meta,
    )


def _release_file(
    release: Path, rel: str, root: Path, folders: dict[str, tuple[str, bool]]
) -> tuple[str, os.stat_result | None]:
    """The real path of ``release/rel`` and its ``lstat`` (``None`` if absent or outside)."""
    parent, name = os.path.split(rel)
    if parent not in folders:
        real = (release / parent).resolve()
        folders[parent] = (str(real), real.is_relative_to(root))
    folder, inside = folders[parent]
    path = os.path.join(folder, name)
    if name in ("", ".", "..") or not inside:
        return path, None
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            real = Path(path).resolve()
            path, inside = str(real), real.is_relative_to(root)
            info = os.stat(path)
    except OSError:
        return path, None
    return path, (info if inside else None)


def _entities(release: Path, items: Sequence[Item], settings: Mapping[str, Any]) -> list[Entity]:
    agent = typed(settings).upload.agent
    counts = Counter(i.entity_id for i in items)
    rows = {str(r["id"]): r for r in _records(release / ENTITIES_FILE)}
    out = []
    for eid in sorted(counts):
        meta = {str(k): plain(v) for k, v in rows.get(eid, {}).items() if k != "id"}
        meta.setdefault("IMAGE_COUNT", counts[eid])
        meta["UPLOAD_AGENT"] = meta.get("UPLOAD_AGENT") or agent
        out.append(Entity(id=eid, metadata=meta))
    return out


# -- retries -------------------------------------------------------------------------------
def with_retries(fn: Callable[[], T], retries: int, stop: threading.Event | None = None) -> T:
    """Call ``fn``; on :class:`TransientError` retry up to ``retries`` times with backoff.

    Exponential backoff with jitter from :data:`BACKOFF_BASE` up to :data:`BACKOFF_CAP`,
    at least the error's ``retry_after`` (the target's ``Retry-After``), see
    :func:`~sendit_helpers.core.retry.call`.  A set ``stop`` event ends the retries at once,
    a wait in progress included (another item already gave up).
    """
    backoff = retry.Backoff(retries, BACKOFF_BASE, BACKOFF_CAP)
    return retry.call(fn, backoff, (TransientError,), stop)


# -- one target ----------------------------------------------------------------------------
@dataclass
class _Run:
    target: Target
    manifest: Manifest
    retries: int
    threads: int
    progress: bool
    on_item: ItemHook | None
    errors: list[UploadError] = field(default_factory=list)
    failed: int = 0
    went: int = 0
    conflicts: list[ConflictError] = field(default_factory=list)
    """Items not stored because the destination holds other bytes under their name."""
    unusable: bool = False
    """The target's check() or prepare() failed: nothing was sent to it."""

    @property
    def where(self) -> tuple[str, str]:
        """``(target, destination)`` as the manifest's columns name them."""
        return self.target.label, self.target.destination_id


Stored = list[tuple[Item, Receipt]]


def _entities_of(entities: Sequence[Entity], stored: Stored) -> list[Entity]:
    wanted = {i.entity_id for i, _ in stored}
    return [e for e in entities if e.id in wanted]


def _put_all(run: _Run, todo: Sequence[Item], entities: Sequence[Entity]) -> tuple[Stored, Stored]:
    """Put every item with a thread pool; record each outcome as it completes.

    When the target sets :attr:`Target.entity_batch`, metadata records of every
    ``entity_batch`` stored items are written by one background thread while the
    uploads go on.

    Returns
    -------
    tuple[list, list]
        Every stored ``(item, receipt)``, and those whose records are not written yet.
    """
    stop, refused = threading.Event(), threading.Event()
    label, target = run.target.label, run.target
    batch = max(0, int(target.entity_batch))

    def work(item: Item) -> Receipt:
        if stop.is_set():
            raise UploadError(f"{label} target: skipped release/{item.key} after earlier failures")
        loaded = item.load()  # read once, checked against the gate: these bytes are sent
        try:
            return with_retries(lambda: target.put(loaded), run.retries, stop)
        except TransientError:
            stop.set()
            raise

    def write(chunk: Stored) -> None:
        if refused.is_set():
            raise UploadError(f"{label} target: metadata records skipped after earlier failures")
        ents = _entities_of(entities, chunk)
        try:
            with_retries(lambda: target.put_entities(ents, chunk), run.retries, stop)
        except UploadError:
            refused.set()
            raise

    def work_many(chunk: Sequence[Item]) -> list[Receipt | UploadError]:
        if stop.is_set():
            raise UploadError(
                f"{label} target: skipped {len(chunk)} files from release/{chunk[0].key} "
                "after earlier failures"
            )
        loaded = [item.load() for item in chunk]
        try:
            return with_retries(lambda: target.put_many(loaded), run.retries, stop)
        except TransientError:
            stop.set()
            raise

    def outcomes() -> Iterator[tuple[Item, Receipt | UploadError]]:
        size = max(0, int(target.put_batch))
        if not size:
            futures = {pool.submit(work, i): i for i in todo}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except UploadError as exc:
                    yield futures[fut], exc
            return
        chunks = request_chunks(todo, size, run.threads)
        many = {pool.submit(work_many, chunk): chunk for chunk in chunks}
        for done in as_completed(many):
            chunk = many[done]
            results: Sequence[Receipt | UploadError]
            try:
                results = done.result()
            except UploadError as exc:
                results = [exc] * len(chunk)
            yield from zip(chunk, results, strict=True)

    stored: Stored = []
    pending: Stored = []
    writes: list[tuple[Future[None], Stored]] = []
    bar = tqdm(total=len(todo), desc=f"upload to {label}", unit="img", disable=not run.progress)
    with bar, ThreadPoolExecutor(1) as side, ThreadPoolExecutor(run.threads) as pool:
        for item, outcome in outcomes():
            bar.update()
            try:
                if isinstance(outcome, UploadError):
                    raise outcome
                receipt = outcome
            except ConflictError as exc:
                run.conflicts.append(exc)
                run.manifest.append(item.key, *run.where, CONFLICT, item.checksum, exc.remote_id)
                continue
            except UploadError as exc:
                _fail(run, [item], exc)
                continue
            run.manifest.append(
                item.key, *run.where, receipt.status, item.checksum, receipt.remote_id
            )
            stored.append((item, receipt))
            pending.append((item, receipt))
            if batch and len(pending) >= batch:
                writes.append((side.submit(write, pending), pending))
                pending = []
            if run.on_item is not None:
                run.on_item(receipt)
    for written, chunk in writes:  # both pools are shut down: every write has finished
        error = written.exception()
        if isinstance(error, UploadError):
            _fail(run, [i for i, _ in chunk], error)
            failed = {i.key for i, _ in chunk}
            stored = [(i, r) for i, r in stored if i.key not in failed]
        elif error is not None:
            raise error
    return stored, pending


def _fail(run: _Run, items: Sequence[Item], exc: UploadError) -> None:
    run.errors.append(exc)
    run.failed += len(items)
    run.manifest.append_many([(item.key, *run.where, FAILED, item.checksum, "") for item in items])


def _finish(run: _Run, stored: Stored, unwritten: Stored, entities: Sequence[Entity]) -> None:
    """Write the remaining metadata records, verify, record ``verified`` / ``unverified``."""
    label, target = run.target.label, run.target
    ents = _entities_of(entities, unwritten)
    touched = _entities_of(entities, stored)
    try:
        if unwritten:
            with_retries(lambda: target.put_entities(ents, unwritten), run.retries)
        with_retries(lambda: target.finish_entities(touched), run.retries)
        receipts = [r for _, r in stored]
        ok = with_retries(lambda: target.verify(receipts), run.retries)
    except UploadError as exc:
        _fail(run, [i for i, _ in stored], exc)
        return
    bad = [i for i, _ in stored if i.key not in ok]
    run.manifest.append_many(
        [
            (item.key, *run.where, VERIFIED if item.key in ok else UNVERIFIED, item.checksum, rid)
            for item, rid in ((i, r.remote_id) for i, r in stored)
        ]
    )
    if bad:
        run.failed += len(bad)
        run.errors.append(
            UploadError(
                f"{label} target: {len(bad)} item(s) (e.g. release/{bad[0].key}) were not found "
                "with matching checksums after upload"
            )
        )


def _upload_to(run: _Run, items: Sequence[Item], entities: Sequence[Entity]) -> None:
    """Upload the items not yet verified on one destination; record failures, don't raise.

    Items the manifest records as verified on this destination (same checksum) are
    looked for first, with one cheap listing (:meth:`Target.present`); those no longer
    there are recorded as ``missing`` and sent again.  A target that fails
    :meth:`Target.check`, the listing or :meth:`Target.prepare` gets nothing; its pending
    items are recorded as ``failed`` so the other targets still go.
    """
    target = run.target
    done = run.manifest.verified(target.destination_id)
    kept = run.manifest.verified(target.destination_id, CONFLICT)
    items = [i for i in items if kept.get(i.key, ("", ""))[0] != i.checksum]
    claimed = [i for i in items if i.key in done and done[i.key][0] == i.checksum]
    todo = [i for i in items if i.key not in done or done[i.key][0] != i.checksum]
    if not todo and not claimed:
        return
    unconfirmed = claimed
    try:
        target.check()
        if claimed:
            remote = {i.key: done[i.key][1] for i in claimed}
            found = with_retries(lambda: target.present(claimed, remote), run.retries)
            gone = [i for i in claimed if i.key not in found]
            run.manifest.append_many(
                [(i.key, *run.where, MISSING, i.checksum, remote[i.key]) for i in gone]
            )
            todo, unconfirmed = [*todo, *gone], []
        if not todo:
            return
        target.prepare(todo)
    except UploadError as exc:
        run.unusable = True
        _fail(run, [*todo, *unconfirmed], exc)
        return
    stored, unwritten = _put_all(run, todo, entities)
    if stored:
        _finish(run, stored, unwritten, entities)
    run.went = len(todo) - run.failed - len(run.conflicts)


# -- entry point ---------------------------------------------------------------------------
def upload_batch(
    layout: BatchLayout,
    settings: Mapping[str, Any],
    *,
    progress: bool = True,
    on_item: ItemHook | None = None,
) -> pd.DataFrame:
    """Upload a batch's ``release/`` to every configured target, exactly once.

    Parameters
    ----------
    layout : BatchLayout
        The batch; only ``release/`` is read, the manifest is written to ``phi/upload/``.
    settings : Mapping[str, Any]
        The upload settings (``SEND_TO_ORTHANC``, ``SEND_TO_GOOGLE``, ``UPLOAD_THREADS``,
        ``UPLOAD_RETRIES``, ...).
    progress : bool
        Show a tqdm progress bar per target.
    on_item : callable, optional
        Called with each :class:`Receipt` as soon as its item is stored (for monitoring).

    Returns
    -------
    pandas.DataFrame
        The whole manifest: ``item``, ``target`` (kind), ``destination``
        (:attr:`Target.destination_id`), ``status``, ``checksum`` (SHA-256 of the bytes
        sent, which is the leak gate's), ``remote_id``, ``time``.

    Raises
    ------
    GateError
        The leak gate has not passed on ``release/`` as it is now.
    UploadError
        Some items did not go: a target is unreachable or misconfigured (its ``check()``
        failed: the other targets still get their items), or items failed on the way.
        The message says, per target, how many did not go and the first cause.
    """
    checked = time.time_ns()
    scanned = gaterecord.passed_index(layout)
    items, entities = load_release(layout, settings, scanned, checked)
    manifest = Manifest(layout.upload_dir / MANIFEST_NAME)
    targets = make_targets(settings, layout.work)
    upload = typed(settings).upload
    retries = max(0, upload.retries)
    threads = max(1, upload.threads)
    runs = [_Run(t, manifest, retries, threads, progress, on_item) for t in targets]
    try:
        for run in runs:
            _upload_to(run, items, entities)
    finally:
        manifest.close()
        for target in targets:
            target.close()
    for run in runs:
        if run.conflicts:
            warnings.warn(
                f"{len(run.conflicts)} item(s) recorded as {CONFLICT!r} in {manifest.path} "
                f"(first: {run.conflicts[0]})",
                UploadWarning,
                stacklevel=2,
            )
    _raise_failures(runs, len(items), manifest.path)
    return manifest.read()


def still_uploaded(layout: BatchLayout, settings: Mapping[str, Any]) -> bool:
    """Whether every configured destination still holds every item of ``release/``.

    ``sendit run`` asks this before skipping an upload stage whose stamp is current:
    each destination must have every item recorded as verified (same checksum) in the
    manifest, and one listing per target (:meth:`Target.present`) must still find them.
    A destination emptied or restored from an old backup since, or one that cannot be
    reached, makes the answer ``False``, so the stage runs again and sends what is
    missing (or reports why it cannot).

    Parameters
    ----------
    layout : BatchLayout
    settings : Mapping[str, Any]
        The upload settings, as for :func:`upload_batch`.
    """
    targets: list[Target] = []
    try:  # any error (gate, tables, settings, a target) is the stage's to report: run it
        items, _ = load_release(layout, settings, gaterecord.passed_index(layout))
        manifest = Manifest(layout.upload_dir / MANIFEST_NAME)
        targets = make_targets(settings, layout.work)
        for target in targets:
            done = manifest.verified(target.destination_id)
            kept = manifest.verified(target.destination_id, CONFLICT)
            mine = [i for i in items if kept.get(i.key, ("", ""))[0] != i.checksum]
            if any(done.get(i.key, ("", ""))[0] != i.checksum for i in mine):
                return False
            remote = {i.key: done[i.key][1] for i in mine}
            if mine and target.present(mine, remote) != set(remote):
                return False
    except SenditError:
        return False
    finally:
        for target in targets:
            target.close()
    return True


def _raise_failures(runs: Sequence[_Run], total: int, path: Path) -> None:
    """Raise one :class:`UploadError` naming, per target, what did not go and why."""
    bad = [r for r in runs if r.failed]
    if not bad:
        return
    parts = []
    for run in bad:
        cause = "target unusable" if run.unusable else "first error"
        first = run.errors[0] if run.errors else "unknown"
        parts.append(
            f"{run.failed} of {total} item(s) to {run.target.label} did not go ({cause}: {first})"
        )
    fine = [r for r in runs if not r.failed]
    went = "".join(f" All items are on {r.target.label} ({r.went} sent in this run)." for r in fine)
    raise UploadError(
        f"upload incomplete: {'; '.join(parts)}.{went} {path} records what went; fix the cause "
        "and run the upload again: verified items are skipped"
    )
