"""OCR screen (issue 7): text found in pixels, sampling, suggested boxes, auto-scrub."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest

from sendit_helpers.core.errors import SenditError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import ocr, tesseract
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic, textimages
from sendit_helpers.stages import inspect, inspectread, review, review_items
from sendit_helpers.stages.review import Box
from sendit_helpers.stages.review_decisions import Decision, DecisionLog

pytest.importorskip("pytesseract")
SETTINGS = {"PROGRESS": False}
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def files_of(paths: list[Path], source: Path) -> pd.DataFrame:
    """Inspect's files table of some files (header only)."""
    return inspect.files_table(inspectread.read_all(paths, use_deid=False, progress=False), source)


def covered(line: textimages.TextTruth, boxes: list[list[int]]) -> float:
    """Share of a burned line's box that the boxes cover."""
    x0, y0, x1, y1 = line.box
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for b in boxes:
        mask[max(0, b[1] - y0) : max(0, b[3] - y0), max(0, b[0] - x0) : max(0, b[2] - x0)] = True
    return float(mask.mean())


# ------------------------------------------------------------------ generator
def test_text_images_are_deterministic_and_recorded(tmp_path: Path) -> None:
    a = textimages.make_text_images(tmp_path / "a", 5, with_text=True, seed=3, size=256)
    b = textimages.make_text_images(tmp_path / "b", 5, with_text=True, seed=3, size=256)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    truth = textimages.load_text_truth(tmp_path / "a")
    assert len(truth) == 10 and {t.file for t in truth} == {p.name for p in a}
    for line in truth:
        ds = pydicom.dcmread(tmp_path / "a" / line.file)
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= ds.Columns and 0 <= y0 < y1 <= ds.Rows
        assert line.text.encode() not in (tmp_path / "a" / line.file).read_bytes()
    plain = textimages.make_text_images(tmp_path / "p", 3, with_text=False, size=64)
    assert all(pydicom.dcmread(p).Modality == "CT" for p in plain)
    assert textimages.load_text_truth(tmp_path / "p") == []


# ------------------------------------------------------------------ detection
@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Six images with text (sizes 8-24 px, three fonts and contrasts) and four plain CT slices."""
    root = tmp_path_factory.mktemp("ocr")
    text = textimages.make_text_images(root / "text", 6, with_text=True, seed=11)
    plain = textimages.make_text_images(root / "plain", 4, with_text=False, seed=11)
    table = pd.concat(
        [
            ocr.screen_files(files_of(text, root / "text"), progress=False),
            ocr.screen_files(files_of(plain, root / "plain"), progress=False, workers=2),
        ],
        ignore_index=True,
    )
    return root, table


def test_text_is_found_and_boxed(screened: tuple[Path, pd.DataFrame]) -> None:
    root, table = screened
    truth = textimages.load_text_truth(root / "text")
    assert len({(t.height, t.contrast) for t in truth}) >= 4, "several sizes and contrasts"
    rows = table.set_index(table["source_path"].map(lambda p: Path(p).name))
    text = rows[rows.index.str.startswith("text_")]
    assert list(table.columns) == ocr.COLUMNS
    assert text["ocr_flagged"].sum() >= 5, "at most one of six images missed"
    assert text["ocr_sampled"].all() and (text["ocr_seconds"] > 0).all()
    shares = [covered(t, json.loads(text.loc[t.file, "ocr_boxes"])) for t in truth]
    flagged = [s for s, t in zip(shares, truth, strict=True) if text.loc[t.file, "ocr_flagged"]]
    assert np.mean(flagged) >= 0.8, "the suggested boxes cover the burned lines"
    assert all(text.loc[text["ocr_flagged"], "ocr_text"].str.len() > 0), "text kept (PHI)"


def test_plain_ct_is_not_flagged(screened: tuple[Path, pd.DataFrame]) -> None:
    _, table = screened
    plain = table[table["source_path"].str.contains("plain_")]
    assert len(plain) == 4 and not plain["ocr_flagged"].any()
    assert (plain["ocr_boxes"] == "[]").all() and (plain["ocr_text"] == "").all()


def test_library_and_program_read_alike(tmp_path: Path) -> None:
    text = textimages.make_text_images(tmp_path / "t", 2, with_text=True, seed=11, size=256)
    plain = textimages.make_text_images(tmp_path / "p", 1, with_text=False, seed=11, size=256)
    keys = ["text", "conf", "left", "top", "width", "height", "block_num", "line_num"]
    library, program = tesseract.engine(), tesseract.engine(library=False)
    assert type(library) is not type(program), "libtesseract is loaded on this machine"
    for path in [*text, *plain]:
        image, _ = ocr.prepare(pydicom.dcmread(path))
        a, b = library(image), program(image)
        words = [i for i, w in enumerate(a["text"]) if str(w).strip()]
        assert words == [i for i, w in enumerate(b["text"]) if str(w).strip()]
        for key in keys:  # pytesseract truncates confidences to whole numbers
            same = int if key == "conf" else str
            assert [same(a[key][i]) for i in words] == [same(b[key][i]) for i in words]


def test_a_pool_reads_as_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = textimages.make_text_images(tmp_path / "t", 2, with_text=True, seed=11, size=256)
    plain = textimages.make_text_images(tmp_path / "p", 2, with_text=False, seed=11, size=256)
    files = files_of([*text, *plain], tmp_path)
    keys = ["source_path", "ocr_flagged", "ocr_boxes", "ocr_text", "ocr_error"]
    here = ocr.screen_files(files, progress=False, workers=2)  # 4 images: read here
    monkeypatch.setattr(ocr, "POOL_MIN_IMAGES", 1)
    pooled = ocr.screen_files(files, progress=False, workers=2)
    assert here[keys].equals(pooled[keys])
    assert here["ocr_flagged"].tolist() == [True, True, False, False]


def test_unreadable_pixels_are_one_row_with_the_error_type(tmp_path: Path) -> None:
    text = textimages.make_text_images(tmp_path / "t", 1, with_text=True, seed=11, size=256)
    broken = tmp_path / "t" / "broken.dcm"
    broken.write_bytes(b"DICM")
    files = pd.DataFrame(
        {
            "source_path": [str(text[0]), str(broken)],
            "SeriesInstanceUID": ["1", "2"],
            "InstanceNumber": [1, 1],
            "has_pixels": [True, True],
        }
    )
    table = ocr.screen_files(files, progress=False).set_index("source_path")
    assert table.loc[str(text[0]), "ocr_flagged"] and table.loc[str(text[0]), "ocr_error"] == ""
    row = table.loc[str(broken)]
    assert not row["ocr_flagged"] and row["ocr_boxes"] == "[]"
    assert row["ocr_error"].startswith("cannot read the pixels: ")


def test_find_text_maps_boxes_to_the_original_pixels(tmp_path: Path) -> None:
    ds = pydicom.dcmread(textimages.make_text_images(tmp_path, 1, with_text=True, seed=11)[0])
    found = ocr.find_text(ds)
    assert found and all(0 < b.confidence <= 100 for b in found)
    for b in found:
        assert 0 <= b.x < b.x + b.width <= ds.Columns and 0 <= b.y < b.y + b.height <= ds.Rows
        assert b.text not in repr(b), "found text stays out of repr (and logs)"


# ------------------------------------------------------------------ sampling
def test_sampling_flags_the_rest_of_a_series(tmp_path: Path) -> None:
    text = textimages.make_text_images(
        tmp_path / "t", 7, with_text=True, seed=11, images_per_series=7, size=256
    )
    plain = textimages.make_text_images(tmp_path / "p", 7, with_text=False, images_per_series=7)
    files = pd.concat(
        [files_of(text, tmp_path / "t"), files_of(plain, tmp_path / "p")], ignore_index=True
    )
    files = pd.concat(
        [files, files.iloc[:1].assign(source_path="nopix.dcm", has_pixels=False)],
        ignore_index=True,
    )
    table = ocr.screen_files(files, sample_per_series=3, progress=False).set_index("source_path")
    assert "nopix.dcm" not in table.index and len(table) == 14
    number = files.set_index("source_path")["InstanceNumber"].astype(int)
    for group in (text, plain):
        rows = table.loc[[str(p) for p in group]]
        read = sorted(int(number[p]) for p in rows.index[rows["ocr_sampled"]])
        assert read == [1, 4, 7], "evenly spaced in instance order"
    series1 = table.loc[[str(p) for p in text]]
    sampled, unsampled = series1[series1["ocr_sampled"]], series1[~series1["ocr_sampled"]]
    assert sampled["ocr_flagged"].all() and unsampled["ocr_flagged"].all()
    assert (unsampled["ocr_text"] == "").all() and (unsampled["ocr_seconds"] == 0).all()
    union = ocr.merge_boxes([b for s in sampled["ocr_boxes"] for b in json.loads(s)])
    assert {json.dumps(json.loads(b)) for b in unsampled["ocr_boxes"]} == {json.dumps(union)}
    assert not table.loc[[str(p) for p in plain], "ocr_flagged"].any()
    assert ocr.merge_boxes([[0, 0, 10, 10], [5, 5, 20, 20], [30, 0, 40, 5]]) == [
        [0, 0, 20, 20],
        [30, 0, 40, 5],
    ]


# ------------------------------------------------------------------ missing tesseract
def test_missing_tesseract_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    files = pd.DataFrame(
        {"source_path": ["a.dcm"], "SeriesInstanceUID": ["1"], "InstanceNumber": [1]}
    ).assign(has_pixels=True)
    with pytest.raises(ocr.OcrUnavailableError, match=r"apt-get install tesseract-ocr") as info:
        ocr.screen_files(files, progress=False)
    assert "pip install 'sendit-notebooks[ocr]'" in str(info.value)
    assert isinstance(info.value, SenditError)
    with pytest.raises(ocr.OcrUnavailableError, match="no-tesseract"):
        ocr.find_text(pydicom.Dataset())


def test_missing_pytesseract_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytesseract", None)
    with pytest.raises(ocr.OcrUnavailableError, match=r"pip install 'sendit-notebooks\[ocr\]'"):
        ocr.require_tesseract()


# ------------------------------------------------------------------ review
@pytest.fixture
def held(tmp_path: Path) -> tuple[BatchLayout, dict[str, Any], pd.DataFrame]:
    """A de-identified batch with an OCR table naming text in the header-silent ultrasound."""
    source = tmp_path / "in" / "b1"
    synthetic.make_batch(
        source, batchspec.BatchSpec(n_series=1, images_per_series=2, rows=32, columns=32)
    )
    layout, settings = open_batch(source, tmp_path / "work", [], SETTINGS)
    upstream.deidentify(layout, settings)
    items = review_items.load_items(layout)
    us = items[(items["modality"] == "US") & (items["photometric"] == "MONOCHROME2")]
    ocr.save(
        layout,
        pd.DataFrame(
            {
                "source_path": [us["source_path"].iloc[0], "/elsewhere.dcm"],
                "ocr_sampled": [True, True],
                "ocr_flagged": [True, True],
                "ocr_boxes": ["[[300, 340, 510, 380]]", "[[0, 0, 5, 5]]"],
                "ocr_text": ["NAME", "OTHER"],
                "ocr_seconds": [0.2, 0.2],
                "ocr_error": ["", ""],
            }
        ),
    )
    return layout, dict(settings), us


def test_ocr_boxes_reach_the_reviewer_and_auto_scrub(
    held: tuple[BatchLayout, dict[str, Any], pd.DataFrame],
) -> None:
    layout, _, us = held
    assert ocr.table_path(layout).is_relative_to(layout.phi)
    assert ocr.load(layout)["ocr_flagged"].all()
    items = review_items.load_items(layout).set_index("item")
    row = items.loc[us["item"].iloc[0]]
    assert row["ocr_boxes"] == [Box(300, 340, 210, 40)]
    assert Box(300, 340, 210, 40) in row["suggested"]
    others = items.drop(index=us["item"].iloc[0])
    assert all(b == [] for b in others["ocr_boxes"])

    # AUTO_SCRUB_OCR: undecided items with OCR boxes are scrubbed by "auto-ocr"
    settings = held[1]
    item = us["item"].iloc[0]
    original = pydicom.dcmread(layout.quarantine / us["path"].iloc[0]).pixel_array
    assert original[340:380, 300:510].max() > 0

    off = review.apply_decisions(layout, {**settings, "AUTO_SCRUB_OCR": False})
    assert item in off.undecided and not off.scrubbed

    result = review.apply_decisions(layout, {**settings, "AUTO_SCRUB_OCR": True})
    assert result.scrubbed == [item]
    decision, boxes, who = DecisionLog(layout).decisions()[item]
    assert (decision, who) == (Decision.SCRUB, review.AUTO_OCR_REVIEWER)
    assert Box(300, 340, 210, 40) in boxes
    scrubbed = pydicom.dcmread(layout.release / us["path"].iloc[0]).pixel_array
    assert (scrubbed[340:380, 300:510] == 0).all()
    assert np.array_equal(scrubbed[:300], original[:300])
    assert len(result.undecided) == len(review_items.load_items(layout)) - 1, "no OCR box: no auto"


# ------------------------------------------------------------------ benchmark
def test_bench_ocr_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("bench_ocr")
    args = ["--n", "1", "--files", "8", "--rows", "64", "--workers", "2", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    text = capsys.readouterr().out
    for label in ("text (detection)", "plain CT (false pos.)", "1 per series", "2 workers"):
        assert label in text
