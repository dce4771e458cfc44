"""The OCR screen's recall set: every image with burned-in text we have, and text-free ones.

* generated: ``textimages.make_text_images`` (US grey and RGB, SC, CT; five text
  heights, three fonts, bright, dim and inverse text, five positions), the same
  images as MONOCHROME1, ``synthetic.make_batch``'s burned-in US and SC images,
  plain CT slices;
* not generated here: deid-data's files (ultrasounds with burned-in text, grey,
  RGB and multi-frame; CT heads; CR photographs; a cat), pydicom's image test
  files, and one CT slice per series of the benchmark's 40-study corpus.

:func:`reference` records what a version of the screen flags (per image: flagged
and boxes; never the text, which is PHI); :func:`compare` checks another against
it.  ``bench_ocr.py --recall`` runs both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.samples import batchspec, synthetic, textimages

ROOT = Path(__file__).resolve().parents[1]
#: The commit whose OCR screen is "before" (whole images, the tesseract program per chunk).
BEFORE_REV = "bd3aa03"


@dataclass(frozen=True)
class Item:
    """One image of the recall set: a label (stable across machines) and its file."""

    label: str
    path: Path


def _monochrome1(source: Path, target: Path) -> None:
    """``source`` (MONOCHROME2, grey) stored as MONOCHROME1: same picture, inverted values."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - pixels.astype(np.int64)).astype(pixels.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    for keyword in (
        "WindowCenter",
        "WindowWidth",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(target)


def generated(folder: Path) -> list[Item]:
    """The generated part of the set (written once under ``folder``)."""
    marker = folder / ".ok"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        textimages.make_text_images(folder / "text512", 40, with_text=True, seed=7)
        textimages.make_text_images(folder / "text256", 20, with_text=True, seed=11, size=256)
        textimages.make_text_images(folder / "text1024", 8, with_text=True, seed=5, size=1024)
        textimages.make_text_images(folder / "plain", 12, with_text=False, seed=7)
        mono1 = folder / "mono1"
        mono1.mkdir(exist_ok=True)
        for path in sorted((folder / "text512").glob("*.dcm"))[:16]:
            if pydicom.dcmread(path, stop_before_pixels=True).SamplesPerPixel == 1:
                _monochrome1(path, mono1 / path.name)
        for seed in (0, 1):
            synthetic.make_batch(
                folder / f"batch{seed}",
                batchspec.BatchSpec(
                    n_series=1, images_per_series=2, rows=128, columns=128, seed=seed
                ),
            )
        marker.write_text("ok\n")
    items = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except READ_ERRORS:  # junk files of the batches
            continue
        if "PixelData" in ds or ds.get("Rows"):
            items.append(Item(f"gen/{path.relative_to(folder)}", path))
    return items


def real(corpus: Path | None) -> list[Item]:
    """deid-data's and pydicom's images, and a CT slice per series of ``corpus``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import realworld

    items = []
    deid = Path(sys.prefix) / "share" / "deid-data"
    for path in sorted(deid.rglob("*.dcm")):
        items.append(Item(f"deid-data/{path.relative_to(deid)}", path))
    pyd = realworld.pydicom_test_dir()
    for path in realworld.pydicom_test_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except READ_ERRORS:  # pydicom's deliberately broken files
            continue
        if ds.get("Rows") and ds.get("Columns"):
            items.append(Item(f"pydicom/{path.relative_to(pyd)}", path))
    if corpus is not None:
        seen: set[Path] = set()
        for path in sorted(corpus.rglob("*.dcm")):
            if path.parent not in seen and len(seen) < 40:
                seen.add(path.parent)
                items.append(Item(f"corpus/{path.relative_to(corpus)}", path))
    return items


def before_module() -> types.ModuleType:
    """The OCR module as it was at :data:`BEFORE_REV` (read from git)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE_REV}:sendit_helpers/deid/ocr.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    module = types.ModuleType("ocr_before")
    module.__file__ = f"ocr.py@{BEFORE_REV}"
    sys.modules["ocr_before"] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


def reference(
    items: Sequence[Item], find_text: Callable[[Any], Sequence[Any]]
) -> tuple[dict[str, dict[str, Any]], float]:
    """Per label: ``flagged``, ``boxes`` (corners) or ``error``; and the seconds of the reads."""
    out: dict[str, dict[str, Any]] = {}
    total = 0.0
    for item in items:
        try:
            ds = pydicom.dcmread(item.path, force=True)
            start = time.perf_counter()
            boxes = [b.corners() for b in find_text(ds)]
            seconds = time.perf_counter() - start
        except (*READ_ERRORS, RuntimeError) as exc:  # pixels that cannot be read: recorded
            out[item.label] = {"error": type(exc).__name__}
            continue
        total += seconds
        out[item.label] = {"flagged": bool(boxes), "boxes": boxes, "seconds": round(seconds, 4)}
    return out, total


def _covered(boxes: Sequence[Sequence[int]], by: Sequence[Sequence[int]]) -> float:
    """Share of the union of ``boxes`` that ``by`` covers."""
    if not boxes:
        return 1.0
    x1 = max(b[2] for b in [*boxes, *by])
    y1 = max(b[3] for b in [*boxes, *by])
    want = np.zeros((y1, x1), dtype=bool)
    have = np.zeros((y1, x1), dtype=bool)
    for b in boxes:
        want[b[1] : b[3], b[0] : b[2]] = True
    for b in by:
        have[b[1] : b[3], b[0] : b[2]] = True
    return float((want & have).sum() / max(1, want.sum()))


def compare(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], min_cover: float = 0.9
) -> dict[str, list[str]]:
    """Labels missed (flagged before, not after), under-covered, newly flagged, other errors."""
    result: dict[str, list[str]] = {"missed": [], "uncovered": [], "new": [], "errors": []}
    for label, old in before.items():
        new = after.get(label, {"error": "absent"})
        if "error" in old or "error" in new:
            if old.get("error") != new.get("error"):
                result["errors"].append(label)
            continue
        if old["flagged"] and not new["flagged"]:
            result["missed"].append(label)
        elif old["flagged"] and _covered(old["boxes"], new["boxes"]) < min_cover:
            result["uncovered"].append(label)
        elif new["flagged"] and not old["flagged"]:
            result["new"].append(label)
    return result


def save(path: Path, data: dict[str, dict[str, Any]]) -> None:
    """Write a reference as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n", encoding="utf-8")
