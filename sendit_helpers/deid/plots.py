"""Pictures: windowed renderings, thumbnail montages per series, and summary plots.

Used by the inspect notebook (montage per series) and the reviewer
(:mod:`~sendit_helpers.stages.reviewer`: montages, and :func:`preview_png` with the
rectangles to scrub drawn).  Renders may show PHI burned into pixels: they are
saved under ``phi/`` only.
"""

from __future__ import annotations

import base64
import functools
import html
import importlib.util
import io
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from sendit_helpers.core.dicomio import READ_ERRORS, safe_reason
from sendit_helpers.deid.scrub import Box

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def window(
    pixels: np.ndarray, center: float | None = None, width: float | None = None
) -> np.ndarray:
    """Map pixel values to 0..1 with a window (percentiles 1-99 when none is given)."""
    data = pixels.astype(np.float32)
    if center is None or width is None or width <= 0:
        lo, hi = np.percentile(data, (1, 99)) if data.size else (0.0, 1.0)
    else:
        lo, hi = center - width / 2, center + width / 2
    if hi <= lo:
        hi = lo + 1
    return np.clip((data - lo) / (hi - lo), 0, 1)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _number(value: Any) -> float | None:
    """The first number of a DS / IS value; ``None`` when empty or not a finite number."""
    try:
        number = _first(value)
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_PROBE = 1e15
"""An input value beyond any window: the VOI output range is that of -/+ this."""


def _first_value(ds: Dataset, keyword: str) -> Any:
    """The first value of a DS element as read (its own text kept), ``None`` when not a number."""
    value = ds.get(keyword)
    if _number(value) is None:
        return None
    return value[0] if isinstance(value, pydicom.multival.MultiValue | list | tuple) else value


def _lut_ok(ds: Dataset, keyword: str, depths: Sequence[int]) -> bool:
    """``ds`` has a first item of ``keyword`` with a LUT pydicom can apply."""
    seq = ds.get(keyword)
    if not seq:
        return False
    item = seq[0]
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None or not isinstance(descriptor, Sequence):
        return False
    return len(descriptor) == 3 and int(descriptor[2]) in depths


def _lut_view(ds: Dataset) -> tuple[Dataset, bool]:
    """The elements pydicom's LUT functions read, those it cannot use left out.

    Returns
    -------
    tuple of (Dataset, bool)
        The view, and whether it has a VOI transform (VOI LUT Sequence or window).
        A Rescale Slope of 0 or empty counts as 1, an empty Rescale Intercept as 0
        (as the renderings always did); a window needs a width of at least 1.
    """
    view = Dataset()
    if getattr(ds, "file_meta", None) is not None and "TransferSyntaxUID" in ds.file_meta:
        view.file_meta = ds.file_meta  # the endianness of OW LUT data
    else:
        view.set_original_encoding(*ds.original_encoding)
    for keyword in ("BitsStored", "PixelRepresentation"):
        if keyword in ds:
            view[keyword] = ds[keyword]
    if _lut_ok(ds, "ModalityLUTSequence", (8, 16)):
        view["ModalityLUTSequence"] = ds["ModalityLUTSequence"]
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _number(ds.get("RescaleSlope"))
        view.RescaleSlope = _first_value(ds, "RescaleSlope") if slope else "1"
        view.RescaleIntercept = _first_value(ds, "RescaleIntercept") or "0"
    voi = _lut_ok(ds, "VOILUTSequence", (8, *range(10, 17)))
    if voi:
        view["VOILUTSequence"] = ds["VOILUTSequence"]
    else:
        width = _number(ds.get("WindowWidth"))
        if _number(ds.get("WindowCenter")) is not None and width is not None and width >= 1:
            view["WindowCenter"], view["WindowWidth"] = ds["WindowCenter"], ds["WindowWidth"]
            function = str(ds.get("VOILUTFunction", "") or "").strip().upper()
            if function in _VOI_FUNCTIONS:
                view.VOILUTFunction = function
            photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
            if photometric in ("MONOCHROME1", "MONOCHROME2"):  # windows are for grey images
                view.PhotometricInterpretation = photometric
            voi = {"BitsStored", "PixelRepresentation", "PhotometricInterpretation"} <= set(
                view.dir()
            )
    return view, voi


def modality_values(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Stored ``pixels`` of ``ds`` in modality units (Hounsfield units for CT), as floats.

    pydicom's :func:`~pydicom.pixels.apply_modality_lut`: the Modality LUT Sequence
    when there is one, else Rescale Slope and Intercept (an empty or zero slope
    counts as 1, an empty intercept as 0), else the stored values.
    """
    return np.asarray(apply_modality_lut(pixels, _lut_view(ds)[0]), dtype=np.float64)


#: Native little endian transfer syntaxes (Implicit, Explicit VR): Pixel Data as stored.
_NATIVE_LITTLE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def stored_pixels(ds: Dataset, frame: int = 0, step: int = 1) -> np.ndarray:
    """One frame's stored values, every ``step``-th pixel of each row and column.

    The values and dtype pydicom's ``pixel_array`` gives for that frame (bits
    above Bits Stored masked, or sign-extended when signed).  A grey image in a
    native little endian transfer syntax (most CT and MR) is read straight from
    Pixel Data, only the kept pixels converted; anything else goes through
    ``pixel_array``.  A frame number past the last frame gives the last frame.
    """
    direct = _native_grey(ds, frame, step)
    if direct is not None:
        return direct
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[min(frame, frames - 1)]
    return pixels[::step, ::step] if step > 1 else pixels


def _native_grey(ds: Dataset, frame: int, step: int) -> np.ndarray | None:
    """:func:`stored_pixels` read from native Pixel Data; None when the image is not that case."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if syntax not in _NATIVE_LITTLE or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        data = ds.get("PixelData")
    except (AttributeError, TypeError, ValueError):
        return None
    size = allocated // 8
    if (
        samples != 1
        or allocated not in (8, 16)
        or not 1 <= stored <= allocated
        or signed not in (0, 1)
        or min(rows, columns, frames) < 1
        or not isinstance(data, bytes)
        or len(data) < frames * rows * columns * size
    ):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{size}")
    offset = min(frame, frames - 1) * rows * columns * size
    flat = np.frombuffer(data, dtype=dtype, count=rows * columns, offset=offset)
    pixels = flat.reshape(rows, columns)[:: max(1, step), :: max(1, step)]
    if stored < allocated:  # as pydicom: the unused high bits cleared, or the sign extended
        shift = allocated - stored
        return (pixels << shift) >> shift if signed else pixels & ((1 << stored) - 1)
    return pixels.copy()


#: Pixels from which :meth:`_LinearWindow.apply` may look the window up per value (below,
#: a thumbnail's few thousand pixels, computing each costs less than building the table).
_LUT_FROM = 16384


@dataclass(frozen=True)
class _LinearWindow:
    """A file's own LINEAR / LINEAR_EXACT window after a rescale, as pydicom applies them.

    The very arithmetic of pydicom's ``apply_modality_lut`` (rescale) and
    ``apply_windowing`` (PS3.3 C.11.2.1.2.1, C.11.2.1.3.2) followed by :func:`render`'s
    scaling of the output range to 0..1, without building a view dataset per image:
    the same floats, in a fraction of the time.
    """

    center: float
    width: float
    rescale: tuple[float, float] | None
    y_min: float
    y_max: float

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Stored ``pixels`` as floats 0..1 (float32), before any MONOCHROME1 inversion.

        Integer pixels spanning fewer values than a quarter of their number (a CT
        image's few thousand values, against its 262,144 pixels) are looked up in
        the window computed once for each value from the lowest to the highest: the
        arithmetic is per value, so the floats are the same, at a fraction of the cost.
        """
        if pixels.dtype.kind in "iu" and pixels.size >= _LUT_FROM:
            lo, hi = int(pixels.min()), int(pixels.max())
            if 4 * (hi - lo + 1) <= pixels.size:
                table = self._floats(np.arange(lo, hi + 1, dtype=pixels.dtype))
                # pixel - lo fits the unsigned type of the same size, also where the signed
                # difference wraps around
                unsigned = np.dtype(f"u{pixels.dtype.itemsize}")
                offsets = (pixels - pixels.dtype.type(lo)).view(unsigned)
                return np.asarray(table[offsets], dtype=np.float32)
        return self._floats(pixels)

    def _floats(self, pixels: np.ndarray) -> np.ndarray:
        """:meth:`apply`'s arithmetic on every pixel."""
        data = pixels.astype(np.float64)
        if self.rescale is not None:
            data = data * self.rescale[0]
            data += self.rescale[1]
        below = data <= self.center - self.width / 2
        above = data > self.center + self.width / 2
        with np.errstate(divide="ignore", invalid="ignore"):  # width 0: nothing is between
            between = ((data - self.center) / self.width + 0.5) * (self.y_max - self.y_min)
            between += self.y_min
        shown = np.where(below, self.y_min, np.where(above, self.y_max, between))
        lo, hi = min(self.y_min, self.y_max), max(self.y_min, self.y_max)
        scaled = (shown.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)
        return np.asarray(np.clip(scaled, 0, 1), dtype=np.float32)


def _linear_window(ds: Dataset) -> _LinearWindow | None:
    """The file's linear window when :func:`render` would apply one with pydicom; else None.

    None (pydicom's path) for a usable Modality or VOI LUT Sequence, a SIGMOID
    function, no usable window, or a grey image without Bits Stored / Pixel
    Representation / Photometric Interpretation: the cases :func:`_lut_view` decides.
    """
    if _lut_ok(ds, "ModalityLUTSequence", (8, 16)) or _lut_ok(
        ds, "VOILUTSequence", (8, *range(10, 17))
    ):
        return None
    center, width = _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "") or "").strip().upper()
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if (
        center is None
        or width is None
        or width < 1
        or function == "SIGMOID"
        or photometric not in ("MONOCHROME1", "MONOCHROME2")
    ):
        return None
    try:
        bits, representation = int(ds.BitsStored), int(ds.PixelRepresentation)
    except (AttributeError, TypeError, ValueError):
        return None
    if representation == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    rescale = None
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        rescale = (
            _number(ds.get("RescaleSlope")) or 1.0,
            _number(ds.get("RescaleIntercept")) or 0.0,
        )
        y_min, y_max = y_min * rescale[0] + rescale[1], y_max * rescale[0] + rescale[1]
    if function == "LINEAR_EXACT":
        return _LinearWindow(center, width, rescale, y_min, y_max)
    return _LinearWindow(center - 0.5, width - 1, rescale, y_min, y_max)


def render(
    ds: pydicom.Dataset,
    frame: int = 0,
    center: float | None = None,
    width: float | None = None,
    *,
    step: int = 1,
) -> np.ndarray:
    """One frame as floats 0..1 (2-D grey, or 3-D RGB) as a viewer shows it.

    Grey images go through pydicom's LUT functions: :func:`modality_values`, then
    :func:`~pydicom.pixels.apply_voi_lut` (the VOI LUT Sequence, else the first
    window with its VOI LUT Function), whose output range becomes 0..1.  Without
    either, the window is the 1st to 99th percentile.  A ``center`` or ``width``
    given (the reviewer's window, in modality units) is used instead, the other
    taken from the file.  MONOCHROME1 is inverted.  With ``step`` above 1 only every
    ``step``-th stored pixel of each row and column is looked up (a thumbnail).
    """
    pixels = stored_pixels(ds, frame, step)
    if pixels.ndim == 3:
        return pixels.astype(np.float32) / max(float(pixels.max()), 1.0)
    if center is None and width is None:
        linear = _linear_window(ds)
        if linear is not None:
            image = linear.apply(pixels)
            return 1 - image if ds.get("PhotometricInterpretation") == "MONOCHROME1" else image
    view, voi = _lut_view(ds)
    data = apply_modality_lut(pixels, view)
    if center is not None or width is not None:
        center = center if center is not None else _number(ds.get("WindowCenter"))
        width = width if width is not None else _number(ds.get("WindowWidth"))
        image = window(np.asarray(data), center, width)
    elif voi:
        if "VOILUTSequence" in view:
            descriptor = view.VOILUTSequence[0].LUTDescriptor
            probe = np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 2**16))
            data = np.rint(data).astype(np.int64)  # a LUT maps integers
        else:
            probe = np.array([-_PROBE, _PROBE])
        with np.errstate(over="ignore"):  # SIGMOID at the probe
            shown = apply_voi_lut(data, view).astype(np.float32)
            ends = apply_voi_lut(probe, view)
        lo, hi = float(np.min(ends)), float(np.max(ends))
        image = np.clip((shown - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    else:
        image = window(np.asarray(data))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        image = 1 - image
    return image


_SUGGEST_COLOUR = np.array([1.0, 0.8, 0.0], dtype=np.float32)
#: Largest side, in pixels, of the PNG renderings (larger images are shown every n-th pixel).
PNG_MAX_SIZE = 640
#: zlib level of the PNGs drawn here: 1, the fastest (a montage encodes in milliseconds).
_PNG_LEVEL = 1


def _rgb(image: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """``image`` (grey or colour, 0..1) as an RGB copy."""
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
    return np.asarray(rgb, dtype=np.float32).copy()


def _clipped(box: Box, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of ``box`` inside a ``cols`` x ``rows`` image, None when empty."""
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(cols, box.x + box.width), min(rows, box.y + box.height)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def _outline(
    rgb: npt.NDArray[np.float32], boxes: Sequence[Box], colour: npt.NDArray[np.float32]
) -> None:
    """Draw the edges of ``boxes`` on ``rgb`` in ``colour``, in place."""
    rows, cols = rgb.shape[:2]
    edge = max(1, min(rows, cols) // 200)
    for box in boxes:
        corners = _clipped(box, rows, cols)
        if corners is None:
            continue
        x0, y0, x1, y1 = corners
        rgb[y0 : y0 + edge, x0:x1] = colour
        rgb[max(y0, y1 - edge) : y1, x0:x1] = colour
        rgb[y0:y1, x0 : x0 + edge] = colour
        rgb[y0:y1, max(x0, x1 - edge) : x1] = colour


def _blacken(rgb: npt.NDArray[np.float32], boxes: Sequence[Box]) -> None:
    """Fill ``boxes`` of ``rgb`` with black, in place (what a scrub writes, as displayed)."""
    rows, cols = rgb.shape[:2]
    for box in boxes:
        corners = _clipped(box, rows, cols)
        if corners is not None:
            x0, y0, x1, y1 = corners
            rgb[y0:y1, x0:x1] = 0.0


def png_step(rows: int, columns: int, max_size: int = PNG_MAX_SIZE) -> int:
    """Every how many source pixels a rendering of a ``columns`` x ``rows`` image keeps one.

    A rendering's pixel ``(x, y)`` is the source pixel ``(x * step, y * step)``:
    the reviewer converts drawn rectangles back to source pixels with it.
    """
    return max(1, int(np.ceil(max(rows, columns, 1) / max_size)))


def _png(image: npt.NDArray[np.floating[Any]], max_size: int = PNG_MAX_SIZE) -> bytes:
    """``image`` (0..1) as PNG bytes, downsampled to at most ``max_size`` pixels a side."""
    step = png_step(image.shape[0], image.shape[1], max_size)
    return _encode(_grey_levels(image[::step, ::step]))


def _grey_levels(image: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """``image`` (0..1, grey or RGB) as 8-bit levels, ``v * 255`` rounded."""
    data = image if image.ndim == 2 else image[:, :, :3]
    return np.asarray(np.clip(data, 0, 1) * 255 + 0.5, dtype=np.uint8)


def _encode(levels: npt.NDArray[np.uint8]) -> bytes:
    """8-bit grey (2-D) or RGB levels as PNG bytes (fast zlib level: pictures, not archives)."""
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="png", compress_level=_PNG_LEVEL)
    return buffer.getvalue()


def preview_png(
    ds: pydicom.Dataset,
    boxes: Sequence[Box] = (),
    suggested: Sequence[Box] = (),
    *,
    frame: int = 0,
    center: float | None = None,
    width: float | None = None,
) -> bytes:
    """The image rendered as PNG as a scrub of ``boxes`` would leave it.

    Every rectangle of ``boxes`` is black, as :func:`~sendit_helpers.deid.scrub.scrub_pixels`
    writes it (the lowest stored value, the highest for MONOCHROME1: black
    under any window that starts at or above the data's minimum), with no edge
    drawn over the pixels around it.  Suggested rectangles that are not among
    ``boxes`` get a yellow edge (they are not scrubbed).  Without rectangles it
    is the plain rendering (:func:`render`), downsampled by :func:`png_step`.
    """
    image = render(ds, frame, center, width)
    if not boxes and not suggested:
        return _png(image)
    rgb = _rgb(image)
    _outline(rgb, [b for b in suggested if b not in boxes], _SUGGEST_COLOUR)
    _blacken(rgb, boxes)
    return _png(rgb)


def thumbnail(path: str | os.PathLike[str], size: int = 128) -> np.ndarray | str:
    """A downsampled rendering of a file, or the reason it cannot be drawn."""
    try:
        ds = pydicom.dcmread(os.fspath(path), force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        return render(ds, step=max(1, max(rows, columns) // size))
    except (*READ_ERRORS, RuntimeError) as exc:
        return f"cannot draw: {safe_reason(exc)}"


def montage(
    paths: Sequence[str | os.PathLike[str]], titles: Sequence[str], size: int = 128, title: str = ""
) -> Figure:
    """A grid of thumbnails, one per path, captioned with ``titles``, as a matplotlib figure.

    For drawing on further with matplotlib; :func:`montage_png` gives the same
    picture as PNG bytes without matplotlib (milliseconds, not a second).
    """
    import matplotlib.pyplot as plt

    n = max(1, len(paths))
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, paths, titles, strict=False):
        thumb = thumbnail(path, size)
        if isinstance(thumb, str):
            ax.text(0.5, 0.5, thumb, ha="center", va="center", fontsize=6, wrap=True)
        else:
            ax.imshow(thumb, cmap="gray", vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
    if title:  # wrapped to the figure's width: a long series description is not clipped
        fig.suptitle(textwrap.fill(title, width=max(24, 16 * cols)), fontsize=9)
    fig.tight_layout()
    return fig


_MONTAGE_COLUMNS = 8
_CAPTION_PT = 11
_TITLE_PT = 13
_PAD = 6


@functools.cache
def _font(points: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's copy) at ``points`` pixels; Pillow's default font when missing.

    The file is found without importing matplotlib (its import costs a fresh
    kernel about half a second); loaded once per size.
    """
    spec = importlib.util.find_spec("matplotlib")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        try:
            return ImageFont.truetype(str(Path(folder, *_DEJAVU)), points)
        except OSError:
            continue
    return ImageFont.load_default()


#: Where matplotlib keeps DejaVu Sans, under its package folder.
_DEJAVU = ("mpl-data", "fonts", "ttf", "DejaVuSans.ttf")


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return float(right - left)


def montage_png(
    paths: Sequence[str | os.PathLike[str]], titles: Sequence[str], size: int = 128, title: str = ""
) -> bytes:
    """A grid of thumbnails, one per path, captioned with ``titles``, as PNG bytes.

    What :func:`montage` draws (at most 8 thumbnails a row, each windowed as
    :func:`render` shows it, its caption above it, a file that cannot be drawn
    replaced by the reason, ``title`` wrapped above all), composed with numpy and
    Pillow: no matplotlib figure, so a montage costs milliseconds, not a second.
    Grey thumbnails make a grey (8-bit) PNG, a colour one an RGB PNG.
    """
    n = max(1, len(paths))
    cols = min(_MONTAGE_COLUMNS, n)
    rows = (n + cols - 1) // cols
    caption_font, title_font = _font(_CAPTION_PT), _font(_TITLE_PT)
    cell_w, cell_h = size + _PAD, size + _CAPTION_PT + 2 * _PAD
    width = cols * cell_w + _PAD
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines: list[str] = []
    if title:  # wrapped to the montage's width: a long series description is not clipped
        chars = max(24, int(width / max(1.0, _text_width(probe, "n", title_font))))
        lines = textwrap.wrap(title, width=chars) or [title]
    top = _PAD + len(lines) * (_TITLE_PT + 4)
    pairs = list(zip(paths, titles, strict=False))
    thumbs = [thumbnail(path, size) for path, _ in pairs]
    colour = any(not isinstance(thumb, str) and thumb.ndim == 3 for thumb in thumbs)
    # grey pictures on a grey canvas: a third of the bytes to encode
    canvas = Image.new("RGB" if colour else "L", (width, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        x = (width - _text_width(draw, line, title_font)) / 2
        draw.text((x, _PAD + index * (_TITLE_PT + 4)), line, fill="black", font=title_font)
    for index, ((_, caption), thumb) in enumerate(zip(pairs, thumbs, strict=True)):
        x0 = _PAD + (index % cols) * cell_w
        y0 = top + (index // cols) * cell_h
        x_caption = x0 + (size - _text_width(draw, caption, caption_font)) / 2
        draw.text((x_caption, y0), caption, fill="black", font=caption_font)
        y_image = y0 + _CAPTION_PT + _PAD // 2
        if isinstance(thumb, str):
            reason = "\n".join(textwrap.wrap(thumb, width=max(8, size // 7)))
            draw.multiline_text((x0, y_image), reason, fill="black", font=caption_font)
            continue
        picture = Image.fromarray(_grey_levels(thumb))
        if max(picture.size) > size:  # fit the cell, keeping the aspect ratio
            picture.thumbnail((size, size))
        canvas.paste(picture, (x0 + (size - picture.width) // 2, y_image))
    buffer = io.BytesIO()
    canvas.save(buffer, format="png", compress_level=_PNG_LEVEL)
    return buffer.getvalue()


def sample(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """At most ``k`` rows, evenly spaced, in instance order."""
    table = table.sort_values("InstanceNumber", na_position="last")
    if len(table) <= k:
        return table
    idx = np.linspace(0, len(table) - 1, k).round().astype(int)
    return table.iloc[np.unique(idx)]


def series_montages(
    files: pd.DataFrame, out_dir: Path, *, max_images: int = 16, size: int = 128
) -> list[Path]:
    """Save one montage PNG per series under ``out_dir`` and return their paths.

    Flagged images are captioned with a ``!`` so they stand out.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    images = files[files["has_pixels"]]
    for index, (_, group) in enumerate(images.groupby("SeriesInstanceUID", sort=False)):
        chosen = sample(group, max_images)
        captions = [
            f"{'! ' if flagged else ''}#{'' if pd.isna(num) else num}"
            for num, flagged in zip(chosen["InstanceNumber"], chosen["flagged"], strict=True)
        ]
        first = chosen.iloc[0]
        title = (
            f"series {first['SeriesNumber']} — {first['SeriesDescription']} "
            f"({first['Modality']}, {len(group)} images)"
        )
        path = out_dir / f"montage_{index:03d}.png"
        path.write_bytes(montage_png(list(chosen["source_path"]), captions, size, title))
        saved.append(path)
    return saved


#: The bars' colour (the blue of the matplotlib bars these charts replaced).
BAR_COLOUR = "#4c72b0"
_BAR_HEIGHT, _BAR_GAP, _BAR_TOP, _CHART_WIDTH = 20, 8, 34, 560
_CHAR_WIDTH = 7.5
"""An upper estimate of one character's width at 12 px (sans-serif): room for the labels."""


@dataclass(frozen=True)
class BarChart:
    """A horizontal bar chart drawn as a small self-contained SVG (no matplotlib).

    Shown in a notebook as an ``<img>`` of the SVG (:meth:`_repr_html_`): JupyterLab
    displays it in an untrusted notebook too, and the HTML copies carry it inline,
    readable offline.  The same labels and values give the same bytes.

    Attributes
    ----------
    title : str
        Above the bars, and the picture's accessible name.
    labels : tuple of str
        One per bar, top to bottom.
    values : tuple of int
        The bars' lengths, written at their ends.
    """

    title: str
    labels: tuple[str, ...]
    values: tuple[int, ...]

    def description(self) -> str:
        """``"title: label value, ..."``: the picture in words (its alt text and text form)."""
        pairs = zip(self.labels, self.values, strict=True)
        bars = ", ".join(f"{label} {value}" for label, value in pairs)
        return f"{self.title}: {bars}" if bars else self.title

    def svg(self) -> str:
        """The chart as SVG: a title, then one labelled bar per value with the value beside it."""
        esc = functools.partial(html.escape, quote=True)
        label_w = 12 + int(_CHAR_WIDTH * max((len(label) for label in self.labels), default=0))
        count_w = 12 + int(_CHAR_WIDTH * max((len(str(v)) for v in self.values), default=1))
        span = max(40, _CHART_WIDTH - label_w - count_w - 8)
        most = max(self.values, default=0)
        height = _BAR_TOP + len(self.values) * (_BAR_HEIGHT + _BAR_GAP) + 4
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_WIDTH}" height="{height}"'
            f' viewBox="0 0 {_CHART_WIDTH} {height}" role="img"'
            f' aria-label="{esc(self.description())}"'
            ' font-family="DejaVu Sans, Verdana, Arial, sans-serif" font-size="12">',
            f"<title>{esc(self.description())}</title>",
            f'<rect width="{_CHART_WIDTH}" height="{height}" fill="#ffffff"/>',
            f'<text x="{_CHART_WIDTH // 2}" y="20" text-anchor="middle" font-size="14"'
            f' fill="#000000">{esc(self.title)}</text>',
        ]
        for row, (label, value) in enumerate(zip(self.labels, self.values, strict=True)):
            y = _BAR_TOP + row * (_BAR_HEIGHT + _BAR_GAP)
            middle = y + _BAR_HEIGHT // 2
            length = round(span * value / most, 1) if most > 0 else 0.0
            parts += [
                f'<text x="{label_w - 6}" y="{middle}" dy="0.35em" text-anchor="end"'
                f' fill="#000000">{esc(label)}</text>',
                f'<rect x="{label_w}" y="{y}" width="{length:g}" height="{_BAR_HEIGHT}"'
                f' fill="{BAR_COLOUR}"/>',
                f'<text x="{label_w + length + 4:g}" y="{middle}" dy="0.35em"'
                f' fill="#000000">{value}</text>',
            ]
        parts += [
            f'<line x1="{label_w}" y1="{_BAR_TOP - 4}" x2="{label_w}" y2="{height - 4}"'
            ' stroke="#000000" stroke-width="1"/>',
            "</svg>",
        ]
        return "\n".join(parts) + "\n"

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.svg().encode()).decode("ascii")
        return (
            f'<img src="data:image/svg+xml;base64,{data}" alt="{html.escape(self.description())}"'
            f' title="{html.escape(self.title)}">'
        )

    def __str__(self) -> str:
        return self.description()


def disposition_bar(counts: pd.Series, title: str = "Files by disposition") -> BarChart:
    """A horizontal bar chart of disposition counts (one bar per disposition, in order).

    Only the dispositions (the index) and their counts are drawn, never a value of
    a file.  Displayed as the cell's value (no trailing ``;``): an SVG picture.
    """
    labels = tuple(str(label) for label in counts.index)
    values = tuple(int(value) for value in counts.to_numpy())
    return BarChart(title, labels, values)


def show(paths: Sequence[Path]) -> None:
    """Display saved PNGs in a notebook, one after another."""
    from IPython.display import Image, display

    for path in paths:
        display(Image(filename=str(path)))  # type: ignore[no-untyped-call]
