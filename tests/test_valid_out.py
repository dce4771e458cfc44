"""Valid in, valid out: no released or held file gains a dciodvfy error its input did not have.

The de-identify stage runs on DICOM nobody on this project generated (pydicom's vendor test
files, deid's example files) and on a generated batch; every output it released or held
(found through the disposition table, so new kinds of objects are judged as soon as the stage
writes them) is checked with dicom3tools' ``dciodvfy`` against its own input.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from sendit_helpers.core import disposition
from sendit_helpers.core.errors import LeakError
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec
from tests import realworld

FAST = {"PROGRESS": False, "OCR_SCREEN": "off"}


def _new_errors(folder: Path, work: Path) -> tuple[int, dict[str, list[str]]]:
    """De-identify ``folder``: how many outputs, and per input the errors its output gained."""
    layout, settings = open_batch(folder, work, [], FAST)
    with contextlib.suppress(LeakError):  # the gate is judged elsewhere; here, the files written
        upstream.deidentify(layout, settings)
    pairs = realworld.output_pairs(layout.release, layout.quarantine, disposition.read(layout))
    found = realworld.new_dciodvfy_errors_many(pairs)
    return len(pairs), {
        source.relative_to(folder).as_posix(): found[out] for source, out in pairs if out in found
    }


def _report(gained: dict[str, list[str]]) -> str:
    lines = [f"{len(gained)} output(s) gained dciodvfy errors:"]
    for source, errors in sorted(gained.items()):
        lines += [f"{source}:", *(f"    {error}" for error in errors)]
    return "\n".join(lines)


@pytest.mark.slow
def test_pydicom_test_files_stay_valid(pydicom_batch: Path, tmp_path: Path) -> None:
    outputs, gained = _new_errors(pydicom_batch, tmp_path / "work")
    assert outputs >= 80
    assert not gained, _report(gained)


@pytest.mark.slow
def test_deid_data_stays_valid(deid_data: Path, tmp_path: Path) -> None:
    batch = tmp_path / "deid_data"
    for path in realworld.deid_data_files():
        if path.stat().st_size < 20_000_000:  # the 43 MB cine adds time, not kinds
            target = batch / path.relative_to(deid_data)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    outputs, gained = _new_errors(batch, tmp_path / "work")
    assert outputs >= 12
    assert not gained, _report(gained)


@pytest.mark.slow
def test_generated_batch_stays_valid(batch: tuple[Path, batchspec.Planted], tmp_path: Path) -> None:
    outputs, gained = _new_errors(batch[0], tmp_path / "work")
    assert outputs >= 8
    assert not gained, _report(gained)


@pytest.mark.slow
def test_highdicom_objects_stay_valid(tmp_path: Path) -> None:
    """SEG, TID 1500 SR, KOS, SC, GSPS and RT Structure Set built on a generated CT series."""
    from object_kinds import make_object_study

    study = make_object_study(tmp_path / "objects")
    outputs, gained = _new_errors(study.folder, tmp_path / "work")
    assert outputs >= 3 + len(study.objects)
    assert not gained, _report(gained)
