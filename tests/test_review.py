"""Review stage: scrubbing pixels, the decision log, decisions files, applying."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from sendit_helpers.core import disposition
from sendit_helpers.core.errors import ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord, plots
from sendit_helpers.deid.plots import png_step
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import synthetic
from sendit_helpers.stages import release, review, review_decisions, review_items
from sendit_helpers.stages.review import Box
from sendit_helpers.stages.review_decisions import Decision, DecisionLog
from sendit_helpers.stages.reviewer import Reviewer
from sendit_helpers.stages.reviewer_keys import KEYS
from sendit_helpers.stages.reviewer_view import to_source

SETTINGS = {"PROGRESS": False}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def deidentified(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One synthetic batch, de-identified once: (batch folder, work folder template)."""
    root = tmp_path_factory.mktemp("review")
    source = root / "in" / "b1"
    synthetic.make_batch(source)
    layout, settings = open_batch(source, root / "work", [], SETTINGS)
    upstream.deidentify(layout, settings)
    return source, root / "work"


@pytest.fixture
def held_batch(
    deidentified: tuple[Path, Path], tmp_path: Path
) -> tuple[BatchLayout, dict[str, object]]:
    """A fresh copy of the de-identified work folder, for one test."""
    source, template = deidentified
    shutil.copytree(template, tmp_path / "work")
    layout, settings = open_batch(source, tmp_path / "work", [], SETTINGS)
    return layout, dict(settings)


def image(
    photometric: str = "MONOCHROME2",
    *,
    frames: int = 1,
    bits: int = 16,
    rows: int = 48,
    columns: int = 64,
) -> Dataset:
    """A small image with a gradient in every frame (and every sample)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    dtype = np.uint16 if bits == 16 else np.uint8
    top = 4000 if bits == 16 else 250
    plane = (np.arange(rows * columns).reshape(rows, columns) % top + 1).astype(dtype)
    arr = (
        plane
        if photometric.startswith("MONO")
        else np.stack([plane, plane // 2 + 1, plane // 3 + 1], axis=-1)
    )
    if frames > 1:
        arr = np.stack([arr + k for k in range(frames)])
    ds.set_pixel_data(arr, photometric, 12 if bits == 16 else 8, generate_instance_uid=False)
    return ds


def roundtrip(ds: Dataset, tmp_path: Path) -> Dataset:
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


BOX = Box(10, 5, 20, 8)


def inside(arr: np.ndarray, box: Box = BOX) -> np.ndarray:
    return (
        arr[..., box.y : box.y + box.height, box.x : box.x + box.width, :]
        if arr.ndim >= 3 and arr.shape[-1] == 3
        else arr[..., box.y : box.y + box.height, box.x : box.x + box.width]
    )


def outside_mask(shape: tuple[int, int], box: Box = BOX) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    mask[box.y : box.y + box.height, box.x : box.x + box.width] = False
    return mask


# ------------------------------------------------------------------ scrubbing
@pytest.mark.parametrize(
    "syntax", [None, RLELossless, JPEG2000Lossless], ids=["native", "rle", "j2k"]
)
@pytest.mark.parametrize("frames", [1, 3])
def test_scrub_monochrome_every_frame(syntax: str | None, frames: int, tmp_path: Path) -> None:
    ds = image(frames=frames)
    before = ds.pixel_array.copy()
    if syntax:
        ds.compress(syntax, generate_instance_uid=False)
        assert ds.file_meta.TransferSyntaxUID.is_compressed
    review.scrub_pixels(ds, [BOX])
    after = roundtrip(ds, tmp_path)
    assert after.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    pixels = after.pixel_array
    stack, orig = (pixels, before) if frames > 1 else (pixels[None], before[None])
    assert (inside(stack) == 0).all() and inside(orig).min() > 0
    mask = outside_mask(stack.shape[1:3])
    assert np.array_equal(stack[:, mask], orig[:, mask])


@pytest.mark.parametrize("syntax", [None, RLELossless], ids=["native", "rle"])
def test_scrub_rgb(syntax: str | None, tmp_path: Path) -> None:
    ds = image("RGB", bits=8, frames=2)
    before = ds.pixel_array.copy()
    if syntax:
        ds.compress(syntax, generate_instance_uid=False)
    review.scrub_pixels(ds, [BOX, Box(0, 40, 64, 8)])
    after = roundtrip(ds, tmp_path).pixel_array
    assert after.shape == before.shape
    assert (inside(after) == 0).all()
    assert (after[:, 40:48] == 0).all()
    mask = outside_mask(before.shape[1:3]) & outside_mask(before.shape[1:3], Box(0, 40, 64, 8))
    assert np.array_equal(after[:, mask], before[:, mask])


def test_scrub_native_ybr_becomes_rgb(tmp_path: Path) -> None:
    from pydicom.pixels.processing import convert_color_space

    ds = image("RGB", bits=8)
    rgb = ds.pixel_array.copy()
    ds.set_pixel_data(
        convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL", 8, generate_instance_uid=False
    )
    review.scrub_pixels(ds, [BOX])
    after = roundtrip(ds, tmp_path)
    assert after.PhotometricInterpretation == "RGB"
    assert (inside(after.pixel_array) == 0).all()
    mask = outside_mask(rgb.shape[:2])
    assert np.abs(after.pixel_array[mask].astype(int) - rgb[mask]).max() <= 2  # colour round trip


def test_scrub_needs_pixels_and_a_rectangle() -> None:
    ds = image()
    del ds.PixelData
    with pytest.raises(ReviewError, match=r"no PixelData \(7FE0,0010\) to scrub"):
        review.scrub_pixels(ds, [BOX])
    with pytest.raises(ReviewError, match=r"scrub needs at least one rectangle"):
        review.scrub_pixels(image(), [])


def test_scrub_monochrome1_blacks_out_with_the_maximum(tmp_path: Path) -> None:
    ds = image("MONOCHROME1")
    review.scrub_pixels(ds, [BOX])
    assert (inside(roundtrip(ds, tmp_path).pixel_array) == 4095).all()


def test_scrub_keeps_the_sop_instance_uid() -> None:
    ds = image()
    uid = ds.SOPInstanceUID
    ds.compress(RLELossless, generate_instance_uid=False)
    review.scrub_pixels(ds, [BOX])
    assert ds.SOPInstanceUID == uid


def test_scrub_rejects_a_rectangle_outside_the_image() -> None:
    with pytest.raises(ReviewError, match=r"outside the 64x48 image"):
        review.scrub_pixels(image(), [Box(60, 0, 10, 10)])


# ------------------------------------------------------------------ items
def test_load_items(held_batch: tuple[BatchLayout, dict[str, object]]) -> None:
    layout, _ = held_batch
    items = review_items.load_items(layout)
    held = pd.read_parquet(layout.deid_dir / "quarantined.parquet")
    assert sorted(items["item"]) == sorted(held["name"])
    assert set(items["modality"]) == {"CT", "OT", "US"}
    ultrasound = items[items["modality"] == "US"]
    assert len(ultrasound) == 2, "header-silent ultrasound is held too (sendit filters)"
    us = next(
        u for _, u in ultrasound.iterrows() if u["triggers"].get("BurnedInAnnotation") == "YES"
    )
    assert us["label"] and us["group"] in {"graylist", "blacklist"}
    assert us["series"].startswith("901")
    assert (us["columns"], us["rows"]) == (512, 384)
    assert review_decisions.pending_count(layout) == len(items)
    assert sorted(review_items.item_names(layout)) == sorted(items["item"])


def test_cleaned_rewrite_matches_pandas(tmp_path: Path) -> None:
    """The Arrow rewrite of cleaned.parquet gives what concat + astype + sort + to_parquet did."""
    base = pd.DataFrame(
        {
            "name": ["c.dcm", "a.dcm", "b.dcm"],
            "entity_id": ["E2", "E1", "E1"],
            "item_id": ["I2", "I1", "I1"],
            "path": ["E2/c.dcm", "E1/a.dcm", "E1/a.dcm"],
            "PatientSex": ["F", None, "M"],
            "OnlyBase": ["x", "y", None],
        }
    ).astype("string")
    extra = pd.DataFrame(
        {
            "name": ["d.dcm", "e.dcm"],
            "entity_id": ["E1", "E3"],
            "item_id": ["I1", "I3"],
            "path": ["E1/d.dcm", "E0/e.dcm"],
            "PatientSex": ["M", None],
            "Rows": [64, None],
        }
    )
    for with_base, with_extra in ((True, True), (True, False), (False, True)):
        left = base if with_base else base.iloc[:0]
        right = extra if with_extra else extra.iloc[:0]
        path = tmp_path / "cleaned.parquet"
        left.to_parquet(path, index=False)
        coded = release.read_coded(path)
        if not with_base:
            coded = coded.slice(0, 0)
        narrow = release.write_sorted_strings(coded, right, path)
        expected = release.sorted_strings(left, right)
        pd.testing.assert_frame_equal(pd.read_parquet(path), expected)
        assert release.entities_table(narrow, "a").equals(
            release.entities_table(expected, "a")
        )


# ------------------------------------------------------------------ decisions file
def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("item,decision,x,y,width,height\n" + "\n".join(lines) + "\n")
    return path


def test_replay_and_apply(
    held_batch: tuple[BatchLayout, dict[str, object]], tmp_path: Path
) -> None:
    layout, settings = held_batch
    items = review_items.load_items(layout)
    ct = list(items.loc[items["modality"] == "CT", "item"])
    ot = next(items[items["modality"] == "OT"].itertuples())
    us, us_silent = items.loc[items["modality"] == "US", "item"].iloc[:2]
    undecided = ct.pop()
    lines = [f"{name},release,,,," for name in ct]
    lines += [f"{ot.item},scrub,0,0,120,40", f"{ot.item},Scrub,0,200,50,20", f"{us},keep,,,,"]
    lines += [f"{us_silent},keep,,,,"]
    decisions = write_csv(tmp_path / "decisions.csv", lines)
    before_cleaned = pd.read_parquet(layout.release / "cleaned.parquet")
    original = pydicom.dcmread(layout.quarantine / ot.path).pixel_array

    assert review_decisions.replay_decisions(layout, decisions, "carol") == len(ct) + 3
    # same file: nothing new
    assert review_decisions.replay_decisions(layout, decisions, "carol") == 0
    assert review_decisions.pending_count(layout) == 1
    result = review.apply_decisions(layout, settings)

    assert sorted(result.released) == sorted(ct)
    assert result.scrubbed == [ot.item] and sorted(result.kept) == sorted([us, us_silent])
    assert result.undecided == [undecided]
    entity = items["entity"].iloc[0]
    for name in [*ct, ot.item]:
        assert (layout.release / entity / name).is_file()
        assert not (layout.quarantine / entity / name).exists()
    for name in (us, undecided):
        assert (layout.quarantine / entity / name).is_file()
        assert not (layout.release / entity / name).exists()
    scrubbed = pydicom.dcmread(layout.release / ot.path).pixel_array
    assert (scrubbed[0:40, 0:120] == 0).all() and original[0:40, 0:120].max() > 0
    assert (scrubbed[200:220, 0:50] == 0).all()
    assert np.array_equal(scrubbed[60:190], original[60:190])
    released_as_is = layout.release / entity / ct[0]
    kept_original = review_items.originals_dir(layout) / entity / ct[0]
    assert released_as_is.read_bytes() == kept_original.read_bytes()

    table = disposition.read(layout).set_index("output_name")
    assert table.loc[ct[0], "disposition"] == "released"
    assert table.loc[ct[0], "reason"] == "review: released as is by carol"
    assert table.loc[ot.item, "reason"] == "review: scrubbed 2 rectangles by carol"
    assert table.loc[us, "disposition"] == "quarantined"
    assert table.loc[us, "reason"].startswith("review: kept")
    assert table.loc[undecided, "disposition"] == "quarantined"
    assert "awaiting review" in table.loc[undecided, "reason"]

    cleaned = pd.read_parquet(layout.release / "cleaned.parquet")
    assert len(cleaned) == len(before_cleaned) + len(ct) + 1
    assert set(cleaned["name"]) == set(before_cleaned["name"]) | {*ct, ot.item}
    entities = pd.read_parquet(layout.release / "entities.parquet")
    assert int(entities["IMAGE_COUNT"].sum()) == len(cleaned)
    assert entities.equals(release.entities_table(cleaned, str(settings["UPLOAD_AGENT"])))
    digest = gaterecord.require_pass(layout)

    # idempotent: applying again changes nothing in release/ or the tables
    again = review.apply_decisions(layout, settings)
    assert gaterecord.require_pass(layout) == digest
    assert again.released == result.released and again.scrubbed == result.scrubbed
    assert pd.read_parquet(layout.release / "cleaned.parquet").equals(cleaned)
    assert review.status(layout).set_index("decision")["images"].to_dict() == {
        "release": len(ct),
        "scrub": 1,
        "keep": 2,
        "undecided": 1,
    }


def test_last_decision_wins_and_resume(held_batch: tuple[BatchLayout, dict[str, object]]) -> None:
    layout, settings = held_batch
    items = review_items.load_items(layout)
    name, path = items["item"].iloc[0], items["path"].iloc[0]
    log = DecisionLog(layout, "dave")
    log.record(name, Decision.RELEASE)
    log.record(name, Decision.SCRUB, [Box(1, 1, 5, 5), Box(10, 10, 5, 5)])
    log.record(name, "keep")
    reopened = DecisionLog(layout, "erin")
    current = reopened.current().set_index("item")
    assert current.loc[name, "decision"] == Decision.KEEP
    assert current.loc[name, "boxes"] == [] and current.loc[name, "reviewer"] == "dave"
    assert len(reopened.history()) == 4  # one row per rectangle of the scrub

    review.apply_decisions(layout, settings)
    assert (layout.quarantine / path).exists() and not (layout.release / path).exists()
    # resume with another reviewer and change the decision: released from the original
    reopened.record(name, Decision.SCRUB, [Box(0, 0, 8, 8)])
    assert DecisionLog(layout).current().set_index("item").loc[name, "boxes"] == [Box(0, 0, 8, 8)]
    review.apply_decisions(layout, settings)
    assert (layout.release / path).exists() and not (layout.quarantine / path).exists()
    assert (pydicom.dcmread(layout.release / path).pixel_array[0:8, 0:8] == 0).all()
    assert disposition.read(layout).set_index("output_name").loc[name, "reason"] == (
        "review: scrubbed 1 rectangle by erin"
    )
    # and back to keep: it returns to quarantine, release/ loses it, the gate still passes
    reopened.record(name, Decision.KEEP)
    review.apply_decisions(layout, settings)
    assert (layout.quarantine / path).exists() and not (layout.release / path).exists()
    original = pydicom.dcmread(layout.quarantine / path).pixel_array
    assert original[0:8, 0:8].any()
    gaterecord.require_pass(layout)


def test_log_survives_a_torn_line(held_batch: tuple[BatchLayout, dict[str, object]]) -> None:
    layout, _ = held_batch
    name = review_items.load_items(layout)["item"].iloc[0]
    log = DecisionLog(layout, "fay")
    log.record(name, Decision.RELEASE)
    with log.path.open("a") as fh:
        fh.write(f"{name},keep,,,")  # a crash in the middle of a line
    log = DecisionLog(layout, "fay")
    assert log.current().set_index("item").loc[name, "decision"] == Decision.RELEASE
    log.record(name, Decision.SCRUB, [Box(0, 0, 2, 2)])
    assert DecisionLog(layout).current().set_index("item").loc[name, "decision"] == Decision.SCRUB
    assert log.skipped == 1


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        (
            "NOPE_1_1.dcm,release,,,,",
            r"line 3: item 'NOPE_1_1.dcm' is not a quarantined image.*quarantined\.parquet",
        ),
        ("{ok},approve,,,,", r"line 3: decision 'approve' is not one of release, scrub, keep"),
        ("{ok},scrub,500,0,100,10", r"line 3: item .*: rectangle .* lies outside the 64x64 image"),
        ("{ok},scrub,0,0,10,", r"line 3: a rectangle needs all of x, y, width and height"),
        ("{ok},scrub,a,0,10,10", r"line 3: x, y, width and height must be whole numbers"),
        ("{ok},release,0,0,10,10", r"line 3: a rectangle is only meaningful for scrub"),
        ("{ok},keep,,,,", r"line 3: item .* is keep here but release on line 2"),
        ("{other},scrub,,,,", r"line 3: scrub of .* has no rectangle and the rule suggests none"),
    ],
)
def test_bad_decisions_file(
    held_batch: tuple[BatchLayout, dict[str, object]], tmp_path: Path, row: str, pattern: str
) -> None:
    layout, _ = held_batch
    items = review_items.load_items(layout)
    ct = list(items.loc[items["modality"] == "CT", "item"])
    path = write_csv(
        tmp_path / "bad.csv",
        [f"{ct[0]},release,,,,", row.format(ok=ct[0] if "keep" in row else ct[1], other=ct[2])],
    )
    with pytest.raises(ReviewError, match=pattern) as caught:
        review_decisions.read_decisions_csv(path, items)
    assert str(path) in str(caught.value)
    assert not DecisionLog(layout).path.exists()


def test_decisions_file_header_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("name,choice\nx,release\n")
    with pytest.raises(ReviewError, match=r"line 1: the header lacks item, decision"):
        review_decisions.read_decisions_csv(path)


# ------------------------------------------------------------------ widgets and notebook
def test_reviewer_widget_saves_at_once(held_batch: tuple[BatchLayout, dict[str, object]]) -> None:
    layout, settings = held_batch
    ui = Reviewer(layout, settings, reviewer="gil")
    total = len(ui.items)
    assert ui.progress.value.startswith(f"<b>0 of {total} decided</b>")
    assert f"{total} waiting" in ui.progress.value
    status = ui.status_widget()
    assert bytes(ui.preview.value)[:4] == b"\x89PNG" and bytes(ui.montage.value)[:4] == b"\x89PNG"
    assert bytes(ui.draw.image_bytes)[:4] == b"\x89PNG"
    ui.decide_series(Decision.RELEASE)  # the first series: CT
    ct = int((ui.items["modality"] == "CT").sum())
    assert len(DecisionLog(layout).current()) == ct
    assert status.value.startswith(f"<b>{ct} of {total} decided</b>")
    ot = ui.current
    assert ot.modality == "OT"
    ui.decide(Decision.SCRUB)  # no rectangle yet: refused
    assert "Add box" in ui.message.value
    ui.box_x.value, ui.box_y.value, ui.box_w.value, ui.box_h.value = 0, 0, 100, 30
    ui.add_box.click()
    ui.scrub.click()
    current = DecisionLog(layout).current().set_index("item")
    assert current.loc[ot.item, "boxes"] == [Box(0, 0, 100, 30)]
    assert (ui.box_x.value, ui.box_w.value) == (0, 1)  # the fields start afresh on each image
    ui.press(KEYS["keep"])
    ui.press(KEYS["keep"])  # both ultrasound images
    assert ui.progress.value.startswith(f"<b>{total} of {total} decided</b>")
    result = ui.apply()
    assert result is not None and result.scrubbed == [ot.item]
    assert "Applied" in ui.apply_result.value
    gaterecord.require_pass(layout)


def test_reviewer_resumes_at_the_first_undecided_image(
    held_batch: tuple[BatchLayout, dict[str, object]],
) -> None:
    layout, settings = held_batch
    items = review_items.load_items(layout)
    DecisionLog(layout, "gil").record_many(
        [(name, Decision.RELEASE, []) for name in items["item"].iloc[:2]]
    )
    ui = Reviewer(layout, settings, reviewer="gil")
    assert ui.index == 2 and ui.current.item == items["item"].iloc[2]


def test_drawn_rectangles_are_source_pixels_and_suggestions_wait(
    held_batch: tuple[BatchLayout, dict[str, object]],
) -> None:
    layout, settings = held_batch
    ui = Reviewer(layout, settings, reviewer="gil")
    row = ui.current
    suggested = Box(0, 0, 10, 10)
    ui.pending[row.item] = [suggested]
    ui._redraw(image=False)
    assert [b["label"] for b in ui.draw.bboxes] == ["suggested"]
    # a drag on the drawing widget (it reports the rendering's pixels) plus the suggestion
    drag = {"x": 4, "y": 5, "width": 20.4, "height": 7, "label": "scrub"}
    ui.draw.bboxes = [*ui.draw.bboxes, drag]
    step = png_step(int(row.rows), int(row.columns))
    drawn = Box(4 * step, 5 * step, round(20.4 * step), 7 * step)
    assert ui.boxes[row.item] == [drawn] and ui.pending[row.item] == [suggested]
    ui.press(KEYS["accept-suggestion"])
    assert ui.boxes[row.item] == [drawn, suggested] and ui.pending[row.item] == []
    ui.clear()
    assert ui.boxes[row.item] == [] and ui.draw.bboxes == []
    assert to_source({"x": -5, "y": 2, "width": 3, "height": 3}, 1, 64, 64) is None
    assert to_source({"x": 60, "y": 60, "width": 9, "height": 9}, 1, 64, 64) == Box(60, 60, 4, 4)


def test_preview_blackens_the_boxes_as_written(
    held_batch: tuple[BatchLayout, dict[str, object]],
) -> None:
    import io

    import matplotlib.image as mpimg

    layout, settings = held_batch
    items = review_items.load_items(layout)
    ds = pydicom.dcmread(review_items.item_file(layout, items["path"].iloc[0]))
    box = Box(2, 3, 20, 10)
    png = mpimg.imread(io.BytesIO(plots.preview_png(ds, [box])), format="png")
    step = png_step(int(ds.Rows), int(ds.Columns))
    inside = png[box.y // step + 1 : (box.y + box.height) // step - 1, box.x // step + 1 : 5]
    assert inside.size and not inside[..., :3].any()


def test_review_stage_runs_non_interactively(
    held_batch: tuple[BatchLayout, dict[str, object]], tmp_path: Path
) -> None:
    from sendit_helpers.run import cli

    layout, _ = held_batch
    items = review_items.load_items(layout)
    decisions = write_csv(tmp_path / "d.csv", [f"{name},release,,,," for name in items["item"]])
    status = cli.main(
        ["review", str(layout.source), "--work", str(layout.work), "--decisions", str(decisions)]
    )
    assert status == 0
    assert (layout.notebooks_dir / "03_review_phi.ipynb").exists()
    assert review_decisions.pending_count(layout) == 0
    assert not any(p.is_file() for p in layout.quarantine.rglob("*"))
    assert set(items["item"]) <= {p.name for p in layout.release.rglob("*.dcm")}
    gaterecord.require_pass(layout)


def test_pending_review_is_said_downstream(
    held_batch: tuple[BatchLayout, dict[str, object]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import nbformat

    from sendit_helpers.run import cli

    layout, _ = held_batch
    items = review_items.load_items(layout)
    decisions = write_csv(tmp_path / "d.csv", [f"{items['item'].iloc[0]},release,,,,"])
    batch = [str(layout.source), "--work", str(layout.work)]
    with caplog.at_level(logging.WARNING, logger="sendit"):
        assert cli.main(["review", *batch, "--decisions", str(decisions)]) == 0
        assert cli.main(["upload", *batch]) == 0
    waiting = len(items) - 1
    table = disposition.read(layout)
    assert disposition.review_counts(table)[2] == waiting
    said = f"{waiting} images wait for review in quarantine and will not be uploaded"
    assert disposition.waiting_line(table).startswith(said)
    assert sum(said in r.getMessage() for r in caplog.records) == 2  # after review, after upload

    def first_line(name: str) -> str:
        nb = nbformat.read(layout.notebooks_dir / name, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        return str(outputs[0].get("text", "")).splitlines()[0]

    assert first_line("03_review_phi.ipynb").startswith(
        f"{len(items)} images still wait for a decision in batch"
    )
    assert first_line("04_upload.ipynb").startswith(said)


def test_log_refuses_a_scrub_without_rectangle(
    held_batch: tuple[BatchLayout, dict[str, object]],
) -> None:
    layout, _ = held_batch
    log = DecisionLog(layout, "hal")
    with pytest.raises(ReviewError, match=r"scrub of x\.dcm needs at least one rectangle"):
        log.record("x.dcm", Decision.SCRUB)
    with pytest.raises(ReviewError, match=r"decision 'maybe' is not one of release, scrub, keep"):
        log.record("x.dcm", "maybe")
    assert not log.path.exists()
