"""Running the pipeline: the ``sendit`` command, papermill execution, resuming, reports.

:mod:`cli` (the command), :mod:`pipeline` (batches, stamps, ``sendit run``),
:mod:`runner` (one notebook per stage under papermill) and :mod:`report` (HTML copies
of executed notebooks).  ``run`` imports the stages and the layers under them; it is
the only layer that may reach ``samples``, lazily, for the demo batch a notebook
opens when it is given none (``tests/test_layers.py`` enforces it).
"""
