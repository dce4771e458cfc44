"""Text burned into pixels: patient names and dates drawn with DejaVu fonts, as a modality would.

:func:`burn_text` draws a line of text into an image at a given cap height; :data:`FONTS`
names the fonts (Sans, Mono, Serif) it can use.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "FONTS",
    "burn_text",
]

@lru_cache(maxsize=1)
def _font_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


#: Fonts :func:`burn_text` can use (all bundled with matplotlib): name -> file.
FONTS = {
    "sans": "DejaVuSans.ttf",
    "mono": "DejaVuSansMono.ttf",
    "serif": "DejaVuSerif.ttf",
}


@lru_cache(maxsize=len(FONTS))
def _font_file(font: str) -> str:
    """The path of one of :data:`FONTS` (DejaVu Sans for ``"sans"``)."""
    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; use one of {', '.join(FONTS)}")
    if font == "sans":
        return _font_path()
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[font])


_CAP_HEIGHT_EM = 0.729  # DejaVu capital height (Sans, Mono and Serif) as a fraction of the em


def _text_mask(text: str, height: int, font_name: str = "sans") -> npt.NDArray[np.float32]:
    """Rasterize ``text`` with matplotlib's FreeType wrapper; coverage in [0, 1]."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(_font_file(font_name))
    font.set_size(height / _CAP_HEIGHT_EM, 72.0)
    font.set_text(text, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    image = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    return image


def _fit(text: str, height: int, max_width: int) -> tuple[int, int]:
    """The largest height <= ``height`` (>= 6) whose rendering fits ``max_width``; its width."""
    width = _text_mask(text, height).shape[1]
    while width > max_width and height > 6:
        height -= 1
        width = _text_mask(text, height).shape[1]
    return height, width


def burn_text(
    pixels: npt.NDArray[np.generic],
    text: str,
    x: int,
    y: int,
    height: int,
    value: int | None = None,
    *,
    font: str = "sans",
) -> npt.NDArray[np.generic]:
    """Burn readable text into an image, without external fonts.

    The text is rasterized (antialiased) with a DejaVu font bundled with
    matplotlib (Sans unless ``font`` says otherwise), through matplotlib's
    FreeType wrapper (the one its Agg backend uses).

    Parameters
    ----------
    pixels : numpy.ndarray
        A 2-D image ``(rows, columns)``, or ``(rows, columns, samples)`` for colour
        images (every sample gets ``value``).  Not modified.
    text : str
        One line of text.
    x, y : int
        Column and row of the top-left corner of the text box.  Text that falls
        outside the image is clipped.
    height : int
        Height in pixels of the capital letters (descenders go below it).
    value : int or None
        Intensity of the text; default the image maximum (the dtype maximum for
        a flat image).  A value close to the background gives low contrast.
    font : str
        ``"sans"`` (DejaVu Sans, the default), ``"mono"`` (DejaVu Sans Mono) or
        ``"serif"`` (DejaVu Serif); see :data:`FONTS`.

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype, with the text burned in.

    Raises
    ------
    ValueError
        If the image is not 2-D or 3-D or ``height`` is below 4.
    """
    if pixels.ndim not in (2, 3):
        raise ValueError(f"burn_text needs a 2-D or 3-D image, got shape {pixels.shape}")
    if height < 4:
        raise ValueError(f"burn_text needs a height of at least 4 pixels, got {height}")
    out = np.array(pixels, copy=True)
    if value is None:
        lo, hi = out.min(), out.max()
        if hi > lo:
            value = int(hi)
        elif np.issubdtype(out.dtype, np.integer):
            value = int(np.iinfo(out.dtype).max)
        else:
            value = 1
    mask = _text_mask(text, height, font)
    rows, cols = out.shape[:2]
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + mask.shape[0], rows), min(x + mask.shape[1], cols)
    if y1 <= y0 or x1 <= x0:
        return out
    alpha = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    region = out[y0:y1, x0:x1].astype(np.float64)
    if out.ndim == 3:
        alpha3 = alpha[:, :, None]
        blended = region * (1.0 - alpha3) + float(value) * alpha3
    else:
        blended = region * (1.0 - alpha) + float(value) * alpha
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        blended = np.clip(np.rint(blended), info.min, info.max)
    out[y0:y1, x0:x1] = blended.astype(out.dtype)
    return out
