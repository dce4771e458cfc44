"""OCR pre-screen (issue 15): Tesseract reads only where strokes are, and finds the same text.

The reference boxes of the real files below are what the screen found before the
pre-screen (whole pictures read by the tesseract program, commit bd3aa03).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from sendit_helpers.deid import ocr, textregions
from sendit_helpers.samples import burn, textimages
from tests.realworld import pydicom_test_dir

pytest.importorskip("pytesseract")

#: Real files with burned-in text -> the boxes the screen found before the pre-screen.
REAL_TEXT = {
    "ultrasounds/GREYSCALE_IMAGE.dcm": [
        [1, 1, 289, 48], [385, 1, 692, 24], [816, 1, 1016, 48], [5, 49, 85, 120],
        [956, 76, 992, 96], [120, 123, 904, 142], [4, 135, 107, 261], [894, 315, 933, 340],
        [889, 489, 915, 495],
    ],
    "ultrasounds/RGB_IMAGE.dcm": [
        [0, 2, 237, 56], [394, 3, 442, 28], [495, 3, 725, 28], [766, 3, 891, 28],
        [495, 31, 778, 56], [920, 60, 1024, 139], [950, 142, 1024, 165], [914, 222, 1024, 357],
        [505, 736, 730, 768], [791, 740, 854, 764],
    ],
    "ultrasounds/ultrasound-multiframe.dcm": [
        [733, 50, 800, 94], [3, 56, 60, 94], [1, 116, 64, 186], [494, 186, 546, 221],
        [2, 213, 94, 279], [665, 249, 800, 318], [725, 563, 800, 590],
    ],
}  # fmt: skip
#: pydicom's test files with text in the pixels -> the boxes found before.
PYDICOM_TEXT = {
    "GDCMJ2K_TextGBR.dcm": [[1, 32, 183, 114], [0, 231, 227, 315]],
    "examples_ybr_color.dcm": [
        [0, 8, 45, 29], [288, 10, 320, 34], [303, 42, 317, 51], [298, 86, 320, 100],
        [289, 113, 320, 142], [282, 196, 301, 209],
    ],
}  # fmt: skip


def covered(boxes: list[list[int]], by: list[list[int]]) -> float:
    """Share of the union of ``boxes`` that ``by`` covers."""
    if not boxes:
        return 1.0
    x1 = max(b[2] for b in [*boxes, *by])
    y1 = max(b[3] for b in [*boxes, *by])
    want, have = np.zeros((y1, x1), dtype=bool), np.zeros((y1, x1), dtype=bool)
    for b in boxes:
        want[b[1] : b[3], b[0] : b[2]] = True
    for b in by:
        have[b[1] : b[3], b[0] : b[2]] = True
    return float((want & have).sum() / want.sum())


def corners(ds: Dataset, **kw: bool) -> list[list[int]]:
    return [b.corners() for b in ocr.find_text(ds, **kw)]


def as_monochrome1(ds: Dataset) -> Dataset:
    """The same picture stored as MONOCHROME1 (inverted values, no window)."""
    pixels = ds.pixel_array
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - pixels.astype(np.int64)).astype(pixels.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def with_text(ds: Dataset, text: str, x: int, y: int, height: int, value: int) -> Dataset:
    """``ds`` with a line burned into its pixels."""
    pixels = burn.burn_text(ds.pixel_array, text, x, y, height, value)
    ds.PixelData = pixels.tobytes()
    return ds


# ------------------------------------------------------------------ the pre-screen alone
def test_candidate_regions_cover_every_planted_line(tmp_path: Path) -> None:
    """Sizes 8-24 px, three fonts, bright, dim and inverse text, five positions, US/SC/CT/RGB."""
    folder = tmp_path / "t"
    paths = textimages.make_text_images(folder, 24, with_text=True, seed=21, size=256)
    truth = textimages.load_text_truth(folder)
    assert {t.height for t in truth} == set(textimages.TEXT_HEIGHTS)
    assert {t.contrast for t in truth} == set(textimages.TEXT_CONTRASTS)
    by_name = {p.name: p for p in paths}
    for line in truth:
        grey = ocr.shown(pydicom.dcmread(by_name[line.file]))
        regions = [list(r) for r in textregions.candidate_regions(grey)]
        assert covered([list(line.box)], regions) >= 0.9, (line.height, line.contrast, line.kind)


def test_plain_ct_has_few_candidates_and_no_text(tmp_path: Path) -> None:
    plain = textimages.make_text_images(tmp_path / "p", 3, with_text=False, seed=5)
    for path in plain:
        ds = pydicom.dcmread(path)
        grey = ocr.shown(ds)
        regions = textregions.candidate_regions(grey)
        assert sum((r[2] - r[0]) * (r[3] - r[1]) for r in regions) < 0.2 * grey.size
        crops = textregions.crop_boxes(regions, *grey.shape)
        assert crops is not None, "a CT slice is not read whole"
        assert ocr.find_text(ds) == []
    flat = np.full((64, 64), 100, dtype=np.uint8)
    assert textregions.candidate_regions(flat) == [], "nothing to read: Tesseract is not run"
    assert textregions.crop_boxes([], 64, 64) == []
    assert textregions.crop_boxes([(0, 0, 64, 64)], 64, 64) is None, "all of it: read whole"
    assert not textregions.ink(flat).any()


# ------------------------------------------------------------------ same text as whole pictures
@pytest.mark.parametrize("store", ["MONOCHROME2", "MONOCHROME1"])
def test_prescreen_finds_what_the_whole_picture_gives(tmp_path: Path, store: str) -> None:
    paths = textimages.make_text_images(tmp_path / "t", 4, with_text=True, seed=31, size=256)
    for path in paths:
        ds = pydicom.dcmread(path)
        if store == "MONOCHROME1":
            if ds.SamplesPerPixel != 1:
                continue
            ds = as_monochrome1(ds)
        whole = corners(ds, prescreen=False)
        if whole:
            found = corners(ds)
            assert found, f"{path.name}: text read in the whole picture, missed by the pre-screen"
            assert covered(whole, found) >= 0.9, path.name


def test_large_and_dim_text_on_ct(tmp_path: Path) -> None:
    """Text 40 px high (strokes of 6 px) and mid-grey text, on a CT slice."""
    plain = textimages.make_text_images(tmp_path / "p", 1, with_text=False, seed=3)[0]
    cases = [
        ("DOE JOHN 1234", 10, 8, 40, 4095),
        ("ACC 99887766", 250, 470, 13, 1064),  # 40 HU: mid-grey in the 40/400 window
    ]
    for text, x, y, height, value in cases:
        ds = with_text(pydicom.dcmread(plain), text, x, y, height, value)
        whole = corners(ds, prescreen=False)
        assert whole, "Tesseract reads it in the whole picture"
        found = corners(ds)
        assert found and covered(whole, found) >= 0.9, (height, value)


# ------------------------------------------------------------------ real files
@pytest.mark.parametrize("name", sorted(REAL_TEXT))
def test_real_ultrasound_text_is_found_as_before(deid_data: Path, name: str) -> None:
    found = corners(pydicom.dcmread(deid_data / name))
    assert covered(REAL_TEXT[name], found) >= 0.9


@pytest.mark.parametrize("name", sorted(PYDICOM_TEXT))
def test_real_pydicom_text_is_found_as_before(name: str) -> None:
    found = corners(pydicom.dcmread(pydicom_test_dir() / name))
    assert covered(PYDICOM_TEXT[name], found) >= 0.9


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_real_text_free_images_are_not_flagged(name: str) -> None:
    assert ocr.find_text(pydicom.dcmread(pydicom_test_dir() / name)) == []


def test_a_shape_read_as_letters_in_a_crop_only_is_not_text(tmp_path: Path) -> None:
    """A coronal CT slice whose mediastinum, cropped, reads as a word at confidence 65.

    The band across the whole picture does not read it, nor does the whole
    picture: not flagged (as without the pre-screen).
    """
    from sendit_helpers.samples import synthetic

    synthetic.make_ct_corpus(tmp_path / "study", 25, seed=1002)  # bench_run's study_003
    slices = sorted((tmp_path / "study").rglob("*_S003_*/*030003.dcm"))
    assert len(slices) == 1
    ds = pydicom.dcmread(slices[0])
    assert textregions.crop_boxes(textregions.candidate_regions(ocr.shown(ds)), 512, 512)
    assert ocr.find_text(ds) == [] and ocr.find_text(ds, prescreen=False) == []


# ------------------------------------------------------------------ large text, large pictures
def _radiograph(n: int, text_height: int) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    """A smooth ``n`` x ``n`` 12-bit picture with a name burned in; the text's pixels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n, 0:n]
    blob = 800 * np.exp(-((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / (2 * (n / 4) ** 2))
    base = (1000 + blob + rng.normal(0, 20, (n, n))).clip(0, 4095).astype(np.uint16)
    burned = burn.burn_text(base, "DOE JOHN 1234", n // 20, n // 20, text_height, 4095)
    return burned.astype(np.uint16), burned != base


def test_wide_strokes_on_a_large_picture_are_candidates() -> None:
    """A label 160 px high on a 3,000-pixel radiograph (strokes ~20 px).

    The widest stroke kept grows with the picture.
    """
    assert textregions.stroke_for(512, 512) == textregions.STROKE
    assert textregions.stroke_for(3000, 2000) == 24
    pixels, text = _radiograph(3000, 160)
    grey = (pixels >> 4).astype(np.uint8)
    ys, xs = np.nonzero(text)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    regions = textregions.candidate_regions(grey)
    assert regions, "strokes of ~20 px count on a 3,000-pixel picture"
    crops = textregions.crop_boxes(regions, *grey.shape)
    assert covered([box], crops if crops is not None else [[0, 0, 3000, 3000]]) >= 0.9


def test_ocr_prescreen_off_reads_whole_pictures(tmp_path: Path) -> None:
    """Text 120 px high on 512 px is beyond the pre-screen; OCR_PRESCREEN false reads it."""
    import pandas as pd
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels, _ = _radiograph(512, 120)
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = 0, 1, 2048, 4096
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "big_text.dcm"
    ds.save_as(path)
    files = pd.DataFrame(
        {"source_path": [str(path)], "SeriesInstanceUID": ["1.2.3"], "InstanceNumber": [1],
         "has_pixels": [True]}
    )  # fmt: skip
    whole = ocr.screen_files(files, progress=False, prescreen=False)
    assert bool(whole["ocr_flagged"].iloc[0])
