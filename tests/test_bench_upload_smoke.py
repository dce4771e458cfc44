"""The upload benchmarks keep working: each main() runs on ~10 released files.

No timing is asserted; the figures only mean something on the full corpus.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--files", "20", "--rows", "64", "--repeats", "1"]

pytestmark = pytest.mark.servers


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder for the module, so the tiny corpus and release are made once."""
    return tmp_path_factory.mktemp("bench-upload-out")


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows by tool name: ``tool  files  seconds  files/s  ratio``."""
    rows = {}
    for line in text.splitlines():
        cells = line.rsplit(maxsplit=4)
        if len(cells) == 5 and cells[4].endswith("x") and cells[1].isdigit():
            rows[cells[0]] = cells[1:]
    return rows


def test_bench_upload_orthanc_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("bench_upload_orthanc").main([*TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tool" in text and "files/s" in text and "ratio" in text
    rows = _rows(text)
    assert set(rows) == {"storescu", "plain rest", "sendit rest", "sendit dicom", "sendit stow",
                         "sendit stow b10"}  # fmt: skip
    assert rows["storescu"][-1] == "1.00x" and 5 <= int(rows["storescu"][0]) <= 20
    assert "Orthanc 'default'" in text and "Orthanc 'tuned'" in text
    assert text.count("goal (issue 5") == 2 and text.count("goal (issue 15") == 2
    assert not list((out / "scratch").iterdir()), "scratch folders are removed after each run"


def test_bench_upload_google_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY, "--out", str(out), "--latency", "0.005"]
    assert _load("bench_upload_google").main(args) == 0
    text = capsys.readouterr().out
    rows = _rows(text)
    assert set(rows) == {"sequential loop", "sendit google"}
    assert rows["sequential loop"][-1] == "1.00x"
    assert not list((out / "scratch").iterdir())
