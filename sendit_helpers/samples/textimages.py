"""OCR test images: text of known size, contrast and place burned into US, SC and CT images.

:func:`make_text_images` writes them with their ground truth (:class:`TextTruth`,
:func:`load_text_truth`) for the OCR screen's tests and benchmark.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from sendit_helpers.samples.burn import FONTS, _text_mask, burn_text
from sendit_helpers.samples.identities import _Gen, _title
from sendit_helpers.samples.studies import (
    _CTPhantom,
    _file_meta,
    _set_instance,
    _set_pixels,
    _Uids,
    _us_gray,
    _window8,
    _write,
)

__all__ = [
    "TEXT_CONTRASTS",
    "TEXT_HEIGHTS",
    "TextTruth",
    "load_text_truth",
    "make_text_images",
    "text_truth_path",
]

#: Capital heights (pixels) of the text :func:`make_text_images` burns in.
TEXT_HEIGHTS = (8, 10, 13, 17, 24)


#: Contrasts of that text: bright on the image, dimmer, dark on a light banner.
TEXT_CONTRASTS = ("high", "medium", "inverse")


_TEXT_KINDS = ("us", "sc", "ct", "us_rgb")


_TEXT_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "top-center")


_CT_WINDOWS = (("40", "400"), ("-600", "1500"), ("500", "2000"))


@dataclass(frozen=True)
class TextTruth:
    """One line of text burned in by :func:`make_text_images`.

    Parameters
    ----------
    file : str
        The image's file name (in the folder given to :func:`make_text_images`).
    text : str
        The line (fake identifiers, made from the seed).
    box : tuple of four ints
        ``(x0, y0, x1, y1)``, end-exclusive pixel corners of the glyphs.
    height : int
        Capital height in pixels.
    font : str
        One of :data:`FONTS`.
    contrast : str
        One of :data:`TEXT_CONTRASTS`.
    kind : str
        ``us``, ``us_rgb``, ``sc`` or ``ct``.
    """

    file: str
    text: str
    box: tuple[int, int, int, int]
    height: int
    font: str
    contrast: str
    kind: str


@dataclass(frozen=True)
class _TextStyle:
    kind: str
    height: int
    font: str
    contrast: str
    corner: str
    lines: tuple[str, str]
    window: tuple[str, str]


def text_truth_path(folder: Path) -> Path:
    """Where :func:`make_text_images` records the text it burned in: ``<folder>.truth.json``.

    Parameters
    ----------
    folder : Path
        The folder given to :func:`make_text_images`.

    Returns
    -------
    Path
        A sibling of ``folder`` (outside it, so a stage reading the folder never sees it).
    """
    folder = Path(folder)
    return folder.with_name(folder.name + ".truth.json")


def load_text_truth(folder: Path) -> list[TextTruth]:
    """Read the lines :func:`make_text_images` burned into the images of ``folder``.

    Parameters
    ----------
    folder : Path
        The folder given to :func:`make_text_images`.

    Returns
    -------
    list of TextTruth
        Empty when the images carry no text (or the record is missing).
    """
    path = text_truth_path(folder)
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        TextTruth(
            str(d["file"]),
            str(d["text"]),
            (int(d["box"][0]), int(d["box"][1]), int(d["box"][2]), int(d["box"][3])),
            int(d["height"]),
            str(d["font"]),
            str(d["contrast"]),
            str(d["kind"]),
        )
        for d in data
    ]


def _text_lines(gen: _Gen) -> tuple[str, str]:
    """Two lines as a modality would burn them: a name, then an ID, a birth date or an accession."""
    family, given = gen.person()
    choice = gen.rng.randrange(3)
    if choice == 0:
        second = f"ID PT{gen.digits(8)}"
    elif choice == 1:
        second = f"DOB {1930 + gen.rng.randrange(80)}-{1 + gen.rng.randrange(12):02d}-" + (
            f"{1 + gen.rng.randrange(28):02d}"
        )
    else:
        second = f"ACC {gen.digits(8)}"
    name = f"{family}, {given}" if gen.rng.randrange(2) else f"{_title(family)}, {_title(given)}"
    return name, second


def _tight(mask: npt.NDArray[np.float32], x: int, y: int) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask > 0.15)
    return (
        x + int(cols.min()),
        y + int(rows.min()),
        x + int(cols.max()) + 1,
        y + int(rows.max()) + 1,
    )


def _text_block(
    pixels: npt.NDArray[np.generic],
    lines: Sequence[str],
    corner: str,
    height: int,
    font: str,
    contrast: str,
    text_value: int,
    banner_value: int,
) -> tuple[npt.NDArray[np.generic], list[tuple[int, int, int, int]]]:
    """Burn ``lines`` into a corner of ``pixels``; return the image and each line's glyph box."""
    rows, cols = pixels.shape[:2]
    margin = max(4, rows // 64)
    sizes, masks = [], []
    for text in lines:
        h = height
        mask = _text_mask(text, h, font)
        while mask.shape[1] > cols - 2 * margin and h > 6:
            h -= 1
            mask = _text_mask(text, h, font)
        sizes.append((h, mask.shape[1]))
        masks.append(mask)
    gap = max(2, height // 3)
    block_h = sum(m.shape[0] for m in masks) + gap * (len(masks) - 1)
    block_w = max(m.shape[1] for m in masks)
    top = margin if corner.startswith("top") else rows - margin - block_h
    if corner.endswith("left"):
        left = margin
    elif corner.endswith("right"):
        left = cols - margin - block_w
    else:
        left = (cols - block_w) // 2
    out = pixels
    if contrast == "inverse":
        out = np.array(out, copy=True)
        pad = max(3, height // 3)
        out[
            max(0, top - pad) : min(rows, top + block_h + pad),
            max(0, left - pad) : min(cols, left + block_w + pad),
        ] = banner_value
    boxes = []
    y = top
    for text, (h, _), mask in zip(lines, sizes, masks, strict=True):
        out = burn_text(out, text, left, y, h, text_value, font=font)
        x0, y0, x1, y1 = _tight(mask, left, y)
        boxes.append((max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)))
        y += mask.shape[0] + gap
    return out, boxes


def make_text_images(
    folder: Path,
    n: int,
    *,
    with_text: bool,
    seed: int = 0,
    images_per_series: int = 1,
    size: int = 512,
) -> list[Path]:
    """Write images with text burned into the pixels, or plain CT slices, for the OCR screen.

    With ``with_text``, series cycle through ultrasound (MONOCHROME2 and RGB,
    ``3/4 size`` x ``size``), secondary capture (``size/2`` square, 8 bits) and
    CT (``size`` square, 12 bits, windowed in the header) images; each series
    gets two lines of fake identifiers (a name, then an ID, a birth date or an
    accession number) in one of :data:`TEXT_HEIGHTS`, :data:`FONTS` and
    :data:`TEXT_CONTRASTS`, in a corner or at the top centre.  The lines and
    their boxes are recorded in :func:`text_truth_path` (read them with
    :func:`load_text_truth`).  Without ``with_text``, every image is a plain CT
    slice (``size`` square; soft-tissue, lung and bone windows by series) and no
    record is written.  The headers carry no identifying value.

    Parameters
    ----------
    folder : Path
        Created if missing; the files are ``text_NNNN.dcm`` or ``plain_NNNN.dcm``.
    n : int
        Number of images (at least 1).
    with_text : bool
        Burn text in, or write plain CT slices.
    seed : int
        Every pixel and word derives from it (and from ``with_text``).
    images_per_series : int
        Images per series (same text, position and style within a series).
    size : int
        Edge of the CT images (at least 256 with text, 64 without); the others follow it.

    Returns
    -------
    list of Path
        The files, in instance order.

    Raises
    ------
    ValueError
        If ``n``, ``images_per_series`` or ``size`` is too small.
    """
    if n < 1 or images_per_series < 1 or size < (256 if with_text else 64):
        raise ValueError(
            "make_text_images needs n >= 1, images_per_series >= 1 and size >= 256 "
            "(64 without text)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = f"text-images:{seed}:{int(with_text)}"
    uid = _Uids(key)
    gen = _Gen(key)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    study_uid = uid("study")
    truth: list[dict[str, object]] = []
    paths: list[Path] = []
    style = _TextStyle("ct", 0, "sans", "high", "top-left", ("", ""), _CT_WINDOWS[0])
    phantom: _CTPhantom | None = None
    for i in range(n):
        series, k = divmod(i, images_per_series)
        if k == 0:
            pick = random.Random(f"{key}:{series}")
            style = _TextStyle(
                kind=_TEXT_KINDS[series % len(_TEXT_KINDS)] if with_text else "ct",
                height=pick.choice(TEXT_HEIGHTS),
                font=pick.choice(list(FONTS)),
                contrast=pick.choice(TEXT_CONTRASTS),
                corner=pick.choice(_TEXT_CORNERS),
                lines=_text_lines(gen),
                window=_CT_WINDOWS[series % len(_CT_WINDOWS)],
            )
            phantom = None
        kind = style.kind
        ds = Dataset()
        sop_class = {"us": UltrasoundImageStorage, "us_rgb": UltrasoundImageStorage}.get(
            kind, SecondaryCaptureImageStorage if kind == "sc" else CTImageStorage
        )
        ds.file_meta = _file_meta(sop_class)
        ds.SOPClassUID = sop_class
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = uid("series", series)
        ds.SeriesNumber = series + 1
        ds.Modality = {"us": "US", "us_rgb": "US", "sc": "OT"}.get(kind, "CT")
        ds.SeriesDescription = "OCR TEST IMAGES" if with_text else "PLAIN CT"
        ds.PatientID = "OCRTEST"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelRepresentation = 0
        pixels: npt.NDArray[np.generic]
        if kind in ("us", "us_rgb"):
            rows, cols = 3 * size // 4, size
            pixels = _us_gray(rows, cols, rng)
            text_value, banner = (255, 210) if style.contrast != "medium" else (150, 210)
        elif kind == "sc":
            rows = cols = size // 2
            pixels = _window8(_CTPhantom(rows, cols, rng).slice(k % 9, 9), 40, 400)
            text_value, banner = (255, 220) if style.contrast != "medium" else (170, 220)
        else:
            rows = cols = size
            if phantom is None:
                phantom = _CTPhantom(rows, cols, rng)
            depth = max(images_per_series, 9)
            pixels = phantom.slice((k if images_per_series > 1 else series) % depth, depth)
            medium = style.contrast == "medium"
            window = ("500", "2000") if medium else ("40", "400")  # medium: 1000 HU shows grey
            ds.WindowCenter, ds.WindowWidth = window if with_text else style.window
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
            text_value, banner = (2024, 4095) if medium else (4095, 4095)
        if style.contrast == "inverse":
            text_value = 0 if kind != "ct" else 24
        if with_text:
            pixels, boxes = _text_block(
                pixels, style.lines, style.corner, style.height, style.font, style.contrast,
                text_value, banner,
            )  # fmt: skip
        if kind == "us_rgb":
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated = bits
        ds.BitsStored, ds.HighBit = (12, 11) if bits == 16 else (8, 7)
        ds.Rows, ds.Columns = rows, cols
        _set_instance(ds, uid("sop", i), k + 1)
        _set_pixels(ds, pixels)
        name = f"{'text' if with_text else 'plain'}_{i:04d}.dcm"
        _write(ds, folder / name)
        paths.append(folder / name)
        if with_text:
            for text, box in zip(style.lines, boxes, strict=True):
                truth.append(
                    {
                        "file": name,
                        "text": text,
                        "box": list(box),
                        "height": style.height,
                        "font": style.font,
                        "contrast": style.contrast,
                        "kind": kind,
                    }
                )
    if with_text:
        text_truth_path(folder).write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return paths
