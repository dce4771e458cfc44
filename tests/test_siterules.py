"""A rectangle drawn in review becomes a site %filter rule; the next batch from that scanner
arrives with it suggested."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from sendit_helpers.core.errors import ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import siterules
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.deid.scrub import Box
from sendit_helpers.run import upstream
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import inspect, review_items
from sendit_helpers.stages.reviewer import Reviewer
from sendit_helpers.stages.reviewer_keys import KEYS

BOX = Box(4, 4, 120, 36)


def _batch(root: Path, seed: int, settings: dict[str, object]) -> BatchLayout:
    """A synthetic batch from the same scanner, inspected and de-identified."""
    source = root / "in" / f"b{seed}"
    synthetic.make_batch(source, batchspec.BatchSpec(seed=seed))
    layout, resolved = open_batch(source, root / "work", [], settings)
    inspect.inspect_batch(layout, resolved)
    upstream.deidentify(layout, resolved)
    return layout


def _ot(layout: BatchLayout) -> pydicom.Dataset:
    items = review_items.load_items(layout)
    path = items.loc[items["modality"] == "OT", "path"].iloc[0]
    return pydicom.dcmread(review_items.item_file(layout, path))


def test_a_box_becomes_a_rule_suggested_on_the_next_batch(tmp_path: Path) -> None:
    site = tmp_path / "params" / "site-filters.deid"
    settings: dict[str, object] = {"PROGRESS": False, "SITE_FILTERS": str(site)}
    settings["OCR_SCREEN"] = "off"
    first = _batch(tmp_path, 1, settings)
    items = review_items.load_items(first)
    ot = items[items["modality"] == "OT"].iloc[0]
    assert BOX not in ot["suggested"]

    ui = Reviewer(first, open_batch(first.source, first.work, [], settings)[1], reviewer="jdoe")
    ui.select(str(ot["item"]))
    ui.press(KEYS["make-rule"])
    assert "draw one on the image first" in ui.message.value and not site.exists()
    ui.add(BOX)
    ui.press(KEYS["make-rule"])
    assert str(site) in ui.message.value
    text = site.read_text()
    assert "%filter graylist" in text and "made in review by jdoe, 20" in text
    assert "equals Manufacturer SENDIT SYNTH WORKSTATION" in text and "+ equals Rows 256" in text
    assert f"coordinates {BOX.x},{BOX.y},{BOX.x + BOX.width},{BOX.y + BOX.height}" in text
    assert str(first.name) not in text  # the batch's name can be a patient's

    second = _batch(tmp_path, 2, settings)
    items = review_items.load_items(second)
    ot2 = items[items["modality"] == "OT"].iloc[0]
    assert ot2["label"].startswith("Site rule: SENDIT SYNTH WORKSTATION")
    assert BOX in ot2["suggested"]
    ui2 = Reviewer(second, open_batch(second.source, second.work, [], settings)[1])
    ui2.select(str(ot2["item"]))
    assert BOX in ui2.pending[ot2["item"]]
    assert {b["label"] for b in ui2.draw.bboxes} == {"suggested"}


def test_rule_text_and_replacement(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.Manufacturer, ds.Rows, ds.Columns = "ACME", 64, 64
    ds.ManufacturerModelName = ""
    settings = {"SITE_FILTERS": str(tmp_path / "site.deid")}
    when = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    rule = siterules.add_rule(settings, ds, [Box(0, 0, 10, 5)], "ann", when)
    assert rule.label == "Site rule: ACME 64x64"
    assert "# (made in review by ann, 2026-12-03T10:30:00+00:00)" in rule.text
    assert "  + empty ManufacturerModelName" in rule.text
    siterules.add_rule(settings, ds, [Box(1, 1, 10, 5)], "bob", when)  # replaces ann's
    text = rule.path.read_text()
    assert text.count("LABEL Site rule: ACME 64x64") == 1 and "coordinates 1,1,11,6" in text
    found = Recipe.load([rule.path], include_default=False, include_deid_filters=False).screen(ds)
    assert found.flagged and found.coordinates == ((1, 1, 11, 6),)
    with pytest.raises(ReviewError, match=r"lies outside the 64x64 image"):
        siterules.add_rule(settings, ds, [Box(60, 0, 10, 5)], "ann")
    ds.Manufacturer = "ACME # 2"
    with pytest.raises(ReviewError, match=r"Manufacturer \(0008,0070\) holds a character"):
        siterules.add_rule(settings, ds, [Box(0, 0, 10, 5)], "ann")
    assert rule.path.read_text() == text
