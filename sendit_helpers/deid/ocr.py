"""OCR screen: find burned-in text the header does not admit (issues 7, 15).

The deid ``%filter`` rules only read the header.  This screen reads the
*pixels* with Tesseract: frame 0 of each image is rendered (windowed, as a
person would see it; :func:`sendit_helpers.deid.plots.render`), turned grey
(:func:`shown`) and inverted (Tesseract reads dark text on a light page best).

A numpy pre-screen (:func:`sendit_helpers.deid.textregions.candidate_regions`)
first finds the tiles holding thin strokes much brighter or darker than what
lies on both sides of them, as overlay text is.  A picture without any is not
read at all (most CT slices); otherwise Tesseract reads crops around them
(:func:`~sendit_helpers.deid.textregions.crop_boxes`: a margin, more around
large letters), or the whole picture when the crops would cover more than half.  What
Tesseract reads is resized so that the picture's longer edge is about
:data:`TARGET_EDGE` pixels (small text is enlarged, huge images shrink), in
sparse-text mode.  Words of at least :data:`MIN_ALNUM` letters or digits read
with a confidence of at least :data:`MIN_CONFIDENCE` count as text; the bands
of rows around such a line are read again across the whole picture for its
neighbours (a line read in a crop counts only when its band reads it too;
else the whole picture is read and decides, as without the pre-screen: a
cropped shape can pass for letters), and each line gives a :class:`TextBox` in
the original pixel coordinates, padded a little, ready to be suggested to the
reviewer as a rectangle to scrub.  ``find_text(..., prescreen=False)`` reads whole pictures.

Tesseract runs in process (:mod:`sendit_helpers.deid.tesseract`: libtesseract
through ctypes, one engine per process, its model loaded once), or as the
program through pytesseract where the library cannot be loaded.

Found text is PHI: it is returned (``TextBox.text``, the ``ocr_text`` column)
so that it can be kept under ``phi/``, and is never logged or put in a message.

Tesseract is optional: ``pip install 'sendit-notebooks[ocr]'`` (pytesseract)
and ``apt-get install tesseract-ocr`` (the program and its library).  Without
them :class:`OcrUnavailableError` says what to install.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid.tesseract import (
    INSTALL_HINT,
    OcrUnavailableError,
    Reader,
    engine,
    require_tesseract,
)
from sendit_helpers.deid.textregions import candidate_regions, crop_boxes

__all__ = [
    "COLUMNS",
    "INSTALL_HINT",
    "LABEL",
    "MIN_CONFIDENCE",
    "OcrUnavailableError",
    "TextBox",
    "boxes_by_source",
    "find_text",
    "load",
    "merge_boxes",
    "prepare",
    "require_tesseract",
    "save",
    "screen_files",
    "shown",
    "table_path",
]

#: Tesseract confidence (0-100) a word needs to count as text.  Tuned on
#: ``textimages.make_text_images``: plain CT slices give no word at all above it.
MIN_CONFIDENCE = 60.0
#: Letters or digits a word needs to count as text (drops specks read as ``.`` or ``|``).
MIN_ALNUM = 2
#: Longer edge, in pixels, of the image Tesseract reads (512-pixel images are doubled).
TARGET_EDGE = 1024
#: Bounds of the resize factor (a 4096-pixel image is halved at most; a tiny one enlarged 4x).
SCALE_RANGE = (0.5, 4.0)
#: Line heights above and below a line of text that are read again, for its neighbours.
NEIGHBOUR_LINES = 2.0
#: Confidence a word needs, near a line of text, to be scrubbed with it.
NEIGHBOUR_CONFIDENCE = 20.0
#: Images per worker below which the screen reads in this process (a pool costs more).
POOL_MIN_IMAGES = 16
#: Label of the screen, for the ``flagged`` reason in inspect's table.
LABEL = "OCR: text found in pixels"
#: Columns of :func:`screen_files`' table (``phi/inspect/ocr.parquet``).
COLUMNS = [
    "source_path",
    "ocr_sampled",
    "ocr_flagged",
    "ocr_boxes",
    "ocr_text",
    "ocr_seconds",
    "ocr_error",
]
_TABLE_NAME = "ocr.parquet"


@dataclass(frozen=True)
class TextBox:
    """One line of text found in an image, in original pixel coordinates.

    Parameters
    ----------
    x, y : int
        Top-left corner (column, row), padded by a few pixels and clipped to the image.
    width, height : int
        Size in pixels.
    confidence : float
        Mean Tesseract confidence (0-100) of the line's words that counted as text.
    text : str
        The words read.  **PHI**: keep it under ``phi/``; never log it (it is
        left out of ``repr``).
    """

    x: int
    y: int
    width: int
    height: int
    confidence: float
    text: str = field(default="", repr=False)

    def corners(self) -> list[int]:
        """Return ``[x0, y0, x1, y1]`` (end-exclusive), as the recipe ``coordinates`` column.

        Returns
        -------
        list of int
        """
        return [self.x, self.y, self.x + self.width, self.y + self.height]


# ------------------------------------------------------------------ one image
def _grey(image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    if image.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        grey: npt.NDArray[np.float32] = image[..., :3].astype(np.float32) @ weights
        return grey
    return image.astype(np.float32)


def shown(ds: Dataset, frame: int = 0) -> npt.NDArray[np.uint8]:
    """Frame ``frame`` as a person sees it: grey ``uint8``, own size (what the pre-screen reads).

    Parameters
    ----------
    ds : pydicom.Dataset
        An image with pixel data.
    frame : int
        Frame of a multi-frame image.

    Returns
    -------
    numpy.ndarray
        ``uint8`` (rows, columns): windowed, MONOCHROME1 inverted, colour made grey.
    """
    return 255 - _inverted(ds, frame)


def _inverted(ds: Dataset, frame: int) -> npt.NDArray[np.uint8]:
    """Frame ``frame`` as shown, grey, inverted (dark text on light), at its own size."""
    from sendit_helpers.deid.plots import render

    grey = _grey(render(ds, frame))
    inverted: npt.NDArray[np.uint8] = (255.0 - np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(
        np.uint8
    )
    return inverted


def _scale(rows: int, cols: int) -> tuple[float, tuple[int, int]]:
    """Resize factor bringing the longer edge to about :data:`TARGET_EDGE`; the new size."""
    scale = min(max(TARGET_EDGE / max(rows, cols, 1), SCALE_RANGE[0]), SCALE_RANGE[1])
    return scale, (max(1, round(cols * scale)), max(1, round(rows * scale)))


def _resize(picture: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    from PIL import Image

    rows, cols = picture.shape
    if size == (cols, rows):
        return picture
    method = Image.Resampling.BILINEAR if size[0] > cols else Image.Resampling.BOX
    return np.asarray(Image.fromarray(picture).resize(size, method), dtype=np.uint8)


def _resized(inverted: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], float]:
    """``inverted`` resized so that its longer edge is about :data:`TARGET_EDGE`; the factor."""
    rows, cols = inverted.shape
    size = _scale(rows, cols)[1]
    return _resize(inverted, size), size[0] / cols


def prepare(ds: Dataset, frame: int = 0) -> tuple[npt.NDArray[np.uint8], float]:
    """The picture Tesseract reads: frame ``frame`` windowed, grey, inverted and resized.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image with pixel data.
    frame : int
        Frame of a multi-frame image.

    Returns
    -------
    image : numpy.ndarray
        ``uint8``, dark text on a light background when the text was bright.
    scale : float
        Its size over the original size (``x_original = x_image / scale``).
    """
    return _resized(_inverted(ds, frame))


def _is_text(word: str, confidence: float, min_confidence: float) -> bool:
    return confidence >= min_confidence and sum(c.isalnum() for c in word) >= MIN_ALNUM


_Word = tuple[str, float, int, int, int, int]  # text, confidence, left, top, width, height


def _read_words(
    read: Reader, image: npt.NDArray[np.uint8], left: int = 0, top: int = 0
) -> list[list[_Word]]:
    """Tesseract's words of ``image``, grouped by line (``left``, ``top`` added to every box)."""
    data = read(image)
    lines: dict[tuple[int, int, int], list[_Word]] = {}
    for i, text in enumerate(data["text"]):
        word = str(text).strip()
        if not word:
            continue
        key = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        lines.setdefault(key, []).append(
            (
                word,
                float(data["conf"][i]),
                int(data["left"][i]) + left,
                int(data["top"][i]) + top,
                int(data["width"][i]),
                int(data["height"][i]),
            )
        )
    return list(lines.values())


def _first_reading(
    read: Reader, inverted: npt.NDArray[np.uint8], prescreen: bool
) -> tuple[float, list[list[_Word]], bool]:
    """The prepared picture's scale, the lines Tesseract reads in it, and whether of crops.

    With ``prescreen``, only around :func:`textregions.candidate_regions`
    (nothing at all when there is none; each crop is resized on its own, at
    the picture's scale); else the whole prepared picture (:func:`prepare`).
    """
    rows, cols = inverted.shape
    crops: list[list[int]] | None = None
    if prescreen:
        crops = crop_boxes(candidate_regions(255 - inverted), rows, cols)
    if crops is None:
        image, scale = _resized(inverted)
        return scale, _read_words(read, image), False
    scale = _resized_scale(rows, cols)
    lines: list[list[_Word]] = []
    for x0, y0, x1, y1 in crops:
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        crop = _resize(np.ascontiguousarray(inverted[y0:y1, x0:x1]), size)
        lines.extend(_read_words(read, crop, round(x0 * scale), round(y0 * scale)))
    return scale, lines, True


def _resized_scale(rows: int, cols: int) -> float:
    """The factor :func:`_resized` applies to a ``rows`` x ``cols`` picture."""
    return _scale(rows, cols)[1][0] / cols


def _bands(lines: Sequence[Sequence[_Word]], rows: int) -> list[tuple[int, int]]:
    """Row bands around lines of text, widened to catch their neighbours, merged."""
    bands = []
    for words in lines:
        y0 = min(w[3] for w in words)
        y1 = max(w[3] + w[5] for w in words)
        reach = round(NEIGHBOUR_LINES * (y1 - y0))
        bands.append((max(0, y0 - reach), min(rows, y1 + reach)))
    merged: list[tuple[int, int]] = []
    for b0, b1 in sorted(bands):
        if merged and b0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b1))
        else:
            merged.append((b0, b1))
    return merged


def find_text(
    ds: Dataset,
    *,
    min_confidence: float = MIN_CONFIDENCE,
    frame: int = 0,
    prescreen: bool = True,
) -> list[TextBox]:
    """Find lines of text burned into an image's pixels.

    With ``prescreen`` (the default), :func:`textregions.candidate_regions`
    first finds the patches of thin high-contrast strokes; a picture without
    any is not read at all, and otherwise only those patches (with a margin)
    are read, unless they cover most of the picture.  A first reading decides
    whether there is text (a word of :data:`MIN_ALNUM` letters or digits at
    ``min_confidence``).  When there is, the bands of rows around each such line
    (widened by :data:`NEIGHBOUR_LINES` line heights, across the whole picture)
    are read again on their own and every word read there with a confidence of
    at least :data:`NEIGHBOUR_CONFIDENCE` joins the boxes: a name rarely comes
    alone, and its less legible words and neighbouring lines must be scrubbed too.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image with pixel data (frame ``frame`` is read).
    min_confidence : float
        Confidence a word needs to count (default :data:`MIN_CONFIDENCE`).
    frame : int
        Frame to read (0, the first, by default).
    prescreen : bool
        Read only where the pre-screen finds strokes (default); False: the whole picture.

    Returns
    -------
    list of TextBox
        One per line of text, in original pixel coordinates (padded, clipped to
        the image), top to bottom.  Empty when no text was found.

    Raises
    ------
    OcrUnavailableError
        When pytesseract or tesseract is missing.
    """
    read = engine()
    inverted = _inverted(ds, frame)
    scale, first, cropped = _first_reading(read, inverted, prescreen)
    counted = [words for words in first if any(_is_text(w[0], w[1], min_confidence) for w in words)]
    if not counted:
        return []
    image = _resized(inverted)[0]
    lines, doubtful = _confirmed(read, image, counted, min_confidence, cropped)
    if doubtful:  # read in a crop only: the whole picture decides, as without the pre-screen
        whole = [
            words
            for words in _read_words(read, image)
            if any(_is_text(w[0], w[1], min_confidence) for w in words)
        ]
        sure = [words for words in counted if words not in doubtful]
        lines = (
            _confirmed(read, image, sure + whole, min_confidence, False)[0] if sure + whole else []
        )
    return _boxes(ds, scale, lines)


def _overlap(a: _Word, b: _Word) -> bool:
    return a[2] < b[2] + b[4] and b[2] < a[2] + a[4] and a[3] < b[3] + b[5] and b[3] < a[3] + a[5]


def _confirmed(
    read: Reader,
    image: npt.NDArray[np.uint8],
    counted: Sequence[Sequence[_Word]],
    min_confidence: float,
    cropped: bool,
) -> tuple[list[Sequence[_Word]], list[Sequence[_Word]]]:
    """The lines of text and their neighbours, read again in bands across the prepared ``image``.

    When the first reading was of crops (``cropped``), a line is sure only if
    its band's reading holds a word of text overlapping it too (a crop can make
    a lone shape look like letters, which a wider view does not); the others
    are returned apart, as doubtful, and left out.
    """
    bands = _bands(counted, image.shape[0])
    near = [_read_words(read, np.ascontiguousarray(image[b0:b1]), 0, b0) for b0, b1 in bands]
    doubtful: list[Sequence[_Word]] = []
    if cropped:
        again = [
            w for lines in near for words in lines for w in words
            if _is_text(w[0], w[1], min_confidence)
        ]  # fmt: skip
        doubtful = [
            words for words in counted if not any(_overlap(w, v) for w in words for v in again)
        ]
        counted = [words for words in counted if words not in doubtful]
        held = [any(b0 <= min(w[3] for w in words) < b1 for words in counted) for b0, b1 in bands]
        near = [lines for lines, keep in zip(near, held, strict=True) if keep]
    out: list[Sequence[_Word]] = list(counted)
    for lines in near:
        for words in lines:
            kept = [
                w for w in words if w[1] >= NEIGHBOUR_CONFIDENCE and any(map(str.isalnum, w[0]))
            ]
            if kept:
                out.append(kept)
    return (out if counted else []), doubtful


def _boxes(ds: Dataset, scale: float, lines: Sequence[Sequence[_Word]]) -> list[TextBox]:
    """One :class:`TextBox` per line (prepared pixels ``/ scale``), padded, clipped, merged."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    found: list[TextBox] = []
    for words in lines:
        x0 = min(w[2] for w in words) / scale
        y0 = min(w[3] for w in words) / scale
        x1 = max(w[2] + w[4] for w in words) / scale
        y1 = max(w[3] + w[5] for w in words) / scale
        pad_x, pad_y = 2 + round(0.5 * (y1 - y0)), 2 + round(0.2 * (y1 - y0))
        left, top = max(0, math.floor(x0) - pad_x), max(0, math.floor(y0) - pad_y)
        right, bottom = min(cols, math.ceil(x1) + pad_x), min(rows, math.ceil(y1) + pad_y)
        if right <= left or bottom <= top:
            continue
        confidence = float(np.mean([w[1] for w in words]))
        text = " ".join(w[0] for w in words)
        found.append(TextBox(left, top, right - left, bottom - top, round(confidence, 1), text))
    return _merge_lines(found)


def _merge_lines(boxes: Sequence[TextBox]) -> list[TextBox]:
    """Merge overlapping boxes (the same words read twice, or pieces of one line)."""
    out: list[TextBox] = []
    for box in sorted(boxes, key=lambda b: (b.y, b.x)):
        for i, other in enumerate(out):
            if (
                box.x <= other.x + other.width
                and other.x <= box.x + box.width
                and box.y <= other.y + other.height
                and other.y <= box.y + box.height
            ):
                x0, y0 = min(box.x, other.x), min(box.y, other.y)
                x1 = max(box.x + box.width, other.x + other.width)
                y1 = max(box.y + box.height, other.y + other.height)
                text = other.text if box.text in other.text else f"{other.text} {box.text}"
                confidence = max(box.confidence, other.confidence)
                out[i] = TextBox(x0, y0, x1 - x0, y1 - y0, confidence, text)
                break
        else:
            out.append(box)
    if len(out) < len(boxes):
        return _merge_lines(out)
    return out


# ------------------------------------------------------------------ many images
def _screen_one(path: str, min_confidence: float, prescreen: bool = True) -> dict[str, Any]:
    """OCR one file; a plain dict (cheap to send between processes)."""
    start = time.perf_counter()
    try:
        ds = pydicom.dcmread(path, force=True)
        boxes = find_text(ds, min_confidence=min_confidence, prescreen=prescreen)
    except OcrUnavailableError:
        raise
    except (*READ_ERRORS, RuntimeError) as exc:
        # The type only: a message could quote pixel or header content.
        error = f"cannot read the pixels: {type(exc).__name__}"
        return _row(path, [], time.perf_counter() - start, error)
    return _row(path, boxes, time.perf_counter() - start)


def _row(path: str, boxes: Sequence[TextBox], seconds: float, error: str = "") -> dict[str, Any]:
    return {
        "source_path": path,
        "ocr_sampled": True,
        "ocr_error": error,
        "ocr_flagged": bool(boxes),
        "ocr_boxes": json.dumps([b.corners() for b in boxes]),
        "ocr_text": "\n".join(b.text for b in boxes),
        "ocr_seconds": seconds,
    }


def _screen_chunk(
    paths: list[str], min_confidence: float, prescreen: bool = True
) -> list[dict[str, Any]]:
    """:func:`_screen_one` of each path (one task of the process pool)."""
    return [_screen_one(p, min_confidence, prescreen) for p in paths]


def merge_boxes(boxes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Merge overlapping or touching ``[x0, y0, x1, y1]`` boxes into their bounding boxes.

    Parameters
    ----------
    boxes : sequence of four ints
        End-exclusive corners.

    Returns
    -------
    list of [x0, y0, x1, y1]
        Disjoint boxes covering every input box, sorted top to bottom, left to right.
    """
    merged = [list(map(int, b)) for b in boxes if len(b) == 4]
    changed = True
    while changed:
        changed = False
        out: list[list[int]] = []
        for box in merged:
            for other in out:
                if (
                    box[0] <= other[2]
                    and other[0] <= box[2]
                    and box[1] <= other[3]
                    and other[1] <= box[3]
                ):
                    other[:] = [
                        min(box[0], other[0]),
                        min(box[1], other[1]),
                        max(box[2], other[2]),
                        max(box[3], other[3]),
                    ]
                    changed = True
                    break
            else:
                out.append(box)
        merged = out
    return sorted(merged, key=lambda b: (b[1], b[0]))


def _sampled(images: pd.DataFrame, k: int) -> pd.DataFrame:
    """At most ``k`` images per series, evenly spaced in instance order."""
    from sendit_helpers.deid.plots import sample

    series = images["SeriesInstanceUID"].astype("string").fillna(images["source_path"])
    chosen = [sample(group, k) for _, group in images.groupby(series, sort=False)]
    return pd.concat(chosen) if chosen else images.iloc[:0]


def screen_files(
    files: pd.DataFrame,
    *,
    sample_per_series: int = 0,
    workers: int = 1,
    progress: bool = True,
    min_confidence: float = MIN_CONFIDENCE,
    prescreen: bool = True,
) -> pd.DataFrame:
    """OCR the images of inspect's files table.

    Parameters
    ----------
    files : pandas.DataFrame
        Inspect's table (columns ``source_path``, ``SeriesInstanceUID``,
        ``InstanceNumber``, ``has_pixels`` ...).  Rows without pixels are skipped.
    sample_per_series : int
        When above 0, OCR at most this many images per series, evenly spaced in
        instance order; an image left out of a series where a sampled image had
        text counts as flagged too, with the union of the sampled boxes.
    workers : int
        Processes (0 = one per core); above 1, and with at least
        :data:`POOL_MIN_IMAGES` images per worker, a process pool reads the images.
    progress : bool
        Show a tqdm progress bar (not for fewer than :data:`POOL_MIN_IMAGES` images).
    min_confidence : float
        Confidence a word needs to count (default :data:`MIN_CONFIDENCE`).
    prescreen : bool
        Read only around candidate strokes (:mod:`~sendit_helpers.deid.textregions`;
        the default) or, when False, every sampled picture whole (slower; setting
        ``OCR_PRESCREEN``).

    Returns
    -------
    pandas.DataFrame
        One row per image with pixels, in ``files`` order, columns :data:`COLUMNS`:
        ``source_path``, ``ocr_sampled`` (OCR ran on it), ``ocr_flagged``,
        ``ocr_boxes`` (JSON list of ``[x0, y0, x1, y1]``, like inspect's
        ``coordinates``), ``ocr_text`` (**PHI**, the lines read, one per line),
        ``ocr_seconds`` and ``ocr_error`` (why the pixels could not be read, or "").

    Raises
    ------
    OcrUnavailableError
        When pytesseract or tesseract is missing.
    """
    from tqdm.auto import tqdm

    engine()  # loaded here, before a pool forks: its workers inherit it
    images = files[files["has_pixels"].fillna(False).astype(bool)] if len(files) else files
    if images.empty:
        return pd.DataFrame(columns=COLUMNS)
    chosen = _sampled(images, sample_per_series) if sample_per_series > 0 else images
    paths = [str(p) for p in chosen["source_path"]]
    workers = workers or os.cpu_count() or 1
    results: dict[str, dict[str, Any]] = {}
    # No bar for a few images: done before it would tell anything (in a notebook, a widget).
    quiet = not progress or len(paths) < POOL_MIN_IMAGES
    bar = tqdm(total=len(paths), desc="OCR", unit="image", disable=quiet)
    if workers <= 1 or len(paths) < POOL_MIN_IMAGES * workers:
        for path in paths:
            results[path] = _screen_one(path, min_confidence, prescreen)
            bar.update(1)
    else:
        size = max(1, min(16, len(paths) // (workers * 4)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            futures = [
                pool.submit(_screen_chunk, chunk, min_confidence, prescreen) for chunk in chunks
            ]
            for future in futures:
                part = future.result()
                results.update((r["source_path"], r) for r in part)
                bar.update(len(part))
    bar.close()
    series_boxes: dict[str, list[list[int]]] = {}
    series_of = images["SeriesInstanceUID"].astype("string").fillna(images["source_path"])
    for path, series in zip(images["source_path"], series_of, strict=True):
        found = results.get(str(path))
        if found is not None and found["ocr_flagged"]:
            series_boxes.setdefault(str(series), []).extend(json.loads(found["ocr_boxes"]))
    rows = []
    for path, series in zip(images["source_path"], series_of, strict=True):
        found = results.get(str(path))
        if found is None:
            union = merge_boxes(series_boxes.get(str(series), []))
            found = {
                "source_path": str(path),
                "ocr_sampled": False,
                "ocr_flagged": bool(union),
                "ocr_boxes": json.dumps(union),
                "ocr_text": "",
                "ocr_seconds": 0.0,
                "ocr_error": "",
            }
        rows.append(found)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["ocr_sampled"] = table["ocr_sampled"].astype(bool)
    table["ocr_flagged"] = table["ocr_flagged"].astype(bool)
    table["ocr_seconds"] = table["ocr_seconds"].astype("float64")
    for column in ("source_path", "ocr_boxes", "ocr_text", "ocr_error"):
        table[column] = table[column].astype("string")
    return table


# ------------------------------------------------------------------ phi/inspect/ocr.parquet
def table_path(layout: BatchLayout) -> Path:
    """Where a batch's OCR table lives: ``phi/inspect/ocr.parquet`` (it holds PHI).

    Parameters
    ----------
    layout : BatchLayout
        The batch.

    Returns
    -------
    Path
    """
    return layout.inspect_dir / _TABLE_NAME


def save(layout: BatchLayout, table: pd.DataFrame) -> Path:
    """Write :func:`screen_files`' table to ``phi/inspect/ocr.parquet``.

    Parameters
    ----------
    layout : BatchLayout
        The batch (its ``phi/`` folder is created owner-only when missing).
    table : pandas.DataFrame
        The table, columns :data:`COLUMNS`.

    Returns
    -------
    Path
        The file written.
    """
    layout.ensure()
    layout.inspect_dir.mkdir(parents=True, exist_ok=True)
    path = table_path(layout)
    tmp = path.with_name(f".{path.name}.tmp")
    table.reindex(columns=COLUMNS).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def load(layout: BatchLayout) -> pd.DataFrame:
    """Read ``phi/inspect/ocr.parquet``; an empty table (columns :data:`COLUMNS`) when absent.

    Parameters
    ----------
    layout : BatchLayout
        The batch.

    Returns
    -------
    pandas.DataFrame
    """
    path = table_path(layout)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_parquet(path).reindex(columns=COLUMNS)


def boxes_by_source(table: pd.DataFrame) -> dict[str, list[list[int]]]:
    """``source_path -> [[x0, y0, x1, y1], ...]`` of the flagged rows of an OCR table.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`screen_files`' or :func:`load`'s table.

    Returns
    -------
    dict
        Only images with at least one box; malformed JSON counts as no box.
    """
    out: dict[str, list[list[int]]] = {}
    if table.empty:
        return out
    for path, flagged, text in zip(
        table["source_path"], table["ocr_flagged"], table["ocr_boxes"], strict=True
    ):
        if not bool(flagged) or pd.isna(text):
            continue
        try:
            boxes = json.loads(str(text))
        except json.JSONDecodeError:
            continue
        good = [[int(v) for v in b] for b in boxes if isinstance(b, list) and len(b) == 4]
        if good:
            out[str(path)] = good
    return out
