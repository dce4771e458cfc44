"""Notebook kernels kept warm: one per thread, reused by every notebook it runs, started early.

A cold start (a new kernel process, then the imports of the helper package,
pandas, pyarrow, pydicom: more than a second on a small machine) is paid once
per thread of ``sendit run`` or a stage command, not once per stage of every
batch (:class:`WarmKernels`).  And the first kernel of a command is started
before the command's own imports (:func:`prestart`), with the stage
notebooks' imports done as it starts (:data:`PRELOAD_LINE`): the two overlap
on two cores instead of following each other.

:mod:`~sendit_helpers.run.runner` runs the notebooks in these kernels; this
module only starts, hands out and stops them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KERNELS_DIR",
    "PRELOAD_LINE",
    "WARM_KERNEL_MAX_RSS",
    "WARM_KERNEL_USES",
    "WarmKernel",
    "WarmKernels",
    "active",
    "discard_spares",
    "logging_kernel_manager",
    "prestart",
    "warm_kernels",
]

#: Notebooks one warm kernel runs before it is replaced by a fresh one.  With the
#: namespace reset and the heap frozen between notebooks (``cellrunner.reset_kernel``)
#: a kernel's memory stays flat from notebook to notebook (about 230 MB over 64 small
#: batches' notebooks); a replacement costs a cold start (about 1.3 s of CPU).
WARM_KERNEL_USES = 256
#: Resident memory (bytes) past which a kernel is replaced after its notebook (read from
#: ``/proc``; not checked where there is none): a large batch's kernel gives its memory
#: back instead of keeping it for the small batches after it.
WARM_KERNEL_MAX_RSS = 1 << 30
#: Folder under WORK holding the warm kernels' own logs (owner-only, like a batch's phi/;
#: not named phi/ itself, since WORK/<name>/phi/ is a batch).
KERNELS_DIR = ".kernels"
#: Run by a warm kernel as it starts (IPython's ``exec_lines``), before it answers the
#: client: the stage notebooks' imports (:func:`~sendit_helpers.run.cellrunner.preload`),
#: done while the command that started it still imports its own modules.  It binds no
#: name in the notebook's namespace.
PRELOAD_LINE = "__import__('sendit_helpers.run.cellrunner', fromlist=['preload']).preload()"

log = logging.getLogger(__name__)
#: The kernel manager's logger while :func:`prestart` starts it.
_QUIET = logging.getLogger(f"{__name__}.ahead")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def logging_kernel_manager(log_path: Path) -> type[Any]:
    """A kernel manager class whose kernel writes its stdout/stderr to ``log_path``.

    Keeps kernel warnings out of the terminal (and the ``sendit run`` progress
    bar) but on record in ``phi/`` beside the notebook.
    """
    from jupyter_client.manager import AsyncKernelManager

    class LoggingKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                kw["stdout"] = fh
                kw["stderr"] = fh
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggingKernelManager


@dataclass
class WarmKernel:
    """One kernel kept alive between the notebooks of one thread (:class:`WarmKernels`).

    Attributes
    ----------
    km : jupyter_client AsyncKernelManager
        Started by :func:`prestart`, or else by the first notebook that uses it.
    log : Path
        The kernel's own stdout/stderr (under ``WORK/.kernels/``).
    uses : int
        Notebooks run so far.
    broken : bool
        Set when a notebook ended with the kernel dead or timed out: it is replaced.
    kc : jupyter_client AsyncKernelClient or None
        The one client session of this kernel, started by its first notebook and kept
        (a new client waits about 0.2 s for the kernel to be ready: per notebook, that
        was a large part of a small batch's time).
    pending : str
        The message id of the reset sent after the last notebook, whose reply the next
        notebook waits for before its first cell; empty when none.
    one_request : bool
        Run each notebook's code cells with one execute request
        (:mod:`~sendit_helpers.run.onerequest`) instead of one request per cell.
    """

    km: Any
    log: Path
    uses: int = 0
    broken: bool = False
    kc: Any = None
    pending: str = ""
    one_request: bool = True

    def resident(self) -> int:
        """The kernel process's resident memory in bytes (0 when unknown)."""
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid is None:
            return 0
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                pages = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0
        return pages * os.sysconf("SC_PAGE_SIZE")


def _new_kernel(folder: Path, one_request: bool) -> WarmKernel:
    """A kernel (not started) logging to a new file in ``folder`` (made owner-only)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    log_path = folder / f"kernel-{os.getpid()}-{next(_COUNT)}.log"
    manager = logging_kernel_manager(log_path)
    return WarmKernel(manager(kernel_name="python3"), log_path, one_request=one_request)


def _start(kernel: WarmKernel) -> None:
    """Launch ``kernel``'s process now (without waiting for it to be ready), preloading
    :data:`PRELOAD_LINE`, with the arguments nbclient would have given it."""
    from nbclient.util import ensure_async, run_sync

    arguments = ["--HistoryManager.hist_file=:memory:", f"--IPKernelApp.exec_lines={PRELOAD_LINE}"]

    async def launch() -> None:
        await ensure_async(
            kernel.km.start_kernel(extra_arguments=arguments, cwd=str(kernel.log.parent))
        )

    run_sync(launch)()


#: Kernels started ahead by :func:`prestart`, by folder; the next :class:`WarmKernels` of
#: that work folder hands them out before starting any.
_SPARES: dict[Path, list[WarmKernel]] = {}
_SPARES_LOCK = threading.Lock()
_COUNT = itertools.count(1)


def _folder(work: str | os.PathLike[str]) -> Path:
    return Path(work).expanduser().resolve() / KERNELS_DIR


def prestart(work: str | os.PathLike[str], count: int = 1) -> None:
    """Have ``count`` kernels started for the next :class:`WarmKernels` of ``work`` to hand out.

    Starts as many as are missing (kernels already started ahead for ``work`` count).
    The stage commands call this right after reading their settings, before
    importing papermill and the stages: the kernel starts and does the stage
    notebooks' imports (:data:`PRELOAD_LINE`) on the other core meanwhile.  A
    kernel that cannot be started is left out (a debug message names the type of
    error): the notebook that needs it starts one itself, as without this, and
    says in its one line why that failed.  Kernels nobody used are stopped by
    :func:`discard_spares`.
    """
    folder = _folder(work)
    with _SPARES_LOCK:
        missing = count - len(_SPARES.get(folder, []))
    for _ in range(missing):
        try:
            kernel = _new_kernel(folder, one_request=True)
        except OSError as exc:  # WORK not writable: the batches say so, each in its line
            log.debug("could not start a notebook kernel ahead (%s)", type(exc).__name__)
            return
        told = kernel.km.log
        kernel.km.log = _QUIET  # jupyter_client logs a failed start with its traceback
        try:
            _start(kernel)
        except (OSError, RuntimeError) as exc:
            # not an error of the command: the notebook that needs a kernel starts one
            # itself and reports that start's failure in its one line
            log.debug("could not start a notebook kernel ahead (%s)", type(exc).__name__)
            _abandon(kernel)
            return
        finally:
            kernel.km.log = told
        with _SPARES_LOCK:
            _SPARES.setdefault(folder, []).append(kernel)


def discard_spares() -> None:
    """Stop every kernel :func:`prestart` started that no notebook used."""
    with _SPARES_LOCK:
        spares = [k for kernels in _SPARES.values() for k in kernels]
        _SPARES.clear()
    for kernel in spares:
        _stop(kernel)


def _take_spare(folder: Path) -> WarmKernel | None:
    with _SPARES_LOCK:
        kernels = _SPARES.get(folder)
        return kernels.pop(0) if kernels else None


class WarmKernels:
    """Keep one notebook kernel per thread and reuse it for every notebook that thread runs.

    A cold start (a new kernel process, then the imports of the helper package,
    pandas, pydicom: seconds) is then paid once per thread (per worker of
    ``sendit run``), not once per stage of every batch.  Each notebook still
    gets its own executed copy in its batch's ``phi/notebooks/``; before it
    runs, the kernel's namespace is reset (``%reset -f``), its cell counter set
    back to 1, open figures closed and its working folder set to the batch's
    ``phi/``, so a notebook sees nothing of the one before.  A kernel that died
    or timed out, one that ran :data:`WARM_KERNEL_USES` notebooks and one
    holding more than :data:`WARM_KERNEL_MAX_RSS` is replaced by a fresh one.
    Kernels :func:`prestart` started for the same work folder are handed out
    first.

    The kernels' own logs go to ``WORK/.kernels/`` (owner-only): several
    batches share them, so each batch's ``NN_stage.kernel.log`` names the log
    instead.

    Use as a context manager around the code that calls
    :func:`~sendit_helpers.run.runner.run_stage` (``sendit run`` and the stage
    commands do); on exit every kernel is shut down.  Only one may be active in
    a process at a time (:func:`active`).

    Parameters
    ----------
    work : path-like
        The work folder.
    max_uses : int
        Notebooks per kernel before it is replaced.
    one_request : bool
        Run all code cells of a notebook with one execute request to the kernel
        (:mod:`~sendit_helpers.run.onerequest`, the same executed notebook without
        a round trip per cell); ``False`` runs them one request per cell, as
        papermill does.
    max_rss : int
        Resident bytes past which a kernel is replaced after its notebook.
    """

    def __init__(
        self,
        work: str | os.PathLike[str],
        max_uses: int = WARM_KERNEL_USES,
        one_request: bool = True,
        max_rss: int = WARM_KERNEL_MAX_RSS,
    ) -> None:
        self.folder = _folder(work)
        self.max_uses = max_uses
        self.max_rss = max_rss
        self.one_request = one_request
        self._local = threading.local()
        self._all: list[WarmKernel] = []
        self._lock = threading.Lock()
        self._html_warmed = False

    def __enter__(self) -> WarmKernels:
        global _WARM
        _WARM = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _WARM
        _WARM = None
        self.shutdown()
        discard_spares()

    def lease(self, output: Path) -> WarmKernel:
        """This thread's kernel for the notebook ``output`` (a spare or a new one if needed).

        Writes ``output``'s ``.kernel.log`` as a pointer to the kernel's log.
        """
        kernel: WarmKernel | None = getattr(self._local, "kernel", None)
        if kernel is not None and (
            kernel.broken
            or kernel.uses >= self.max_uses
            or (self.max_rss and kernel.resident() > self.max_rss)
        ):
            _stop(kernel)
            kernel = None
        if kernel is None:
            kernel = _take_spare(self.folder) or _new_kernel(self.folder, self.one_request)
            kernel.one_request = self.one_request
            self._local.kernel = kernel
            with self._lock:
                self._all.append(kernel)
        kernel.uses += 1
        pointer = output.with_suffix(".kernel.log")
        fd = os.open(pointer, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"ran in a warm kernel shared by batches; its log: {kernel.log}\n")
        return kernel

    def first_html(self) -> bool:
        """True the first time only (the runner then makes its HTML exporter ahead)."""
        with self._lock:
            first, self._html_warmed = not self._html_warmed, True
        return first

    def shutdown(self) -> None:
        """Stop every kernel this pool started or was handed."""
        with self._lock:
            kernels, self._all = self._all, []
        for kernel in kernels:
            _stop(kernel)


_WARM: WarmKernels | None = None


def active() -> WarmKernels | None:
    """The :class:`WarmKernels` active in this process, if any."""
    return _WARM


@contextlib.contextmanager
def warm_kernels(work: str | os.PathLike[str], enabled: bool = True) -> Iterator[None]:
    """:class:`WarmKernels` for ``work`` while the block runs (nothing when not ``enabled``)."""
    if not enabled or _WARM is not None:
        yield
        return
    with WarmKernels(work):
        yield


def _stop(kernel: WarmKernel) -> None:
    """Kill a warm kernel's process (it holds nothing that needs a clean shutdown)."""
    if kernel.kc is not None:
        kernel.kc.stop_channels()
        kernel.kc = None
    km = kernel.km
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    # connection file, control socket and ZMQ context: a context left to the garbage
    # collector with its socket still open can block the process when it exits
    with contextlib.suppress(OSError):
        _cleanup_resources(km)


def _abandon(kernel: WarmKernel) -> None:
    """Undo a start that failed halfway: its process (if any) killed, its connection file
    removed (the manager's own clean-up expects a kernel that started)."""
    process = getattr(getattr(kernel.km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    kernel.km.cleanup_connection_file()


def _cleanup_resources(km: Any) -> None:
    """``km.cleanup_resources()`` of a kernel manager, async or not."""
    from nbclient.util import ensure_async, run_sync

    async def cleanup() -> None:
        await ensure_async(km.cleanup_resources())

    run_sync(cleanup)()
