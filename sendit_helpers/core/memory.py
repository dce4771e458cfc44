"""Memory housekeeping shared by the stages that build whole-batch tables."""

from __future__ import annotations

import pyarrow as pa


def release_unused() -> None:
    """Give back to the system what the C allocator keeps of memory freed since.

    Arrow allocates with ``malloc`` here (see :mod:`sendit_helpers`), and
    ``malloc`` keeps freed pages for reuse; between steps that read or build
    whole-batch tables, what they freed would otherwise raise the baseline of
    the next step, so the stage's peak would grow with the batch.  Cheap (a few
    milliseconds).
    """
    pa.default_memory_pool().release_unused()
