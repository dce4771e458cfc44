"""The sendit command: subcommands run the stage notebooks; errors are one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.run.cli import main
from sendit_helpers.run.pipeline import find_batches
from sendit_helpers.samples import batchspec, synthetic


def _sendit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendit_helpers.run.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_inspect_pydicom_test_files(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    batch = tmp_path / "all_pydicom"
    for index, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        target = batch / f"sub{index % 3}" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = _sendit("inspect", str(batch), "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(
        tmp_path / "work" / "all_pydicom" / "phi" / "disposition.csv", keep_default_na=False
    )
    inputs = sorted(str(p) for p in batch.rglob("*") if p.is_file())
    assert sorted(table["source_path"]) == inputs
    assert (tmp_path / "work" / "all_pydicom" / "phi" / "notebooks" / "01_inspect.ipynb").exists()


def test_missing_batch_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["inspect", str(tmp_path / "nope"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1  # that batch failed (the others, if any, would still run)
    assert (
        len(err) == 1
        and err[0].startswith("sendit: error: batch folder")
        and "does not exist" in err[0]
    )


def test_broken_params_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "bad.yml"
    params.write_text("WORKERS: [1\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    code = main(
        ["inspect", str(tmp_path / "b"), "--work", str(tmp_path / "w"), "--params", str(params)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.yml is not valid YAML" in err and "\n" not in err


def test_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b").mkdir()
    code = main(
        ["inspect", str(tmp_path / "b"), "--work", str(tmp_path / "w"), "--set", "ORTHANC_PORT=x"]
    )
    assert code == 2 and "ORTHANC_PORT" in capsys.readouterr().err


def test_find_batches_in_root(tmp_path: Path) -> None:
    synthetic.make_batches(
        tmp_path / "root",
        n=2,
        spec=batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16),
    )
    found = find_batches([tmp_path / "root"])
    assert [p.name for p in found] == ["batch_001", "batch_002"]
    assert find_batches([tmp_path / "root" / "batch_001"]) == [found[0]]


def test_run_deidentify_and_upload_local(tmp_path: Path) -> None:
    synthetic.make_batches(
        tmp_path / "root",
        n=1,
        spec=batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16),
    )
    work = tmp_path / "work"
    result = _sendit("run", str(tmp_path / "root"), "--work", str(work))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "done" in result.stdout
    phi = work / "batch_001" / "phi" / "notebooks"
    assert {p.name for p in phi.glob("*.ipynb")} >= {
        "01_inspect.ipynb",
        "02_deidentify.ipynb",
        "04_upload.ipynb",
    }
    assert list((work / "storage").rglob("*.dcm"))
    figures = {name: _figures(phi / name) for name in ("01_inspect.ipynb", "02_deidentify.ipynb")}
    montages = sorted((work / "batch_001" / "phi" / "inspect").glob("montage_*.png"))
    assert montages and figures["01_inspect.ipynb"] == ["svg"] + ["png"] * len(montages)
    assert figures["02_deidentify.ipynb"] == ["svg"]
    copy = (phi / "01_inspect.html").read_text()
    assert "data:image/svg+xml;base64," in copy and "data:image/png;base64," in copy


def _figures(notebook: Path) -> list[str]:
    """The pictures among an executed notebook's outputs, in order: ``svg`` or ``png``."""
    found = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                found.append("png")
            elif "data:image/svg+xml;base64," in str(data.get("text/html", "")):
                found.append("svg")
    return found


def test_help_is_plain_text_and_says_how_to_review(capsys: pytest.CaptureFixture[str]) -> None:
    from sendit_helpers.run import cli

    texts = {}
    commands = ("inspect", "deidentify", "review", "upload", "run")
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        with pytest.raises(SystemExit):
            cli.main(argv)
        texts[argv[0]] = capsys.readouterr().out
    for name, text in texts.items():
        assert "``" not in text and "::" not in text, name
        assert all(len(line) <= 100 for line in text.splitlines()), name
    for stage in ("inspect", "deidentify", "review", "upload"):
        assert "notebooks/0" in texts[stage] and "WORK/<batch>/phi/notebooks/" in texts[stage]
    assert "jupyter lab notebooks/03_review_phi.ipynb" in texts["review"]
    assert "voila review.ipynb" in texts["review"]


def _papermill_times(notebook: Path) -> tuple[datetime, datetime]:
    meta = json.loads(notebook.read_text())["metadata"]["papermill"]
    return datetime.fromisoformat(meta["start_time"]), datetime.fromisoformat(meta["end_time"])


def _release_tree(work: Path, batch: str) -> dict[str, bytes]:
    release = work / batch / "release"
    return {
        p.relative_to(release).as_posix(): p.read_bytes()
        for p in sorted(release.rglob("*"))
        if p.is_file() and p.suffix == ".dcm"
    }


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "dask"])
def test_deidentify_spreads_batches_over_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    """Two batches with --workers 2 run at the same time and give what one-by-one runs give."""
    monkeypatch.setenv("SENDIT_SITE_SECRET", "636c692d776f726b6572732d74657374")
    monkeypatch.setenv("PROGRESS", "false")
    monkeypatch.delenv("WORKERS", raising=False)
    synthetic.make_batches(
        tmp_path / "root",
        n=2,
        spec=batchspec.BatchSpec(n_series=1, images_per_series=3, rows=16, columns=16),
    )
    batches = [str(tmp_path / "root" / "batch_001"), str(tmp_path / "root" / "batch_002")]
    runs = {}
    for workers in ("2", "1"):
        work = tmp_path / f"work{workers}"
        extra = ["--executor", executor] if workers == "2" else []
        done = _sendit("deidentify", *batches, "--work", str(work), "--workers", workers, *extra)
        assert done.returncode == 0, done.stderr
        runs[workers] = work
    times = {
        workers: [
            _papermill_times(work / b / "phi" / "notebooks" / "02_deidentify.ipynb")
            for b in ("batch_001", "batch_002")
        ]
        for workers, work in runs.items()
    }
    (s1, e1), (s2, e2) = times["2"]
    assert s1 < e2 and s2 < e1, "with --workers 2 the two batches' notebooks overlap in time"
    (s1, e1), (s2, e2) = sorted(times["1"])
    assert e1 <= s2, "with --workers 1 they run one after the other"
    for batch in ("batch_001", "batch_002"):
        parallel, serial = (_release_tree(runs[w], batch) for w in ("2", "1"))
        assert parallel and parallel == serial
        tables = [
            pd.read_csv(runs[w] / batch / "phi" / "disposition.csv", keep_default_na=False)
            for w in ("2", "1")
        ]
        pd.testing.assert_frame_equal(tables[0], tables[1])
        cleaned = [pd.read_parquet(runs[w] / batch / "release" / "cleaned.parquet") for w in "21"]
        pd.testing.assert_frame_equal(cleaned[0], cleaned[1])
