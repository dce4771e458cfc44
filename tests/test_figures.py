"""The notebooks' per-batch figures: an SVG bar chart and Pillow montages, no matplotlib.

The disposition bar is a small SVG shown as an ``<img>`` (JupyterLab shows it in an
untrusted notebook, the HTML copies carry it inline); it draws dispositions and counts
only.  Montages are one PNG per series composed with numpy and Pillow, from thumbnails
whose stored values and window are pydicom's to the bit (read and computed directly for
native grey images and linear windows, the usual CT and MR).
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from sendit_helpers.core import disposition
from sendit_helpers.deid import plots

_SVG = "{http://www.w3.org/2000/svg}"


def _counts_of_a_batch_with_phi() -> tuple[pd.Series, str]:
    """Counts of a disposition table whose paths and reasons carry a patient's name."""
    name = "DOE^JANE"
    table = pd.DataFrame(
        {
            "source_path": [f"/in/{name}/{i}.dcm" for i in range(5)],
            "disposition": ["released", "released", "quarantined", "error", "non_dicom"],
            "reason": ["", "", f"PatientName {name} burned in", "truncated", "text"],
        }
    )
    return disposition.counts(table), name


def test_disposition_bar_is_an_svg_of_the_counts_and_nothing_else() -> None:
    counts, name = _counts_of_a_batch_with_phi()
    chart = plots.disposition_bar(counts, "Files <by> disposition")
    svg = chart.svg()
    root = ET.fromstring(svg)  # well-formed XML: the title is escaped
    texts = [t.text for t in root.iter(f"{_SVG}text")]
    assert texts[0] == "Files <by> disposition"
    shown = dict(zip(texts[1::2], texts[2::2], strict=True))
    assert shown == {str(k): str(v) for k, v in counts.items()}
    assert list(shown) == [str(d) for d in disposition.Disposition]
    bars = [r for r in root.iter(f"{_SVG}rect") if r.get("fill") == plots.BAR_COLOUR]
    widths = [float(r.get("width", "nan")) for r in bars]
    assert len(bars) == len(counts) and widths[list(shown).index("released")] == max(widths)
    assert widths[list(shown).index("pending")] == 0
    assert root.find(f"{_SVG}title") is not None and "released 2" in root.get("aria-label", "")
    html = chart._repr_html_()  # what the notebook stores (text/html)
    assert name not in svg and name not in html and "DOE" not in svg + html
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    src = re.fullmatch(r'<img src="data:image/svg\+xml;base64,([^"]+)" alt="([^"]*)" .*>', html)
    assert src is not None and base64.b64decode(src.group(1)).decode() == svg
    assert src.group(2).startswith("Files &lt;by&gt; disposition: pending 0, error 1")


def test_disposition_bar_same_counts_same_bytes() -> None:
    counts = pd.Series({"released": 13, "quarantined": 12, "failed": 1})
    first = plots.disposition_bar(counts, "t")._repr_html_()
    assert plots.disposition_bar(counts.copy(), "t")._repr_html_() == first
    assert plots.disposition_bar(counts + 1, "t")._repr_html_() != first
    empty = plots.disposition_bar(pd.Series([], dtype=int), "nothing")
    assert ET.fromstring(empty.svg()).find(f"{_SVG}title") is not None


def test_montage_png_is_one_picture_of_the_expected_size_with_its_labels(tmp_path: Path) -> None:
    ct = str(get_testdata_file("CT_small.dcm"))  # 128 x 128
    paths, size = [ct] * 10, 64
    captions = [f"#{i}" for i in range(10)]
    png = plots.montage_png(paths, captions, size, "series 1 — CT (10 images)")
    picture = Image.open(io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and picture.format == "PNG"
    assert picture.mode == "L"  # grey thumbnails: an 8-bit grey PNG
    assert picture.width == 8 * (size + 6) + 6  # 8 thumbnails a row, 6 px apart
    unlabelled = Image.open(io.BytesIO(plots.montage_png(paths, [""] * 10, size, "")))
    assert picture.height > unlabelled.height  # the title's line
    grey = np.asarray(picture.convert("L"))
    bare = np.asarray(unlabelled.convert("L"))
    band = slice(grey.shape[0] - bare.shape[0], None)  # the same rows below the title
    captions_of_row_1, thumbnails_of_row_1 = slice(6, 20), slice(20, 20 + size)
    assert (grey[band][captions_of_row_1] < 128).any()
    assert not (bare[captions_of_row_1] < 128).any()
    assert np.array_equal(grey[band][thumbnails_of_row_1], bare[thumbnails_of_row_1])
    assert grey[band][thumbnails_of_row_1, 6 : 6 + size].std() > 10  # a picture, not a blank
    assert plots.montage_png(paths, captions, size, "s") == plots.montage_png(
        paths, captions, size, "s"
    )


def test_series_montages_one_png_per_series(tmp_path: Path) -> None:
    ct = str(get_testdata_file("CT_small.dcm"))
    files = pd.DataFrame(
        {
            "has_pixels": [True, True, True, False],
            "SeriesInstanceUID": ["1.2", "1.2", "1.3", "1.4"],
            "InstanceNumber": [2, 1, 1, 1],
            "flagged": [False, True, False, False],
            "SeriesNumber": [1, 1, 2, 3],
            "SeriesDescription": ["AX", "AX", "COR", "SR"],
            "Modality": ["CT", "CT", "CT", "SR"],
            "source_path": [ct, ct, ct, "x"],
        }
    )
    saved = plots.series_montages(files, tmp_path / "m", size=32)
    assert [p.name for p in saved] == ["montage_000.png", "montage_001.png"]
    sizes = [Image.open(p).size for p in saved]
    assert sizes[0][0] == 2 * (32 + 6) + 6 and sizes[1][0] == 32 + 6 + 6


def test_figures_do_not_import_matplotlib() -> None:
    """The stage notebooks' figures cost a fresh kernel no matplotlib import."""
    ct = get_testdata_file("CT_small.dcm")
    code = (
        "import sys\n"
        "import pandas as pd\n"
        "from sendit_helpers.deid import plots\n"
        "from sendit_helpers.stages import inspect, deidentify\n"
        "plots.disposition_bar(pd.Series({'released': 1}))._repr_html_()\n"
        f"plots.montage_png([{str(ct)!r}], ['#1'], 64, 'series 1')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


_NATIVE_GREY = [
    "CT_small.dcm",  # 16 bits, signed
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR2_UNCR.dcm",  # 12 of 16 bits, rescale slope 3.77
    "RG3_UNCR.dcm",  # 10 of 16 bits
    "693_UNCR.dcm",  # 14 of 16 bits, signed
    "emri_small.dcm",  # 10 frames
    "vlut_04.dcm",  # 8 bits, VOI LUT Sequence
    "mlut_18.dcm",  # Modality LUT Sequence
]


@pytest.mark.parametrize("name", _NATIVE_GREY)
def test_stored_pixels_are_pydicoms_pixel_array(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    every = ds.pixel_array if frames > 1 else ds.pixel_array[None]
    for frame in {0, frames - 1, frames + 3}:
        for step in (1, 3):
            mine = plots.stored_pixels(ds, frame, step)
            theirs = every[min(frame, frames - 1)][::step, ::step]
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), (frame, step)


@pytest.mark.parametrize("signed", [0, 1])
def test_stored_pixels_clear_or_extend_the_bits_above_bits_stored(signed: int) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm"))  # 12 of 16 bits
    ds.PixelRepresentation = signed
    raw = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    raw[:4] = [0xF123, 0x0F00, 0x8800, 0x0FFF]  # garbage above bit 12; a 12-bit sign bit
    ds.PixelData = raw.tobytes()
    mine = plots.stored_pixels(ds)
    assert np.array_equal(mine, ds.pixel_array) and mine.dtype == ds.pixel_array.dtype
    assert list(mine.ravel()[:4]) == ([291, -256, -2048, -1] if signed else [291, 3840, 2048, 4095])


def _pydicoms_rendering(ds: pydicom.Dataset) -> np.ndarray:
    """The file's window applied by pydicom's own functions, its output range scaled to 0..1."""
    values = apply_modality_lut(ds.pixel_array, ds)
    shown = apply_voi_lut(values, ds).astype(np.float32)
    lo, hi = sorted(float(v) for v in apply_voi_lut(np.array([-1e15, 1e15]), ds))
    image = np.clip((shown - lo) / (hi - lo), 0, 1)
    return 1 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


@pytest.mark.parametrize(
    ("center", "width", "function", "rescale"),
    [
        ("40", "400", "", ("1", "-1024")),
        ("40", "400", "LINEAR_EXACT", ("1", "-1024")),
        ("-300.5", "1", "LINEAR", ("0.5", "-100")),
        ("1000", "3000", "", None),
        ("100", "50", "", ("-1", "0")),  # a negative slope turns the output range over
    ],
)
def test_render_of_a_linear_window_is_pydicoms_to_the_bit(
    center: str, width: str, function: str, rescale: tuple[str, str] | None
) -> None:
    for name in ("CT_small.dcm", "MR2_UNCR.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.WindowCenter, ds.WindowWidth = center, width
        if function:
            ds.VOILUTFunction = function
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                del ds[keyword]
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            ds.PhotometricInterpretation = photometric
            expected = _pydicoms_rendering(ds)
            assert np.array_equal(plots.render(ds), expected), (name, photometric)
            assert np.array_equal(plots.render(ds, step=4), expected[::4, ::4])


@pytest.mark.parametrize(
    ("signed", "low", "high"),
    [(True, -1024, 3071), (False, 0, 4095), (True, -32768, 32767), (False, 0, 65535)],
)
def test_render_of_a_large_image_is_pydicoms_to_the_bit(signed: bool, low: int, high: int) -> None:
    """A 512 x 512 image, whose window is looked up per stored value rather than computed
    per pixel (also over the whole 16-bit range), gives pydicom's floats exactly."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(7)
    values = rng.integers(low, high, size=(512, 512), endpoint=True)
    values[0, :2] = low, high
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = values.astype("<i2" if signed else "<u2").tobytes()
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds.PhotometricInterpretation = photometric
        expected = _pydicoms_rendering(ds)
        assert np.array_equal(plots.render(ds), expected), photometric
        assert np.array_equal(plots.render(ds, step=2), expected[::2, ::2])
