"""Black out rectangles of burned-in text in an image's pixel data.

Works on native (uncompressed) and compressed pixel data alike: compressed
data is decoded with pydicom (and pylibjpeg for the JPEG family), scrubbed,
and written back as native Explicit VR Little Endian with the transfer syntax
updated.  Every frame is scrubbed; MONOCHROME1/2, RGB and YBR (converted to
RGB on decoding) are handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import convert_color_space
from pydicom.pixels.utils import pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from sendit_helpers.core.errors import ReviewError, tag_label

__all__ = ["Box", "boxes_from_coordinates", "check_box", "scrub_pixels"]


class Box(NamedTuple):
    """A rectangle in pixel coordinates: top-left corner ``(x, y)``, ``width`` and ``height``."""

    x: int
    y: int
    width: int
    height: int

    def __str__(self) -> str:
        return f"x={self.x} y={self.y} w={self.width} h={self.height}"


def check_box(box: Box, columns: int, rows: int) -> str:
    """Why ``box`` does not fit a ``columns`` x ``rows`` image, or ``""`` when it does.

    Parameters
    ----------
    box : Box
        The rectangle.
    columns, rows : int
        Image width and height.

    Returns
    -------
    str
        Empty when the rectangle is inside the image and not empty.
    """
    if box.width <= 0 or box.height <= 0:
        return f"rectangle {box} is empty; width and height must be at least 1"
    if box.x < 0 or box.y < 0 or box.x + box.width > columns or box.y + box.height > rows:
        return (
            f"rectangle {box} lies outside the {columns}x{rows} image; "
            f"keep x >= 0, y >= 0, x + width <= {columns} and y + height <= {rows}"
        )
    return ""


def boxes_from_coordinates(
    coordinates: Sequence[Sequence[int]], columns: int, rows: int
) -> list[Box]:
    """Recipe ``[x0, y0, x1, y1]`` boxes as :class:`Box` clipped to the image (empty ones dropped).

    Parameters
    ----------
    coordinates : sequence of four ints
        Corners as the deid ``%filter`` coordinates give them.
    columns, rows : int
        Image width and height.

    Returns
    -------
    list of Box
    """
    boxes = []
    for corners in coordinates:
        if len(corners) != 4:
            continue
        x0, y0, x1, y1 = (int(v) for v in corners)
        x0, x1 = sorted((max(0, min(x0, columns)), max(0, min(x1, columns))))
        y0, y1 = sorted((max(0, min(y0, rows)), max(0, min(y1, rows))))
        if x1 > x0 and y1 > y0:
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
    return boxes


def _fill_value(ds: Dataset) -> int:
    """The stored value that displays as black."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return high if ds.get("PhotometricInterpretation") == "MONOCHROME1" else low


def scrub_pixels(ds: Dataset, boxes: Sequence[Box]) -> Dataset:
    """Black out ``boxes`` on every frame of ``ds``, in place.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image with pixel data; compressed data is decoded and stored back
        native (Explicit VR Little Endian), big-endian data is rewritten
        little-endian, YBR colour is converted to RGB.
    boxes : sequence of Box
        Rectangles in pixel coordinates; each must lie inside the image.

    Returns
    -------
    pydicom.Dataset
        ``ds`` itself.

    Raises
    ------
    ReviewError
        When the data set has no pixel data, a rectangle lies outside the
        image, or the pixel format cannot be scrubbed (1-bit or float data).
    """
    if "PixelData" not in ds:
        raise ReviewError(
            f"no {tag_label('PixelData', 0x7FE00010)} to scrub; only images can be scrubbed, "
            "decide release or keep for this item"
        )
    if not boxes:
        raise ReviewError("scrub needs at least one rectangle (x, y, width, height); add one")
    rows, columns = int(ds.Rows), int(ds.Columns)
    for box in boxes:
        problem = check_box(box, columns, rows)
        if problem:
            raise ReviewError(f"cannot scrub: {problem}")
    if int(ds.get("BitsAllocated", 8)) == 1:
        raise ReviewError(
            f"cannot scrub 1-bit pixel data ({tag_label('BitsAllocated', 0x00280100)} is 1); "
            "decide keep for this item"
        )
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    pixels = np.array(pixel_array(ds, raw=True), copy=True)  # raw: no colour conversion
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("YBR") and pixels.ndim >= 3 and pixels.shape[-1] == 3:
        pixels = convert_color_space(pixels, photometric, "RGB")
        ds.PhotometricInterpretation = "RGB"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    stack = pixels if frames > 1 else pixels[np.newaxis]
    fill = _fill_value(ds)
    for box in boxes:
        stack[:, box.y : box.y + box.height, box.x : box.x + box.width, ...] = fill
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        ds.PlanarConfiguration = 0
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    ds.PixelData = little.tobytes()
    ds["PixelData"].VR = "OB" if int(ds.get("BitsAllocated", 8)) <= 8 else "OW"
    if syntax is None or not syntax.is_little_endian or syntax.is_compressed:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
