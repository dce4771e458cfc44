"""Fixtures that build tiny batches in ``tmp_path``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from tests import realworld

QUIET = {"PROGRESS": False}


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, batchspec.Planted]:
    """One generated study (with junk and burned-in images) and its planted identifiers."""
    folder = tmp_path / "input" / "DOE_JOHN_MRN12345"
    planted = synthetic.make_batch(
        folder, batchspec.BatchSpec(n_series=2, images_per_series=3, rows=32, columns=32)
    )
    return folder, planted


@pytest.fixture
def opened(batch: tuple[Path, batchspec.Planted], tmp_path: Path) -> tuple[BatchLayout, Settings]:
    """The batch opened with quiet default settings, work folder in tmp_path."""
    return open_batch(batch[0], tmp_path / "work", [], QUIET)


@pytest.fixture
def pydicom_batch(tmp_path: Path) -> Path:
    """pydicom's test files (DICOM of many kinds, broken and non-DICOM files) in sub-folders."""
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    batch = tmp_path / "pydicom_files"
    for index, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        target = batch / f"sub{index % 4}" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return batch


@pytest.fixture(scope="session")
def deid_data() -> Path:
    """deid-data's example folder (fails under CI, skips elsewhere, when not installed)."""
    return realworld.deid_data_dir()


@pytest.fixture
def deid_data_batch(deid_data: Path, tmp_path: Path) -> Path:
    """deid-data's DICOM files copied into a batch folder (sub-folders kept)."""
    batch = tmp_path / "deid_data"
    for path in realworld.deid_data_files():
        target = batch / path.relative_to(deid_data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return batch
