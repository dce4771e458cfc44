"""sendit notebooks: inspect, de-identify, review and upload DICOM batches.

One module per pipeline stage (:mod:`~sendit_helpers.inspect`,
:mod:`~sendit_helpers.deidentify`, :mod:`~sendit_helpers.review`,
:mod:`~sendit_helpers.upload`, :mod:`~sendit_helpers.query`; the review stage's
user interface is :mod:`~sendit_helpers.reviewer`), plus
:mod:`~sendit_helpers.settings`, :mod:`~sendit_helpers.identifiers`,
:mod:`~sendit_helpers.recipes`, :mod:`~sendit_helpers.targets` and
:mod:`~sendit_helpers.cli`.
"""

__version__ = "0.1.0"
