"""Where the 1-worker de-identify time goes: per-file steps, cProfile, leak gate, alternatives.

Uses the same cached CT corpus as the bench scripts (default 300 images
512x512).  Prints

1. a step-by-step wall-time breakdown of one worker's per-file path
   (mirrors :func:`sendit_helpers.stages.engine.deidentify_file`), with the
   element cache and with every element through the recipe engine;
2. the leak gate's breakdown (read, header parse, header scan, pixel
   prefilter, pixel scan) over the released files;
3. measured alternatives (cheaper read/write paths, skipping flatten ...)
   so optimisation proposals come with numbers;
4. optionally (``--cprofile``) the top functions of ``run_jobs`` and ``run_gate``.

Run: ``.venv/bin/python benchmarks/profile_deidentify.py [--files N --rows R --cprofile]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import _common as c
import pydicom

from sendit_helpers.core.dicomio import read_full
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import cleaned, dicomwrite, gaterecord, gatescan, headerscan, leakgate
from sendit_helpers.deid.recipemodel import DeidContext
from sendit_helpers.pseudonyms.secret import load_site_secret
from sendit_helpers.stages import deidentify, deidplan, deidtables, engine, inspect


class Steps:
    """Accumulates wall time per named step."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.total[name] += time.perf_counter() - start

    def report(self, n: int, title: str) -> None:
        whole = sum(self.total.values())
        rows = [
            [name, f"{s / n * 1e3:.3f}", f"{100 * s / whole:.1f}%"]
            for name, s in self.total.items()
        ]
        rows.append(["total", f"{whole / n * 1e3:.3f}", "100%"])
        c.say(title)
        c.say(c.table(["step", "ms/file", "share"], rows))
        c.say()


def cache_steps(jobs: list[engine.Job], config: engine.WorkerConfig) -> Steps:
    """The steps of ``deidentify_file``'s element-cache path, each timed (same calls, same order)."""
    steps = Steps()
    cache = engine.element_cache(config.recipe_files, config.include_default)
    for job in jobs:
        data = steps("read_bytes (whole file, once)", Path(job.source_path).read_bytes)
        ctx = steps("context", engine.job_context, job, config)
        steps("scan_header (the scan alone, repeated below)", headerscan.scan_header, data)
        done = steps("cache.deidentify (scan + remembered elements)", cache.deidentify, data, ctx)
        assert done is not None, "the corpus takes the element cache"
        steps(
            "write header + original pixel bytes",
            engine.write_parts,
            job.output,
            done.header,
            memoryview(data)[done.pixel_at :],
        )
        steps("removed_from (gate values)", engine.removed_from, done.changes, done.kept)
        steps(
            "lookup",
            lambda ch=done.changes: [(k, o, n) for k, (o, n) in ch.replaced.items()],
        )
    return steps


def per_file_steps(jobs: list[engine.Job], config: engine.WorkerConfig) -> Steps:
    """The steps of ``deidentify_file``'s engine path (cache off), each timed (same calls, same order)."""
    steps = Steps()
    recipe = engine.load_recipe(config.recipe_files, config.include_default)
    for job in jobs:
        data = steps("read_bytes (whole file, once)", Path(job.source_path).read_bytes)
        split = steps("split_file (dcmread header from memory)", dicomwrite.split_file, data)
        assert split is not None, "the corpus takes the fast path"
        ds = split.dataset
        ctx = steps("context", engine.job_context, job, config)
        changes = steps("recipe.apply (reports originals)", recipe.apply, ds, ctx)
        steps("_ensure_meta", engine.ensure_meta, ds)
        header = steps("encode_header (raw writer)", dicomwrite.encode_header, ds)
        assert header is not None
        steps(
            "write header + original pixel bytes",
            engine.write_parts,
            job.output,
            header,
            memoryview(data)[split.pixel_at :],
        )
        row, kept = steps("describe (cleaned row + kept values)", cleaned.describe, ds)
        steps("removed_from (gate values)", engine.removed_from, changes, kept)
        steps(
            "lookup",
            lambda ch=changes: [(k, o, n) for k, (o, n) in ch.replaced.items()],
        )
    return steps


def gate_steps(
    files: list[Path], root: Path, scanner: gatescan.Scanner, spans: dict[str, gatescan.Span]
) -> tuple[Steps, int]:
    """The steps of ``gatescan.scan_file``, each timed (spans recorded at write time)."""
    steps = Steps()
    scanned_pixels = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        steps("scan file name", scanner.find, rel.encode())
        data = steps("read_bytes", path.read_bytes)
        found = steps("recorded pixel span, checked", gatescan.checked_span, data, spans.get(rel))
        if found is None:
            found = steps("_parsed_span (dcmread header again)", gatescan.parsed_span, data)
        assert found is not None
        start, _end, _native16 = found
        steps("scan header bytes", scanner.find, data[:start])
        pixels = data[start:]
        printable = steps(
            "pixel prefilter (numpy printable words)", gatescan.native_words_printable, pixels
        )
        if printable:
            scanned_pixels += 1
            steps("scan pixel bytes (regex)", scanner.find, pixels)
    return steps, scanned_pixels


def alternatives(
    jobs: list[engine.Job],
    config: engine.WorkerConfig,
    dest: Path,
    scanner: gatescan.Scanner,
    released: list[Path],
) -> list[list[str]]:
    """Measured costs of cheaper variants of single steps (ms/file)."""
    n = len(jobs)
    out: list[list[str]] = []

    def per(fn: Callable[[], Any], items: int = n) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) / items * 1e3

    srcs = [j.source_path for j in jobs]
    out.append(
        [
            "read: dcmread(defer_size=4096, force) = read_full",
            f"{per(lambda: [read_full(s) for s in srcs]):.3f}",
        ]
    )
    out.append(
        [
            "read: dcmread(stop_before_pixels)",
            f"{per(lambda: [pydicom.dcmread(s, stop_before_pixels=True) for s in srcs]):.3f}",
        ]
    )
    out.append(
        [
            "read: open().read() whole file (bytes)",
            f"{per(lambda: [Path(s).read_bytes() for s in srcs]):.3f}",
        ]
    )

    def header_from_bytes() -> None:
        for s in srcs:
            data = Path(s).read_bytes()
            pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    out.append(
        ["read: read_bytes + dcmread(BytesIO, stop_before_pixels)", f"{per(header_from_bytes):.3f}"]
    )

    recipe = engine.load_recipe(config.recipe_files, config.include_default)
    mapper = engine.uid_mapper(config.secret)
    datasets = []
    for job in jobs:
        ds = read_full(job.source_path)
        ctx = DeidContext(
            variables={
                "entity_id": job.entity_id,
                "item_id": job.item_id,
                "jitter": str(job.jitter_days),
            },
            date_shift_days=job.jitter_days,
            uid_map=mapper,
        )
        recipe.apply(ds, ctx)
        engine.ensure_meta(ds)
        datasets.append(ds)
    target = dest / "alt"
    target.mkdir(parents=True, exist_ok=True)

    def save_deferred() -> None:
        for i, ds in enumerate(datasets):
            ds.save_as(target / f"a{i}.dcm", enforce_file_format=True)

    out.append(
        ["write: save_as (deferred pixels re-read from source)", f"{per(save_deferred):.3f}"]
    )

    # header-only write + raw pixel element bytes appended (no pydicom for the pixels)
    raw_pixels = []
    for s in srcs:
        data = Path(s).read_bytes()
        buf = io.BytesIO(data)
        pydicom.dcmread(buf, stop_before_pixels=True)
        raw_pixels.append(data[buf.tell() :])
    headers = []
    for ds in datasets:
        h = ds.copy()
        del h[0x7FE00010]
        headers.append(h)

    def save_header_plus_raw() -> None:
        for i, (h, px) in enumerate(zip(headers, raw_pixels, strict=True)):
            b = io.BytesIO()
            h.save_as(b, enforce_file_format=True)
            with open(target / f"b{i}.dcm", "wb") as fh:
                fh.write(b.getvalue())
                fh.write(px)

    out.append(
        [
            "write: header save_as(BytesIO) + raw pixel bytes appended",
            f"{per(save_header_plus_raw):.3f}",
        ]
    )

    def copy_only() -> None:
        for i, s in enumerate(srcs):
            shutil.copyfile(s, target / f"c{i}.dcm")

    out.append(["write floor: shutil.copyfile", f"{per(copy_only):.3f}"])

    def lean(with_snapshots: bool) -> Callable[[], None]:
        """Whole per-file path without pydicom touching pixels or unchanged elements."""

        def run() -> None:
            for i, job in enumerate(jobs):
                data = Path(job.source_path).read_bytes()
                buf = io.BytesIO(data)
                ds = pydicom.dcmread(buf, stop_before_pixels=True)
                pixel_bytes = data[buf.tell() :]
                before = engine.snapshot(ds) if with_snapshots else None
                ctx = DeidContext(
                    variables={
                        "entity_id": job.entity_id,
                        "item_id": job.item_id,
                        "jitter": str(job.jitter_days),
                    },
                    date_shift_days=job.jitter_days,
                    uid_map=mapper,
                )
                recipe.apply(ds, ctx)
                engine.ensure_meta(ds)
                head = io.BytesIO()
                ds.save_as(head, enforce_file_format=True)
                with open(target / f"l{i}.dcm", "wb") as fh:
                    fh.write(head.getvalue())
                    fh.write(pixel_bytes)
                if before is not None:
                    engine.removed_values(before, ds)

        return run

    out.append(
        [
            "per-file (experiment): bytes + header-only parse + apply + header write + raw pixels",
            f"{per(lean(False)):.3f}",
        ]
    )
    out.append(
        ["  same + snapshot before/after (today's removed_values)", f"{per(lean(True)):.3f}"]
    )
    out.append(
        [
            "flatten(ds) for the cleaned row",
            f"{per(lambda: [cleaned.flatten(ds) for ds in datasets]):.3f}",
        ]
    )
    out.append(
        [
            "snapshot(ds) (done twice per file)",
            f"{per(lambda: [engine.snapshot(ds) for ds in datasets]):.3f}",
        ]
    )

    # gate alternatives
    datas = [p.read_bytes() for p in released]
    m = max(1, len(datas))
    out.append(
        [
            "gate: _pixel_span (pydicom header parse)",
            f"{per(lambda: [gatescan.pixel_value_span(d) for d in datas], m):.3f}",
        ]
    )
    pixels = []
    for d in datas:
        span = gatescan.pixel_value_span(d)
        assert span is not None
        pixels.append(d[span[0] : span[1]])
    out.append(
        [
            "gate: scanner.find over whole pixel data (no prefilter)",
            f"{per(lambda: [scanner.find(px) for px in pixels], m):.3f}",
        ]
    )
    out.append(
        [
            "gate: numpy printable-word prefilter",
            f"{per(lambda: [gatescan.native_words_printable(px) for px in pixels], m):.3f}",
        ]
    )
    # _pixel_span starts at the PixelData *tag*: its 'OW'/'OB' VR bytes are a printable word,
    # so the prefilter would always say "scan"; scan_file starts past the element header.
    passes = sum(gatescan.native_words_printable(px) for px in pixels)
    passes_value = sum(gatescan.native_words_printable(px[12:]) for px in pixels)
    out.append(
        [
            f"gate: prefilter says scan: {passes}/{m} files from the element tag, "
            f"{passes_value}/{m} on the value only (as scan_file calls it)",
            "-",
        ]
    )
    out.append(
        [
            "gate: bytes.lower() of pixel data alone",
            f"{per(lambda: [px.lower() for px in pixels], m):.3f}",
        ]
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0], files=300, repeats=1)
    p.add_argument("--cprofile", action="store_true", help="also print cProfile top functions")
    p.add_argument("--top", type=int, default=25, help="cProfile lines to print (default 25)")
    args = p.parse_args(argv)
    folder = c.ensure_corpus(args.out, args.files, args.rows)
    paths = c.corpus_files(folder)
    c.warm_cache(paths)
    n = len(paths)
    c.say(f"profile: {n} files {args.rows}x{args.rows} CT in {folder}; {c.machine()}")
    conf = c.settings(WORKERS=1)
    with c.scratch(args.out, "profile") as base:
        layout = BatchLayout.for_batch(folder, base / "work")
        files = inspect.inspect_batch(layout, conf).files
        secret = load_site_secret(layout.work, {"SENDIT_SITE_SECRET": conf["SENDIT_SITE_SECRET"]})
        jobs = deidplan.plan(layout, conf, files, secret).jobs
        config = engine.WorkerConfig((), True, secret, ())
        engine.load_recipe((), True)

        def moved(dest: Path) -> list[engine.Job]:
            return [
                replace(j, output=os.fspath(dest / Path(j.output).relative_to(layout.root)))
                for j in jobs
            ]

        per_file_steps(
            moved(base / "warmup")[: min(20, n)], config
        )  # warm caches (tag plans, imports)
        cache_steps(moved(base / "warmup-cache")[: min(20, n)], config)
        steps = cache_steps(moved(base / "steps-cache"), config)
        steps.report(n, f"1-worker per-file path, element cache ({n} files, wall ms/file):")
        steps = per_file_steps(moved(base / "steps"), config)
        steps.report(n, f"1-worker per-file path, engine (cache off; {n} files, wall ms/file):")

        # the real run (also the release/ folder for the gate)
        start = time.perf_counter()
        outcomes = deidentify.run_jobs(jobs, config, workers=1, progress=False)
        run_s = time.perf_counter() - start
        assert not any(o.error for o in outcomes)
        c.say(
            f"run_jobs(workers=1) itself: {run_s / n * 1e3:.3f} ms/file ({c.rate(n, run_s):.0f} files/s)"
        )
        values = deidtables.gate_values(outcomes, layout.name)
        spans = {
            f"{o.job.entity_id}/{o.job.name}": o.pixel_span
            for o in outcomes
            if o.pixel_span is not None
        }
        leakgate.save_spans(layout, spans)  # as deidentify.finish does
        scanner = gatescan.Scanner.build(values)
        released = gaterecord.release_files(layout)
        start = time.perf_counter()
        report = leakgate.run_gate(layout, values, workers=1)
        gate_s = time.perf_counter() - start
        m = max(1, report.files)
        c.say(
            f"run_gate(workers=1): {report.files} released files, {len(scanner)} values: "
            f"{gate_s / m * 1e3:.3f} ms/file ({c.rate(report.files, gate_s):.0f} files/s), passed={report.passed}"
        )
        c.say()
        gsteps, scanned = gate_steps(released, layout.release, scanner, spans)
        gsteps.report(
            m,
            f"leak gate per released file ({m} files; pixel regex scan ran on {scanned} after the prefilter):",
        )

        rows = alternatives(jobs, config, base, scanner, released)
        c.say("measured alternatives (ms/file):")
        c.say(c.table(["variant", "ms/file"], rows, "lr"))

        if args.cprofile:
            for label, fn in (
                (
                    "run_jobs(workers=1)",
                    lambda: deidentify.run_jobs(
                        moved(base / "prof"), config, workers=1, progress=False
                    ),
                ),
                ("run_gate(workers=1)", lambda: leakgate.run_gate(layout, values, workers=1)),
            ):
                prof = cProfile.Profile()
                prof.enable()
                fn()
                prof.disable()
                for order in ("tottime", "cumulative"):
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(
                        args.top
                    )
                    c.say(f"\ncProfile {label}, by {order}:")
                    c.say(
                        "\n".join(line for line in buf.getvalue().splitlines() if line.strip())[
                            :6000
                        ]
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
