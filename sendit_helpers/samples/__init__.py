"""Generated sample batches with planted identifiers, for the demo, tests and benchmarks.

:mod:`synthetic` (batches and the demo: ``python -m sendit_helpers.samples.synthetic OUT_DIR``),
:mod:`batchspec` (what a batch holds, what was planted), :mod:`identities` (made-up
patients), :mod:`studies` (the DICOM files of a study), :mod:`burn` (text in pixels) and
:mod:`textimages` (OCR test images).  ``samples``
imports only ``core`` and ``deid``; production code never imports it, except the
lazy demo-batch import of :func:`sendit_helpers.run.runner.open_batch`
(``tests/test_layers.py`` enforces it).
"""
