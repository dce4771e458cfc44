"""Inputs all accounted for, one record per batch, faults as one line, secrets nowhere.

Unreadable inputs are made with ``chmod 000``.  Root reads them anyway, so
under root the commands run through ``setpriv`` without the capabilities that
bypass file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a real
permission fault, not a mock.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from sendit_helpers.core import discovery
from sendit_helpers.core.dicomio import probe
from sendit_helpers.core.errors import (
    BatchError,
    GateError,
    LeakError,
    StageError,
    os_error_from_text,
    os_error_line,
)
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord, leakgate
from sendit_helpers.run import runner, upstream
from sendit_helpers.run.cli import main
from sendit_helpers.run.pipeline import plan_batches
from sendit_helpers.run.runner import Stage, notebook_path, open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import inspect, review, upload
from tests.helpers_cli import stage_notebook

TINY = batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
QUIET = {"PROGRESS": False, "THUMBNAILS": False, "OCR_SCREEN": "off"}
SECRET_HEX = "696e707574732d746573742d736563726574"  # "inputs-test-secret"
NON_UTF8 = os.fsdecode(b"caf\xe9.dcm")


@pytest.fixture(autouse=True)
def _site_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDIT_SITE_SECRET", SECRET_HEX)


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging forever if something opens a FIFO for reading."""

    def hang(_signum: int, _frame: object) -> None:
        raise TimeoutError("blocked: a FIFO was opened for reading")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _unprivileged(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run so that file permissions apply (see the module docstring)."""
    if os.geteuid() != 0:
        return list(cmd)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PROGRESS="false", SENDIT_SITE_SECRET=SECRET_HEX, **extra)
    env.pop("WORKERS", None)
    return env


def _sendit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _unprivileged([sys.executable, "-m", "sendit_helpers.run.cli", *args]),
        capture_output=True,
        text=True,
        check=False,
        env=env or _env(),
        timeout=280,
    )


def _odd_entries(folder: Path, example: Path) -> dict[str, str]:
    """Put every kind of odd entry in ``folder``; return ``name -> expected reason fragment``."""
    os.mkfifo(folder / "pipe")
    os.symlink(folder / "nowhere", folder / "dangling")
    os.symlink(folder / "loop", folder / "loop")
    (folder / NON_UTF8).write_bytes(example.read_bytes())
    expected = {
        "pipe": "a FIFO (named pipe), not read",
        "dangling": "dangling symbolic link",
        "loop": "symbolic link loop",
        "caf\\xe9.dcm": "path is not valid UTF-8",
    }
    odd_dir = folder / os.fsdecode(b"dossier-\xff")
    odd_dir.mkdir()
    (odd_dir / "inside.dcm").write_bytes(example.read_bytes())
    expected["dossier-\\xff/inside.dcm"] = "path is not valid UTF-8"
    try:
        os.mknod(folder / "null", 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
        expected["null"] = "a character device, not read"
    except PermissionError:
        pass  # not root: no device
    return expected


# ------------------------------------------------------------------ point 4: one batch, one record
def test_same_named_batch_refused_nothing_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "a" / "same"
    second = tmp_path / "b" / "same"
    synthetic.make_batch(first, TINY)
    synthetic.make_batch(
        second, batchspec.BatchSpec(n_series=1, images_per_series=3, rows=16, columns=16, seed=7)
    )
    work = tmp_path / "work"
    layout, settings = open_batch(first, work, [], QUIET)
    inspect.inspect_batch(layout, settings)
    upstream.deidentify(layout, settings)
    review.apply_decisions(layout, settings)
    upload.upload_batch(layout, settings, progress=False)
    kept = [
        layout.deid_dir / "lookup.parquet",
        layout.disposition_csv,
        layout.upload_dir / "manifest.csv",
        layout.source_record,
    ]
    before = {p: p.read_bytes() for p in kept}

    with pytest.raises(BatchError, match=r"belongs to the input folder .*a/same.*another --work"):
        open_batch(second, work, [], QUIET)
    for command in ("run", "inspect", "deidentify", "upload"):
        assert main([command, str(second), "--work", str(work)]) == 1
        err = capsys.readouterr().err
        assert f"work folder {work / 'same'} belongs to the input folder {first}" in err
        assert "rename the input folder" in err and "another --work" in err
    assert {p: p.read_bytes() for p in kept} == before
    # the first batch itself is still welcome
    assert open_batch(first, work, [], QUIET)[0] == layout


@pytest.mark.parametrize("text", ["", "{not json", '["a list"]', '{"loose": false}'])
def test_an_unreadable_claim_is_refused_and_kept(tmp_path: Path, text: str) -> None:
    """A ``phi/source.json`` that names no folder: refused with what to do, left as it is."""
    folder = tmp_path / "in" / "b"
    folder.mkdir(parents=True)
    layout = BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    layout.source_record.write_text(text, encoding="utf-8")
    with pytest.raises(BatchError, match=r"source\.json is unreadable, .*another --work"):
        BatchLayout.for_batch(folder, tmp_path / "work").ensure()
    assert layout.source_record.read_text(encoding="utf-8") == text


@pytest.mark.slow
def test_same_named_batches_in_one_run_second_refused(tmp_path: Path) -> None:
    synthetic.make_batch(tmp_path / "a" / "same", TINY)
    synthetic.make_batch(tmp_path / "b" / "same", TINY)
    work = tmp_path / "work"
    (work / "same" / "phi").mkdir(parents=True)
    (work / "same" / "phi" / "stages").write_text("not a folder: the run stops at its lock")
    result = _sendit(
        "run", str(tmp_path / "a" / "same"), str(tmp_path / "b" / "same"), "--work", str(work)
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'b' / 'same'} is not run: rename it or run it with another --work" in (
        result.stderr
    )


# ------------------------------------------------------------------ point 5: every input a row
def test_odd_entries_each_get_a_row(tmp_path: Path, alarm: None) -> None:
    folder = tmp_path / "in" / "odd_batch"
    synthetic.make_batch(folder, TINY)
    example = next(folder.rglob("*.dcm"))
    expected = _odd_entries(folder, example)
    os.symlink(folder.parent, folder / "up")  # a link to a folder is not followed
    expected["up"] = "symbolic link to a folder, not followed"
    layout, settings = open_batch(folder, tmp_path / "work", [], QUIET)
    result = inspect.inspect_batch(layout, settings)
    upstream.deidentify(layout, settings)
    table = pd.read_csv(layout.disposition_csv, dtype=str, keep_default_na=False)
    rows = table.set_index("source_path")
    for name, reason in expected.items():
        row = rows.loc[f"{folder}/{name}"]
        assert reason in row["reason"], (name, row["reason"])
        assert row["disposition"] in ("error", "non_dicom", "skipped")
    regular = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    utf8 = [p for p in regular if discovery.is_utf8(str(p))]
    assert set(map(str, utf8)) <= set(rows.index)
    assert result.summary["files"] == len(table)
    assert (table["disposition"] == "released").sum() >= 1  # the batch itself went through


def test_probe_never_waits_on_a_fifo(tmp_path: Path, alarm: None) -> None:
    os.mkfifo(tmp_path / "pipe")
    found = probe(tmp_path / "pipe")
    assert found.kind == "non_dicom" and "not a regular file" in found.reason


def test_loose_files_and_empty_folders_form_a_batch(tmp_path: Path) -> None:
    root = tmp_path / "export"
    made = list(synthetic.make_batches(root, n=2, spec=TINY))
    shutil.copy(next(made[0].rglob("*.dcm")), root / "stray.dcm")
    (root / "README.txt").write_text("export notes")
    (root / "no_study").mkdir()
    (root / "no_study" / "notes.txt").write_text("x")
    work = root / "work"  # the work folder inside the root is left out
    work.mkdir()
    (work / "old.txt").write_text("x")
    plan = plan_batches([root], work)
    assert plan.batches == made and plan.loose == [root] and not plan.problems
    layout = BatchLayout.for_batch(root, work, loose=True)
    found = inspect.discover_inputs(layout)
    assert found.files == [
        str(root / "README.txt"),
        str(root / "stray.dcm"),
        str(root / "no_study" / "notes.txt"),
    ]
    # once claimed, the notebooks (given only the folder) see the same loose batch
    layout.ensure()
    assert BatchLayout.for_batch(root, work).loose
    BatchLayout.for_batch(root, work, loose=False).ensure()  # the root became a plain batch
    assert not BatchLayout.for_batch(root, work).loose
    layout.ensure()
    # nothing loose: no loose batch; a path that is not a folder: a problem, not an abort
    (root / "README.txt").unlink()
    (root / "stray.dcm").unlink()
    shutil.rmtree(root / "no_study")
    plan = plan_batches([root, tmp_path / "missing"], work)
    assert plan.loose == [] and [p for p, _m in plan.problems] == [str(tmp_path / "missing")]


def test_a_root_of_links_to_study_folders_gets_its_rows_and_does_not_fail(
    tmp_path: Path,
) -> None:
    """A folder holding only links to study folders (nothing to read): inspect gives every
    link its row, with the fix, and an empty table of files, not a failure."""
    studies = list(synthetic.make_batches(tmp_path / "studies", n=2, spec=TINY))
    root = tmp_path / "picked"
    root.mkdir()
    for study in studies:
        (root / study.name).symlink_to(study, target_is_directory=True)
    plan = plan_batches([root], tmp_path / "work")
    assert plan.batches == [] and plan.loose == [root]
    layout = BatchLayout.for_batch(root, tmp_path / "work", loose=True)
    result = inspect.inspect_batch(layout, {**QUIET, "WORKERS": 1})
    assert result.files.empty
    reasons = result.dispositions.set_index("source_path")["reason"]
    assert sorted(reasons.index) == sorted(str(root / s.name) for s in studies)
    assert all("symbolic link to a folder, not followed" in r for r in reasons)


@pytest.mark.slow
def test_run_accounts_for_every_input_and_keeps_phi_and_secrets_in(tmp_path: Path) -> None:
    """A root with a study folder, loose files, unreadable folder and file, links, a FIFO,
    a device and a non-UTF-8 name: every entry gets a row, the run completes, everything
    under phi/ is owner-only, and no secret from the environment is in any file written."""
    root = tmp_path / "export"
    made = list(synthetic.make_batches(root, n=1, spec=TINY))
    example = next(made[0].rglob("*.dcm"))
    spare = list(synthetic.make_batches(tmp_path / "spare", n=2, spec=TINY))
    shutil.copy(next(spare[1].rglob("*.dcm")), root / "stray.dcm")  # another study: loose
    expected = _odd_entries(root, example)
    locked = root / "locked"
    locked.mkdir()
    shutil.copy(example, locked / "hidden.dcm")
    shutil.copy(example, root / "unreadable.dcm")
    (root / "unreadable.dcm").chmod(0)
    locked.chmod(0)
    expected["locked"] = "cannot read the folder (Permission denied, EACCES)"
    expected["unreadable.dcm"] = "cannot open the file (PermissionError"
    os.mkfifo(made[0] / "pipe_in_batch")  # inside a study batch too
    secrets = {
        "ORTHANC_USERNAME": "user-5e1f0c-distinct",
        "ORTHANC_PASSWORD": "pw-8c2d7a-distinct",
        "IDENTIFIER_TOKEN": "token-3b9e4f-distinct",
        "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/creds-6a1d2c-distinct.json",
    }
    work = tmp_path / "work"
    try:
        result = _sendit(
            "run", str(root), "--work", str(work), "--workers", "2", env=_env(**secrets)
        )
    finally:
        locked.chmod(0o700)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {line.split()[0] for line in result.stdout.splitlines()[1:]} == {"batch_001", "export"}
    tables = [
        pd.read_csv(p, dtype=str, keep_default_na=False) for p in work.glob("*/phi/disposition.csv")
    ]
    rows = pd.concat(tables).set_index("source_path")
    assert rows.index.is_unique
    for name, reason in expected.items():
        assert reason in rows.loc[f"{root}/{name}", "reason"], name
    assert "a FIFO" in rows.loc[f"{made[0]}/pipe_in_batch", "reason"]
    assert rows.loc[f"{root}/stray.dcm", "disposition"] in ("released", "quarantined")
    regular = [p for p in root.rglob("*") if p.is_file() and discovery.is_utf8(str(p))]
    assert {str(p) for p in regular if locked not in p.parents} <= set(rows.index)

    for batch in work.iterdir():
        if not (batch / "phi").is_dir():
            continue
        for path in [batch / "phi", *(batch / "phi").rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        assert (batch / "phi" / "notebooks" / "01_inspect.html").exists()

    values = [*secrets.values(), SECRET_HEX, bytes.fromhex(SECRET_HEX).decode()]
    for path in work.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for value in values:
                assert value.encode() not in data, (path, value)


# ------------------------------------------------------------------ point 6: faults as one line
@pytest.mark.slow
def test_read_only_work_is_one_line_and_other_batches_run(tmp_path: Path) -> None:
    made = list(synthetic.make_batches(tmp_path / "root", n=2, spec=TINY))
    work = tmp_path / "work"
    (work / made[0].name).mkdir(parents=True)
    (work / made[0].name).chmod(0o500)
    result = _sendit("inspect", str(made[0]), str(tmp_path / "missing"), "--work", str(work))
    (work / made[0].name).chmod(0o700)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert any(
        f"permission denied (EACCES) on {work / made[0].name / 'phi'}" in line
        and "give the user running sendit access" in line
        for line in lines
    ), result.stderr
    assert any("missing does not exist" in line for line in lines)
    assert lines[-1] == "sendit: 2 of 2 batch(es) failed"


def test_full_disk_is_one_line(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE: the kernel refuses the write with EFBIG, as a full
    disk does with ENOSPC) hits the first file written; the run says so in one line."""
    made = list(synthetic.make_batches(tmp_path / "root", n=1, spec=TINY))
    work = tmp_path / "work"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    result = subprocess.run(
        [sys.executable, "-m", "sendit_helpers.run.cli", "run", str(made[0]), "--work", str(work)],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
        preexec_fn=limit,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = [x for x in result.stderr.splitlines() if x.startswith(f"sendit: {made[0].name}:")]
    assert len(line) == 1 and "the disk is full or a file-size/quota limit was reached" in line[0]
    assert f"under {work / made[0].name}" in line[0] and "free space" in line[0]


# ------------------------------------------------------------------ point 8: tight edges
@pytest.fixture
def gated(tmp_path: Path) -> tuple[BatchLayout, dict[str, str]]:
    """A de-identified tiny batch whose gate passed, and the gate's values."""
    synthetic.make_batch(tmp_path / "in" / "DOE_JANE_MRN777", TINY)
    layout, settings = open_batch(tmp_path / "in" / "DOE_JANE_MRN777", tmp_path / "work", [], QUIET)
    inspect.inspect_batch(layout, settings)
    upstream.deidentify(layout, settings)
    gaterecord.require_pass(layout)
    return layout, leakgate.load_values(layout)


def test_hit_after_pixel_data_is_reported(gated: tuple[BatchLayout, dict[str, str]]) -> None:
    layout, values = gated
    name = next(v for v, c in values.items() if c == "name")
    target = gaterecord.release_files(layout)[0]
    rel = target.relative_to(layout.release).as_posix()
    for trailer in (name.encode(), b"\x08\x00\x20\x00XX\x08\x00" + name.encode()):
        target.write_bytes(target.read_bytes() + trailer)
        with pytest.raises(LeakError, match=r"leak gate failed: \d+ identifying value"):
            leakgate.run_gate(layout, values)
        report = pd.read_csv(layout.deid_dir / "leak_report.csv")
        assert set(report["file"]) == {rel}
        assert set(report["field"]) == {"bytes after PixelData (7FE0,0010)"}


def test_release_holds_only_scanned_regular_files(
    gated: tuple[BatchLayout, dict[str, str]],
) -> None:
    layout, values = gated
    entity = next(p for p in layout.release.iterdir() if p.is_dir())
    clean = gaterecord.release_files(layout)[0]
    os.symlink(clean, entity / "link.dcm")
    os.mkfifo(entity / "pipe.dcm")
    (entity / "nested").mkdir()
    (layout.release / "DOE_JANE_MRN777").mkdir()  # an empty folder whose name is PHI
    with pytest.raises(LeakError, match="leak gate failed"):
        leakgate.run_gate(layout, values)
    report = pd.read_csv(layout.deid_dir / "leak_report.csv").set_index("file")
    prefix = entity.name
    assert "a symbolic link" in report.loc[f"{prefix}/link.dcm", "category"]
    assert "a FIFO" in report.loc[f"{prefix}/pipe.dcm", "category"]
    assert "a folder inside an entity folder" in report.loc[f"{prefix}/nested", "category"]
    assert "folder name" in set(report.loc[["DOE_JANE_MRN777"], "field"])
    with pytest.raises(GateError, match="no leak-gate record|holds"):
        gaterecord.require_pass(layout)

    # after a passing gate: an odd entry or a new folder makes upload refuse
    for extra in ("link.dcm", "pipe.dcm", "nested"):
        path = entity / extra
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    (layout.release / "DOE_JANE_MRN777").rmdir()
    leakgate.run_gate(layout, values)
    os.mkfifo(entity / "late_pipe")
    with pytest.raises(GateError, match=r"holds .*late_pipe, a FIFO \(named pipe\): release/ may"):
        gaterecord.require_pass(layout)
    (entity / "late_pipe").unlink()
    (layout.release / "empty_entity").mkdir()
    with pytest.raises(GateError, match="has folders the leak gate did not scan"):
        gaterecord.require_pass(layout)


@pytest.mark.slow
def test_cli_reports_a_failing_batch_and_runs_the_others(tmp_path: Path) -> None:
    made = list(synthetic.make_batches(tmp_path / "root", n=2, spec=TINY))
    work = tmp_path / "work"
    (work / made[0].name).mkdir(parents=True)
    (work / made[0].name / "phi").write_text("a file where the phi folder belongs")
    result = _sendit("inspect", str(made[0]), str(made[1]), "--work", str(work))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sendit: error:")]
    assert len(errors) == 1 and f"on {work / made[0].name / 'phi'}" in errors[0]
    assert (work / made[1].name / "phi" / "notebooks" / "01_inspect.html").exists()
    assert result.stderr.strip().splitlines()[-1] == "sendit: 1 of 2 batch(es) failed"


def _notebook(path: Path, code: str) -> Path:
    return stage_notebook(path, [nbformat.v4.new_code_cell(code)])


@pytest.mark.slow
def test_html_failure_never_masks_the_stage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthetic.make_batch(tmp_path / "in" / "b", TINY)
    layout = BatchLayout.for_batch(tmp_path / "in" / "b", tmp_path / "work").ensure()
    html = notebook_path(Stage.INSPECT, layout).with_suffix(".html")
    layout.notebooks_dir.mkdir(mode=0o700, exist_ok=True)

    def broken(_notebook: Path) -> Path:
        raise RuntimeError("exporter down")

    monkeypatch.setattr(runner, "export_html", broken)
    failing = _notebook(tmp_path / "failing.ipynb", "raise ValueError('stage went wrong')")
    monkeypatch.setattr(Stage, "source", lambda self: failing)
    html.write_text("a report of an earlier run")
    with pytest.raises(
        StageError,
        match=r"stage inspect failed for batch b: ValueError.*"
        r"HTML copy could not be written either: RuntimeError",
    ):
        runner.run_stage(Stage.INSPECT, layout)
    assert not html.exists(), "a stale report survived the failed run"

    passing = _notebook(tmp_path / "passing.ipynb", "x = 1")
    monkeypatch.setattr(Stage, "source", lambda self: passing)
    html.write_text("a report of an earlier run")
    with pytest.raises(StageError, match=r"ran for batch b but its HTML copy could not be written"):
        runner.run_stage(Stage.INSPECT, layout)
    assert not html.exists()
    assert notebook_path(Stage.INSPECT, layout).stat().st_mode & 0o777 == 0o600


@pytest.mark.servers
@pytest.mark.slow
def test_orthanc_credentials_reach_no_file(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``sendit run`` uploading to a real Orthanc with distinctive credentials from the
    environment: they are in no file written (notebooks, HTML, logs, manifest, receipts)."""
    from tests.servers import OrthancServer

    server = OrthancServer(
        "orthanc-secrets",
        tmp_path_factory.mktemp("orthanc-secrets"),
        user="user-4d7e1b-distinct",
        password="pw-9a3c6f-distinct",  # noqa: S106 - test server only
    )
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        made = list(synthetic.make_batches(tmp_path / "root", n=1, spec=TINY))
        work = tmp_path / "work"
        env = _env(ORTHANC_USERNAME=server.user, ORTHANC_PASSWORD=server.password)
        result = _sendit(
            "run",
            str(made[0]),
            "--work",
            str(work),
            "--set",
            "SEND_TO_ORTHANC=true",
            "--set",
            f"ORTHANC_URL={server.url}",
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert server.instance_count() > 0
        # a URL carrying them is refused before anything runs, without echoing them
        leaky = server.url.replace("://", f"://{server.user}:{server.password}@")
        refused = _sendit(
            "upload", str(made[0]), "--work", str(work), "--set", f"ORTHANC_URL={leaky}"
        )
        assert refused.returncode == 2 and "export ORTHANC_USERNAME and ORTHANC_PASSWORD" in (
            refused.stderr
        )
        for text in (result.stdout, result.stderr, refused.stdout, refused.stderr):
            assert server.password not in text and server.user not in text
    finally:
        server.kill()
    written = [p for p in work.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "manifest.csv" for p in written)
    for path in written:
        data = path.read_bytes()
        for value in (server.user, server.password, SECRET_HEX):
            assert value.encode() not in data, (path, value)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_full_disk_is_one_line covers EFBIG")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_enospc_is_one_line(tmp_path: Path, tiny_disk: Path) -> None:
    made = list(synthetic.make_batches(tmp_path / "root", n=1, spec=TINY))
    work = tiny_disk / "work"
    result = subprocess.run(
        [sys.executable, "-m", "sendit_helpers.run.cli", "run", str(made[0]), "--work", str(work)],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
        timeout=240,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = [x for x in result.stderr.splitlines() if x.startswith(f"sendit: {made[0].name}:")]
    assert len(line) == 1, result.stderr
    assert "the disk is full" in line[0] and "(ENOSPC)" in line[0] and "free space" in line[0]


@pytest.mark.parametrize(
    ("ename", "evalue", "expected"),
    [
        (
            "OSError",
            "[Errno 28] No space left on device: '/w/b/phi/inspect/files.parquet'",
            "the disk is full or a file-size/quota limit was reached (ENOSPC) on "
            "/w/b/phi/inspect/files.parquet; free space on that disk",
        ),
        (
            "PermissionError",
            "[Errno 13] Permission denied: '/w/storage'",
            "permission denied (EACCES) on /w/storage; give the user running sendit access",
        ),
        (
            "OSError",
            "[Errno 30] Read-only file system: '/w/b/release/x.dcm'",
            "the filesystem is read-only (EROFS) on /w/b/release/x.dcm; choose a writable --work",
        ),
        (
            "OSError",
            "Error writing bytes to file. Detail: [errno 28] No space left on device",
            "(ENOSPC) writing under /w/b; free space",
        ),
    ],
)
def test_kernel_os_errors_become_one_line(ename: str, evalue: str, expected: str) -> None:
    cause = os_error_from_text(ename, evalue)
    assert cause is not None and expected in os_error_line(cause, near="/w/b")


def test_other_kernel_errors_are_left_alone() -> None:
    assert os_error_from_text("ValueError", "[Errno 28] looks like one") is None
    assert os_error_from_text("OSError", "no errno here") is None
