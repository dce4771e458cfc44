"""sendit notebooks: inspect, de-identify, review and upload DICOM batches.

Layers in folders (lower layers never import higher ones; ``tests/test_layers.py``):
:mod:`~sendit_helpers.core` (errors, layout, settings, dispositions, DICOM I/O),
:mod:`~sendit_helpers.deid` and :mod:`~sendit_helpers.pseudonyms` (the machinery),
:mod:`~sendit_helpers.targets` (upload destinations), :mod:`~sendit_helpers.stages`
(one module per stage), :mod:`~sendit_helpers.run` (the ``sendit`` command, papermill)
and :mod:`~sendit_helpers.samples` (generated batches, never imported by production code).

Importing the package makes Arrow allocate with the C library's ``malloc``
(``ARROW_DEFAULT_MEMORY_POOL=system``, also in every process started from this
one: notebook kernels, worker pools), unless that variable is set already.
Arrow's default, mimalloc, keeps what reading and writing Parquet freed, per
thread, so each stage's peak memory grew with the batch: the peak of
``sendit run`` on one batch grew by 19 MB per 1000 files (500 to 5000 files,
``benchmarks/bench_scale.py``) with mimalloc and by 12 MB with ``malloc``,
the code otherwise the same.
"""

import os as _os
import sys as _sys

if not _os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
    # Read once, when Arrow first allocates: this must come before pyarrow's import,
    # which is left to the modules that need it (the ``sendit`` command starts its
    # first notebook kernel before it imports pyarrow).
    _os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    if "pyarrow" in _sys.modules:
        # Had pyarrow been loaded already (pandas imported first), the C++ default is
        # mimalloc still; this at least moves what pyarrow allocates itself.
        _pa = _sys.modules["pyarrow"]
        _pa.set_memory_pool(_pa.system_memory_pool())

__version__ = "0.1.0"
