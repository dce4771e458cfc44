"""Old revision vs this checkout, side by side in one run: ``sendit run`` and ``sendit deidentify``.

"Benchmarks show no regression" (issue 13) as a measurement, not a recollection.  This script

* builds a detached git worktree of ``--old`` (default ``2ef7317``, the code before the
  re-layering) outside the repository (``--old-dir``, default
  ``~/.cache/sendit-notebooks/bench_versions/<rev>``) with its own venv
  (``pip install -e`` and the ``python3`` kernel, as ``make`` does), or reuses one
  (``--old-venv``);
* generates (once, cached under ``--out``) ``--studies`` studies of ``--files`` CT images
  (:func:`sendit_helpers.samples.synthetic.make_ct_corpus`) and one study of
  ``--deid-files`` images;
* times, interleaved in ``--rounds`` rounds (old then new, new then old, ...), each
  version's own ``sendit`` command in a fresh work folder: ``sendit run ROOT`` (all four
  stages, the local store, notebooks kept) and ``sendit deidentify STUDY`` (inspect and
  de-identify of one study), with the same ``--workers`` and a fixed
  ``SENDIT_SITE_SECRET``;
* prints one line per tool with files/s of both (best of the rounds, median in
  parentheses) and the ratio new/old, then whether ``release/`` of both is byte-identical
  (every file; a parquet table whose bytes differ is also compared as a table).

The machine is shared: only the ratios of one run count; the load average is printed
before and after.

Run: ``.venv/bin/python benchmarks/bench_versions.py [--old 2ef7317 --studies 10 --files 25
--deid-files 300 --rounds 3 --workers 2]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import pandas as pd
from bench_run import ensure_tree

REPO = c.HERE.parent
OLD = "2ef7317"
"""The last revision before the re-layering into folders (issue 13)."""
SECRET_HEX = "62656e63682d76657273696f6e73"  # "bench-versions"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "sendit-notebooks"
    / "bench_versions"
)


@dataclass
class Version:
    """One revision to time: its source tree and the venv whose ``sendit`` runs it."""

    label: str
    tree: Path
    venv: Path
    seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def sendit(self) -> str:
        return str(self.venv / "bin" / "sendit")

    def env(self) -> dict[str, str]:
        """The environment of its commands: its venv first on PATH (the kernels too), its tree on PYTHONPATH."""
        env = dict(os.environ, PROGRESS="false", SENDIT_SITE_SECRET=SECRET_HEX)
        for name in ("WORKERS", "VIRTUAL_ENV", "PYTHONHOME", "EXECUTOR", "DASK_SCHEDULER"):
            env.pop(name, None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(self.tree)
        return env


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def old_tree(rev: str, where: Path) -> Path:
    """A detached worktree of ``rev`` at ``where`` (made once; checked to be at ``rev``)."""
    want = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if (where / ".git").exists():
        if _git("rev-parse", "HEAD", cwd=where) != want:
            raise SystemExit(
                f"{where} is not at {rev}; remove it (git worktree remove {where}) or pass --old-dir"
            )
        return where
    where.parent.mkdir(parents=True, exist_ok=True)
    c.say(f"# git worktree add --detach {where} {rev}")
    _git("worktree", "add", "--detach", str(where), want)
    return where


def old_venv(tree: Path, venv: Path | None) -> Path:
    """``venv`` as given, else ``tree/.venv``, made as ``make`` makes it (once)."""
    if venv is not None:
        if not (venv / "bin" / "sendit").exists():
            raise SystemExit(
                f"--old-venv {venv} has no bin/sendit; install the old tree into it first"
            )
        return venv
    venv = tree / ".venv"
    marker = venv / ".bench-installed"
    if marker.exists():
        return venv
    c.say(f"# building {venv} (pip install -e {tree}; python3 kernel) ...")
    python = str(venv / "bin" / "python")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [python, "-m", "pip", "install", "-q", "-e", str(tree)],
        [python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    marker.write_text("installed\n")
    return venv


def run_once(version: Version, tool: str, argv: Sequence[str], work: Path) -> float:
    """Wall seconds of ``sendit <argv> --work work`` of ``version`` (fails loudly)."""
    start = time.perf_counter()
    proc = subprocess.run([version.sendit, *argv, "--work", str(work)], env=version.env(),
                          capture_output=True, text=True, check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"{version.label}: sendit {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    version.seconds.setdefault(tool, []).append(elapsed)
    return elapsed


def releases(work: Path) -> dict[str, Path]:
    """``<batch>/release/<file> -> path`` of every released file under a work folder."""
    found: dict[str, Path] = {}
    for release in sorted(work.glob("*/release")):
        for path in sorted(release.rglob("*")):
            if path.is_file():
                found[f"{release.parent.name}/{path.relative_to(release).as_posix()}"] = path
    return found


def compare(old_work: Path, new_work: Path) -> str:
    """One line: are the two work folders' ``release/`` trees byte-identical (tables: equal)?"""
    old, new = releases(old_work), releases(new_work)
    if set(old) != set(new):
        only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        return f"NOT the same files: {len(only_old)} only in old (e.g. {only_old[:2]}), {len(only_new)} only in new (e.g. {only_new[:2]})"
    differ = [name for name in old if not filecmp.cmp(old[name], new[name], shallow=False)]
    tables = [name for name in differ if name.endswith(".parquet")]
    same_tables = [
        name for name in tables if pd.read_parquet(old[name]).equals(pd.read_parquet(new[name]))
    ]
    others = [name for name in differ if name not in same_tables]
    if others:
        return f"DIFFERENT: {len(others)} of {len(old)} files differ (e.g. {others[:3]})"
    note = (
        f"; {len(same_tables)} parquet table(s) equal as tables, bytes differ"
        if same_tables
        else ""
    )
    return f"byte-identical: {len(old) - len(same_tables)} of {len(old)} files{note}"


def line(tool: str, n: int, old: Version, new: Version) -> str:
    best_old, best_new = min(old.seconds[tool]), min(new.seconds[tool])
    med_old, med_new = statistics.median(old.seconds[tool]), statistics.median(new.seconds[tool])
    r_old, r_new = c.rate(n, best_old), c.rate(n, best_new)
    return (f"{tool}: {n} files, old {old.label} {r_old:.1f} files/s (median {c.rate(n, med_old):.1f}), "
            f"new {new.label} {r_new:.1f} files/s (median {c.rate(n, med_new):.1f}), "
            f"ratio new/old = {r_new / r_old:.3f}x (best of {len(old.seconds[tool])} rounds each)")  # fmt: skip


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--old", default=OLD, help=f"old revision (default {OLD}: before the re-layering)"
    )
    p.add_argument(
        "--old-dir", type=Path, default=None, help=f"its worktree (default {CACHE}/<rev>)"
    )
    p.add_argument(
        "--old-venv",
        type=Path,
        default=None,
        help="reuse this venv for the old revision (default: <old-dir>/.venv, built once)",
    )
    p.add_argument(
        "--studies", type=int, default=10, help="studies of the sendit run tree, default 10"
    )
    p.add_argument("--files", type=int, default=25, help="CT images per study, default 25")
    p.add_argument(
        "--deid-files",
        type=int,
        default=300,
        help="images of the study sendit deidentify runs on, default 300",
    )
    p.add_argument("--rows", type=int, default=512, help="image rows = columns, default 512")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds (old/new alternate first), default 3",
    )
    p.add_argument("--workers", type=int, default=2, help="--workers of both versions, default 2")
    p.add_argument("--skip-run", action="store_true", help="time sendit deidentify only")
    p.add_argument("--skip-deidentify", action="store_true", help="time sendit run only")
    p.add_argument(
        "--out",
        type=Path,
        default=c.DEFAULT_OUT,
        help="corpus cache and scratch (default benchmarks/out/)",
    )
    args = p.parse_args(argv)

    short = _git("rev-parse", "--short", f"{args.old}^{{commit}}")
    tree = old_tree(args.old, args.old_dir or CACHE / short)
    old = Version(short, tree, old_venv(tree, args.old_venv))
    head = _git("rev-parse", "--short", "HEAD")
    dirty = "+changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    new = Version(f"{head}{dirty}", REPO, Path(sys.executable).parent.parent)

    tools: list[tuple[str, list[str], int]] = []
    if not args.skip_run:
        root = ensure_tree(args.out, args.studies, args.files, args.rows)
        n_run = sum(1 for q in root.rglob("*") if q.is_file())
        c.warm_cache(sorted(q for q in root.rglob("*") if q.is_file()))
        tools.append(("sendit run", ["run", str(root), "--workers", str(args.workers)], n_run))
    if not args.skip_deidentify:
        study = c.ensure_corpus(args.out, args.deid_files, args.rows)
        n_deid = sum(1 for q in study.rglob("*") if q.is_file())
        c.warm_cache(sorted(q for q in study.rglob("*") if q.is_file()))
        tools.append(
            (
                "sendit deidentify",
                ["deidentify", str(study), "--workers", str(args.workers)],
                n_deid,
            )
        )

    c.say(
        f"# old {old.label} ({old.tree}, venv {old.venv}) vs new {new.label} ({new.tree}); --workers {args.workers}, {args.rounds} rounds interleaved"
    )
    c.say(f"# {c.machine()}")
    c.say(f"# load before: {load()}")
    kept = args.out / "versions"
    if kept.exists():
        shutil.rmtree(kept)
    checks: list[str] = []
    for tool, argv_tool, _n in tools:
        slug = tool.split()[-1]
        for round_no in range(max(1, args.rounds)):
            order = (old, new) if round_no % 2 == 0 else (new, old)
            for version in order:
                if round_no == 0:  # the first round's outputs are kept for the comparison
                    work = kept / slug / ("old" if version is old else "new")
                    seconds = run_once(version, tool, argv_tool, work)
                else:
                    with c.scratch(args.out, f"versions-{slug}") as folder:
                        seconds = run_once(version, tool, argv_tool, folder / "work")
                c.say(f"#   round {round_no + 1} {tool} {version.label}: {seconds:.2f} s")
        checks.append(
            f"{tool} release/ old vs new (SENDIT_SITE_SECRET fixed): {compare(kept / slug / 'old', kept / slug / 'new')}"
        )
    for tool, _argv, n in tools:
        c.say(line(tool, n, old, new))
    for check in checks:
        c.say(check)
    c.say(f"# load after: {load()}")
    shutil.rmtree(kept, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
