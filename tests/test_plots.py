"""Renderings follow the file's own LUTs: Modality LUT Sequence, VOI LUT Sequence, windows.

The expected pictures are computed here from the LUT data and the standard's formulas
(PS3.3 C.11), not with pydicom's functions that :func:`plots.render` uses.  The files
are pydicom's (``mlut_18.dcm``, ``vlut_04.dcm`` from pydicom-data, ``MR_small.dcm``).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from sendit_helpers.deid import plots


def _read(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing; install the test extra (pydicom-data)"
    return pydicom.dcmread(path)


def _lut(item: pydicom.Dataset) -> tuple[np.ndarray, int]:
    return np.asarray(item.LUTData, dtype=np.float64), int(item.LUTDescriptor[1])


def test_voi_lut_sequence_is_applied() -> None:
    ds = _read("vlut_04.dcm")
    lut, first = _lut(ds.VOILUTSequence[0])
    stored = ds.pixel_array.astype(np.int64)
    expected = (lut[np.clip(stored - first, 0, len(lut) - 1)] - lut.min()) / np.ptp(lut)
    assert np.allclose(plots.render(ds), expected, atol=1e-6)


def test_a_curved_voi_lut_changes_the_picture_as_it_says() -> None:
    ds = _read("vlut_04.dcm")
    item = ds.VOILUTSequence[0]
    n = int(item.LUTDescriptor[0])
    curve = (np.linspace(0.0, 1.0, n) ** 3 * 65535).round().astype(np.uint16)
    item.LUTData = [int(v) for v in curve]
    stored = ds.pixel_array.astype(np.int64)
    expected = curve[np.clip(stored - int(item.LUTDescriptor[1]), 0, n - 1)] / 65535.0
    image = plots.render(ds)
    assert np.allclose(image, expected, atol=1e-6)
    mid = stored == 128
    assert mid.any() and np.allclose(image[mid], (128 / (n - 1)) ** 3, atol=1e-3)


def test_modality_lut_sequence_is_applied() -> None:
    ds = _read("mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    lut, first = _lut(item)
    item.LUTData = [int(v) for v in lut[::-1]]  # reversed: bright where stored values are low
    stored = ds.pixel_array.astype(np.int64)
    values = lut[::-1][np.clip(stored - first, 0, len(lut) - 1)]
    assert np.array_equal(plots.modality_values(ds, ds.pixel_array), values)
    assert np.allclose(plots.render(ds), plots.window(values), atol=1e-6)  # no VOI: percentiles


def test_window_with_sigmoid_voi_lut_function() -> None:
    ds = _read("MR_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    center, width = 2 * float(ds.WindowCenter) - 100, 2 * float(ds.WindowWidth)
    ds.WindowCenter, ds.WindowWidth = str(center), str(width)
    values = ds.pixel_array * 2.0 - 100
    ds.VOILUTFunction = "SIGMOID"
    expected = 1 / (1 + np.exp(-4 * (values - center) / width))
    assert np.allclose(plots.render(ds), expected, atol=1e-4)


def test_linear_window_and_the_reviewers_window() -> None:
    ds = _read("MR_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    center, width = 2 * float(ds.WindowCenter) - 100, 2 * float(ds.WindowWidth)
    ds.WindowCenter, ds.WindowWidth = str(center), str(width)
    values = ds.pixel_array * 2.0 - 100
    linear = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    assert np.allclose(plots.render(ds), linear, atol=1e-5)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.allclose(plots.render(ds), 1 - linear, atol=1e-5)
    ds.PhotometricInterpretation = "MONOCHROME2"
    mine = plots.render(ds, center=100.0, width=50.0)  # the reviewer's sliders
    assert np.allclose(mine, plots.window(values, 100.0, 50.0))


@pytest.mark.parametrize(
    ("slope", "intercept"), [("", "0"), ("0", "-1024"), (None, "7"), ("2", None)]
)
def test_unusable_rescale_values_count_as_identity_parts(
    slope: str | None, intercept: str | None
) -> None:
    ds = _read("MR_small.dcm")
    stored = ds.pixel_array.astype(np.float64)
    for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    wanted_slope = float(slope) if slope not in (None, "", "0") else 1.0
    wanted_intercept = float(intercept) if intercept else 0.0
    values = plots.modality_values(ds, ds.pixel_array)
    assert np.allclose(values, stored * wanted_slope + wanted_intercept)
    assert plots.render(ds).shape == stored.shape
