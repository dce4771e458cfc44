"""Pseudonyms: identifier providers, the UID mapper and the site secret (:mod:`identifiers`).

The family of providers that turn a patient's identifiers into research ones, the
keyed UID mapper and the site secret they are keyed with.  ``pseudonyms`` imports
only ``core`` (``tests/test_layers.py`` enforces it).
"""
