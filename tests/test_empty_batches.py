"""Empty is fine: a batch that releases nothing goes through review and upload.

All quarantined (an ultrasound-only study is the common case), all errors:
every stage runs, the upload sends nothing, and the counts say
``0 released, N waiting``.  A decisions file that then releases the held
images releases and uploads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sendit_helpers.core import disposition
from sendit_helpers.core.disposition import Disposition
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import review, review_decisions, review_items, upload

SETTINGS = {"PROGRESS": False}


@pytest.fixture(scope="module")
def us_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study of burned-in images only (a secondary capture and two ultrasounds): all flagged."""
    folder = tmp_path_factory.mktemp("empty") / "in" / "usonly"
    synthetic.make_batch(folder, batchspec.BatchSpec(n_series=1, images_per_series=1, junk=False))
    for path in folder.rglob("*_S001_*/*.dcm"):
        path.unlink()
    return folder


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "in" / source.name
    shutil.copytree(source, target)
    return target


def test_all_quarantined_batch_goes_through_review_and_upload(
    us_only: Path, tmp_path: Path
) -> None:
    layout, settings = open_batch(_copy(us_only, tmp_path), tmp_path / "work", [], SETTINGS)
    result = upstream.deidentify(layout, settings)
    assert result.counts[str(Disposition.QUARANTINED)] == 3
    assert result.counts[str(Disposition.RELEASED)] == 0
    assert disposition.release_line(result.dispositions) == "0 released, 3 waiting"
    assert result.cleaned.empty and "name" in result.cleaned

    applied = review.apply_decisions(layout, settings)  # nothing decided: nothing moves
    assert applied.undecided and not applied.released
    manifest = upload.upload_batch(layout, settings, progress=False)
    assert manifest.empty
    assert disposition.release_line(disposition.read(layout)) == "0 released, 3 waiting"

    items = review_items.load_items(layout)
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(
        "item,decision,x,y,width,height\n"
        + "".join(f"{item},release,,,,\n" for item in items["item"])
    )
    assert review_decisions.replay_decisions(layout, decisions) == 3
    applied = review.apply_decisions(layout, settings)
    assert sorted(applied.released) == sorted(items["item"])
    assert len(applied.cleaned) == 3
    manifest = upload.upload_batch(layout, settings, progress=False)
    assert sorted(upload.summary(manifest)["count"]) == [3]
    assert disposition.release_line(disposition.read(layout)) == "3 released, 0 waiting"


def test_all_error_batch_goes_through_review_and_upload(us_only: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "broken"
    for index, path in enumerate(sorted(us_only.rglob("*.dcm"))):
        data = path.read_bytes()
        target = folder / f"f{index}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[: len(data) // 2])  # truncated in the pixel data
    layout, settings = open_batch(folder, tmp_path / "work", [], SETTINGS)
    result = upstream.deidentify(layout, settings)
    assert result.counts[str(Disposition.ERROR)] == 3
    assert disposition.release_line(result.dispositions) == "0 released, 0 waiting"
    applied = review.apply_decisions(layout, settings)
    assert applied.summary().startswith("0 released as is")
    assert upload.upload_batch(layout, settings, progress=False).empty


def test_release_counts_leave_out_kept_items() -> None:
    table = pd.DataFrame(
        {
            "source_path": ["a", "b", "c", "d"],
            "disposition": ["released", "quarantined", "quarantined", "error"],
            "reason": ["", "review: kept in quarantine by jdoe", "leak gate: ...", "x"],
            "output_name": ["a.dcm", "b.dcm", "c.dcm", ""],
        }
    )
    assert disposition.release_counts(table) == (1, 1)
    assert disposition.review_counts(table) == (1, 1, 1)
    assert disposition.release_line(table.iloc[:0]) == "0 released, 0 waiting"


@pytest.mark.slow
def test_sendit_run_on_an_all_quarantined_batch(
    us_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sendit_helpers.run.pipeline import run_batches

    folder = _copy(us_only, tmp_path)
    assert run_batches([folder], tmp_path / "work", overrides={"PROGRESS": False}) == 0
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()[-2:]
    counts = dict(zip(header.split(), row.split(), strict=False))
    assert (counts["released"], counts["held"], counts["waiting"]) == ("0", "0", "3")
    assert "failed" not in out
