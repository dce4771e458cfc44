"""``sendit run``: find batches and run every stage on each, through papermill.

A folder whose DICOM files all belong to one study is a batch (a folder
holding no files but one sub-folder is looked into: that sub-folder is the
batch); any other folder given is a root, searched for batches below it.  A failing batch does
not stop the others; the run ends with a status table.

Resumable
    After a stage succeeds, ``phi/stages/<stage>.json`` records a fingerprint
    of what it ran on: its inputs (for inspect the batch's file list with
    sizes and modification times; for later stages the previous stage's
    stamp, so re-running a stage re-runs everything after it; for review
    also the decisions log), the settings the stage declares in
    :data:`~sendit_helpers.run.stages.STAGES` (secrets and
    ``WORKERS``/``EXECUTOR``/``DASK_SCHEDULER``/``PROGRESS`` excluded, the
    contents of recipe, crosswalk, site filter and decisions files included:
    changing ``ORTHANC_URL`` re-runs upload only), the notebook's bytes and
    the package version.  A stage whose fingerprint
    is unchanged and whose executed notebook is still there is skipped.  A
    stage's stamp (and every later one) is removed before it runs, and written
    only after it succeeded, so a run killed at any moment resumes with the
    first stage that had not finished; the stages themselves are idempotent
    (inspect rewrites its tables, deidentify clears and rewrites
    ``release/``, upload has an exactly-once manifest).  A lock file
    (``phi/stages/.lock``) keeps two runs off the same batch.

Parallel
    ``--workers N`` (0 = one per core) is split between batches and files,
    batches first: ``min(N, batches)`` batches run at once and each gets
    ``N // that`` worker processes for its per-file work (at least 1).  Whole
    batches parallelise best (every part of a stage overlaps, kernel start-up
    and leak gate included); left-over workers go to the files.  With
    ``--executor local`` the batches run from threads of this process (each
    keeps one warm notebook kernel, :class:`~sendit_helpers.runner.WarmKernels`,
    for every stage of every batch it runs); with ``--executor dask`` each batch is
    one Dask task (a ``LocalCluster`` of that many single-threaded workers,
    or the cluster at ``--scheduler``, where every worker thread takes one
    batch at a time and ``--workers`` is the per-file pool of each batch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from sendit_helpers import __version__
from sendit_helpers.core import discovery, disposition, executors
from sendit_helpers.core.errors import BatchError, SenditError, os_error_line
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import BY_NAME, Settings, load_settings
from sendit_helpers.deid.siterules import site_filters_path
from sendit_helpers.run import kernels
from sendit_helpers.run.runner import HtmlCopies, notebook_path, run_stage, warm_kernels
from sendit_helpers.run.stages import EXECUTION_SETTINGS as EXECUTION_SETTINGS
from sendit_helpers.run.stages import FILE_SETTINGS as FILE_SETTINGS
from sendit_helpers.run.stages import PIPELINE as PIPELINE
from sendit_helpers.run.stages import STAGES, Stage, downstream
from sendit_helpers.stages.inspect import discover_inputs

log = logging.getLogger("sendit")

STAMPS_DIR = "stages"
LOCK_NAME = ".lock"
#: Seconds a run waits for another process's lock on a batch before failing it.
LOCK_TIMEOUT = 600.0


class LockError(BatchError):
    """Another ``sendit`` process holds a batch's lock."""


@dataclass
class BatchStatus:
    """How one batch fared in a run.

    Attributes
    ----------
    batch : str
        The batch name.
    status : str
        ``done`` or ``failed``.
    stage : str
        The failing stage, or the last stage when done.
    seconds : float
        Wall time spent on the batch.
    notebook : str
        The executed notebook of the failing stage (empty when done).
    ran, skipped : list of str
        Stages executed now (the failing one included), and stages skipped as
        unchanged since their last success.
    detail : str
        The error message (value-free) when failed.
    released, held, waiting : int or None
        From the batch's ``disposition.csv`` at the end of the run
        (:func:`~sendit_helpers.core.disposition.review_counts`): files released,
        kept in quarantine by a reviewer, and still waiting for review.  None
        when the batch has no disposition table.
    """

    batch: str
    status: str
    stage: str = ""
    seconds: float = 0.0
    notebook: str = ""
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    detail: str = ""
    released: int | None = None
    held: int | None = None
    waiting: int | None = None

    def row(self) -> dict[str, Any]:
        """The status-table row."""
        return {
            "batch": self.batch,
            "status": self.status,
            "stage": self.stage,
            "seconds": round(self.seconds, 1),
            "ran": len(self.ran),
            "skipped": len(self.skipped),
            "released": _count(self.released),
            "held": _count(self.held),
            "waiting": _count(self.waiting),
            "notebook": self.notebook,
        }


@dataclass
class Plan:
    """The batches a run found: study batches, loose batches, and paths that gave none."""

    batches: list[Path] = field(default_factory=list)
    """Folders each holding one study (:func:`find_batches`)."""
    loose: list[Path] = field(default_factory=list)
    """Folders whose own entries (besides their study folders) form a loose batch."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """``(path, message)`` of paths that are not folders."""


def plan_batches(paths: Iterable[str | os.PathLike[str]], work: Path | None = None) -> Plan:
    """Resolve batch folders and roots to batches; never raises for what a folder holds.

    A folder is a batch when its DICOM files name one study (a folder holding
    no files but one sub-folder is looked into instead).  Any other folder is a
    root: its study folders are searched for batches, and what else it holds
    (its own files, folders without a DICOM study, unreadable folders, links,
    FIFOs) is a *loose* batch of its own, so every input gets a disposition
    row.  Sub-folders that cannot be read or whose names are not UTF-8 are
    never batches: they go to the loose batch of the folder holding them.

    Parameters
    ----------
    paths : iterable of path-like
        Batch folders and roots.
    work : Path, optional
        The work folder, left out of loose batches when it lies in a root.
    """
    cache: dict[Path, set[str]] = {}
    plan = Plan()

    def walk(folder: Path) -> None:
        found = discovery.studies(folder, cache)
        children = [p for p in discovery.subfolders(folder) if discovery.studies(p, cache)]
        has_files = _has_files(folder)
        if len(found) == 1 and (has_files or len(children) != 1):
            plan.batches.append(folder)
            return
        include = discovery.loose_filter(folder, cache)
        leftover = discovery.scan(folder, include=include, exclude=work)
        if leftover.files or leftover.rows:
            plan.loose.append(folder)
        for child in children:
            walk(child)

    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            plan.problems.append(
                (str(path), f"{path} is not a folder; pass batch folders or a root holding them")
            )
            continue
        walk(path)
    return plan


def _has_files(folder: Path) -> bool:
    try:
        return any(p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def find_batches(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve batch folders and roots to the list of study batch folders (:func:`plan_batches`).

    Raises
    ------
    BatchError
        When a path does not exist or holds no DICOM study.
    """
    batches: list[Path] = []
    for raw in paths:
        plan = plan_batches([raw])
        if plan.problems:
            raise BatchError(plan.problems[0][1])
        if not plan.batches:
            path = Path(raw).expanduser().resolve()
            raise BatchError(f"{path} holds no readable DICOM study; check the path")
        batches += plan.batches
    return batches


# ------------------------------------------------------------------ fingerprints and stamps
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(value: Any) -> str:
    return _sha(json.dumps(value, sort_keys=True, default=str).encode())


def _file_sha(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    return digest.hexdigest()


def inputs_fingerprint(layout: BatchLayout) -> str:
    """Hash of the batch's inputs: relative path, size and mtime (ns) of every file,
    and the row of every entry that is not one (an unreadable folder, a dangling link).

    Parameters
    ----------
    layout : BatchLayout
        The batch (walked like :func:`~sendit_helpers.stages.inspect.discover_inputs`).
    """
    found = discover_inputs(layout)
    rows: list[tuple[str, int, int] | tuple[str, str, str]] = []
    for name in found.files:
        try:
            st = os.stat(name)
        except OSError as exc:  # gone or changed since the listing: a new fingerprint anyway
            rows.append((name, "missing", str(exc.errno)))
            continue
        rows.append((os.path.relpath(name, layout.source), st.st_size, st.st_mtime_ns))
    rows += [(r.source_path, str(r.disposition), r.reason) for r in found.rows]
    return _json_sha(rows)


def settings_fingerprint(settings: Settings, stage: Stage) -> str:
    """Hash of the settings ``stage`` declares (:data:`~sendit_helpers.run.stages.STAGES`).

    Secrets and :data:`~sendit_helpers.run.stages.EXECUTION_SETTINGS` are left out;
    the contents of the files named by the declared
    :data:`~sendit_helpers.run.stages.FILE_SETTINGS` are in (``SITE_FILTERS``: the
    site filter file, :func:`~sendit_helpers.deid.siterules.site_filters_path`).
    """
    declared = STAGES[stage].settings
    public = {
        name: settings.resolved.get(name)
        for name in declared
        if not BY_NAME[name].secret and name not in EXECUTION_SETTINGS
    }
    files: dict[str, list[str]] = {}
    for name in sorted(FILE_SETTINGS.intersection(declared)):
        if name == "SITE_FILTERS":  # review's rules: a new one screens the next run anew
            site = site_filters_path(settings)
            files[name] = [_file_sha(site)] if site.is_file() else []
            continue
        value = settings.resolved.get(name) or []
        paths = [value] if isinstance(value, str) else list(value)
        files[name] = [_file_sha(p) for p in paths if p]
    return _json_sha({"settings": public, "files": files})


def stamp_path(layout: BatchLayout, stage: Stage) -> Path:
    """``phi/stages/<stage>.json``: the record of the stage's last success."""
    return layout.phi / STAMPS_DIR / f"{stage}.json"


def read_stamp(layout: BatchLayout, stage: Stage) -> dict[str, Any] | None:
    """The stage's stamp, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads(stamp_path(layout, stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def fingerprint(
    stage: Stage,
    layout: BatchLayout,
    settings: Settings,
    stages: Sequence[Stage] = PIPELINE,
    extra: Mapping[str, Any] | None = None,
) -> str | None:
    """The fingerprint of running ``stage`` on ``layout`` now; None if it cannot be current.

    It covers what the stage's declaration (:data:`~sendit_helpers.run.stages.STAGES`)
    names: its input (the batch's files for the first stage, else its upstream
    stage's stamp), the settings it reads, the files it watches, its notebook and
    its extra parameters.  An upstream stage outside ``stages`` does not count (the
    stage then reads the batch's files).  None means the upstream stage has no stamp
    (it has not succeeded, so this stage's inputs are not settled).

    Parameters
    ----------
    stage : Stage
    layout : BatchLayout
    settings : Settings
        Resolved as the notebook will resolve them.
    stages : sequence of Stage
        The stages of the run ``stage`` is part of.
    extra : mapping, optional
        Extra notebook parameters (default: the declared ``run_extra``).
    """
    spec = STAGES[stage]
    parts: dict[str, Any] = {
        "stage": str(stage),
        "version": __version__,
        "notebook": _file_sha(stage.source()),
        "settings": settings_fingerprint(settings, stage),
        "extra": dict(extra if extra is not None else spec.run_extra),
    }
    if spec.upstream is None or spec.upstream not in stages:
        parts["inputs"] = inputs_fingerprint(layout)
    else:
        previous = read_stamp(layout, spec.upstream)
        if previous is None:
            return None
        parts["inputs"] = previous.get("run_id", "")
    for name in spec.watched:
        parts[name] = _file_sha(layout.phi / name)
    return _json_sha(parts)


def is_current(
    stage: Stage,
    layout: BatchLayout,
    settings: Settings,
    stages: Sequence[Stage] = PIPELINE,
    *,
    outputs: bool = True,
    notebook: bool = True,
) -> bool:
    """True when ``stage`` succeeded before on exactly what it would run on now.

    The one test of whether a stage is current: ``sendit run``, the stage commands
    and :mod:`~sendit_helpers.run.upstream` all ask it.  And when the stage declares
    a ``still_current`` check, when that check passes
    (upload: when every destination still holds what the manifest
    calls verified there (:func:`~sendit_helpers.stages.upload.still_uploaded`, one listing
    per target, so an emptied destination is refilled by the next run).  With
    ``outputs=False`` the stamps alone decide.  The stage's executed notebook must
    exist; with ``notebook=False`` it need not (:mod:`~sendit_helpers.run.upstream`
    ran the stage inside another stage's notebook); ``sendit run`` requires it, so a
    stage run that way is run again there, with its own notebook.  (Its HTML copy may
    be missing: ``sendit run`` writes it when it skips the stage.)
    """
    stamp = read_stamp(layout, stage)
    if stamp is None or (notebook and not notebook_path(stage, layout).exists()):
        return False
    key = fingerprint(stage, layout, settings, stages)
    if key is None or stamp.get("key") != key:
        return False
    check = STAGES[stage].still_current
    if check and outputs:
        module, name = check.split(":")
        still: Callable[[BatchLayout, Settings], bool] = getattr(
            importlib.import_module(module), name
        )
        return still(layout, settings)
    return True


def stale_stages(
    layout: BatchLayout,
    settings: Settings,
    stages: Sequence[Stage] = PIPELINE,
    *,
    outputs: bool = True,
) -> list[Stage]:
    """The stages of ``stages`` a run would execute now: each one not current
    (:func:`is_current`, ``outputs`` as there) and every one downstream of it, since
    running a stage gives it a new stamp, which is the input of the stages that read it."""
    stale: list[Stage] = []
    for stage in stages:
        if stage not in stale and not is_current(stage, layout, settings, stages, outputs=outputs):
            stale += [s for s in downstream(stage) if s in stages and s not in stale]
    return [s for s in stages if s in stale]


def clear_stamps(layout: BatchLayout, stage: Stage, stages: Sequence[Stage] = PIPELINE) -> None:
    """Remove the stamps of ``stage`` and every stage of ``stages`` downstream of it."""
    for later in downstream(stage):
        if later in stages:
            stamp_path(layout, later).unlink(missing_ok=True)


def write_stamp(
    layout: BatchLayout,
    stage: Stage,
    settings: Settings,
    seconds: float,
    stages: Sequence[Stage] = PIPELINE,
    *,
    notebook: bool = True,
) -> dict[str, Any]:
    """Record ``stage``'s success (atomically) and return the record.

    The stamp replaces the old one in one rename, so a reader (or a run killed at any
    moment) finds the old record or the new one, never a part.  It is not flushed to
    disk (``fsync``): that cost about 11 ms per stage between two notebooks, with the
    kernel idle, and bought nothing a stamp needs.  A stamp lost or left empty by a
    power cut is no stamp (:func:`read_stamp`), so the stage only runs again; the
    stage's outputs are not flushed by it either.

    ``notebook=False``: the stage ran without its own notebook
    (:mod:`~sendit_helpers.run.upstream`); the record names none.
    """
    key = fingerprint(stage, layout, settings, stages)
    record = {
        "stage": str(stage),
        "key": key,
        "run_id": uuid.uuid4().hex,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "notebook": str(notebook_path(stage, layout)) if notebook else "",
        "version": __version__,
    }
    path = stamp_path(layout, stage)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(tmp, path)
    return record


@contextlib.contextmanager
def batch_lock(layout: BatchLayout, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold ``phi/stages/.lock`` (an exclusive ``flock``) while running a batch.

    The lock dies with its process, so a killed run never leaves it behind.

    Raises
    ------
    LockError
        When another process still holds it after ``timeout`` seconds.
    """
    folder = layout.phi / STAMPS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() > deadline:
                    raise LockError(
                        f"batch {layout.name} is being run by another sendit process "
                        f"({holder}); wait for it to finish or stop it, then rerun"
                    ) from None
                if not warned:
                    log.info(
                        "batch %s: waiting for another sendit process (%s)", layout.name, holder
                    )
                    warned = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ running
def split_workers(
    workers: int, n_batches: int, executor: str = "local", scheduler: str = ""
) -> tuple[int, int]:
    """How ``--workers`` splits into (batches at once, per-file workers of each batch).

    Batches first: ``min(workers, n_batches)`` batches at once, each with
    ``workers // that`` processes for its files (at least 1).  With an external
    Dask scheduler the cluster decides how many batches run at once and
    ``workers`` is each batch's per-file pool.

    Parameters
    ----------
    workers : int
        ``--workers`` / ``WORKERS`` (0 = one per core).
    n_batches : int
        Batches in the run.
    executor : {"local", "dask"}
    scheduler : str
        Dask scheduler address, empty for a LocalCluster.

    Returns
    -------
    tuple of (int, int)
    """
    total = executors.resolve_workers(workers)
    if executor == "dask" and scheduler:
        return max(1, n_batches), total
    slots = max(1, min(total, n_batches))
    return slots, max(1, total // slots)


StageHook = Callable[[str, Stage, str], None]
"""Called with (batch, stage, event) where event is ``start``, ``skip``, ``done`` or ``failed``."""


def run_batch(
    layout: BatchLayout,
    stages: Sequence[Stage],
    params: Sequence[str | os.PathLike[str]],
    overrides: Mapping[str, Any],
    *,
    force: bool = False,
    hook: StageHook | None = None,
) -> BatchStatus:
    """Run ``stages`` in order on one batch; skip current ones; stop at the first failure.

    Parameters
    ----------
    layout : BatchLayout
    stages : sequence of Stage
        In pipeline order.
    params, overrides
        As for :func:`~sendit_helpers.run.runner.run_stage`.
    force : bool
        Run every stage even when its stamp is current.
    hook : callable, optional
        Told about each stage's start, skip, success or failure.

    Returns
    -------
    BatchStatus
        Never raises a :class:`SenditError` or :class:`OSError`: they make a
        ``failed`` status naming the stage and the notebook.
    """
    start = time.perf_counter()
    status = BatchStatus(layout.name, "done", str(stages[-1]) if stages else "")
    stage: Stage | None = None

    def tell(event: str) -> None:
        if hook is not None and stage is not None:
            hook(layout.name, stage, event)

    try:
        layout.check_source()
        layout.ensure()
        settings = load_settings(params, overrides)
        copies = HtmlCopies()
        with batch_lock(layout):
            try:
                for stage in stages:
                    if not force and is_current(stage, layout, settings, stages):
                        status.skipped.append(str(stage))
                        output = notebook_path(stage, layout)
                        if not output.with_suffix(".html").exists():
                            # killed (or its copy failed) after the stamp: the executed
                            # notebook is complete, only its HTML copy is missing
                            copies.add(stage, layout, output)
                        tell("skip")
                        continue
                    tell("start")
                    status.ran.append(str(stage))
                    clear_stamps(layout, stage, stages)
                    began = time.perf_counter()
                    run_stage(
                        stage,
                        layout,
                        lock=False,  # held above for the whole batch
                        params_files=params,
                        overrides=overrides,
                        extra=STAGES[stage].run_extra,
                        copies=copies,  # the HTML copy is written while the next stage runs
                    )
                    # the next stage's notebook reads this stamp; a run killed before the
                    # HTML copy was written writes the copy when it skips this stage
                    write_stamp(layout, stage, settings, time.perf_counter() - began, stages)
                    tell("done")
            finally:
                failed_copy = copies.wait()  # before the lock goes
            if failed_copy is not None:
                stage, error = failed_copy
                raise error
    except (SenditError, OSError) as exc:
        tell("failed")
        status.status = "failed"
        status.stage = str(stage) if stage is not None else "setup"
        if stage is not None and notebook_path(stage, layout).exists():
            status.notebook = str(notebook_path(stage, layout))
        if isinstance(exc, SenditError):
            status.detail = str(exc)
        else:
            status.detail = os_error_line(exc, near=layout.root)
    status.seconds = time.perf_counter() - start
    counts = _review_counts(layout)
    if counts is not None:
        status.released, status.held, status.waiting = counts
    return status


def _count(value: int | None) -> str:
    """A count for the status table (``-`` when unknown)."""
    return "-" if value is None else str(value)


def _review_counts(layout: BatchLayout) -> tuple[int, int, int] | None:
    """``(released, held, waiting)`` of a batch (None when it has no disposition table)."""
    if not layout.disposition_csv.exists():
        return None
    try:
        return disposition.review_counts(disposition.read(layout, ["disposition", "reason"]))
    except (OSError, ValueError):
        return None


def run_batches(
    paths: Iterable[str | os.PathLike[str]],
    work: str | os.PathLike[str],
    params: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
) -> int:
    """Run the pipeline on every batch found; print a status table; return the exit status.

    Parameters
    ----------
    paths : iterable of path-like
        Batch folders and roots (:func:`find_batches`).
    work : path-like
        The work folder.
    params, overrides
        Settings for every stage; ``WORKERS``, ``EXECUTOR``, ``DASK_SCHEDULER``
        and ``PROGRESS`` also shape the run itself (see :func:`split_workers`).
    force : bool
        Re-run stages whose stamps are current.

    Returns
    -------
    int
        0 when every batch is done, 1 when any failed.
    """
    settings = load_settings(params, overrides)
    stages = [s for s in PIPELINE if s.source().exists()]
    plan = plan_batches(paths, Path(work).expanduser().resolve())
    layouts, refused = _unique_layouts(plan, work)
    for where, message in plan.problems:
        refused.append(BatchStatus(Path(where).name, "failed", "setup", detail=message))
    if not layouts and not refused:
        refused.append(
            BatchStatus("-", "failed", "setup", detail="no batch found; check the paths given")
        )
    executor = settings.run.executor
    scheduler = settings.run.dask_scheduler
    slots, file_workers = split_workers(settings.run.workers, len(layouts), executor, scheduler)
    inner = dict(overrides or {})
    inner.update({"WORKERS": file_workers, "EXECUTOR": "local", "DASK_SCHEDULER": ""})
    show = settings.run.progress
    log.info(
        "%d batch(es), %d at a time (%s executor), %d worker process(es) per batch for files",
        len(layouts),
        slots,
        executor,
        file_workers,
    )
    bar = tqdm(total=len(layouts), desc="sendit run", unit="batch", disable=not show)
    hook: StageHook | None = None
    if executor == "local":

        def hook(batch: str, stage: Stage, event: str) -> None:
            if event in ("start", "failed"):
                bar.set_postfix_str(f"{batch}: {stage} {'running' if event == 'start' else event}")

    work_one = partial(
        run_batch, stages=stages, params=params, overrides=inner, force=force, hook=hook
    )
    statuses: list[BatchStatus | None] = [None] * len(layouts)
    for status in refused:
        bar.write(_line(status), file=sys.stderr)
    if executor == "local":
        kernels.prestart(work, slots)  # every slot's kernel starts now, not when first needed
    try:
        # one warm kernel per batch slot, reused by every stage of every batch it runs
        with warm_kernels(work, enabled=executor == "local"):
            for index, outcome in executors.run_each(
                work_one,
                layouts,
                slots=slots,
                executor=executor,
                scheduler=scheduler,
                desc="batches",
            ):
                if isinstance(outcome, executors.ExecutorError):
                    outcome = BatchStatus(
                        layouts[index].name, "failed", "setup", detail=str(outcome)
                    )
                statuses[index] = outcome
                bar.update()
                bar.write(_line(outcome), file=sys.stderr)
    finally:
        bar.close()
    done = [s for s in statuses if s is not None]
    print(status_table([*refused, *done]))
    for s in [*refused, *done]:
        if s.status != "done":
            print(f"sendit: {s.batch}: {s.detail}", file=sys.stderr)
    ok = len(done) == len(layouts) and all(s.status == "done" for s in done)
    return 0 if ok and not refused else 1


def _unique_layouts(
    plan: Plan, work: str | os.PathLike[str]
) -> tuple[list[BatchLayout], list[BatchStatus]]:
    """One layout per batch; of two folders of one name (they would share WORK/<name>)
    the first runs and the second is refused with a failed status."""
    layouts: dict[Path, BatchLayout] = {}
    refused: list[BatchStatus] = []
    found = [(f, False) for f in plan.batches] + [(f, True) for f in plan.loose]
    for folder, loose in found:
        layout = BatchLayout.for_batch(folder, work, loose=loose)
        other = layouts.get(layout.root)
        if other is not None:
            detail = (
                f"batches {other.source} and {layout.source} are both named {layout.name} and "
                f"would share the work folder {layout.root}; {layout.source} is not run: rename "
                "it or run it with another --work folder"
            )
            refused.append(BatchStatus(layout.name, "failed", "setup", detail=detail))
            continue
        layouts[layout.root] = layout
    return list(layouts.values()), refused


def _line(status: BatchStatus) -> str:
    if status.status == "done":
        extra = f", {len(status.skipped)} stage(s) unchanged" if status.skipped else ""
        images = (
            f": {status.released} released, {status.held} held, {status.waiting} waiting for review"
            if status.waiting is not None
            else ""
        )
        return f"sendit: batch {status.batch}: done in {status.seconds:.1f} s{extra}{images}"
    return f"sendit: batch {status.batch}: failed at {status.stage}"


def status_table(statuses: Sequence[BatchStatus]) -> str:
    """The end-of-run table: batch, status, stage, seconds, stages run/skipped, images
    released / held (kept by review) / waiting for review, failed notebook."""
    rows = [s.row() for s in statuses]
    columns = [
        "batch",
        "status",
        "stage",
        "seconds",
        "ran",
        "skipped",
        "released",
        "held",
        "waiting",
        "notebook",
    ]
    return pd.DataFrame(rows, columns=columns).to_string(index=False)
