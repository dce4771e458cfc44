"""Scale-out: de-identification with 1 vs 2 workers (local pool and Dask), memory as a batch grows.

Two measurements, each printed as a table:

* **throughput**: the de-identify stage's per-file work
  (:func:`sendit_helpers.stages.engine.deidentify_file` jobs, chunked by
  :func:`sendit_helpers.core.executors.map_chunks` and their rows spooled to
  Arrow spool parts per chunk, exactly as the stage runs them) over ``--batches`` batches of ``--files`` CT images each, with 1 and
  2 workers, on the local process pool and on a Dask LocalCluster; the
  speed-up is 2 workers over 1 worker of the same executor, from the same run.
  Pool start-up is timed (each run makes its pool); the Dask cluster is
  started and warmed up (recipe compiled in every worker) before timing.
  Goal (issue 6): >= 1.7x on a 2-core machine.
* **memory**: peak resident memory of the whole process tree (sampled every
  ``--sample`` seconds with psutil) while one batch of N small (64x64) images
  goes through the pipeline, for N in ``--mem-sizes``.  ``--mem-via run``
  (default) runs ``sendit run`` (papermill driver + one kernel per stage, local
  store upload included); ``--mem-via stages`` runs inspect + deidentify in one
  plain Python process (no notebooks; quicker).

The machine is shared: compare ratios from one run, not absolute figures
across runs.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--batches B --files N --rows R --repeats K]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import _common as c
import psutil

from sendit_helpers.core import executors
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.pseudonyms.secret import load_site_secret
from sendit_helpers.stages import deidentify, deidplan, engine, inspect

SECRET_HEX = "62656e63686d61726b2d736974652d736563726574"  # as _common.settings()

_STAGES_CHILD = """
import sys
from sendit_helpers.stages import deidentify, deidplan, engine, inspect
from sendit_helpers.run.runner import open_batch
from sendit_helpers.run import upstream
layout, settings = open_batch(sys.argv[1], sys.argv[2], [], {"PROGRESS": False, "WORKERS": int(sys.argv[3])})
inspect.inspect_batch(layout, settings)
result = upstream.deidentify(layout, settings)
assert result.gate.passed
"""


# ------------------------------------------------------------------ throughput
def plan_jobs(folder: Path, out: Path, batches: int) -> tuple[list[engine.Job], Any]:
    """The corpus's de-identify jobs, repeated for ``batches`` batches (outputs under ``out``)."""
    conf = c.settings(WORKERS=1)
    with c.scratch(out, "scale-plan") as base:
        layout = BatchLayout.for_batch(folder, base / "work")
        files = inspect.inspect_batch(layout, conf).files
        secret = load_site_secret(layout.work, {"SENDIT_SITE_SECRET": conf["SENDIT_SITE_SECRET"]})
        jobs = deidplan.plan(layout, conf, files, secret).jobs
        root = layout.root
    config = engine.WorkerConfig((), True, secret, ())

    def moved(index: int, job: engine.Job) -> engine.Job:
        rel = Path(job.output).relative_to(root)
        return replace(job, output=os.fspath(out / f"batch_{index:03d}" / rel))

    return [moved(i, j) for i in range(batches) for j in jobs], config


def retarget(jobs: list[engine.Job], old: Path, new: Path) -> list[engine.Job]:
    return [replace(j, output=os.fspath(new / Path(j.output).relative_to(old))) for j in jobs]


def throughput(args: Any) -> list[list[Any]]:
    folder = c.ensure_corpus(args.out, args.files, args.rows)
    paths = c.corpus_files(folder)
    c.warm_cache(paths)
    placeholder = args.out / "scale-placeholder"  # job outputs are re-rooted under each scratch
    jobs, config = plan_jobs(folder, placeholder, args.batches)
    n = len(jobs)
    engine.load_recipe((), True)  # compiled once here: forked pool workers inherit it
    c.say(
        f"throughput: {args.batches} batches x {len(paths)} files = {n} de-identify jobs "
        f"({args.rows}x{args.rows} CT); best of {args.repeats}, plans interleaved"
    )

    def once(executor: str, workers: int) -> float:
        with c.scratch(args.out, f"scale-{executor}{workers}") as dest:
            mine = retarget(jobs, placeholder, dest)
            spool = dest / "spool"  # as the stage runs them: rows spooled to Arrow parts per chunk
            spool.mkdir()
            func = partial(deidentify.run_chunk_spooled, config=config, spool=str(spool))
            start = time.perf_counter()
            outcomes = executors.map_chunks(
                func, mine, workers=workers, executor=executor, progress=False, desc="deidentify"
            )
            seconds = time.perf_counter() - start
        bad = [o.error for o in outcomes if o.error]
        assert not bad and len(outcomes) == n, bad[:3]
        return seconds

    def ready(workers: int) -> None:
        """A warmed-up LocalCluster of exactly ``workers`` workers (untimed)."""
        executors.shutdown()
        client = executors.dask_client(workers, "")
        warm = jobs[: max(workers * 2, 2)]
        with c.scratch(args.out, "scale-warm") as dest:
            executors.map_chunks(
                partial(deidentify.run_chunk, config=config),
                retarget(warm, placeholder, dest),
                workers=workers,
                executor="dask",
                progress=False,
                size=1,
            )
        assert executors.dask_slots(client) == workers

    plans = [("local", 1), ("local", 2)]
    if not args.skip_dask:
        plans += [("dask", 1), ("dask", 2)]
    best: dict[tuple[str, int], float] = {}
    for repeat in range(max(1, args.repeats)):  # interleaved, so load drift hits every plan
        for executor, workers in plans:
            if executor == "dask":
                ready(workers)
            seconds = once(executor, workers)
            best[executor, workers] = min(best.get((executor, workers), seconds), seconds)
            c.say(
                f"  repeat {repeat + 1}: {executor:5s} {workers} worker(s) {seconds:.2f} s "
                f"(load avg {os.getloadavg()[0]:.1f})"
            )
    rows: list[list[Any]] = []
    for executor, workers in plans:
        seconds = best[executor, workers]
        speedup = best[executor, 1] / seconds
        rows.append(
            [executor, workers, n, f"{seconds:.2f}", f"{c.rate(n, seconds):.0f}", f"{speedup:.2f}x"]
        )
    executors.shutdown()
    shutil.rmtree(placeholder, ignore_errors=True)
    return rows


# ------------------------------------------------------------------ memory
def tree_rss(proc: psutil.Process) -> dict[int, int]:
    """Resident bytes of ``proc`` and each of its descendants, by pid (vanished ones left out)."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    sizes: dict[int, int] = {}
    for member in members:
        try:
            sizes[member.pid] = member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sizes


def high_water(pid: int) -> int:
    """Peak resident bytes of process ``pid`` so far (``VmHWM``; 0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class TreePeak:
    """Peaks of a process tree: the whole tree's, and each process's own (by label)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        """Each process's RSS in the sample where the tree peaked, by label."""
        self.each: dict[str, int] = {}
        """Each process's own peak RSS (its kernel-kept high-water mark, VmHWM, when
        readable: exact even between samples), by label."""
        self._labels: dict[int, str] = {}
        self._kernels = 0

    def label(self, pid: int) -> str:
        """``driver``, ``kernel N`` (in start order: one per stage) or ``child <pid>``."""
        if pid not in self._labels:
            if pid == self.root.pid:
                name = "driver"
            else:
                try:
                    cmd = " ".join(psutil.Process(pid).cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    cmd = ""
                if "ipykernel" in cmd:
                    self._kernels += 1
                    name = f"kernel {self._kernels}"
                else:
                    name = f"child {pid}"
            self._labels[pid] = name
        return self._labels[pid]

    def sample(self) -> None:
        """Take one sample of the tree."""
        found = tree_rss(self.root)
        sizes = {self.label(pid): rss for pid, rss in found.items()}
        for pid, rss in found.items():
            name = self.label(pid)
            self.each[name] = max(self.each.get(name, 0), rss, high_water(pid))
        total = sum(sizes.values())
        if total > self.peak:
            self.peak, self.at_peak = total, sizes

    def detail(self) -> str:
        """One line: who held what at the tree's peak, and each process's own peak (MB)."""
        at = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in self.at_peak.items())
        own = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in self.each.items() if v > 20e6)
        return f"at peak: {at}; own peaks: {own}"


def peak_rss(cmd: list[str], env: dict[str, str], every: float) -> tuple[TreePeak, float, int]:
    """Run ``cmd``; return (its tree's peaks, seconds, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = TreePeak(psutil.Process(proc.pid))
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks.sample()
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return peaks, time.perf_counter() - start, proc.returncode


def memory(args: Any) -> list[list[Any]]:
    env = dict(os.environ, PROGRESS="false", SENDIT_SITE_SECRET=SECRET_HEX)
    c.say(
        f"memory: one batch of {args.mem_rows}x{args.mem_rows} CT images, via {args.mem_via}, "
        f"{args.mem_workers} worker(s); process-tree RSS sampled every {args.sample:g} s"
    )
    rows: list[list[Any]] = []
    first: tuple[int, int] | None = None
    for n in args.mem_sizes:
        folder = c.ensure_corpus(args.out, n, args.mem_rows)
        with c.scratch(args.out, f"scale-mem{n}") as dest:
            if args.mem_via == "run":
                cmd = [
                    sys.executable,
                    "-m",
                    "sendit_helpers.run.cli",
                    "run",
                    str(folder),
                    "--work",
                    str(dest / "work"),
                    "--workers",
                    str(args.mem_workers),
                ]
            else:
                cmd = [
                    sys.executable,
                    "-c",
                    _STAGES_CHILD,
                    str(folder),
                    str(dest / "work"),
                    str(args.mem_workers),
                ]
            peaks, seconds, code = peak_rss(cmd, env, args.sample)
        peak = peaks.peak
        if code:
            raise SystemExit(f"memory run on {n} files failed (exit {code})")
        slope = ""
        if first is None:
            first = (n, peak)
        elif n > first[0]:
            slope = f"{(peak - first[1]) / (n - first[0]) * 1000 / 1e6:.1f}"
        rows.append([n, f"{peak / 1e6:.0f}", slope, f"{seconds:.1f}", f"{c.rate(n, seconds):.0f}"])
        c.say(f"  {n} files: peak {peak / 1e6:.0f} MB in {seconds:.1f} s")
        c.say(f"    {peaks.detail()}")
    return rows


def report_throughput(args: Any) -> None:
    """Run :func:`throughput` and print its table and the 1.7x goal."""
    speed = throughput(args)
    c.say()
    c.say(c.table(["executor", "workers", "files", "seconds", "files/s", "speed-up"], speed))
    c.say(
        f"machine ceiling: 2 processes run pure-Python work {c.cpu_ceiling(2):.2f}x one process, now"
    )
    ratios = {row[0]: row[5] for row in speed if row[1] == 2}
    ok = all(float(r.rstrip("x")) >= 1.7 for r in ratios.values())
    c.say(
        "goal >= 1.7x with 2 workers: "
        + ", ".join(f"{k} {v}" for k, v in ratios.items())
        + f" -> {'met' if ok else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0], files=250, rows=256, repeats=2)
    p.add_argument(
        "--batches", type=int, default=8, help="batches in the throughput test (default 8)"
    )
    p.add_argument("--skip-dask", action="store_true", help="leave the Dask runs out")
    p.add_argument("--skip-memory", action="store_true", help="leave the memory test out")
    p.add_argument("--skip-throughput", action="store_true", help="leave the throughput test out")
    p.add_argument(
        "--mem-sizes",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 5000],
        help="batch sizes of the memory test (default 500 1000 2000 5000)",
    )
    p.add_argument(
        "--mem-rows",
        type=int,
        default=64,
        help="image rows = columns in the memory test (default 64)",
    )
    p.add_argument(
        "--mem-via",
        choices=("run", "stages"),
        default="run",
        help="sendit run (notebooks, default) or the stage functions in one process",
    )
    p.add_argument(
        "--mem-workers", type=int, default=1, help="--workers of the memory runs (default 1)"
    )
    p.add_argument(
        "--sample", type=float, default=0.05, help="seconds between RSS samples (default 0.05)"
    )
    args = p.parse_args(argv)
    c.say(f"scale benchmark; {c.machine()}")
    if not args.skip_throughput:
        report_throughput(args)
    if not args.skip_memory:
        c.say()
        mem = memory(args)
        c.say()
        c.say(c.table(["files", "peak MB", "MB per 1000 more files", "seconds", "files/s"], mem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
