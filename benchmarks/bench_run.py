"""``sendit run`` end to end over many small studies, against dcmanon over the same tree.

Issue 15's first benchmark line: a PACS export is many small studies, so the
per-batch fixed cost (kernel starts, imports, notebook export) matters as much
as the per-file work.  This script

* builds ``--studies`` studies of ``--files`` CT images each with
  :func:`sendit_helpers.samples.synthetic.make_ct_corpus` (one patient and one seed per
  study; cached under ``--out``/corpus/);
* times ``sendit run ROOT --work WORK`` as a user runs it: the installed
  command in a subprocess, default settings (all four stages, the local store,
  executed notebooks and their HTML copies kept), a fresh work folder;
* times dcmanon (PyPI ``dcmanon``, Rust, default config) as one command over
  the same tree: a fresh Python process that anonymizes every file and writes
  it under an output folder;
* prints files/s for both and the ratio, from the same run (the machine is
  shared: compare ratios, not absolute figures across runs).

Goal (issue 15): ``sendit run`` >= 0.5x dcmanon end to end.

Run: ``.venv/bin/python benchmarks/bench_run.py [--studies 40 --files 25 --rows 512 --repeats 1]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as c

#: dcmanon as one command over a tree: walk, anonymize, write (a fresh interpreter).
DCMANON_SCRIPT = """
import os, sys
from dcmanon import Anonymizer
src, dst = sys.argv[1], sys.argv[2]
anon = Anonymizer()
n = 0
for folder, _dirs, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(folder, src))
    os.makedirs(out, exist_ok=True)
    for name in sorted(files):
        data = anon.anonymize(os.path.join(folder, name))
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)
        n += 1
print(n)
"""


def ensure_tree(out: Path, studies: int, files: int, rows: int) -> Path:
    """``out/corpus/run_<studies>x<files>_<rows>/study_NNN``, generated once (a ``.ok`` marker)."""
    from sendit_helpers.samples.synthetic import make_ct_corpus

    root = out / "corpus" / f"run_{studies}x{files}_{rows}"
    marker = root.with_name(root.name + ".ok")
    if marker.exists() and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    c.say(f"generating {studies} studies x {files} CT images {rows}x{rows} in {root} ...")
    for i in range(studies):
        make_ct_corpus(root / f"study_{i + 1:03d}", files, rows=rows, columns=rows, seed=1000 + i)
    marker.write_text(f"{studies * files} files, {time.perf_counter() - start:.1f} s\n")
    return root


def _bin(name: str) -> str:
    """A console script of this interpreter's environment."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def time_sendit(root: Path, work: Path, extra: list[str]) -> tuple[float, str]:
    """Wall seconds of ``sendit run root --work work`` in a subprocess, and its output."""
    start = time.perf_counter()
    proc = subprocess.run(
        [_bin("sendit"), "run", str(root), "--work", str(work), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sendit run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def time_dcmanon(root: Path, dst: Path) -> float:
    """Wall seconds of dcmanon over the tree, one fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", DCMANON_SCRIPT, str(root), str(dst)], check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=40, help="studies (batches), default 40")
    p.add_argument("--files", type=int, default=25, help="CT images per study, default 25")
    p.add_argument("--rows", type=int, default=512, help="image rows = columns, default 512")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each, best counts")
    p.add_argument("--out", type=Path, default=c.DEFAULT_OUT, help="corpus cache and scratch")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="passed to sendit run (default: none, default settings)")  # fmt: skip
    c.add_write_probe(p)
    args = p.parse_args(argv)

    root = ensure_tree(args.out, args.studies, args.files, args.rows)
    paths = sorted(q for q in root.rglob("*") if q.is_file())
    n = len(paths)
    c.warm_cache(paths)
    extra = [f"--set={item}" for item in args.set]
    c.say(f"# sendit run vs dcmanon: {args.studies} studies x {args.files} CT images {args.rows}x{args.rows} ({n} files)")
    c.say(f"# {c.machine()}")
    if args.write_probe:
        c.say(f"# {c.write_rate(args.out, args.write_probe)}")
    best_s = best_d = float("inf")
    for _ in range(max(1, args.repeats)):
        with c.scratch(args.out, "run-dcmanon") as folder:
            best_d = min(best_d, time_dcmanon(root, folder / "out"))
        with c.scratch(args.out, "run-sendit") as folder:
            seconds, _report = time_sendit(root, folder / "work", extra)
            best_s = min(best_s, seconds)
    rs, rd = c.rate(n, best_s), c.rate(n, best_d)
    c.say(f"sendit run: {n} files in {best_s:.2f} s = {rs:.1f} files/s (all four stages, local store, notebooks kept)")
    c.say(f"dcmanon:    {n} files in {best_d:.2f} s = {rd:.1f} files/s (one process over the tree)")
    c.say(f"ratio: sendit run / dcmanon = {rs / rd:.3f}x (goal >= 0.5x)")
    if args.write_probe:
        c.say(f"# at the end: {c.write_rate(args.out, args.write_probe)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
