"""Fixtures that build tiny batches in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendit_helpers import synthetic
from sendit_helpers.layout import BatchLayout
from sendit_helpers.runner import open_batch
from sendit_helpers.settings import Settings

QUIET = {"PROGRESS": False}


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, synthetic.Planted]:
    """One generated study (with junk and burned-in images) and its planted identifiers."""
    folder = tmp_path / "input" / "DOE_JOHN_MRN12345"
    planted = synthetic.make_batch(
        folder, synthetic.BatchSpec(n_series=2, images_per_series=3, rows=32, columns=32)
    )
    return folder, planted


@pytest.fixture
def opened(batch: tuple[Path, synthetic.Planted], tmp_path: Path) -> tuple[BatchLayout, Settings]:
    """The batch opened with quiet default settings, work folder in tmp_path."""
    return open_batch(batch[0], tmp_path / "work", [], QUIET)
