"""Memory housekeeping: the C allocator's freed pages, and the cyclic collector's frozen heap."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

#: Set by :func:`freeze_kept`: this process froze what it keeps for good (a warm kernel).
_kept_frozen = False


def release_unused() -> None:
    """Give back to the system what the C allocator keeps of memory freed since.

    Arrow allocates with ``malloc`` here (see :mod:`sendit_helpers`), and
    ``malloc`` keeps freed pages for reuse; between steps that read or build
    whole-batch tables, what they freed would otherwise raise the baseline of
    the next step, so the stage's peak would grow with the batch.  Cheap (a few
    milliseconds).
    """
    pa.default_memory_pool().release_unused()


def freeze_kept() -> None:
    """Freeze every object alive now (:func:`gc.freeze`) for the rest of the process.

    What a warm kernel keeps between notebooks (modules, classes, caches) is
    then no longer gone through by the cyclic collector, and :func:`gc_frozen`
    leaves it frozen.  Only for a process that keeps what it holds now (see
    :func:`sendit_helpers.run.cellrunner.reset_kernel`).
    """
    global _kept_frozen
    gc.freeze()
    _kept_frozen = True


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the objects that exist now out of the cyclic collector's scans for a while.

    The per-file loop allocates many short-lived objects; each collection it
    triggers also walked every object the kernel already held (its tables,
    modules): ~20% of a 1,000-file run in one worker.  ``gc.freeze`` before
    forking worker processes is also what the ``gc`` documentation advises.

    In a process that froze what it keeps (:func:`freeze_kept`), all stays
    frozen; otherwise everything is unfrozen again at the end.  That is told
    by a flag, not by :func:`gc.get_freeze_count`, which walks every frozen
    object (6 ms for the 84,000 a kernel keeps once pandas, pyarrow and pydicom
    are imported, more after each notebook).
    """
    kept = _kept_frozen
    gc.freeze()
    try:
        yield
    finally:
        if not kept:
            gc.unfreeze()
