"""Deterministic synthetic DICOM batches for the demo, the tests and the benchmarks.

A *batch* is one study as a hospital PACS would export it: a patient folder,
one folder per series, CT images, optionally a secondary capture and two
ultrasound images with the patient's name burned into the pixels, and some
junk (a text file, a truncated DICOM, an empty file).  Every identifying value
is unique, greppable, and recorded in a :class:`Planted` so that tests can scan
the outputs of every stage byte for byte.

Everything is derived from a seed: the same seed gives byte-identical files.

Command line::

    python -m sendit_helpers.samples.synthetic OUT_DIR [--batches N] [--ct-files N] [--seed S]

writes the batch folders ``OUT_DIR/batch_001 ...`` (and, with ``--ct-files``, a
512x512 CT study ``OUT_DIR/ct_corpus``) and their planted values, *next to*
``OUT_DIR`` so that ``OUT_DIR`` holds batches only:
``OUT_DIR/../planted/<batch>.json``.  ``make demo`` passes ``demo/batches``, the
layout :func:`demo_batch` uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sendit_helpers.samples.batchspec import OLD_AGE_YEARS, BatchSpec, Planted
from sendit_helpers.samples.studies import _generate

__all__ = [
    "DEMO_BATCHES",
    "demo_batch",
    "demo_root",
    "load_demo_planted",
    "main",
    "make_batch",
    "make_batches",
    "make_ct_corpus",
]

#: Number of demo batches made by :func:`demo_batch`.
DEMO_BATCHES = 2


def make_batch(folder: Path, spec: BatchSpec = BatchSpec()) -> Planted:  # noqa: B008
    """Write one synthetic study (one batch) into ``folder``.

    Layout::

        folder/notes.txt                                        (junk)
        folder/<FAMILY>_<GIVEN>_<PatientID>/AUTORUN.INF          (junk, empty)
        folder/<FAMILY>_<GIVEN>_<PatientID>/<Accession>_S001_<description>/IM_<Accession>_010001.dcm
        folder/<patient folder>/<Accession>_S900_KEY_IMAGES/<SOPInstanceUID>.dcm
        folder/<patient folder>/<Accession>_S901_US_ABDOMEN_LIMITED/<SOPInstanceUID>.dcm

    The first CT series also holds the truncated DICOM (the next instance number).

    Parameters
    ----------
    folder : Path
        Created if missing.
    spec : BatchSpec
        What to generate.

    Returns
    -------
    Planted
        Every identifying value written.

    Raises
    ------
    ValueError
        If the spec is impossible (no series or images, images below 16x16,
        unknown sex, age outside 0..150).
    """
    if spec.n_series < 1 or spec.images_per_series < 1:
        raise ValueError("a batch needs at least one series of at least one image")
    return _generate(
        Path(folder),
        "batch",
        spec.seed,
        [spec.images_per_series] * spec.n_series,
        spec.rows,
        spec.columns,
        spec.burned_in,
        spec.junk,
        spec.patient_age_years,
        spec.patient_sex,
        spec.study,
    )


def make_batches(
    root: Path,
    n: int = 2,
    spec: BatchSpec = BatchSpec(),  # noqa: B008
) -> dict[Path, Planted]:
    """Write ``n`` batches ``root/batch_001 ...``, one patient each.

    Batch ``i`` (from 0) uses seed ``spec.seed + i``; when ``n >= 2`` the last
    batch's patient is :data:`OLD_AGE_YEARS` (93) years old, to exercise the
    ``090Y`` rule.

    Parameters
    ----------
    root : Path
        Created if missing.
    n : int
        Number of batches (at least 1).
    spec : BatchSpec
        Template spec for every batch.

    Returns
    -------
    dict[Path, Planted]
        Batch folder -> planted values, in batch order.
    """
    if n < 1:
        raise ValueError(f"make_batches needs n >= 1, got {n}")
    out: dict[Path, Planted] = {}
    for i in range(n):
        age = OLD_AGE_YEARS if n >= 2 and i == n - 1 else spec.patient_age_years
        sub = replace(spec, seed=spec.seed + i, patient_age_years=age)
        folder = Path(root) / f"batch_{i + 1:03d}"
        out[folder] = make_batch(folder, sub)
    return out


def make_ct_corpus(
    folder: Path,
    n_files: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    series: int = 4,
) -> Planted:
    """Write a plain CT study of ``n_files`` images for benchmarks.

    Same header content and layout as :func:`make_batch`, without junk and
    without burned-in images; the files are spread over ``series`` series.

    Parameters
    ----------
    folder : Path
        Created if missing.
    n_files : int
        Number of images (at least 1).
    rows, columns : int
        Image size.
    seed : int
        Seed (a corpus and a batch with the same seed still differ).
    series : int
        Number of series (fewer if ``n_files < series``).

    Returns
    -------
    Planted
        Every identifying value written.
    """
    if n_files < 1 or series < 1:
        raise ValueError("make_ct_corpus needs n_files >= 1 and series >= 1")
    series = min(series, n_files)
    counts = [n_files // series + (1 if i < n_files % series else 0) for i in range(series)]
    return _generate(Path(folder), "ct-corpus", seed, counts, rows, columns, False, False, 56, "M")


def _repo_or_cwd() -> Path:
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def demo_root() -> Path:
    """Return the default sample location.

    Returns
    -------
    Path
        ``$SENDIT_DEMO_DIR`` if set, else ``<repository>/demo`` when running from
        a source checkout, else ``<cwd>/demo``.
    """
    env = os.environ.get("SENDIT_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    return _repo_or_cwd() / "demo"


def _planted_dir(batches_dir: Path) -> Path:
    return batches_dir.parent / "planted"


def _write_samples(
    batches_dir: Path, batches: int, ct_files: int, seed: int
) -> dict[Path, Planted]:
    """Batches (and a CT corpus) in ``batches_dir``, planted JSON next to it."""
    made = make_batches(batches_dir, batches, BatchSpec(seed=seed)) if batches else {}
    if ct_files:
        corpus = batches_dir / "ct_corpus"
        made[corpus] = make_ct_corpus(corpus, ct_files, seed=seed)
    for path, planted in made.items():
        planted.to_json(_planted_dir(batches_dir) / f"{path.name}.json")
    return made


def demo_batch() -> Path:
    """Return the first demo batch, generating the demo batches if missing.

    ``demo_root()/batches/batch_001`` and ``batch_002`` (93-year-old patient),
    with their planted values in ``demo_root()/planted/<batch>.json``.
    Generation happens in a temporary folder renamed into place, so concurrent
    callers and interrupted runs never see a half-written demo.

    Returns
    -------
    Path
        ``demo_root()/"batches"/"batch_001"``.
    """
    root = demo_root()
    batches = root / "batches"
    first = batches / "batch_001"
    if first.is_dir() and (root / "planted" / "batch_001.json").is_file():
        return first
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        _write_samples(tmp / "batches", DEMO_BATCHES, 0, 0)
        planted = root / "planted"
        planted.mkdir(exist_ok=True)
        for made in sorted((tmp / "planted").iterdir()):
            if not (planted / made.name).is_file():
                os.replace(made, planted / made.name)  # atomic; same content either way
        if not batches.exists():
            try:
                os.rename(tmp / "batches", batches)
            except OSError:
                if not first.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return first


def load_demo_planted(batch: Path) -> Planted:
    """Return the planted values of a batch made by :func:`demo_batch` or the CLI.

    Parameters
    ----------
    batch : Path
        ``<root>/<batches>/<name>``.

    Returns
    -------
    Planted
        Read from ``<root>/planted/<name>.json``.
    """
    batch = Path(batch)
    return Planted.from_json(_planted_dir(batch.parent) / f"{batch.name}.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: write sample batches (and a CT corpus) into OUT_DIR.

    Batches go to ``OUT_DIR/batch_001 ...`` (``OUT_DIR/ct_corpus`` for the corpus),
    their planted values to ``OUT_DIR/../planted/<batch>.json``.

    Parameters
    ----------
    argv : Sequence[str] or None
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m sendit_helpers.samples.synthetic",
        description="Write deterministic synthetic DICOM batches (fake PHI) for demos and tests.",
    )
    parser.add_argument(
        "out_dir",
        type=Path,
        help="folder of the batches (planted values go to OUT_DIR/../planted/)",
    )
    parser.add_argument("--batches", type=int, default=DEMO_BATCHES, help="number of batches")
    parser.add_argument(
        "--ct-files", type=int, default=0, help="also write a 512x512 CT corpus of N files"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.batches < 0 or args.ct_files < 0:
        parser.error("--batches and --ct-files must not be negative")
    out_dir: Path = args.out_dir
    made = _write_samples(out_dir, args.batches, args.ct_files, args.seed)
    for path in made:
        print(f"batch: {path}")
    print(f"planted values: {_planted_dir(out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
