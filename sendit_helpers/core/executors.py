"""Where per-file and per-batch work runs: a local process pool or a Dask cluster.

Two primitives:

* :func:`map_chunks` splits a list of items (files, de-identification jobs)
  into chunks and runs ``func(chunk) -> list of results`` on each chunk, in
  worker processes of this machine (``executor="local"``) or as Dask tasks
  (``executor="dask"``); results come back in item order, a tqdm bar counts items.
* :func:`run_each` runs ``func(item)`` once per item (whole batches in
  ``sendit run``), at most ``slots`` at a time, and yields each outcome as it
  finishes; a failing item does not stop the others.

Dask: with ``scheduler`` empty, one ``LocalCluster`` (worker processes with one
thread each, listening on 127.0.0.1 only, dashboard on a free local port) is created on first
use and reused by every later call in the process; with a scheduler address,
one :class:`distributed.Client` per address is created and reused.  Both are
closed at interpreter exit (or by :func:`shutdown`).

Errors raised inside a chunk or item become :class:`ExecutorError`, which
names the work (``desc``), the chunk or item number and the cause as
:func:`~sendit_helpers.core.errors.one_line` gives it: a SenditError's own message,
any other exception reduced to its type and the tags it names (exception
messages can quote DICOM values and are never repeated).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from tqdm.auto import tqdm

from sendit_helpers.core.errors import SenditError, one_line

T = TypeVar("T")
R = TypeVar("R")

#: The executors ``EXECUTOR`` / ``--executor`` may name.
EXECUTORS = ("local", "dask")
#: Chunks per worker that :func:`chunk_size` aims for: enough for load balance,
#: few enough that per-chunk overhead (pickling, task scheduling) stays small.
CHUNKS_PER_WORKER = 4
#: Largest chunk :func:`chunk_size` chooses.
MAX_CHUNK = 256

log = logging.getLogger("sendit")


class ExecutorError(SenditError):
    """A chunk of work (or one item of :func:`run_each`) failed on a worker.

    Parameters
    ----------
    message : str
        Names the work, the chunk and the exception type; never a value.
    chunk : int
        Zero-based number of the chunk (or item) that failed.
    error_type : str
        Class name of the original exception.
    """

    def __init__(self, message: str, chunk: int = -1, error_type: str = "") -> None:
        super().__init__(message)
        self.chunk = chunk
        self.error_type = error_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.chunk, self.error_type))


# ------------------------------------------------------------------ sizing
def resolve_workers(workers: int) -> int:
    """``workers``, with 0 (or less) meaning one per core.

    Parameters
    ----------
    workers : int
        The ``WORKERS`` setting or ``--workers`` value.

    Returns
    -------
    int
        At least 1.
    """
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def chunk_size(n_items: int, workers: int, *, max_size: int = MAX_CHUNK) -> int:
    """Items per chunk: about :data:`CHUNKS_PER_WORKER` chunks per worker, at most ``max_size``.

    Parameters
    ----------
    n_items : int
        How many items will be split.
    workers : int
        Worker processes (or Dask worker threads) that share them.
    max_size : int
        Upper bound, so progress moves and memory per task stays small.

    Returns
    -------
    int
        At least 1.
    """
    if n_items <= 0:
        return 1
    wanted = math.ceil(n_items / (max(1, workers) * CHUNKS_PER_WORKER))
    return max(1, min(max_size, wanted))


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    size = max(1, size)
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def _chunk_error(
    desc: str, index: int, total: int, first: int, size: int, exc: BaseException
) -> ExecutorError:
    kind = type(exc).__name__
    what = desc or "work"
    if isinstance(exc, BrokenProcessPool):
        why = "a worker process died (out of memory or killed?)"
    else:
        why = one_line(exc)
    return ExecutorError(
        f"{what}: chunk {index + 1} of {total} (items {first + 1}-{first + size}) failed: {why}",
        index,
        kind,
    )


# ------------------------------------------------------------------ dask
def _distributed() -> Any:
    """The ``distributed`` module (untyped; imported only when Dask is used)."""
    return importlib.import_module("distributed")


_LOCK = threading.Lock()
_CLIENTS: dict[str, Any] = {}
_CLUSTER: Any = None


def dask_client(workers: int = 0, scheduler: str = "") -> Any:
    """The process-wide :class:`distributed.Client` for ``scheduler``.

    Parameters
    ----------
    workers : int
        Worker processes of the ``LocalCluster`` made when ``scheduler`` is
        empty (0 = one per core); ignored when the cluster exists already or
        a scheduler is given.
    scheduler : str
        ``tcp://host:8786`` (or ``tls://...``) of a running ``dask scheduler``;
        empty for a LocalCluster on this machine.

    Returns
    -------
    distributed.Client

    Raises
    ------
    ExecutorError
        When ``distributed`` is not installed or the scheduler cannot be reached.
    """
    global _CLUSTER
    with _LOCK:
        client = _CLIENTS.get(scheduler)
        if client is not None and client.status in ("running", "connecting"):
            return client
        try:
            distributed = _distributed()
        except ImportError:
            raise ExecutorError(
                "EXECUTOR is 'dask' but dask.distributed is not installed; "
                "pip install 'sendit-notebooks[dask]' or use --executor local"
            ) from None
        try:
            if scheduler:
                client = distributed.Client(scheduler, timeout="30s")
            else:
                if _CLUSTER is None:
                    _CLUSTER = distributed.LocalCluster(
                        n_workers=resolve_workers(workers),
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",
                        silence_logs=logging.ERROR,
                    )
                    log.info("Dask LocalCluster dashboard: %s", _CLUSTER.dashboard_link)
                client = distributed.Client(_CLUSTER)
        except (OSError, TimeoutError) as exc:
            where = scheduler or "a LocalCluster"
            raise ExecutorError(
                f"cannot reach the Dask scheduler {where} ({type(exc).__name__}); "
                "check DASK_SCHEDULER / --scheduler and that dask scheduler is running"
            ) from None
        _CLIENTS[scheduler] = client
        return client


def has_dask_client(scheduler: str = "") -> bool:
    """Whether this process holds a Dask client for ``scheduler``.

    Parameters
    ----------
    scheduler : str
        The scheduler's address; empty for the LocalCluster of this process.

    Returns
    -------
    bool
        True once :func:`dask_client` made one (until :func:`shutdown`).
    """
    return scheduler in _CLIENTS


def dask_slots(client: Any) -> int:
    """Worker threads of the cluster behind ``client`` (at least 1)."""
    threads: dict[str, int] = client.nthreads()
    return max(1, sum(threads.values()))


def scheduler_address(client: Any) -> str:
    """The address of ``client``'s scheduler, to hand to other processes."""
    return str(client.scheduler.address)


def shutdown() -> None:
    """Close every Dask client and the LocalCluster of this process (also run at exit)."""
    global _CLUSTER
    with _LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()
        if _CLUSTER is not None:
            _CLUSTER.close()
            _CLUSTER = None


atexit.register(shutdown)


# ------------------------------------------------------------------ map_chunks
def map_chunks(
    func: Callable[[list[T]], list[R]],
    items: Sequence[T],
    *,
    workers: int,
    executor: str = "local",
    scheduler: str = "",
    progress: bool = True,
    desc: str = "",
    size: int | None = None,
    serial_below: int = 0,
    unit: str = "file",
) -> list[R]:
    """Run ``func`` over chunks of ``items``; return every result in item order.

    Parameters
    ----------
    func : callable
        ``func(chunk) -> results``, one result per item of the chunk, in the
        chunk's order.  Must be picklable (a module-level function or a
        :func:`functools.partial` of one) unless it runs in-process.
    items : sequence
        The work items (paths, jobs); small and picklable.
    workers : int
        Worker processes for ``executor="local"`` (0 = one per core; 1 runs
        in this process) and the size of the LocalCluster for ``"dask"``.
    executor : {"local", "dask"}
        A :class:`~concurrent.futures.ProcessPoolExecutor` on this machine,
        or Dask (see :func:`dask_client`).
    scheduler : str
        Dask scheduler address; empty = a LocalCluster (only with ``"dask"``).
    progress : bool
        Show a tqdm bar counting items (not for fewer than ``serial_below``:
        they are done before a bar would tell anything).
    desc : str
        Names the work on the bar and in errors (e.g. ``"deidentify"``).
    size : int, optional
        Items per chunk; default :func:`chunk_size`, or as many as :data:`MAX_CHUNK`
        allows when the chunks run in this process (one worker, or fewer items
        than ``serial_below``): there a chunk buys nothing but costs its set-up.
    serial_below : int
        Fewer items than this run in this process whatever the executor
        (starting a pool costs more than it saves on a handful of files), without a bar.
    unit : str
        The bar's unit.

    Returns
    -------
    list
        ``func``'s results, concatenated in item order.

    Raises
    ------
    ExecutorError
        When ``func`` raises in a chunk (or a worker dies); names the chunk and
        the exception type, never its message.  Remaining chunks are cancelled.
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if not items:
        return []
    serial = len(items) < serial_below
    n_workers = 1 if serial else resolve_workers(workers)
    client = dask_client(n_workers, scheduler) if executor == "dask" and not serial else None
    slots = dask_slots(client) if client is not None else n_workers
    # In this process a chunk only costs (a spool part, a writer thread): few, up to MAX_CHUNK.
    step = size or (min(MAX_CHUNK, len(items)) if slots <= 1 else chunk_size(len(items), slots))
    chunks = chunked(items, step)
    # A bar costs more than a handful of items (in a notebook: a widget of about 10 KB).
    bar = tqdm(total=len(items), desc=desc or None, unit=unit, disable=not progress or serial)
    try:
        if client is not None:
            parts = _map_dask(client, func, chunks, bar, desc, step)
        elif n_workers <= 1 or len(chunks) <= 1:
            parts = _map_serial(func, chunks, bar, desc, step)
        else:
            parts = _map_local(func, chunks, bar, desc, step, min(n_workers, len(chunks)))
    finally:
        bar.close()
    out: list[R] = []
    for index, part in enumerate(parts):
        if len(part) != len(chunks[index]):
            raise ExecutorError(
                f"{desc or 'work'}: chunk {index + 1} of {len(chunks)} returned {len(part)} "
                f"results for {len(chunks[index])} items; the chunk function must return one each",
                index,
            )
        out.extend(part)
    return out


def _map_serial(
    func: Callable[[list[T]], list[R]],
    chunks: list[list[T]],
    bar: tqdm[Any],
    desc: str,
    step: int,
) -> list[list[R]]:
    parts: list[list[R]] = []
    for index, chunk in enumerate(chunks):
        try:
            part = func(chunk)
        except Exception as exc:  # noqa: BLE001  (re-raised as ExecutorError, value-free)
            raise _chunk_error(desc, index, len(chunks), index * step, len(chunk), exc) from None
        parts.append(part)
        bar.update(len(chunk))
    return parts


def _map_local(
    func: Callable[[list[T]], list[R]],
    chunks: list[list[T]],
    bar: tqdm[Any],
    desc: str,
    step: int,
    n_workers: int,
) -> list[list[R]]:
    parts: list[list[R] | None] = [None] * len(chunks)
    pool = ProcessPoolExecutor(max_workers=n_workers)
    try:
        futures = {pool.submit(func, chunk): i for i, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                parts[index] = future.result()
            except Exception as exc:  # noqa: BLE001  (re-raised as ExecutorError, value-free)
                raise _chunk_error(
                    desc, index, len(chunks), index * step, len(chunks[index]), exc
                ) from None
            bar.update(len(chunks[index]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [p if p is not None else [] for p in parts]


def _map_dask(
    client: Any,
    func: Callable[[list[T]], list[R]],
    chunks: list[list[T]],
    bar: tqdm[Any],
    desc: str,
    step: int,
) -> list[list[R]]:
    futures = client.map(func, chunks, pure=False, key=_keys(desc, len(chunks)))
    index_of = {future.key: i for i, future in enumerate(futures)}
    parts: list[list[R] | None] = [None] * len(chunks)
    try:
        for future in _distributed().as_completed(futures):
            index = index_of[future.key]
            try:
                parts[index] = future.result()
            except Exception as exc:  # noqa: BLE001  (re-raised as ExecutorError, value-free)
                raise _chunk_error(
                    desc, index, len(chunks), index * step, len(chunks[index]), exc
                ) from None
            bar.update(len(chunks[index]))
    finally:
        client.cancel(futures)  # releases finished ones too: nothing is recomputed later
    return [p if p is not None else [] for p in parts]


def _keys(desc: str, n: int) -> list[str]:
    import uuid

    token = uuid.uuid4().hex[:12]
    label = "".join(c if c.isalnum() else "-" for c in (desc or "chunk"))
    return [f"sendit-{label}-{token}-{i}" for i in range(n)]


# ------------------------------------------------------------------ run_each
def run_each(
    func: Callable[[T], R],
    items: Sequence[T],
    *,
    slots: int,
    executor: str = "local",
    scheduler: str = "",
    desc: str = "",
) -> Iterator[tuple[int, R | ExecutorError]]:
    """Run ``func(item)`` for every item, at most ``slots`` at once; yield as each finishes.

    ``"local"`` uses threads of this process (for work that drives its own
    subprocesses, like papermill kernels); ``"dask"`` submits one task per item
    to the cluster (``slots`` sizes a LocalCluster; an external cluster runs as
    many at once as it has worker threads).

    Parameters
    ----------
    func : callable
        Called once per item; picklable for ``"dask"``.
    items : sequence
        The items (e.g. batch folders).
    slots : int
        Items in flight at once (0 = one per core).
    executor : {"local", "dask"}
    scheduler : str
        Dask scheduler address; empty = the process's LocalCluster.
    desc : str
        Names the work in errors.

    Yields
    ------
    tuple of (int, result or ExecutorError)
        The item's index and ``func``'s result, or an :class:`ExecutorError`
        naming the item number and exception type when ``func`` raised.
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if not items:
        return
    n_slots = min(resolve_workers(slots), len(items))

    def failure(index: int, exc: BaseException) -> ExecutorError:
        kind = type(exc).__name__
        return ExecutorError(
            f"{desc or 'work'}: item {index + 1} of {len(items)} failed: {one_line(exc)}",
            index,
            kind,
        )

    if executor == "dask":
        client = dask_client(n_slots, scheduler)
        futures = client.map(func, list(items), pure=False, key=_keys(desc, len(items)))
        index_of = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in _distributed().as_completed(futures):
                index = index_of[future.key]
                yield index, _outcome(future, partial(failure, index))
        finally:
            client.cancel(futures)  # releases finished ones too: nothing is recomputed later
        return
    with ThreadPoolExecutor(max_workers=n_slots, thread_name_prefix=desc or "sendit") as pool:
        pending: dict[Future[R], int] = {pool.submit(func, item): i for i, item in enumerate(items)}
        for future in as_completed(pending):
            index = pending[future]
            yield index, _outcome(future, partial(failure, index))


def _outcome(future: Any, wrap: Callable[[BaseException], ExecutorError]) -> Any:
    """``future.result()``, or the value-free :class:`ExecutorError` for its exception."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001  (reported as ExecutorError, value-free)
        return wrap(exc)
