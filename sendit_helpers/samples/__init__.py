"""Generated sample batches with planted identifiers, for the demo, tests and benchmarks.

:mod:`synthetic` (``python -m sendit_helpers.samples.synthetic OUT_DIR``).  ``samples``
imports only ``core`` and ``deid``; production code never imports it, except the
lazy demo-batch import of :func:`sendit_helpers.run.runner.open_batch`
(``tests/test_layers.py`` enforces it).
"""
