"""OCR screen (issue 7): detection, false positives and cost per image, with sampling and workers.

On generated images (``textimages.make_text_images``, cached under ``benchmarks/out/``):

* ``text``: ``--n`` ultrasound / secondary-capture / CT images with two lines of
  text burned in (several sizes, fonts, contrasts, positions): detection rate
  (image flagged) and coverage (share of the burned lines whose box the
  suggested boxes cover at >= 90 %);
* ``plain``: ``--n`` plain CT slices: false-positive rate;
* ``study``: the ``--files`` CT corpus of 4 series (1,000 images by default)
  with ``sample_per_series=1``: what leaving ``OCR_SCREEN`` on costs a CT study;
* ``plain, W workers``: the plain set again on a process pool.

Run: ``.venv/bin/python benchmarks/bench_ocr.py [--n N --files F --rows R --workers W]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as c
import numpy as np
import pandas as pd

from sendit_helpers.deid import ocr
from sendit_helpers.samples import textimages
from sendit_helpers.stages import inspect


def text_set(out: Path, n: int, with_text: bool) -> Path:
    """A cached ``make_text_images`` folder under ``out/corpus/``."""
    folder = out / "corpus" / f"ocr_{'text' if with_text else 'plain'}_{n}"
    marker = folder.with_name(folder.name + ".ok")
    if not (marker.exists() and folder.is_dir()):
        c.say(f"generating {n} {'text' if with_text else 'plain CT'} images in {folder} ...")
        textimages.make_text_images(folder, n, with_text=with_text, seed=7)
        marker.write_text(f"{n} images\n")
    return folder


def files_of(folder: Path) -> pd.DataFrame:
    """Inspect's files table of a folder (header only, no %filter screen)."""
    paths = c.corpus_files(folder)
    return inspect.files_table(inspect.read_all(paths, use_deid=False, progress=False), folder)


def coverage(folder: Path, table: pd.DataFrame) -> float:
    """Share of the burned lines covered at >= 90 % by the suggested boxes."""
    boxes = {Path(p).name: json.loads(b) for p, b in zip(table["source_path"], table["ocr_boxes"], strict=True)}
    truth = textimages.load_text_truth(folder)
    covered = 0
    for line in truth:
        x0, y0, x1, y1 = line.box
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for b in boxes.get(line.file, []):
            mask[max(0, b[1] - y0) : max(0, b[3] - y0), max(0, b[0] - x0) : max(0, b[2] - x0)] = True
        covered += bool(mask.mean() >= 0.9)
    return covered / len(truth) if truth else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0], files=1000, rows=512, repeats=1)
    p.add_argument("--n", type=int, default=100, help="images with text, and plain CT slices (default 100 each)")
    p.add_argument("--workers", type=int, default=2, help="processes for the pool run (default 2)")
    args = p.parse_args(argv)
    ocr.require_tesseract()
    text_dir, plain_dir = text_set(args.out, args.n, True), text_set(args.out, args.n, False)
    study_dir = c.ensure_corpus(args.out, args.files, args.rows)
    text_files, plain_files, study_files = files_of(text_dir), files_of(plain_dir), files_of(study_dir)
    c.say(f"OCR benchmark: {len(text_files)} text images, {len(plain_files)} plain CT slices, CT study of {len(study_files)} images ({study_files['SeriesInstanceUID'].nunique()} series, {args.rows}x{args.rows})")
    c.say(f"  {c.machine()}; tesseract {ocr.require_tesseract().get_tesseract_version()}; min confidence {ocr.MIN_CONFIDENCE:g}")

    def run(files: pd.DataFrame, **kw: int) -> tuple[float, pd.DataFrame]:
        start = time.perf_counter()
        table = ocr.screen_files(files, progress=False, **kw)
        return time.perf_counter() - start, table

    rows = []
    seconds, text = run(text_files)
    rows.append(("text (detection)", len(text), f"{text['ocr_flagged'].mean():.1%}", f"{coverage(text_dir, text):.1%}", f"{1000 * seconds / len(text):.0f}", f"{seconds:.1f}"))
    seconds, plain = run(plain_files)
    rows.append(("plain CT (false pos.)", len(plain), f"{plain['ocr_flagged'].mean():.1%}", "", f"{1000 * seconds / len(plain):.0f}", f"{seconds:.1f}"))
    seconds, study = run(study_files, sample_per_series=1)
    rows.append((f"CT study, 1 per series ({int(study['ocr_sampled'].sum())} read)", len(study), f"{study['ocr_flagged'].mean():.1%}", "", f"{1000 * seconds / len(study):.1f}", f"{seconds:.1f}"))
    seconds, pooled = run(plain_files, workers=args.workers)
    rows.append((f"plain CT, {args.workers} workers", len(pooled), f"{pooled['ocr_flagged'].mean():.1%}", "", f"{1000 * seconds / len(pooled):.0f}", f"{seconds:.1f}"))
    c.say(c.table(["run", "images", "flagged", "lines covered", "ms/image", "total s"], rows, "lrrrrr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
