"""The benchmark scripts keep working: each main() runs on a tiny corpus.

No timing is asserted; the figures only mean something on the full corpus
(``make bench``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--files", "20", "--rows", "64", "--repeats", "1"]


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder for the module, so the tiny corpus is generated once."""
    return tmp_path_factory.mktemp("bench-out")


def test_bench_inspect_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("bench_inspect").main([*TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "inspect  1 worker :" in text and "pydicom loop" in text
    assert "inspect_batch" in text
    assert not list((out / "scratch").iterdir()), "scratch folders are removed after each run"


def test_bench_deidentify_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("bench_deidentify").main([*TINY, "--deid-files", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for tool in ("sendit run_jobs", "sendit deidentify_batch", "dicognito", "deid", "copy"):
        assert tool in text
    assert "dcmanon" in text  # a table row, or the line saying it is unavailable
    assert "gate s" in text
    assert not list((out / "scratch").iterdir())


def test_profile_deidentify_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--files", "20", "--rows", "64", "--out", str(out), "--cprofile", "--top", "5"]
    assert _load("profile_deidentify").main(args) == 0
    text = capsys.readouterr().out
    assert "recipe.apply" in text and "leak gate per released file" in text and "cProfile" in text


def test_bench_deidentify_cli_memory_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psutil")
    args = ["--skip", "marginal", "workers", "--studies", "2", "3", "--out", str(out)]
    assert _load("bench_deidentify_cli").main([*args, "--write-probe", "1"]) == 0
    text = capsys.readouterr().out
    assert "memory: inspect + deidentify over 2 vs 3 studies" in text
    assert text.count("new-file write rate now:") == 2, text
    assert not list((out / "scratch").iterdir())


@pytest.mark.slow
def test_bench_run_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("dcmanon")
    args = ["--studies", "2", "--files", "2", "--rows", "32", "--out", str(out)]
    args += ["--write-probe", "0"]
    assert _load("bench_run").main(args) == 0
    text = capsys.readouterr().out
    assert "sendit run: 4 files" in text and "dcmanon:    4 files" in text and "ratio:" in text
