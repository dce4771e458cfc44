"""OCR screen (issue 7): detection, false positives and cost per image, with sampling and workers.

On generated images (``textimages.make_text_images``, cached under ``benchmarks/out/``):

* ``text``: ``--n`` ultrasound / secondary-capture / CT images with two lines of
  text burned in (several sizes, fonts, contrasts, positions): detection rate
  (image flagged) and coverage (share of the burned lines whose box the
  suggested boxes cover at >= 90 %);
* ``plain``: ``--n`` plain CT slices: false-positive rate;
* ``study``: the ``--files`` CT corpus of 4 series (1,000 images by default)
  with ``sample_per_series=1``: what leaving ``OCR_SCREEN`` on costs a CT study;
* ``plain, W workers``: the plain set again on a process pool;
* ``before / after``: the screen as inspect runs it (``OCR_SAMPLE_PER_SERIES`` 2)
  on the CT study corpus (``--study`` a folder of studies, such as the
  40 x 25 one of ``bench_run.py``; else the ``--files`` corpus), with the
  screen of :data:`ocr_recall.BEFORE_REV` (whole pictures, the tesseract
  program per 16 images) and with this one: CPU ms per image read;
* ``--recall``: the recall set of ``ocr_recall.py`` (every image with burned-in
  text we have, generated and real, and text-free ones) read by both: images
  flagged before and missed now (must be none), flagged now only, ms per image.

Run: ``.venv/bin/python benchmarks/bench_ocr.py [--n N --files F --rows R --workers W --study DIR --recall]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
import numpy as np
import ocr_recall
import pandas as pd

from sendit_helpers.deid import ocr
from sendit_helpers.samples import textimages
from sendit_helpers.stages import inspect, inspectread


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
    return inspect.files_table(inspectread.read_all(paths, use_deid=False, progress=False), folder)


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
    p.add_argument("--study", type=Path, default=None, help="folder of studies for the before/after line (default: the --files corpus)")
    p.add_argument("--recall", action="store_true", help="also read the recall set before and after")
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
    before_after(args.study or study_dir, args.out, args.recall)
    return 0


def cpu(func: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of this process and its children (the tesseract program, pool workers)."""
    start = os.times()
    result = func()
    end = os.times()
    used = (end.user - start.user) + (end.system - start.system)
    used += (end.children_user - start.children_user) + (end.children_system - start.children_system)
    return used, result


def before_after(study: Path, out: Path, recall: bool) -> None:
    """The screen of ``ocr_recall.BEFORE_REV`` against this one: CPU per image, and the recall."""
    try:
        before = ocr_recall.before_module()
    except (OSError, subprocess.CalledProcessError) as exc:
        c.say(f"before/after skipped: the screen of {ocr_recall.BEFORE_REV} cannot be read from git ({type(exc).__name__})")
        return
    files = files_of(study)
    c.say(f"before ({ocr_recall.BEFORE_REV}: whole pictures, tesseract program) / after (libtesseract in process, pre-screen) on {study.name}: {len(files)} images, {files['SeriesInstanceUID'].nunique()} series, OCR_SAMPLE_PER_SERIES 2; load {os.getloadavg()[0]:.2f}")
    rows = []
    for label, module in (("before", before), ("after", ocr)):
        module.screen_files(files.iloc[:2], progress=False)  # warm: imports, the library's model
        seconds, table = cpu(lambda m=module: m.screen_files(files, sample_per_series=2, progress=False))
        read = int(table["ocr_sampled"].sum())
        rows.append((label, read, int(table["ocr_flagged"].sum()), f"{1000 * seconds / max(1, read):.1f}", f"{seconds:.2f}"))
    c.say(c.table(["screen", "images read", "flagged", "CPU ms/image", "CPU s"], rows, "lrrrr"))
    if not recall:
        return
    items = ocr_recall.generated(out / "ocr_recall" / "generated") + ocr_recall.real(study)
    results = {}
    for label, module in (("before", before), ("after", ocr)):
        seconds, (found, _) = cpu(lambda m=module: ocr_recall.reference(items, m.find_text))
        results[label] = (found, seconds)
    old, new = results["before"][0], results["after"][0]
    diff = ocr_recall.compare(old, new)
    flagged = [k for k, v in old.items() if v.get("flagged")]
    kept = len(flagged) - len(diff["missed"])
    c.say(f"recall set: {len(items)} images ({sum('error' not in v for v in old.values())} readable); flagged before {len(flagged)}, still flagged after {kept} ({kept / max(1, len(flagged)):.1%}), boxes covering < 90 % of before's: {len(diff['uncovered'])}, flagged after only: {len(diff['new'])}")
    for key in ("missed", "uncovered", "new", "errors"):
        if diff[key]:
            c.say(f"  {key}: {', '.join(diff[key])}")
    rows = [(label, f"{1000 * s / max(1, len(items)):.1f}", f"{s:.1f}") for label, (_, s) in results.items()]
    c.say(c.table(["recall set, find_text", "CPU ms/image", "CPU s"], rows, "lrr"))


if __name__ == "__main__":
    raise SystemExit(main())
