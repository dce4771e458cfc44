"""Warm kernels (issue 15): one kernel per worker of ``sendit run``, reused by every notebook.

A warm run must write what one batch at a time writes (release/ bytes, tables,
disposition, manifests), a failing batch must not touch the next one run in the
same kernel, and a run killed at any point must complete everything once when
run again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import psutil
import pytest

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.run import upstream
from sendit_helpers.run.pipeline import PIPELINE, stamp_path
from sendit_helpers.run.runner import KERNELS_DIR, Stage, notebook_path, open_batch
from sendit_helpers.samples import synthetic
from sendit_helpers.stages import inspect, review, upload
from tests.helpers_cli import TINY, cli_env, kill_when, run_cmd, tree

SECRET_HEX = "7761726d2d6b65726e656c2d74657374"  # "warm-kernel-test"


def _one_by_one(batches: list[Path], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage of each batch, in this process, one batch after the other."""
    monkeypatch.setenv("SENDIT_SITE_SECRET", SECRET_HEX)
    for folder in batches:
        layout, settings = open_batch(folder, work, [], {"PROGRESS": False})
        inspect.inspect_batch(layout, settings)
        upstream.deidentify(layout, settings)
        review.apply_decisions(layout, settings)
        upload.upload_batch(layout, settings, progress=False)


def _manifest(layout: BatchLayout) -> list[tuple[str, ...]]:
    """The last manifest row of each item, without what differs between work folders
    (time, destination); a killed upload leaves earlier rows a rerun supersedes."""
    table = pd.read_csv(layout.phi / "upload" / "manifest.csv", dtype=str).fillna("")
    table = table.drop_duplicates(["item", "target"], keep="last")
    keep = [c for c in table.columns if c not in ("time", "destination", "remote_id")]
    return sorted(tuple(row) for row in table[keep].itertuples(index=False))


def _same_outputs(warm: BatchLayout, cold: BatchLayout) -> None:
    assert tree(warm.release) == tree(cold.release)
    assert warm.disposition_csv.read_bytes() == cold.disposition_csv.read_bytes()
    for table in ("files", "series", "dates"):
        left = pd.read_parquet(warm.inspect_dir / f"{table}.parquet")
        right = pd.read_parquet(cold.inspect_dir / f"{table}.parquet")
        pd.testing.assert_frame_equal(left, right)
    for name in ("lookup.parquet", "quarantined.parquet"):
        if (cold.phi / "deidentify" / name).exists():
            pd.testing.assert_frame_equal(
                pd.read_parquet(warm.phi / "deidentify" / name),
                pd.read_parquet(cold.phi / "deidentify" / name),
            )
    assert _manifest(warm) == _manifest(cold)


@pytest.mark.slow
def test_warm_run_equals_one_by_one_and_a_failing_batch_spares_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches through one warm kernel; the middle one fails at deidentify."""
    root = tmp_path / "root"
    made = list(synthetic.make_batches(root, n=3, spec=TINY))
    bad = made[1]
    work = tmp_path / "work"
    (work / bad.name / "phi").mkdir(parents=True)
    (work / bad.name / "phi" / "deidentify").write_text("not a folder")

    proc = subprocess.run(
        run_cmd(root, work, "--workers", "1"),
        env=cli_env(SECRET_HEX),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{bad.name}: stage deidentify failed" in proc.stderr
    # one kernel ran all twelve notebooks (one worker): a single kernel log, pointed at
    logs = list((work / KERNELS_DIR).iterdir())
    assert len(logs) == 1 and oct((work / KERNELS_DIR).stat().st_mode & 0o777) == "0o700"

    reference = tmp_path / "reference"
    good = [made[0], made[2]]
    _one_by_one(good, reference, monkeypatch)
    for folder in good:
        layout = BatchLayout.for_batch(folder, work)
        _same_outputs(layout, BatchLayout.for_batch(folder, reference))
        for stage in PIPELINE:
            nb = notebook_path(stage, layout)
            assert nb.with_suffix(".html").exists()
            assert str(logs[0]) in nb.with_suffix(".kernel.log").read_text()
            cells = json.loads(nb.read_text())["cells"]
            counts = [c["execution_count"] for c in cells if c["cell_type"] == "code"]
            assert counts[0] == 1, f"{nb.name} of {folder.name} does not count from 1"
    failed = notebook_path(Stage.DEIDENTIFY, BatchLayout.for_batch(bad, work))
    assert failed.exists() and failed.with_suffix(".html").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker",
    [
        "batch_001/phi/notebooks/02_deidentify.ipynb",
        "batch_002/phi/notebooks/01_inspect.ipynb",
        "batch_002/phi/notebooks/04_upload.ipynb",
        # a stamp written, its stage's HTML copy maybe not yet (written in the background)
        "batch_001/phi/stages/inspect.json",
        "batch_002/phi/stages/review.json",
    ],
)
def test_killed_warm_run_completes_everything_once(
    marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of ``sendit run`` when ``marker`` appears; the rerun completes every batch once."""
    root = tmp_path / "root"
    made = list(synthetic.make_batches(root, n=2, spec=TINY))
    work = tmp_path / "work"
    children = kill_when(
        run_cmd(root, work),
        cli_env(SECRET_HEX),
        tmp_path / "run1.out",
        (work / marker).exists,
        timeout=240,
        poll=0.02,
    )
    _gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, "the warm kernel outlived the killed run"
    assert not stamp_path(BatchLayout.for_batch(made[1], work), Stage.UPLOAD).exists()

    again = subprocess.run(run_cmd(root, work), env=cli_env(SECRET_HEX), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    reference = tmp_path / "reference"
    _one_by_one(made, reference, monkeypatch)
    released = 0
    for folder in made:
        layout = BatchLayout.for_batch(folder, work)
        _same_outputs(layout, BatchLayout.for_batch(folder, reference))
        released += len(list(layout.release.rglob("*.dcm")))
        assert all(stamp_path(layout, stage).exists() for stage in PIPELINE)
        # every notebook has its HTML copy (one killed before its copy got it on the rerun)
        assert all(notebook_path(s, layout).with_suffix(".html").exists() for s in PIPELINE)
    assert released > 0
    with sqlite3.connect(work / "storage" / "index.sqlite") as conn:
        images = conn.execute("SELECT COUNT(*), COUNT(DISTINCT url) FROM image").fetchone()
    assert images == (released, released), "each released image stored exactly once"
