"""One module per pipeline stage, called by the notebooks and the CLI alike.

:mod:`inspect`, :mod:`deidentify`, :mod:`review` (with its widget UI, :mod:`reviewer`),
:mod:`upload` and :mod:`query`.  A stage may import ``core``, ``deid``,
``pseudonyms`` and ``targets``, never ``run`` or ``samples``
(``tests/test_layers.py`` enforces it).
"""
