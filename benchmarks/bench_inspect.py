"""Inspect stage vs a plain pydicom header loop, side by side in one run.

On a generated CT corpus (default 1,000 images 512x512, cached under
``benchmarks/out/``), with a warm page cache and the best of ``--repeats``:

* ``pydicom loop``: ``pydicom.dcmread(path, stop_before_pixels=True)`` per file;
* ``read_all``: the stage's per-file work (probe + table row + deid ``%filter``
  screen), ``sendit_helpers.inspect.read_all(paths, workers=W, use_deid=True)``,
  for 1 and 2 workers;
* ``inspect_batch``: the whole stage (discovery, per-file work, tables,
  disposition.csv, parquet files) into a fresh work folder.

Goal (issue): ``read_all`` >= 0.8x the pydicom loop per worker, more with more cores.

Run: ``.venv/bin/python benchmarks/bench_inspect.py [--files N --rows R --repeats K]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import _common as c
import pydicom

from sendit_helpers import inspect
from sendit_helpers.layout import BatchLayout


def pydicom_loop(paths: list[Path]) -> int:
    """The baseline: header of every file, no pixel data."""
    n = 0
    for path in paths:
        pydicom.dcmread(path, stop_before_pixels=True)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    folder = c.ensure_corpus(args.out, args.files, args.rows)
    paths = c.corpus_files(folder)
    n = len(paths)
    warm = c.warm_cache(paths)
    c.say(
        f"inspect benchmark: {n} files ({warm / 1e6:.0f} MB, {args.rows}x{args.rows} CT) in {folder}"
    )
    c.say(f"  {c.machine()}; page cache warm; best of {args.repeats}")

    # One-time costs, reported, not counted: compiling the deid %filter recipes.
    start = time.perf_counter()
    inspect._screener((), True)
    compile_s = time.perf_counter() - start

    def timed(label: str, fn: Any) -> float:
        seconds, result = c.best_of(
            args.repeats, lambda _folder, _x: fn(), out=args.out, label=label
        )
        if isinstance(result, list):
            assert len(result) == n, (label, len(result))
        return seconds

    loop_s = timed("loop", lambda: pydicom_loop(paths))
    one_s = timed(
        "read1", lambda: inspect.read_all(paths, workers=1, use_deid=True, progress=False)
    )
    two_s = timed(
        "read2", lambda: inspect.read_all(paths, workers=2, use_deid=True, progress=False)
    )

    def batch(workers: int) -> float:
        conf = c.settings(WORKERS=workers)

        def run(work: Path, _x: Any) -> Any:
            return inspect.inspect_batch(BatchLayout.for_batch(folder, work), conf)

        seconds, result = c.best_of(args.repeats, run, out=args.out, label=f"batch{workers}")
        assert result.summary["dicom"] == n, result.summary
        return seconds

    batch1_s = batch(1)
    batch2_s = batch(2)

    loop = c.rate(n, loop_s)
    one, two = c.rate(n, one_s), c.rate(n, two_s)
    b1, b2 = c.rate(n, batch1_s), c.rate(n, batch2_s)
    c.say()
    c.say(f"pydicom  loop     : {loop:6.0f} files/s  (dcmread stop_before_pixels, 1 process)")
    c.say(
        f"inspect  1 worker : {one:6.0f} files/s  ({one / loop:.2f}x pydicom loop {loop:.0f} files/s)"
    )
    c.say(
        f"inspect  2 workers: {two:6.0f} files/s  ({two / loop:.2f}x pydicom loop {loop:.0f} files/s; "
        f"{two / 2 / loop:.2f}x per worker)"
    )
    c.say(
        f"inspect_batch 1 w : {b1:6.0f} files/s  ({b1 / loop:.2f}x pydicom loop; {batch1_s:.2f} s incl. tables + parquet)"
    )
    c.say(
        f"inspect_batch 2 w : {b2:6.0f} files/s  ({b2 / loop:.2f}x pydicom loop; {batch2_s:.2f} s incl. tables + parquet)"
    )
    c.say(
        f"(one-time %filter recipe compile, not counted: {compile_s * 1000:.0f} ms; "
        f"per file: loop {loop_s / n * 1e6:.0f} us, read_all {one_s / n * 1e6:.0f} us, "
        f"stage overhead vs loop {(one_s - loop_s) / n * 1e6:.0f} us)"
    )
    c.say(
        f"goal >= 0.80x per worker: {'met' if one / loop >= 0.8 else 'NOT met'} (1 worker {one / loop:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
