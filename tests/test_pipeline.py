"""sendit run: stage stamps, resume after SIGKILL, failing batches, parallel batches on Dask."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
from pathlib import Path

import nbformat
import psutil
import pytest

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings, load_settings
from sendit_helpers.run import cli, runner, upstream
from sendit_helpers.run.pipeline import (
    PIPELINE,
    BatchStatus,
    LockError,
    batch_lock,
    clear_stamps,
    fingerprint,
    is_current,
    read_stamp,
    run_batch,
    split_workers,
    stale_stages,
    stamp_path,
    status_table,
    write_stamp,
)
from sendit_helpers.run.runner import Stage, notebook_path, open_batch, warm_kernels
from sendit_helpers.samples import synthetic
from sendit_helpers.stages import inspect, review
from tests.helpers_cli import TINY, cli_env, kill_when, run_cmd, stage_notebook, tree

SECRET_HEX = "706970656c696e652d746573742d736563726574"  # "pipeline-test-secret"


# ------------------------------------------------------------------ units
def test_split_workers_batches_first() -> None:
    assert split_workers(2, 3) == (2, 1)
    assert split_workers(2, 1) == (1, 2)
    assert split_workers(8, 3) == (3, 2)
    assert split_workers(1, 5) == (1, 1)
    assert split_workers(4, 10, "dask", "tcp://h:8786") == (10, 4)
    slots, per_batch = split_workers(0, 1)
    assert slots == 1 and per_batch == (os.cpu_count() or 1)


def test_fingerprints_follow_inputs_settings_and_chain(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    base = load_settings([], {"PROGRESS": False}, environ={})
    key = fingerprint(Stage.INSPECT, layout, base)
    assert key is not None
    # execution settings and secrets do not count; output-shaping settings do
    faster = load_settings(
        [], {"WORKERS": 4, "PROGRESS": True}, environ={"SENDIT_SITE_SECRET": "x"}
    )
    assert fingerprint(Stage.INSPECT, layout, faster) == key
    other = load_settings([], {"THUMBNAIL_SIZE": 64}, environ={})
    assert fingerprint(Stage.INSPECT, layout, other) != key
    # a setting inspect does not read does not count
    later = load_settings([], {"ENTITY_PREFIX": "ZZ"}, environ={})
    assert fingerprint(Stage.INSPECT, layout, later) == key
    # an input file touched
    first = inspect.discover(folder)[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert fingerprint(Stage.INSPECT, layout, base) != key
    # later stages hang on the previous stage's stamp
    assert fingerprint(Stage.DEIDENTIFY, layout, base) is None
    notebook_path(Stage.INSPECT, layout).parent.mkdir(parents=True)
    notebook_path(Stage.INSPECT, layout).write_text("{}")
    write_stamp(layout, Stage.INSPECT, base, 1.0)
    assert is_current(Stage.INSPECT, layout, base)
    assert not is_current(Stage.INSPECT, layout, other)
    # sendit run wants the executed notebook; upstream does not
    notebook_path(Stage.INSPECT, layout).rename(tmp_path / "moved.ipynb")
    assert not is_current(Stage.INSPECT, layout, base)
    assert is_current(Stage.INSPECT, layout, base, notebook=False)
    (tmp_path / "moved.ipynb").rename(notebook_path(Stage.INSPECT, layout))
    deid = fingerprint(Stage.DEIDENTIFY, layout, base)
    assert deid is not None
    write_stamp(layout, Stage.INSPECT, base, 1.0)  # inspect ran again: deidentify must too
    assert fingerprint(Stage.DEIDENTIFY, layout, base) != deid
    clear_stamps(layout, Stage.INSPECT)
    assert not stamp_path(layout, Stage.INSPECT).exists()


def _stamp_all(layout: BatchLayout, settings: Settings) -> None:
    for stage in PIPELINE:
        notebook_path(stage, layout).parent.mkdir(parents=True, exist_ok=True)
        notebook_path(stage, layout).write_text("{}")
        write_stamp(layout, stage, settings, 1.0)


def test_changing_a_setting_reruns_only_the_stages_that_read_it(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    store = {"LOCAL_STORAGE_DIR": str(tmp_path / "store"), "PROGRESS": False}
    base = load_settings([], store, environ={})
    _stamp_all(layout, base)
    assert stale_stages(layout, base, outputs=False) == []

    def changed(**overrides: object) -> list[str]:
        return [
            str(s)
            for s in stale_stages(layout, load_settings([], store | overrides, {}), outputs=False)
        ]

    assert changed(ORTHANC_URL="http://elsewhere:8042") == ["upload"]
    assert changed(LOCAL_STORAGE_DIR=str(tmp_path / "other-store")) == ["upload"]
    assert changed(REVIEWER="someone") == ["review", "upload"]
    assert changed(ENTITY_PREFIX="ZZ") == ["deidentify", "review", "upload"]
    assert changed(THUMBNAIL_SIZE=64) == ["inspect", "deidentify", "review", "upload"]
    assert changed(WORKERS=3, PROGRESS=True) == []
    # the recipe's contents count, not only its name
    recipe = tmp_path / "site.deid"
    recipe.write_text("FORMAT dicom\n%header\nREMOVE StationName\n")
    with_recipe = load_settings([], store | {"DEID_RECIPES": [str(recipe)]}, environ={})
    assert changed(DEID_RECIPES=[str(recipe)]) == ["deidentify", "review", "upload"]
    _stamp_all(layout, with_recipe)
    assert stale_stages(layout, with_recipe, outputs=False) == []
    recipe.write_text("FORMAT dicom\n%header\nREMOVE StationName\nREMOVE Manufacturer\n")
    assert stale_stages(layout, with_recipe, outputs=False) == [
        Stage.DEIDENTIFY,
        Stage.REVIEW,
        Stage.UPLOAD,
    ]
    # a new review decision re-runs review and upload
    layout.review_dir.mkdir(parents=True, exist_ok=True)
    (layout.review_dir / "decisions.csv").write_text("item,decision\n")
    recipe.write_text("FORMAT dicom\n%header\nREMOVE StationName\n")
    assert stale_stages(layout, with_recipe, outputs=False) == [Stage.REVIEW, Stage.UPLOAD]


@pytest.mark.slow
def test_a_new_orthanc_url_or_store_reruns_upload_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDIT_SITE_SECRET", SECRET_HEX)
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    work = tmp_path / "work"
    layout = BatchLayout.for_batch(folder, work)
    store = {"PROGRESS": False, "WORKERS": 1, "LOCAL_STORAGE_DIR": str(tmp_path / "store")}
    with warm_kernels(work):
        first = run_batch(layout, PIPELINE, [], store)
        assert first.status == "done", first.detail
        assert first.ran == [str(s) for s in PIPELINE]
        url = run_batch(layout, PIPELINE, [], store | {"ORTHANC_URL": "http://elsewhere:8042"})
        assert (url.ran, url.skipped) == (["upload"], ["inspect", "deidentify", "review"])
        other = tmp_path / "other-store"
        moved = run_batch(layout, PIPELINE, [], store | {"LOCAL_STORAGE_DIR": str(other)})
        assert (moved.ran, moved.status) == (["upload"], "done")
    assert sorted(p.name for p in other.rglob("*.dcm")) == sorted(
        p.name for p in (tmp_path / "store").rglob("*.dcm")
    )


def test_upstream_decides_by_stamps(tmp_path: Path) -> None:
    """run.upstream makes inspect current by its stamp, as sendit run does (#13): it
    writes the stamp, skips a current inspect, and re-runs it when an input or a setting
    inspect reads changed; the de-identify stage itself only needs inspect's outputs."""
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    settings = load_settings([], {"PROGRESS": False}, environ={})
    assert upstream.ensure_inspected(layout, settings) is True
    stamp = read_stamp(layout, Stage.INSPECT)
    assert stamp is not None and stamp["notebook"] == ""
    assert is_current(Stage.INSPECT, layout, settings, notebook=False)
    assert not is_current(Stage.INSPECT, layout, settings)  # sendit run wants its notebook
    assert upstream.ensure_inspected(layout, settings) is False
    # a changed input: same size and contents, a new modification time
    first = sorted(p for p in folder.rglob("*") if p.is_file())[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    write_stamp(layout, Stage.DEIDENTIFY, settings, 1.0)
    assert upstream.ensure_inspected(layout, settings) is True
    assert not stamp_path(layout, Stage.DEIDENTIFY).exists(), "inspect ran: later stamps go"
    assert read_stamp(layout, Stage.INSPECT)["run_id"] != stamp["run_id"]  # type: ignore[index]
    assert upstream.ensure_inspected(layout, settings) is False
    smaller = load_settings([], {"PROGRESS": False, "THUMBNAIL_SIZE": 64}, environ={})
    assert upstream.ensure_inspected(layout, smaller) is True


@pytest.mark.slow
def test_sendit_inspect_then_run_does_not_inspect_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage command writes its stamp: `sendit inspect` then `sendit run` skips inspect
    (and runs the rest); after an input changes, the run inspects again."""
    monkeypatch.setenv("SENDIT_SITE_SECRET", SECRET_HEX)
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    work = tmp_path / "work"
    layout = BatchLayout.for_batch(folder, work)
    store = {"PROGRESS": False, "WORKERS": 1, "LOCAL_STORAGE_DIR": str(tmp_path / "store")}
    sets = [f"--set={k}={v}" for k, v in store.items()]
    assert cli.main(["inspect", str(folder), "--work", str(work), *sets]) == 0
    stamp = read_stamp(layout, Stage.INSPECT)
    assert stamp is not None and stamp["notebook"] == str(notebook_path(Stage.INSPECT, layout))
    with warm_kernels(work):
        run = run_batch(layout, PIPELINE, [], store)
        assert run.status == "done", run.detail
        assert (run.skipped, run.ran) == (["inspect"], ["deidentify", "review", "upload"])
        assert read_stamp(layout, Stage.INSPECT) == stamp
        first = sorted(p for p in folder.rglob("*") if p.is_file())[0]
        st = first.stat()
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        again = run_batch(layout, PIPELINE, [], store)
        assert again.status == "done", again.detail
        assert again.ran == [str(s) for s in PIPELINE]


@pytest.mark.slow
def test_html_copies_written_in_the_background_and_their_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendit run writes a notebook's HTML copy while the next stage runs; a copy that
    fails fails the batch at its stage (one line naming the batch), and the rerun writes
    the missing copy of the (complete, current) notebook without running it again."""
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work")
    trivial = stage_notebook(tmp_path / "trivial.ipynb", [nbformat.v4.new_code_cell("x = 1")])
    monkeypatch.setattr(Stage, "source", lambda self: trivial)
    real = runner.export_html
    threads: set[str] = set()

    def failing_for_deidentify(notebook: Path) -> Path:
        threads.add(threading.current_thread().name)
        if notebook.name == notebook_path(Stage.DEIDENTIFY, layout).name:
            raise RuntimeError("exporter down")
        return real(notebook)

    monkeypatch.setattr(runner, "export_html", failing_for_deidentify)
    overrides = {"PROGRESS": False}
    with warm_kernels(tmp_path / "work"):
        first = run_batch(layout, PIPELINE, [], overrides)
        assert (first.status, first.stage) == ("failed", "deidentify")
        assert re.fullmatch(
            rf"stage deidentify ran for batch {layout.name} but its HTML copy could not be "
            r"written \(RuntimeError\); the executed notebook \S+ is complete: open it "
            r"instead, or rerun to retry the copy",
            first.detail,
        ), first.detail
        assert first.ran == [str(s) for s in PIPELINE]
        assert all(name.startswith("sendit-html") for name in threads)
        for stage in (Stage.INSPECT, Stage.REVIEW, Stage.UPLOAD):
            assert notebook_path(stage, layout).with_suffix(".html").exists()
        monkeypatch.setattr(runner, "export_html", real)
        again = run_batch(layout, PIPELINE, [], overrides)
    assert again.status == "done", again.detail
    # deidentify's notebook is not run again (upload is: the trivial notebook stored nothing)
    assert again.skipped[:3] == ["inspect", "deidentify", "review"], again
    for stage in PIPELINE:
        html = notebook_path(stage, layout).with_suffix(".html")
        assert html.stat().st_mode & 0o777 == 0o600


def test_batch_lock_excludes_a_second_run(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "b1"
    folder.mkdir(parents=True)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    with batch_lock(layout):
        with pytest.raises(LockError, match="another sendit process"):
            with batch_lock(layout, timeout=0.2):
                pass
    with batch_lock(layout, timeout=0.2):
        pass


def test_status_table_columns() -> None:
    text = status_table(
        [
            BatchStatus(
                "b1",
                "done",
                "upload",
                3.21,
                ran=["inspect"],
                skipped=["review"],
                released=0,
                held=1,
                waiting=3,
            ),
            BatchStatus("b2", "failed", "deidentify", 1.0, notebook="/w/b2/phi/notebooks/02.ipynb"),
        ]
    )
    header = text.splitlines()[0].split()
    assert header == [
        *("batch", "status", "stage", "seconds", "ran", "skipped"),
        *("released", "held", "waiting", "notebook"),
    ]
    assert "/w/b2/phi/notebooks/02.ipynb" in text and "3.2" in text
    b1 = text.splitlines()[1].split()
    assert b1[6:9] == ["0", "1", "3"]
    assert text.splitlines()[2].split()[6:9] == ["-", "-", "-"]


# ------------------------------------------------------------------ end to end
def _reference(batches: list[Path], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the stage notebooks do, in-process and uninterrupted (inspect, deidentify, review)."""
    monkeypatch.setenv("SENDIT_SITE_SECRET", SECRET_HEX)
    for folder in batches:
        layout, settings = open_batch(folder, work, [], {"PROGRESS": False})
        inspect.inspect_batch(layout, settings)
        upstream.deidentify(layout, settings)
        review.apply_decisions(layout, settings)


def _table(stdout: str) -> dict[str, list[str]]:
    """The status table's rows by batch: batch, status, stage, seconds, ran, skipped[, notebook]."""
    return {line.split()[0]: line.split() for line in stdout.splitlines()[1:] if line.strip()}


@pytest.mark.slow
def test_killed_run_resumes_and_failing_batch_is_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One scenario, to keep the suite fast (each stage starts a kernel).

    Three batches; batch_003 cannot be de-identified (its ``phi/deidentify`` is
    a file).  A local run is SIGKILLed as soon as a 02_deidentify notebook
    appears; the rerun, on a 2-worker Dask LocalCluster, finishes batch_001 and
    batch_002 with release/ equal to an uninterrupted run's and every image
    stored once, reports batch_003's failure with its notebook and exits 1; a
    third run re-runs nothing but the failed stage.
    """
    pytest.importorskip("distributed")
    root = tmp_path / "root"
    made = list(synthetic.make_batches(root, n=3, spec=TINY))
    good, bad = made[:2], made[2]
    work = tmp_path / "work"
    (work / bad.name / "phi").mkdir(parents=True)
    (work / bad.name / "phi" / "deidentify").write_text("not a folder")

    # 1. killed midway
    children = kill_when(
        run_cmd(root, work, "--workers", "2"),
        cli_env(SECRET_HEX),
        tmp_path / "run1.out",
        lambda: bool(list(work.glob("*/phi/notebooks/02_deidentify.ipynb"))),
        timeout=120,
        poll=0.05,
    )
    _gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, "notebook kernels outlived the killed run"
    assert not any(stamp_path(BatchLayout.for_batch(b, work), Stage.UPLOAD).exists() for b in made)

    # 2. rerun, on Dask this time
    again = subprocess.run(
        run_cmd(root, work, "--workers", "2", "--executor", "dask"),
        env=cli_env(SECRET_HEX),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    rows = _table(again.stdout)
    assert again.returncode == 1, again.stdout + again.stderr
    assert rows["batch_001"][1:3] == ["done", "upload"], again.stdout + again.stderr
    assert rows["batch_002"][1:3] == ["done", "upload"], again.stdout + again.stderr
    assert int(rows["batch_001"][5]) + int(rows["batch_002"][5]) >= 1, "finished stages reused"
    failed_nb = notebook_path(Stage.DEIDENTIFY, BatchLayout.for_batch(bad, work))
    assert rows[bad.name][1:3] == ["failed", "deidentify"]
    assert rows[bad.name][-1] == str(failed_nb) and failed_nb.with_suffix(".html").exists()
    assert f"{bad.name}: stage deidentify failed" in again.stderr
    assert "File exists (EEXIST) on " in again.stderr  # the cause, not only its type

    reference = tmp_path / "reference"
    _reference(good, reference, monkeypatch)
    released = 0
    for folder in good:
        layout = BatchLayout.for_batch(folder, work)
        assert tree(layout.release) == tree(reference / folder.name / "release")
        released += len(list(layout.release.rglob("*.dcm")))
        for stage in PIPELINE:
            nb = notebook_path(stage, layout)
            html = nb.with_suffix(".html")
            assert nb.exists() and html.exists()
            assert "application/vnd.jupyter.widget-state+json" not in html.read_text()
    assert released > 0
    with sqlite3.connect(work / "storage" / "index.sqlite") as conn:
        images = conn.execute("SELECT COUNT(*), COUNT(DISTINCT url) FROM image").fetchone()
    assert images == (released, released), "each released image stored exactly once"
    assert len(list((work / "storage").rglob("*.dcm"))) == released

    # 3. nothing changed: only the failed stage runs again
    third = subprocess.run(
        run_cmd(root, work, "--workers", "2"),
        env=cli_env(SECRET_HEX),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    rows = _table(third.stdout)
    assert third.returncode == 1
    assert rows["batch_001"][4:6] == ["0", "4"] and rows["batch_002"][4:6] == ["0", "4"]
    assert rows[bad.name][4:6] == ["1", "1"], third.stdout
