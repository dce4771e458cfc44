"""executors: order-preserving chunked maps on a process pool or Dask, value-free errors."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendit_helpers.core import executors
from sendit_helpers.core.errors import SenditError
from sendit_helpers.core.executors import ExecutorError, chunk_size, chunked, map_chunks, run_each

SECRET = "DOE^JOHN"  # stands in for a DICOM value that must never reach a message


def square_chunk(items: list[int]) -> list[int]:
    """A picklable chunk function: one result per item, in order."""
    return [i * i for i in items]


def failing_chunk(items: list[int]) -> list[int]:
    """Raises with a 'DICOM value' in its message when the chunk holds 13."""
    if 13 in items:
        raise ValueError(f"PatientName is {SECRET}")
    return items


def short_chunk(items: list[int]) -> list[int]:
    """Breaks the one-result-per-item contract."""
    return items[:-1]


def double(item: int) -> int:
    """One item of run_each; fails on 3."""
    if item == 3:
        raise RuntimeError(SECRET)
    return item * 2


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[None]:
    """One small LocalCluster (2 workers) for the module, closed afterwards."""
    pytest.importorskip("distributed")
    executors.dask_client(2, "")
    yield
    executors.shutdown()


def test_chunk_size_and_chunked() -> None:
    assert chunk_size(0, 4) == 1
    assert chunk_size(10, 4) == 1
    assert chunk_size(1000, 2) == 125  # 4 chunks per worker
    assert chunk_size(1_000_000, 2) == executors.MAX_CHUNK
    assert chunked([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert executors.resolve_workers(0) >= 1 and executors.resolve_workers(3) == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_local_map_preserves_order(workers: int) -> None:
    items = list(range(101))
    assert map_chunks(square_chunk, items, workers=workers, progress=False, size=7) == [
        i * i for i in items
    ]
    assert map_chunks(square_chunk, [], workers=workers, progress=False) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_local_error_names_chunk_not_value(workers: int) -> None:
    with pytest.raises(ExecutorError) as info:
        map_chunks(
            failing_chunk,
            list(range(20)),
            workers=workers,
            progress=False,
            size=5,
            desc="deidentify",
        )
    text = str(info.value)
    assert isinstance(info.value, SenditError)
    assert "deidentify: chunk 3 of 4 (items 11-15)" in text and "ValueError" in text
    assert SECRET not in text and "DOE" not in text and "JOHN" not in text
    assert "on PatientName (0010,0010)" in text  # where, never what
    assert info.value.chunk == 2 and info.value.error_type == "ValueError"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_chunk_must_return_one_result_per_item() -> None:
    with pytest.raises(ExecutorError, match="returned 4 results for 5 items"):
        map_chunks(short_chunk, list(range(10)), workers=1, progress=False, size=5)


def test_unknown_executor() -> None:
    with pytest.raises(ExecutorError, match="not one of local, dask"):
        map_chunks(square_chunk, [1], workers=1, executor="spark", progress=False)


def test_run_each_local_threads_keep_going() -> None:
    results = dict(run_each(double, [1, 2, 3, 4], slots=2, desc="batches"))
    assert [results[i] for i in (0, 1, 3)] == [2, 4, 8]
    error = results[2]
    assert isinstance(error, ExecutorError) and "batches: item 3 of 4" in str(error)
    assert SECRET not in str(error)


def test_dask_map_and_errors(dask_cluster: None) -> None:
    items = list(range(50))
    result = map_chunks(square_chunk, items, workers=2, executor="dask", progress=False, size=4)
    assert result == [i * i for i in items]
    client = executors.dask_client(2, "")
    assert executors.dask_slots(client) == 2, "reused, not a second cluster"
    with pytest.raises(ExecutorError) as info:
        map_chunks(
            failing_chunk,
            list(range(20)),
            workers=2,
            executor="dask",
            progress=False,
            size=5,
            desc="inspect",
        )
    assert "inspect: chunk 3 of 4" in str(info.value) and SECRET not in str(info.value)


def test_dask_run_each(dask_cluster: None) -> None:
    results = dict(run_each(double, [1, 2, 3], slots=2, executor="dask", desc="batches"))
    assert results[0] == 2 and results[1] == 4 and isinstance(results[2], ExecutorError)


def test_bench_scale_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_scale.py runs on tiny inputs (no timing asserted)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    module = importlib.import_module("bench_scale")
    args = ["--batches", "2", "--files", "6", "--rows", "16", "--repeats", "1", "--skip-dask"]
    args += ["--mem-sizes", "3", "6", "--mem-via", "stages", "--out", str(tmp_path)]
    assert module.main(args) == 0
    text = capsys.readouterr().out
    assert "goal >= 1.7x with 2 workers: local" in text
    assert "peak MB" in text and "MB per 1000 more files" in text
    assert not list((tmp_path / "scratch").iterdir()), "scratch folders are removed"


def test_serial_below_runs_in_process() -> None:
    assert map_chunks(
        square_chunk, [1, 2, 3], workers=2, executor="dask", serial_below=4, progress=False
    ) == [1, 4, 9]
    assert not executors.has_dask_client(""), "three items need no cluster"
