"""The base layer: errors, the work-folder layout, settings, dispositions, DICOM I/O, discovery.

Everything else stands on these modules: :mod:`errors` (the one base exception and the
PHI-safe one-line cause), :mod:`layout` (where a batch's files go), :mod:`settings`,
:mod:`disposition` (one row per input file), :mod:`dicomio` (reading headers safely),
:mod:`discovery` (the entries of a batch folder), :mod:`resources` (shipped files) and
:mod:`executors` (process pool / Dask).  ``core`` imports nothing of ``sendit_helpers``
outside ``core`` (``tests/test_layers.py`` enforces it).
"""
