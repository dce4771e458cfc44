"""Warm kernels (issue 15): one kernel per worker of ``sendit run``, reused by every notebook,
started ahead and preloaded.

A warm run must write what one batch at a time writes (release/ bytes, tables,
disposition, manifests), a failing batch must not touch the next one run in the
same kernel, and a run killed at any point must complete everything once when
run again.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.run import cellrunner, cli, kernels, upstream
from sendit_helpers.run.pipeline import PIPELINE, stamp_path
from sendit_helpers.run.runner import KERNELS_DIR, Stage, notebook_path, open_batch, run_stage
from sendit_helpers.samples import synthetic
from sendit_helpers.stages import inspect, review, upload
from tests.helpers_cli import TINY, cli_env, kill_when, run_cmd, stage_notebook, tree

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
    uploaded = [stamp_path(BatchLayout.for_batch(f, work), Stage.UPLOAD).exists() for f in made]
    assert not all(uploaded), "the run was killed before it finished"

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


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: A cell that shows, before importing anything, whether the kernel had the stages loaded.
LOADED = nbformat.v4.new_code_cell(
    "import sys\nprint('sendit_helpers.stages.inspect' in sys.modules, flush=True)"
)


def _kernel_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and "ipykernel_launcher" in " ".join(p.cmdline())
    ]


def _stdout(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "".join(
        "".join(out.get("text", ""))
        for cell in nb["cells"]
        for out in cell.get("outputs", [])
        if out.get("name") == "stdout"
    )


def _pointer(notebook: Path) -> str:
    return notebook.with_suffix(".kernel.log").read_text()


def _module_of(package: str, name: str) -> str:
    """The module ``from package import name`` loads: ``package.name`` when it is one."""
    if hasattr(importlib.import_module(package), "__path__"):
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return f"{package}.{name}"
    return package


def test_preload_lists_every_module_the_stage_notebooks_import() -> None:
    """cellrunner.PRELOAD stays in step with the notebooks' import cells."""
    imported: set[str] = set()
    for path in sorted(NOTEBOOKS.glob("0[1-4]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code" or "import" not in cell.source:
                continue
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        imported.add(_module_of(node.module, alias.name))
    missing = {m for m in imported if m.startswith("sendit_helpers")} - set(cellrunner.PRELOAD)
    assert not missing, f"add to cellrunner.PRELOAD: {sorted(missing)}"


def test_the_command_starts_its_kernel_before_it_imports_arrow_pandas_or_pydicom() -> None:
    """What ``sendit`` imports before :func:`kernels.prestart` delays the first kernel
    (pyarrow alone was about 90 ms of it): the command line and kernel start need none
    of the data libraries, which the kernel and the stages import in its place."""
    import sys

    code = (
        "import sys; from sendit_helpers.run import cli, kernels; "
        "print(sorted(m for m in ('pyarrow', 'pandas', 'pydicom', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_kernel_started_ahead_is_preloaded_and_handed_to_the_first_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prestart's kernel runs the first notebook, with the stages already imported; the
    pool shuts it down; a prestart nobody used is stopped by discard_spares."""
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    work = tmp_path / "work"
    probe = stage_notebook(tmp_path / "probe.ipynb", [LOADED])
    monkeypatch.setattr(Stage, "source", lambda self: probe)
    layout = BatchLayout.for_batch(folder, work)
    kernels.prestart(work)
    started = _kernel_processes()
    assert len(started) == 1
    with kernels.WarmKernels(work):
        out = run_stage(Stage.INSPECT, layout, overrides={"PROGRESS": False}, html=False)
        assert _stdout(out).strip() == "True"
        assert started[0].is_running(), "the kernel started ahead ran the notebook"
    assert not _kernel_processes(), "the pool stopped the kernel it was handed"
    kernels.prestart(work, 2)
    assert len(_kernel_processes()) == 2
    kernels.prestart(work, 2)
    assert len(_kernel_processes()) == 2, "prestart tops up, it does not start more"
    kernels.discard_spares()
    assert not _kernel_processes()


@pytest.mark.slow
def test_a_kernel_over_its_memory_bound_is_replaced(tmp_path: Path) -> None:
    """With max_rss below any kernel's size, every notebook gets a fresh kernel; with
    the default bound, the next notebook reuses the same one."""
    folder = tmp_path / "in" / "b1"
    synthetic.make_batch(folder, TINY)
    layout = BatchLayout.for_batch(folder, tmp_path / "work")
    done = {"PROGRESS": False}
    for bound, same in ((1, False), (kernels.WARM_KERNEL_MAX_RSS, True)):
        with kernels.WarmKernels(tmp_path / "work", max_rss=bound):
            first = _pointer(run_stage(Stage.INSPECT, layout, overrides=done, html=False))
            second = _pointer(run_stage(Stage.INSPECT, layout, overrides=done, html=False))
        assert (first == second) is same, (bound, first, second)
    assert not _kernel_processes()


def test_a_command_whose_batch_fails_before_its_notebook_leaves_no_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sendit deidentify` of a missing folder: its one line, exit 1, and the kernel
    started ahead for it stopped."""
    missing = tmp_path / "nowhere"
    assert cli.main(["deidentify", str(missing), "--work", str(tmp_path / "work")]) == 1
    line = rf"batch folder {re.escape(str(missing))} does not exist"
    assert re.search(line, capsys.readouterr().err)
    assert not _kernel_processes()


def test_a_work_folder_that_cannot_be_made_is_each_batchs_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No kernel can be started ahead under a WORK that cannot be made; each batch still
    says why in its own line, as without the kernels started ahead."""
    made = list(synthetic.make_batches(tmp_path / "root", n=2, spec=TINY))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    work = blocker / "work"
    assert cli.main(["inspect", *map(str, made), "--work", str(work)]) == 1
    err = capsys.readouterr().err
    for folder in made:
        assert re.search(rf"batch {re.escape(str(folder))}: .*\(ENOTDIR\)", err), err
    assert not _kernel_processes()
