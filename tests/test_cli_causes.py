"""When a stage fails, the sendit command prints its cause in one line, then the notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sendit_helpers.samples import batchspec, synthetic


def _sendit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendit_helpers.run.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("sendit: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_stage_failures_print_their_cause(tmp_path: Path) -> None:
    batch = tmp_path / "input" / "B1"
    planted = synthetic.make_batch(
        batch, batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
    )
    work = tmp_path / "work"
    notebooks = work / "B1" / "phi" / "notebooks"

    # a stage that succeeds names the first file in error (the batch has a truncated file)
    result = _sendit("inspect", str(batch), "--work", str(work))
    assert result.returncode == 0, result.stderr
    done = [line for line in result.stderr.splitlines() if "inspect done for batch B1" in line]
    assert len(done) == 1, result.stderr
    assert " (1 file(s) in error, first: " in done[0]
    assert ": truncated file: pixel data is " in done[0]
    assert f"see {work / 'B1' / 'phi' / 'disposition.csv'}); executed notebook: " in done[0]

    # upload before de-identify: the gate has no record
    result = _sendit("upload", str(batch), "--work", str(work))
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith(
        f"sendit: error: stage upload failed for batch B1: GateError: {work / 'B1' / 'release'} "
        "has no leak-gate record"
    )
    assert "run `sendit deidentify`" in line
    assert f"; executed notebook: {notebooks / '04_upload.ipynb'} (cell " in line

    # a recipe typo under `sendit run`: the recipe's own message, not "chunk 1 of 4 raised"
    recipe = tmp_path / "site.deid"
    recipe.write_text("FORMAT dicom\n%header\nREMOVE PatientNme\n", encoding="utf-8")
    result = _sendit("run", str(batch), "--work", str(work), "--set", f"DEID_RECIPES={recipe}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("sendit: B1: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"sendit: B1: stage deidentify failed for batch B1: RecipeError: {recipe}:3: unknown "
        "field 'PatientNme' (did you mean PatientName (0010,0010)?)"
    )
    assert f"executed notebook: {notebooks / '02_deidentify.ipynb'} (cell " in lines[0]
    assert "chunk" not in result.stderr and "--workers 1" not in result.stderr

    # a decisions typo (nothing quarantined: the item column is not checked against a list)
    decisions = tmp_path / "decisions.csv"
    decisions.write_text("item,decision\nIRx_1_1.dcm,relase\n", encoding="utf-8")
    result = _sendit(
        "review",
        str(batch),
        "--work",
        str(work),
        "--decisions",
        str(decisions),
        "--set",
        "QUARANTINE_FLAGGED=false",
    )
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith(
        f"sendit: error: stage review failed for batch B1: ReviewError: decisions file "
        f"{decisions}, line 2: decision 'relase' is not one of release, scrub, keep"
    )
    assert f"executed notebook: {notebooks / '03_review_phi.ipynb'} (cell " in line
    for value in planted.all_values():
        assert value not in result.stderr
