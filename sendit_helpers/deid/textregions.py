"""Where text could be in a picture: a cheap numpy pre-screen for the OCR screen.

Burned-in text is an overlay: strokes a few pixels wide, much brighter (or
darker) than what lies on *both* sides of them.  Along the rows and along the
columns, a pixel is *ink* when the darkest pixel within :data:`STROKE` pixels
(more on a large picture: :func:`stroke_for`)
before it and the darkest within :data:`STROKE` pixels after it are both darker
than it by :func:`ink_threshold` (or both brighter, for dark text): a ridge or
a valley at most :data:`STROKE` pixels wide.  An edge between two regions is no
ridge, nor is anything wider than :data:`STROKE`, and a lone speck of noise
(fewer than :data:`MIN_NEIGHBOURS` ink neighbours) is dropped.  Ink is counted
in tiles of :data:`TILE` pixels; runs of inked tiles along each row of tiles
are the candidate regions Tesseract reads (:mod:`sendit_helpers.deid.ocr`).

The screen is conservative by construction: it never judges shapes (a glyph,
a line of glyphs) and keeps any patch of thin high-contrast strokes; it only
rules out pictures, or parts of pictures, without such strokes, where
Tesseract has nothing to read.  Most of a CT slice has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "CROP_MARGIN",
    "STROKE",
    "STROKE_SHARE",
    "TILE",
    "WHOLE_SHARE",
    "candidate_regions",
    "crop_boxes",
    "ink",
    "ink_threshold",
    "stroke_for",
]

#: Widest stroke (pixels) that counts: bold capitals about 45 pixels high.
STROKE = 8
#: On a larger picture a stroke up to this share of its longer edge counts (:func:`stroke_for`):
#: a label 160 pixels high on a 3,000-pixel radiograph has strokes of about 20 pixels.
STROKE_SHARE = 1 / 128
#: Tile edge (pixels) in which ink is counted.
TILE = 16
#: Ink pixels a tile needs to count (a speck of noise is not a glyph).
MIN_INK = 6
#: Ink neighbours (of 8) an ink pixel needs: a stroke is a line, noise a lone speck.
MIN_NEIGHBOURS = 2
#: Tiles of margin read around a candidate region (Tesseract needs background around a line).
CROP_MARGIN = 2
#: Share of the picture above which the crops give way to the whole picture.
WHOLE_SHARE = 0.5
#: Bounds of the ink threshold (0-255 grey levels), see :func:`ink_threshold`.
THRESHOLD_RANGE = (12.0, 40.0)


def _run(a: npt.NDArray[np.uint8], size: int, axis: int, low: bool) -> npt.NDArray[np.uint8]:
    """Running minimum (``low``) or maximum over ``size`` pixels along ``axis``, centred.

    Doubling windows: ``log2(size)`` passes of whole-array ``np.minimum``/``np.maximum``.
    """
    op = np.minimum if low else np.maximum
    edge = 255 if low else 0
    before, after = size // 2, size - 1 - size // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before, after)
    out = np.pad(a, pad, constant_values=edge)
    width = 1
    while width < size:
        step = min(width, size - width)
        n = out.shape[axis]
        lo = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[axis], hi[axis] = slice(0, n - step), slice(step, n)
        out = op(out[tuple(lo)], out[tuple(hi)])
        width += step
    return out


def _sides(
    a: npt.NDArray[np.uint8], width: int, axis: int, low: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Minimum (``low``) or maximum of the ``width`` pixels before, and after, each pixel.

    Along ``axis``; the picture's edge pixels are repeated beyond it.
    """
    margin = width + 1
    pad = [(0, 0)] * a.ndim
    pad[axis] = (margin, margin)
    run = _run(np.pad(a, pad, mode="edge"), width, axis, low)  # centred windows
    n = a.shape[axis]
    first_before = margin - width + width // 2  # centre of [x - width, x - 1] at x = 0
    first_after = margin + 1 + width // 2  # centre of [x + 1, x + width] at x = 0
    before = [slice(None)] * a.ndim
    after = [slice(None)] * a.ndim
    before[axis] = slice(first_before, first_before + n)
    after[axis] = slice(first_after, first_after + n)
    return run[tuple(before)], run[tuple(after)]


def ink_threshold(grey: npt.NDArray[np.uint8]) -> float:
    """Top-hat contrast (grey levels) a pixel needs to be ink.

    A quarter of the picture's range (2nd to 98th percentile), within
    :data:`THRESHOLD_RANGE`: text Tesseract can read stands out from what is
    around it by much more, even dim text on a faint picture.

    Parameters
    ----------
    grey : numpy.ndarray
        ``uint8`` picture.

    Returns
    -------
    float
    """
    sample = grey[:: max(1, grey.shape[0] // 128), :: max(1, grey.shape[1] // 128)]
    low, high = np.percentile(sample, [2.0, 98.0])
    return float(np.clip(0.25 * (high - low), *THRESHOLD_RANGE))


def ink(grey: npt.NDArray[np.uint8], stroke: int = STROKE) -> npt.NDArray[np.bool_]:
    """Pixels of thin strokes much brighter or darker than what lies on both sides of them.

    Along the rows or the columns, a pixel is ink when the darkest (for bright
    text) pixel within ``stroke`` pixels on *each* side is darker than it by
    :func:`ink_threshold`: a ridge (or valley) at most ``stroke`` pixels wide.
    An edge between two regions is no ridge (one side is not darker), nor is a
    region wider than ``stroke``; a lone speck of noise has no ink neighbour.

    Parameters
    ----------
    grey : numpy.ndarray
        ``uint8`` picture (2-D).
    stroke : int
        Widest stroke kept.

    Returns
    -------
    numpy.ndarray of bool
        Same shape as ``grey``.
    """
    threshold = ink_threshold(grey)
    g = grey.astype(np.int16)
    mask = np.zeros(grey.shape, dtype=bool)
    for axis in (0, 1):
        low_before, low_after = _sides(grey, stroke, axis, True)
        mask |= g - np.maximum(low_before, low_after) >= threshold
        high_before, high_after = _sides(grey, stroke, axis, False)
        mask |= np.minimum(high_before, high_after) - g >= threshold
    # A stroke is a line of ink pixels; noise above the threshold is a lone speck.
    m = np.pad(mask, 1).astype(np.uint8)
    rows, cols = grey.shape[0], grey.shape[1]
    near = sum(
        m[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
    )
    kept: npt.NDArray[np.bool_] = mask & (near >= MIN_NEIGHBOURS + 1)
    return kept


def _tiles(mask: npt.NDArray[np.bool_], tile: int) -> npt.NDArray[np.bool_]:
    """Tiles of ``tile`` pixels holding at least :data:`MIN_INK` ink pixels."""
    rows, cols = mask.shape[0], mask.shape[1]
    r, c = -(-rows // tile), -(-cols // tile)
    padded = np.zeros((r * tile, c * tile), dtype=np.uint16)
    padded[:rows, :cols] = mask
    counts = padded.reshape(r, tile, c, tile).sum(axis=(1, 3))
    inked: npt.NDArray[np.bool_] = counts >= MIN_INK
    return inked


def _runs(cells: npt.NDArray[np.bool_]) -> list[tuple[int, int, int]]:
    """``(row, c0, c1)``: runs of inked cells along each row (gaps of one cell bridged)."""
    out = []
    for r in np.nonzero(cells.any(axis=1))[0]:
        cols = np.nonzero(cells[r])[0]
        start = prev = int(cols[0])
        for c in cols[1:]:
            if c - prev > 2:
                out.append((int(r), start, prev + 1))
                start = int(c)
            prev = int(c)
        out.append((int(r), start, prev + 1))
    return out


def stroke_for(rows: int, cols: int) -> int:
    """Widest stroke kept in a ``rows`` x ``cols`` picture.

    :data:`STROKE`, or :data:`STROKE_SHARE` of the longer edge when that is
    more: text is drawn in proportion to its picture.  A wider window only
    adds ink (the darkest pixel within more pixels is no brighter), so a large
    picture keeps every candidate :data:`STROKE` would give.

    Parameters
    ----------
    rows, cols : int
        The picture's size.

    Returns
    -------
    int
    """
    return max(STROKE, math.ceil(max(rows, cols) * STROKE_SHARE))


def candidate_regions(grey: npt.NDArray[np.uint8]) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` (end-exclusive, pixels of ``grey``) that may hold text.

    Parameters
    ----------
    grey : numpy.ndarray
        ``uint8`` picture (2-D), as shown.

    Returns
    -------
    list of (x0, y0, x1, y1)
        Runs of inked tiles along each row of tiles (one tile high; a gap of
        one tile is bridged); empty when the picture has no thin high-contrast
        stroke anywhere.
    """
    out = []
    for r, c0, c1 in _runs(_tiles(ink(grey, stroke_for(*grey.shape[:2])), TILE)):
        x1 = min(grey.shape[1], c1 * TILE)
        out.append((c0 * TILE, r * TILE, x1, min(grey.shape[0], (r + 1) * TILE)))
    return out


def crop_boxes(
    regions: Sequence[tuple[int, int, int, int]], rows: int, cols: int
) -> list[list[int]] | None:
    """Boxes to read around ``regions`` (pixels); None: read the whole picture.

    Each region is widened by :data:`CROP_MARGIN` tiles (Tesseract needs some
    background around a line, and more around large letters); boxes that
    overlap by half of the smaller one are merged (the pieces of one line),
    others are read on their own.  When the boxes cover more than
    :data:`WHOLE_SHARE` of the picture the whole is read.

    Parameters
    ----------
    regions : sequence of (x0, y0, x1, y1)
        :func:`candidate_regions`' answer.
    rows, cols : int
        The picture's size.

    Returns
    -------
    list of [x0, y0, x1, y1] or None
        End-exclusive boxes inside the picture; None when the whole picture is to be read.
    """
    margin = CROP_MARGIN * TILE
    boxes = [
        [max(0, x0 - margin), max(0, y0 - margin), min(cols, x1 + margin), min(rows, y1 + margin)]
        for x0, y0, x1, y1 in regions
    ]
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for box in boxes:
            for other in out:
                w = min(box[2], other[2]) - max(box[0], other[0])
                h = min(box[3], other[3]) - max(box[1], other[1])
                smaller = min(_area(box), _area(other))
                if w > 0 and h > 0 and 2 * w * h >= smaller:
                    other[:] = [
                        min(box[0], other[0]),
                        min(box[1], other[1]),
                        max(box[2], other[2]),
                        max(box[3], other[3]),
                    ]
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    for box in boxes:  # large letters need a wider margin: half the inked height more
        extra = min(max(0, box[3] - box[1] - 2 * margin - 2 * TILE) // 2, margin)
        box[:] = [
            max(0, box[0] - extra),
            max(0, box[1] - extra),
            min(cols, box[2] + extra),
            min(rows, box[3] + extra),
        ]
    area = sum(_area(b) for b in boxes)
    return None if area > WHOLE_SHARE * rows * cols else boxes


def _area(box: Sequence[int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
