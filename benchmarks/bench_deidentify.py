"""De-identify stage vs dcmanon, dicognito, deid and a raw file copy, side by side in one run.

On a generated CT corpus (default 1,000 uncompressed images 512x512, cached
under ``benchmarks/out/``), with a warm page cache and the best of
``--repeats``; every tool reads each file, de-identifies it and writes it into
its own fresh output folder:

* ``sendit run_jobs``: the stage's per-file work (read, recipe, write, removed
  values, cleaned row), :func:`sendit_helpers.stages.deidentify.run_jobs`; the note
  says how many files the element cache (:mod:`sendit_helpers.deid.elementcache`:
  header scanned as bytes, each distinct element de-identified once, original
  pixel bytes appended) served and what share of their elements it had to
  compute; ``engine`` is the same work with the cache off (every element
  through the recipe engine, the path before the cache);
* ``sendit deidentify_batch``: the whole stage after inspect (planning and
  pseudonyms, per-file work, tables, disposition.csv, leak gate), with its
  phases;
* ``dcmanon`` (PyPI ``dcmanon``, Rust): ``Anonymizer().anonymize(path)`` -> bytes
  -> file, default configuration;
* ``dicognito``: ``dcmread`` + ``dicognito.anonymizer.Anonymizer().anonymize`` + ``save_as``;
* ``deid``: ``deid.dicom.replace_identifiers`` with its default recipe, on the
  first ``--deid-files`` files (it is slow), files/s scaled;
* ``copy``: ``shutil.copyfile`` (the I/O floor).

Goal (issue): the stage >= 2.0x dcmanon per worker.

Run: ``.venv/bin/python benchmarks/bench_deidentify.py [--files N --rows R --repeats K]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import _common as c

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import leakgate
from sendit_helpers.pseudonyms.secret import load_site_secret
from sendit_helpers.run import upstream
from sendit_helpers.stages import deidentify, deidplan, engine, inspect

Pair = tuple[str, str]


# ------------------------------------------------------------------ competitors (module level: picklable)
def _targets(paths: Sequence[Path], source: Path, dest: Path) -> list[Pair]:
    """(input, output) pairs mirroring the corpus tree under ``dest``."""
    return [(os.fspath(p), os.fspath(dest / p.relative_to(source))) for p in paths]


class _Dirs:
    """``mkdir -p`` once per output folder (inside the timed work, as the stage does)."""

    def __init__(self) -> None:
        self.made: set[str] = set()

    def __call__(self, output: str) -> None:
        parent = os.path.dirname(output)
        if parent not in self.made:
            os.makedirs(parent, exist_ok=True)
            self.made.add(parent)


_DCMANON: Any = None
_DICOGNITO: Any = None


def dcmanon_chunk(pairs: list[Pair]) -> int:
    global _DCMANON
    if _DCMANON is None:
        from dcmanon import Anonymizer

        _DCMANON = Anonymizer()
    mkdir = _Dirs()
    for src, dst in pairs:
        data = _DCMANON.anonymize(src)
        mkdir(dst)
        with open(dst, "wb") as fh:
            fh.write(data)
    return len(pairs)


def dicognito_chunk(pairs: list[Pair]) -> int:
    global _DICOGNITO
    import pydicom

    if _DICOGNITO is None:
        from dicognito.anonymizer import Anonymizer

        _DICOGNITO = Anonymizer(seed="sendit-benchmark")
    mkdir = _Dirs()
    for src, dst in pairs:
        ds = pydicom.dcmread(src)
        _DICOGNITO.anonymize(ds)
        mkdir(dst)
        ds.save_as(dst)
    return len(pairs)


def copy_chunk(pairs: list[Pair]) -> int:
    mkdir = _Dirs()
    for src, dst in pairs:
        mkdir(dst)
        shutil.copyfile(src, dst)
    return len(pairs)


def deid_run(paths: Sequence[Path], dest: Path) -> int:
    from deid.dicom import replace_identifiers
    from deid.logger import bot

    bot.level = -5  # silence "No deid specification provided, will use defaults." and friends
    written = replace_identifiers(
        [os.fspath(p) for p in paths], save=True, overwrite=True, output_folder=os.fspath(dest)
    )
    return len(written)


def run_pool(chunk: Callable[[list[Pair]], int], pairs: list[Pair], workers: int) -> int:
    """``chunk`` over ``pairs`` in this process (1 worker) or a process pool, chunked like the stage."""
    if workers <= 1:
        return chunk(pairs)
    size = max(8, min(128, len(pairs) // (workers * 8) or 8))
    parts = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(chunk, parts))


# ------------------------------------------------------------------ the stage's phases
@contextmanager
def phase_timer() -> Iterator[dict[str, float]]:
    """Time ``plan``, ``run_jobs`` and ``run_gate`` inside ``deidentify_batch`` (wrapped, then restored)."""
    phases: dict[str, float] = {}
    originals: dict[tuple[Any, str], Callable[..., Any]] = {
        (deidentify, "plan"): deidplan.plan,
        (deidentify, "run_jobs"): deidentify.run_jobs,
        (leakgate, "run_gate"): leakgate.run_gate,
    }

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

        return timed

    for (module, name), fn in originals.items():
        setattr(module, name, wrap(name, fn))
    try:
        yield phases
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)


@dataclass
class Result:
    tool: str
    workers: int
    files: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return c.rate(self.files, self.seconds)


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--deid-files", type=int, default=100, help="files for the (slow) deid run (default 100)"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["dcmanon", "dicognito", "deid", "copy"],
        help="competitors to leave out",
    )
    args = p.parse_args(argv)
    folder = c.ensure_corpus(args.out, args.files, args.rows)
    paths = c.corpus_files(folder)
    n = len(paths)
    warm = c.warm_cache(paths)
    c.say(
        f"deidentify benchmark: {n} files ({warm / 1e6:.0f} MB, {args.rows}x{args.rows} CT, uncompressed) in {folder}"
    )
    c.say(
        f"  {c.machine()}; page cache warm; best of {args.repeats}; each run writes a fresh folder"
    )

    results: list[Result] = []

    def timed(label: str, run: Any, prepare: Any = None) -> tuple[float, Any]:
        return c.best_of(args.repeats, run, out=args.out, label=label, prepare=prepare)

    # ---------------------------------------------------------------- the stage
    conf1, conf2 = c.settings(WORKERS=1), c.settings(WORKERS=2)
    with c.scratch(args.out, "deid-plan") as base:
        layout = BatchLayout.for_batch(folder, base / "work")
        files = inspect.inspect_batch(layout, conf1).files
        secret = load_site_secret(layout.work, {"SENDIT_SITE_SECRET": conf1["SENDIT_SITE_SECRET"]})
        start = time.perf_counter()
        jobs = deidplan.plan(layout, conf1, files, secret).jobs
        plan_s = time.perf_counter() - start
    assert len(jobs) == n, f"planned {len(jobs)} jobs for {n} files"
    config = engine.WorkerConfig((), True, secret, ())
    start = time.perf_counter()
    engine.load_recipe((), True)
    compile_s = time.perf_counter() - start

    def moved(dest: Path) -> list[engine.Job]:
        return [
            replace(j, output=os.fspath(dest / Path(j.output).relative_to(layout.root)))
            for j in jobs
        ]

    no_cache = replace(config, element_cache=False)
    for label, workers, conf in (
        ("sendit run_jobs", 1, config),
        ("sendit run_jobs", 2, config),
        ("sendit run_jobs, engine", 1, no_cache),
    ):
        stats = engine.element_cache((), True).stats  # 1 worker runs in this process
        before = (stats.files, stats.general, stats.elements, stats.computed)

        def run(
            _dest: Path,
            mine: list[engine.Job],
            workers: int = workers,
            conf: engine.WorkerConfig = conf,
        ) -> int:
            outcomes = deidentify.run_jobs(mine, conf, workers=workers, progress=False)
            bad = [o.error for o in outcomes if o.error]
            assert not bad, bad[:3]
            return sum(o.pixel_span is not None for o in outcomes)

        seconds, fast = timed(f"runjobs{workers}{conf.element_cache}", run, moved)
        if not conf.element_cache:
            note = f"per-file work, every element through the recipe engine, fast path {fast}/{n}"
        elif workers == 1:
            files, general, elements, computed = (
                now - then
                for now, then in zip(
                    (stats.files, stats.general, stats.elements, stats.computed),
                    before,
                    strict=True,
                )
            )
            note = (
                f"per-file work, element cache {files - general}/{files} files, "
                f"{computed / max(1, elements):.1%} of elements computed"
            )
        else:
            note = f"per-file work, fast path {fast}/{n}"
        results.append(Result(label, workers, n, seconds, note))

    phases_of: dict[int, dict[str, float]] = {}
    for workers, conf in ((1, conf1), (2, conf2)):

        def prepare(dest: Path, conf: Any = conf) -> BatchLayout:
            lay = BatchLayout.for_batch(folder, dest / "work")
            inspect.inspect_batch(lay, conf)  # untimed: deidentify_batch would run it when missing
            return lay

        def run_batch(
            _dest: Path, lay: BatchLayout, conf: Any = conf
        ) -> tuple[Any, dict[str, float]]:
            with phase_timer() as phases:
                result = upstream.deidentify(lay, conf)
            written = len(result.cleaned) + len(result.quarantined)
            assert result.gate.passed and written == n, (result.gate, written)
            return result, {
                **phases,
                "gate_files": result.gate.files,
                "released": len(result.cleaned),
            }

        seconds, (_res, phases) = timed(f"batch{workers}", run_batch, prepare)
        phases_of[workers] = {"total": seconds, **phases}
        results.append(
            Result("sendit deidentify_batch", workers, n, seconds, "plan+jobs+tables+gate")
        )

    # ---------------------------------------------------------------- competitors
    def tool(name: str, chunk: Callable[[list[Pair]], int], workers: int, note: str) -> None:
        def run(dest: Path, _x: Any) -> int:
            done = run_pool(chunk, _targets(paths, folder, dest), workers)
            assert done == n
            return done

        seconds, _ = timed(f"{name}{workers}", run)
        results.append(Result(name, workers, n, seconds, note))

    unavailable: list[str] = []
    if "dcmanon" not in args.skip:
        try:
            import dcmanon

            version = getattr(dcmanon, "__version__", None) or _dist_version("dcmanon")
            for workers in (1, 2):
                tool("dcmanon", dcmanon_chunk, workers, f"Rust, v{version}, default config")
        except ImportError as exc:
            unavailable.append(f"dcmanon unavailable ({exc}); `.venv/bin/pip install dcmanon`")
    if "dicognito" not in args.skip:
        try:
            import dicognito  # noqa: F401

            tool(
                "dicognito",
                dicognito_chunk,
                1,
                f"v{_dist_version('dicognito')}, dcmread+anonymize+save_as",
            )
        except ImportError as exc:
            unavailable.append(f"dicognito unavailable ({exc})")
    if "deid" not in args.skip:
        try:
            import deid  # noqa: F401

            subset = paths[: max(1, min(args.deid_files, n))]

            def run_deid(dest: Path, _x: Any) -> int:
                done = deid_run(subset, dest)
                assert done == len(subset), done
                return done

            seconds, _ = timed("deid", run_deid)
            results.append(
                Result(
                    "deid",
                    1,
                    len(subset),
                    seconds,
                    f"v{_dist_version('deid')}, default recipe, {len(subset)} files, scaled",
                )
            )
        except ImportError as exc:
            unavailable.append(f"deid unavailable ({exc})")
    if "copy" not in args.skip:
        tool("copy", copy_chunk, 1, "shutil.copyfile, I/O floor")

    # ---------------------------------------------------------------- report
    ref = next((r for r in results if r.tool == "dcmanon" and r.workers == 1), None)
    rows = []
    for r in results:
        vs = f"{r.rate / ref.rate:.2f}x" if ref else "n/a"
        per = f"{r.rate / r.workers / ref.rate:.2f}x" if ref else "n/a"
        rows.append(
            [
                r.tool,
                r.workers,
                r.files,
                f"{r.seconds:.2f}",
                f"{r.rate:.0f}",
                f"{r.seconds / r.files * 1000:.2f}",
                vs,
                per,
                r.note,
            ]
        )
    c.say()
    c.say(
        c.table(
            [
                "tool",
                "workers",
                "files",
                "best s",
                "files/s",
                "ms/file",
                "vs dcmanon 1w",
                "per worker",
                "note",
            ],
            rows,
            "lrrrrrrrl",
        )
    )
    for line in unavailable:
        c.say(f"  {line}")
    c.say()
    c.say(
        "deidentify_batch phases (best run; plan = pseudonyms + names, run_jobs = per-file work, "
        "gate = leak gate over release/ (the deid %filter quarantines the DERIVED series, so only "
        "the released files are scanned; pixel spans recorded at write time spare re-parsing headers), rest = inspect.load, tables, parquet, disposition):"
    )
    phase_rows = []
    for workers, ph in phases_of.items():
        rest = ph["total"] - ph.get("plan", 0) - ph.get("run_jobs", 0) - ph.get("run_gate", 0)
        phase_rows.append(
            [
                f"{workers} worker{'s' if workers > 1 else ''}",
                f"{ph['total']:.2f}",
                f"{ph.get('plan', 0):.2f}",
                f"{ph.get('run_jobs', 0):.2f}",
                f"{ph.get('run_gate', 0):.2f}",
                f"{rest:.2f}",
                f"{int(ph['released'])}",
                f"{c.rate(int(ph['gate_files']), ph.get('run_gate', 0)):.0f}",
            ]
        )
    c.say(
        c.table(
            ["", "total s", "plan s", "run_jobs s", "gate s", "rest s", "released", "gate files/s"],
            phase_rows,
        )
    )
    c.say(
        f"(one-time, not counted: recipe compile {compile_s * 1000:.0f} ms; planning alone {plan_s * 1000:.0f} ms)"
    )
    if ref:
        mine = next(r for r in results if r.tool == "sendit run_jobs" and r.workers == 1)
        whole = next(r for r in results if r.tool == "sendit deidentify_batch" and r.workers == 1)
        c.say(
            f"goal >= 2.0x dcmanon per worker: run_jobs {mine.rate / ref.rate:.2f}x, "
            f"deidentify_batch {whole.rate / ref.rate:.2f}x -> "
            f"{'met' if mine.rate / ref.rate >= 2.0 else 'NOT met'}"
        )
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
