"""The per-file de-identification engine: one data set or one file, with a context.

The de-identify stage (:mod:`.deidentify`) plans a batch into :class:`Job` s and
runs :func:`deidentify_file` on each; tests and benchmarks call the same functions.

- :func:`worker_config` builds a batch's :class:`WorkerConfig` (recipes, site secret)
  from its settings; :func:`job_context` the recipe context of one file;
- :func:`deidentify_dataset` de-identifies one data set in memory;
- :func:`deidentify_file` de-identifies one file and writes it, by one of three paths
  that give the same bytes: the element cache (:mod:`sendit_helpers.deid.elementcache`:
  the header scanned as bytes, each distinct element de-identified once), the header
  parsed from memory and written by :mod:`sendit_helpers.deid.dicomwrite` with the
  original pixel bytes, or pydicom's read/save_as path; it never raises for a bad file;
- :class:`Writer` writes the element cache's files (and takes their SHA-256 and what
  the leak gate keeps of them) on one background thread while the next file is
  de-identified.

It stands on the ``deid`` machinery and the site's UID mapper (``pseudonyms``), so it
sits with the stages.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from sendit_helpers.core.dicomio import PARSE_ERRORS, READ_ERRORS, file_reason, read_full
from sendit_helpers.core.errors import RecipeError, one_line
from sendit_helpers.core.resources import content_digests
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import gatewritten
from sendit_helpers.deid.cleaned import KEPT_VRS, TECHNICAL_KEYWORDS, WORDS, describe
from sendit_helpers.deid.dicomwrite import encode_header, split_file
from sendit_helpers.deid.elementcache import ElementCache
from sendit_helpers.deid.recipemodel import GATE_VRS, Changes, DeidContext
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.pseudonyms.uids import UidMapper

#: What de-identifying one malformed file may raise: its disposition becomes an error.
_FILE_ERRORS: tuple[type[Exception], ...] = (*PARSE_ERRORS, RuntimeError)
#: ... and what makes the element cache leave a file to the paths that report it.
_CACHE_ERRORS: tuple[type[Exception], ...] = (*_FILE_ERRORS, RecipeError)


@dataclass(frozen=True, slots=True)
class Job:
    """One file to de-identify (slotted: a batch holds one per file until it is done)."""

    source_path: str
    output: str
    name: str
    entity_id: str
    item_id: str
    jitter_days: int
    quarantined: bool
    entity_timestamp: str = ""
    """PatientBirthDate shifted by ``jitter_days`` (``var:entity_timestamp``), or empty."""
    item_timestamp: str = ""
    """StudyDate shifted by ``jitter_days`` (``var:item_timestamp``), or empty."""
    reason: str = ""
    """Why the file is held (quarantined jobs only)."""


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs, cheap to pickle."""

    recipe_files: tuple[str, ...]
    include_default: bool
    secret: bytes
    safe_private: tuple[str, ...] = ()
    element_cache: bool = True
    """Use :mod:`.elementcache` (False: every file through the recipe engine, for comparison)."""


@dataclass(slots=True)
class Outcome:
    """What became of one job (slotted: a batch holds one per file until it is done)."""

    job: Job
    error: str = ""
    cleaned: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    """Identifying values removed from this file: value -> category (PHI)."""
    lookup: list[tuple[str, str, str]] = field(default_factory=list)
    """(field, original, new) pairs (PHI)."""
    pixel_span: tuple[int, int, int, bool] | None = None
    """``(value start, value end, file size, 16-bit native)`` of the written pixel
    data, for the leak gate (:func:`leakgate.save_spans`); None when unknown."""
    written: gatewritten.Written | None = None
    """What the leak gate needs of a released file, taken from its bytes as they were
    written (:func:`gatewritten.written`); None for the other files."""
    implementation: str = ""
    """The output's file meta ImplementationClassUID (a technical value: see :func:`meta_kept`)."""
    part: str = ""
    """Name of the spool part (:func:`spool_chunk`) holding this outcome's cleaned
    and lookup rows, which then are no longer kept here; empty when they are."""


# ------------------------------------------------------------------ per file
@lru_cache(maxsize=4)
def load_recipe(files: tuple[str, ...], include_default: bool) -> Recipe:
    """The recipe of ``files`` (plus the default one), loaded once per process.

    Parameters
    ----------
    files : tuple of str
        Recipe files (resolved paths), in order.
    include_default : bool
        Whether the default recipe (PS3.15 Annex E) comes first.

    Returns
    -------
    Recipe
        The loaded recipe (``%filter`` screening sections not included).
    """
    return Recipe.load(files, include_default=include_default, include_deid_filters=False)


@lru_cache(maxsize=4)
def uid_mapper(secret: bytes) -> UidMapper:
    """The site's UID mapper for ``secret``, made once per process."""
    return UidMapper(secret)


def _walk(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, DataElement]]:
    """Yield ``(path, element)`` for every element, depth first, sequences included."""
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        yield path, elem
        if elem.VR == "SQ" and elem.value:
            for index, item in enumerate(elem.value):
                yield from _walk(item, f"{path}[{index}].")


def value_strings(elem: DataElement) -> list[str]:
    """An element's values as stripped strings (one per value of a multi-valued element)."""
    value = elem.value
    if value is None or value == "" or isinstance(value, bytes):
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for v in values if (text := str(v).strip())]


def snapshot(ds: Dataset, vrs: frozenset[str] = GATE_VRS) -> dict[str, tuple[str, str, list[str]]]:
    """Textual values by element path: path -> (VR, keyword, values).

    With :func:`removed_values` this is the slow, obvious *reference* for the
    gate values the stage now gets from ``Changes.originals`` in one pass;
    tests/test_dicomwrite.py checks the two agree.  The stage does not call it.
    """
    found = {}
    for path, elem in _walk(ds):
        if elem.VR in vrs:
            found[path] = (
                elem.VR,
                elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})",
                value_strings(elem),
            )
    return found


def removed_values(
    before: Mapping[str, tuple[str, str, list[str]]], after: Dataset, extra: Sequence[str] = ()
) -> dict[str, str]:
    """Values the recipe removed or changed: value -> category (its keyword or ``name``).

    A value the recipe kept elsewhere in the same file (a private copy of
    ``BodyPartExamined``, say) is evidently not identifying under this recipe
    and is left out, so the gate does not fail on it.
    """
    now = snapshot(after)
    kept: set[str] = set()
    for vr, keyword, values in snapshot(after, KEPT_VRS).values():
        kept.update(v.casefold() for v in values)
        if vr == "CS" or keyword in TECHNICAL_KEYWORDS:
            kept.update(t for v in values for t in WORDS.split(v.casefold()) if t)
    removed: dict[str, str] = {}
    for path, (vr, keyword, values) in before.items():
        current = now.get(path, ("", "", []))[2]
        for value in values:
            if value in current or value.casefold() in kept:
                continue
            if vr == "UI" and value in UID_dictionary:
                continue  # a UID the standard defines identifies nobody (as removed_from)
            removed.setdefault(value, "name" if vr == "PN" else keyword)
    for value in extra:
        if value.strip() and value.strip().casefold() not in kept:
            removed.setdefault(value.strip(), "free text")
    return removed


def ensure_meta(ds: Dataset) -> None:
    """Give the dataset a file meta that matches it (meta-less inputs get one).

    Parameters
    ----------
    ds : Dataset
        A de-identified data set about to be written (changed in place).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        new = FileMetaDataset()
        if meta is not None:
            new.update(meta)
        new.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little is not False
            else ExplicitVRBigEndian
        )
        ds.file_meta = new
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        # The same data set, written without the deflate: the leak gate must read the
        # output's bytes, and every target stores explicit VR little endian.
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def meta_kept(meta: Dataset | None) -> set[str]:
    """The output file meta's ImplementationClassUID, casefolded: a value still in the file.

    The software that wrote a file often names itself with the same root in
    InstanceCreatorUID (DCMTK does); the recipe replaces the latter, and the
    meta carries the former over, so it is a technical value, not a leak.
    """
    uid = meta.get("ImplementationClassUID") if meta is not None else None
    text = str(uid or "").strip("\x00 ").casefold()
    return {text} if text else set()


def removed_from(changes: Changes, kept: set[str]) -> dict[str, str]:
    """Values the recipe removed or changed: value -> category (its keyword or ``name``).

    The same result as :func:`removed_values` on snapshots before and after:
    a value still in the output (casefolded, see :func:`describe`) is not
    identifying under this recipe and is left out.
    """
    removed: dict[str, str] = {}
    for vr, category, values in changes.originals:
        for value in values:
            if vr == "UI" and value in UID_dictionary:
                continue  # a UID the standard defines (a SOP class, say) identifies nobody
            if value.casefold() not in kept:
                removed.setdefault(value, category)
    for value in changes.removed_text:
        text = value.strip()
        if text and text.casefold() not in kept:
            removed.setdefault(text, "free text")
    return removed


def _resolve_vrs(ds: Dataset) -> None:
    """Give every element a VR when an implicit-VR data set is written with explicit VR.

    A file whose transfer syntax is explicit VR but whose data set is encoded implicit
    VR (pydicom's ``SC_rgb_jpeg.dcm``: JPEG Baseline) is read implicit, so its raw
    elements carry no VR and ``save_as`` under the file's transfer syntax fails with
    ``TypeError`` on the first one.  Converting each element (at any depth) takes its VR
    from the data dictionary (``UN`` for an unknown private tag), as pydicom does for
    implicit VR.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_implicit_VR or all(e.VR for e in ds.elements()):
        return
    for _elem in ds.iterall():  # iterating converts each raw element (sequences recurse)
        pass


def write_dataset(ds: Dataset, output: Path) -> None:
    """Write ``ds`` to ``output`` with pydicom (atomically: a temporary file, then renamed)."""
    _resolve_vrs(ds)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, output)


def read_file(path: str) -> bytes:
    """The whole file ``path``, read with plain system calls.

    The same bytes as ``open(path, "rb").read()`` without a buffered file
    object (its ``isatty`` and ``lseek`` calls): one ``open``, one ``fstat``,
    reads until the end of the file (two, when its size did not change), one ``close``.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    bytes
        Its contents.

    Raises
    ------
    OSError
        As ``open`` and ``read`` raise it.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        chunks: list[bytes] = []
        want = os.fstat(fd).st_size + 1  # the size is a hint: read until the end
        while chunk := os.read(fd, want):
            chunks.append(chunk)
            # Fewer bytes than asked: the end, which a 1-byte read confirms (a bigger
            # buffer would be allocated, and for a large one mapped, for nothing).
            want = 1 if len(chunk) < want else _READ_MORE
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_WRITE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
_READ_MORE = 1 << 16


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (one ``write`` unless it writes less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_parts(output: str, header: bytes, tail: memoryview) -> None:
    """Write ``header`` then ``tail`` to ``output`` atomically, creating its folder if missing.

    A temporary file beside it is written with plain system calls (one
    ``open``, a ``write`` per part, one ``close``) and renamed to ``output``.

    Parameters
    ----------
    output : str
        The file to write.
    header : bytes
        The de-identified header (file meta and data set up to the pixel data).
    tail : memoryview
        The original bytes from the pixel data element on.
    """
    parent = os.path.dirname(output)
    tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp")
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o666)
    except FileNotFoundError:  # the folder usually exists
        os.makedirs(parent, exist_ok=True)
        fd = os.open(tmp, _WRITE_FLAGS, 0o666)
    try:  # two writes: one writev of both is slower on Linux (measured: ext4, 0.5 MB)
        _write_all(fd, header)
        _write_all(fd, tail)
    finally:
        os.close(fd)
    os.replace(tmp, output)


#: Files a :class:`Writer` may have queued (and their bytes in memory) before it waits.
WRITE_AHEAD = 8
#: ... and bytes.
WRITE_AHEAD_BYTES = 64 << 20


def _write_released(
    job: Job, header: bytes, tail: memoryview, start: int, native16: bool
) -> gatewritten.Written | None:
    """:func:`write_parts`, then what the leak gate needs of the file (see :func:`_written`)."""
    write_parts(job.output, header, tail)
    return _written(job, header, tail, start, native16)


class Writer:
    """Writes de-identified files on one background thread, hashing them there.

    The element cache path hands each file's header and original pixel bytes
    here and goes on with the next file: writing (a new file, its bytes, the
    rename) and the SHA-256 and text runs the leak gate keeps
    (:func:`gatewritten.written`) release the GIL, so one worker process uses a
    second core for them.  The outputs are the same bytes as a synchronous
    write; a file that cannot be written becomes an error outcome exactly as it
    would be on the synchronous path (its output removed, its rows dropped).
    At most :data:`WRITE_AHEAD` files (:data:`WRITE_AHEAD_BYTES`) wait at a time;
    :meth:`settle` (and leaving the ``with`` block) waits for all of them.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sendit-writer")
        self._pending: deque[tuple[Outcome, int, Future[gatewritten.Written | None]]] = deque()
        self._bytes = 0

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.settle()
        finally:
            self._pool.shutdown(wait=True)

    def write(
        self, outcome: Outcome, header: bytes, tail: memoryview, start: int, native16: bool
    ) -> None:
        """Queue ``header + tail`` for ``outcome.job.output``; :attr:`Outcome.written` is set
        once it is written (by :meth:`settle` at the latest)."""
        size = len(header) + len(tail)
        future = self._pool.submit(_write_released, outcome.job, header, tail, start, native16)
        self._pending.append((outcome, size, future))
        self._bytes += size
        while len(self._pending) > WRITE_AHEAD or (
            self._bytes > WRITE_AHEAD_BYTES and len(self._pending) > 1
        ):
            self._finish_oldest()

    def settle(self) -> None:
        """Wait until every queued file is written; record each outcome."""
        while self._pending:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        outcome, size, future = self._pending.popleft()
        self._bytes -= size
        try:
            outcome.written = future.result()
        except _FILE_ERRORS as exc:  # as deidentify_file reports a failed write
            job = outcome.job
            discard_partial(job.output)
            outcome.error = f"could not de-identify: {file_reason(exc, job.source_path)}"
            outcome.pixel_span = None
            outcome.written = None
            outcome.cleaned = {}
            outcome.removed = {}
            outcome.lookup = []


def job_context(job: Job, config: WorkerConfig) -> DeidContext:
    """The recipe context of one file: its pseudonyms, date shift and the site's UID mapper.

    Parameters
    ----------
    job : Job
        The file (its entity, item, shift and shifted dates).
    config : WorkerConfig
        The batch's configuration (the site secret).

    Returns
    -------
    DeidContext
        What :meth:`Recipe.apply` and :meth:`ElementCache.deidentify` need.
    """
    return DeidContext(
        variables={
            "entity_id": job.entity_id,
            "item_id": job.item_id,
            "entity_timestamp": job.entity_timestamp,
            "item_timestamp": job.item_timestamp,
            "jitter": str(job.jitter_days),
        },
        date_shift_days=job.jitter_days,
        uid_map=uid_mapper(config.secret),
    )


def _native16(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    return bool(ds.get("BitsAllocated") == 16 and syntax is not None and not syntax.is_compressed)


@lru_cache(maxsize=4)
def element_cache(files: tuple[str, ...], include_default: bool) -> ElementCache:
    """The element cache of the recipe :func:`load_recipe` gives, made once per process."""
    return ElementCache(load_recipe(files, include_default))


def _cached_path(
    job: Job, config: WorkerConfig, data: bytes, outcome: Outcome, writer: Writer | None = None
) -> Changes | None:
    """De-identify from remembered elements (:mod:`.elementcache`); None: another path must.

    A file the cache cannot handle, or one whose values raise, goes to the
    paths below, which then report it exactly as they always have.
    """
    cache = element_cache(config.recipe_files, config.include_default)
    try:
        done = cache.deidentify(data, job_context(job, config))
    except _CACHE_ERRORS:
        return None
    if done is None:
        return None
    tail = memoryview(data)[done.pixel_at :]
    size = len(done.header) + len(tail)
    start = len(done.header) + done.pixel_value_offset
    if writer is None:
        write_parts(job.output, done.header, tail)
        outcome.written = _written(job, done.header, tail, start, done.native16)
    else:
        writer.write(outcome, done.header, tail, start, done.native16)
    outcome.pixel_span = (start, size, size, done.native16)
    outcome.cleaned = done.cleaned
    outcome.removed = removed_from(done.changes, done.kept)
    outcome.lookup = [(k, old, new) for k, (old, new) in done.changes.replaced.items()]
    return done.changes


def _written(
    job: Job, header: bytes, tail: memoryview, start: int, native16: bool
) -> gatewritten.Written | None:
    """What the leak gate needs of a released file just written (None for a held one)."""
    if job.quarantined:
        return None
    return gatewritten.written(
        f"{job.entity_id}/{job.name}", job.output, header, tail, start, native16
    )


def _fast_path(
    job: Job, config: WorkerConfig, recipe: Recipe, data: bytes
) -> tuple[Dataset, Changes, tuple[int, int, int, bool], gatewritten.Written | None] | None:
    """Parse the header from memory, write header bytes + original pixel bytes.

    None when the file needs the general path (see :func:`dicomwrite.split_file`).
    """
    try:
        split = split_file(data)
    except READ_ERRORS:
        return None  # the general path reports it
    if split is None:
        return None
    ds = split.dataset
    changes = recipe.apply(ds, job_context(job, config))
    ensure_meta(ds)
    header = encode_header(ds)
    if header is None:
        return None
    tail = memoryview(data)[split.pixel_at :]
    write_parts(job.output, header, tail)
    start = len(header) + split.pixel_value_at - split.pixel_at
    size = len(header) + len(tail)
    native16 = _native16(ds)
    return ds, changes, (start, size, size, native16), _written(job, header, tail, start, native16)


def deidentify_dataset(ds: Dataset, job: Job, config: WorkerConfig) -> Changes:
    """De-identify one data set in place with the batch's recipe, ready to write.

    Parameters
    ----------
    ds : Dataset
        The data set read from the file (changed in place; its file meta made to match).
    job : Job
        The file's pseudonyms and date shift (:func:`job_context`).
    config : WorkerConfig
        The batch's recipe and site secret (:func:`worker_config`).

    Returns
    -------
    Changes
        What the recipe removed and replaced (the leak gate's values).

    Raises
    ------
    RecipeError
        When a recipe action cannot be applied to this data set.
    """
    changes = load_recipe(config.recipe_files, config.include_default).apply(
        ds, job_context(job, config)
    )
    ensure_meta(ds)
    return changes


def worker_config(settings: Mapping[str, Any], secret: bytes) -> WorkerConfig:
    """The de-identification configuration of a batch, from its settings and site secret.

    Parameters
    ----------
    settings : mapping
        Resolved settings (``DEID_RECIPES``, ``USE_DEFAULT_RECIPE``, ``SAFE_PRIVATE_TAGS``).
    secret : bytes
        The site secret (:func:`sendit_helpers.pseudonyms.secret.load_site_secret`).

    Returns
    -------
    WorkerConfig
        What every worker needs, with the recipe files resolved.
    """
    cfg = typed(settings).deid
    recipes = tuple(str(Path(p).resolve()) for p in cfg.recipes)
    _forget_edited_recipes(recipes, cfg.use_default_recipe)
    return WorkerConfig(recipes, cfg.use_default_recipe, secret, cfg.safe_private_tags)


#: The recipe files' contents (:func:`content_digests`) when :func:`worker_config` last saw them.
_RECIPE_DIGESTS: dict[tuple[tuple[str, ...], bool], tuple[str, ...]] = {}


def _forget_edited_recipes(files: tuple[str, ...], include_default: bool) -> None:
    """Drop the process's loaded recipes when a recipe file changed since the last batch.

    :func:`load_recipe` and :func:`element_cache` are cached by path: a warm kernel
    (or a notebook run again after editing a ``DEID_RECIPES`` file) must not keep
    the old rules.  Called once per batch before any worker starts (forked workers
    inherit the fresh caches); the first batch with recipe files reloads them once.
    """
    if not files:
        return  # only the shipped default recipe
    key = (files, include_default)
    digests = content_digests(files)
    if _RECIPE_DIGESTS.get(key) != digests:
        load_recipe.cache_clear()
        element_cache.cache_clear()
        _RECIPE_DIGESTS[key] = digests


def deidentify_file(job: Job, config: WorkerConfig, writer: Writer | None = None) -> Outcome:
    """De-identify one file and write it; never raises for a bad input file.

    Most files are served by the element cache (:func:`_cached_path`), the
    other well-formed ones by :func:`_fast_path`; files with elements after
    the pixel data, deflated or unusual ones are read whole, de-identified and
    written by pydicom.  With a ``writer`` (:class:`Writer`), the element
    cache's files are written on its thread: the outcome is complete once the
    writer has settled.
    """
    outcome = Outcome(job)
    recipe = load_recipe(config.recipe_files, config.include_default)
    try:
        data = read_file(job.source_path)  # no Path: its parts would be interned
        if config.element_cache and _cached_path(job, config, data, outcome, writer) is not None:
            return outcome
        done = _fast_path(job, config, recipe, data)
        if done is None:
            ds: Dataset = read_full(job.source_path)
            changes = deidentify_dataset(ds, job, config)
            write_dataset(ds, Path(job.output))
        else:
            ds, changes, outcome.pixel_span, outcome.written = done
        # Values of elements the recipe did not touch are decoded here for the first
        # time: a malformed one fails this file (and its output goes), not the batch.
        outcome.cleaned, kept = describe(ds)
        meta = meta_kept(getattr(ds, "file_meta", None))
        kept.update(meta)
        outcome.implementation = next(iter(meta), "")
    except RecipeError as exc:
        outcome.error = f"recipe could not be applied: {one_line(exc)}"
        return outcome
    except _FILE_ERRORS as exc:
        discard_partial(job.output)
        outcome.error = f"could not de-identify: {file_reason(exc, job.source_path)}"
        outcome.pixel_span = None
        outcome.written = None
        return outcome
    outcome.removed = removed_from(changes, kept)
    outcome.lookup = [(k, old, new) for k, (old, new) in changes.replaced.items()]
    return outcome


def discard_partial(path: str | os.PathLike[str]) -> None:
    """Remove what a failed write left at ``path``, if anything.

    A missing file, or a parent that is no folder (``NotADirectoryError``:
    the write could not have created anything there), both mean nothing to remove.
    """
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        Path(path).unlink()
