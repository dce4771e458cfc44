"""The compiled, memoized screen gives exactly what ``Recipe.screen`` gives.

``Recipe.screen`` is the reference; :class:`sendit_helpers.deid.screening.Screener`
must return identical :class:`ScreenResult` (flag, group, label, reason,
coordinates) on generated batches, on every file bundled with pydicom and on
many random data sets built from the labels' own terms.  The reader's table
cells must equal what ``Dataset.get`` gives (``inspectread.reference_value``).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sendit_helpers.core.dicomio import probe
from sendit_helpers.deid.recipes import Recipe
from sendit_helpers.deid.screening import ABSENT, FieldReader, Screener
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import inspect, inspectread

#: A user filter recipe using every criterion, both operators, every kind of coordinates.
USER_FILTERS = """FORMAT dicom

%filter blacklist

LABEL Everything on one line
  contains Modality CT + notcontains Manufacturer siemens || equals PatientSex F
  coordinates 1,2,30,40

LABEL Lines and operators
  startswith ManufacturerModelName rev
  + endswith StationName ran
  || empty BodyPartExamined
  coordinates all

LABEL Regions from the header
  present SequenceOfUltrasoundRegions
  coordinates from:SequenceOfUltrasoundRegions

LABEL Unknown field and private tag
  missing NoSuchKeywordAtAll + contains 00091001 PV
  ctpcoordinates 5,5,10,10

LABEL Not equals and missing
  notequals Modality MR + missing BurnedInAnnotation + equals SeriesNumber 2
  keepcoordinates 0,0,4,4
  coordinates 0,0,8,8

%filter whitelist

LABEL Clean by description
  contains SeriesDescription ^clean + equals ImageType ORIGINAL\\PRIMARY\\AXIAL
"""


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> list[Recipe]:
    user = tmp_path_factory.mktemp("recipes") / "user-filters.deid"
    user.write_text(USER_FILTERS)
    return [
        Recipe.load([], include_default=False, include_deid_filters=True),
        Recipe.load([inspect.SENDIT_FILTERS], include_default=False, include_deid_filters=True),
        Recipe.load([inspect.SENDIT_FILTERS, user], include_default=False),
        Recipe.load([user, inspect.SENDIT_FILTERS], include_default=False),
    ]


def _pydicom_files() -> list[Path]:
    source = Path(str(get_testdata_file("CT_small.dcm"))).parent
    return sorted(p for p in source.rglob("*") if p.is_file())


def _read(path: Path) -> Dataset | None:
    found = probe(path)
    return found.dataset if found.kind == "dicom" else None


def _assert_same(recipe: Recipe, screener: Screener, paths: list[Path]) -> int:
    """Screen every DICOM file twice (cold and memoized); return how many were screened."""
    screened = 0
    for _ in range(2):
        for path in paths:
            ours, theirs = _read(path), _read(path)
            if ours is None or theirs is None:
                continue
            assert screener.screen(ours) == recipe.screen(theirs), path
            screened += 1
    return screened


def test_same_as_recipe_on_pydicom_files(recipes: list[Recipe]) -> None:
    paths = _pydicom_files()
    assert len(paths) >= 80
    for recipe in recipes:
        assert _assert_same(recipe, Screener(recipe), paths) >= 2 * 60


def test_same_as_recipe_on_generated_batches(recipes: list[Recipe], tmp_path: Path) -> None:
    spec = batchspec.BatchSpec(n_series=2, images_per_series=2, rows=32, columns=32)
    synthetic.make_batches(tmp_path, n=3, spec=spec)
    paths = inspect.discover(tmp_path)
    flagged = 0
    for recipe in recipes:
        screener = Screener(recipe)
        assert _assert_same(recipe, screener, paths) >= 2 * 18
        flagged += sum(screener.screen(ds).flagged for p in paths if (ds := _read(p)) is not None)
    assert flagged > 0


def _terms(recipe: Recipe) -> dict[str, list[str]]:
    """Field keyword -> the values the labels compare it with."""
    terms: dict[str, list[str]] = {}
    for lab in recipe._labels:
        for line in lab.lines:
            for cond in line.conds:
                if cond.tag is not None and pydicom.datadict.keyword_for_tag(cond.tag):
                    words = [w for w in cond.value.replace("|", " ").split() if w.isalnum()]
                    terms.setdefault(pydicom.datadict.keyword_for_tag(cond.tag), []).extend(words)
    return terms


_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _random_datasets(recipe: Recipe, n: int, seed: int) -> Iterator[bytes]:
    """Encoded data sets whose screened fields take the labels' own terms, varied."""
    rng = random.Random(seed)
    terms = _terms(recipe)
    for index in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = rng.choice(["ISO_IR 100", "ISO_IR 192", ""])
        ds.SOPClassUID = rng.choice(["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.2"])
        ds.SOPInstanceUID = f"1.2.3.{index}"
        for keyword, words in terms.items():
            pick = rng.random()
            vr = pydicom.datadict.dictionary_VR(keyword)
            if pick < 0.4 or vr in ("SQ", "OB", "OW") or keyword.startswith("Implementation"):
                continue
            if vr in ("US", "SS", "UL"):
                setattr(ds, keyword, rng.choice([0, 256, 512, 640]))
            elif vr in ("DS", "IS"):
                setattr(ds, keyword, rng.choice(["400", "1", " 0 ", ""]))
            elif pick < 0.5:
                setattr(ds, keyword, rng.choice(["", " "]))
            elif pick < 0.65:
                chosen = rng.sample(words or ["X"], k=min(2, len(words or ["X"])))
                setattr(ds, keyword, [w[:16] for w in chosen])
            else:
                word = rng.choice(words or ["X"])[:16]
                word = rng.choice([word, word.lower(), f" {word} ", f"{word}X"])[:16]
                setattr(ds, keyword, word)
        ds.Rows, ds.Columns = rng.choice([(64, 64), (480, 640)])
        if rng.random() < 0.3:
            region = Dataset()
            region.RegionLocationMinX0, region.RegionLocationMinY0 = 1, 2
            region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 30, 40
            ds.SequenceOfUltrasoundRegions = Sequence([region, Dataset()])
        if rng.random() < 0.3:
            ds.add_new(0x00090010, "LO", "SENDIT_SYNTH")
            ds.add_new(0x00091001, "LO", rng.choice(["PV123", "other"]))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = rng.choice(_SYNTAXES)
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{index}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


def test_same_as_recipe_on_random_datasets(recipes: list[Recipe]) -> None:
    decided: set[str | None] = set()
    for number, recipe in enumerate(recipes):
        screener = Screener(recipe, max_entries=40 if number % 2 else 20_000)  # small: evictions
        encoded = list(_random_datasets(recipe, 400, seed=number))
        for data in encoded * 2:  # the second pass is answered from the memo
            ours = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            theirs = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            expected = recipe.screen(theirs)
            assert screener.screen(ours) == expected
            decided.add(expected.label)
    assert len(decided) >= 15, "the random data sets should reach many labels"


def test_reader_cells_equal_dataset_get() -> None:
    reader = FieldReader(inspectread.FIELD_TAGS, cell=inspectread.table_cell)
    checked = 0
    for _ in range(2):  # cold, then memoized
        for path in _pydicom_files():
            ds, reference = _read(path), _read(path)
            if ds is None or reference is None:
                continue
            fields = reader.read(ds)
            expected = {k: inspectread.reference_value(reference, k) for k in inspectread.FIELDS}
            pairs = zip(inspectread.FIELDS, inspectread.FIELD_TAGS, strict=True)
            got = {k: fields[t].cell for k, t in pairs}
            assert got == expected, path
            checked += 1
    assert checked >= 120


def test_absent_fields_and_sequences() -> None:
    ds = Dataset()
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.Modality = ""
    fields = FieldReader([0x00081140, 0x00080060, 0x00100010]).read(ds)
    assert fields[0x00100010] is ABSENT
    assert fields[0x00081140].present and fields[0x00081140].texts == ()
    assert fields[0x00080060].present and fields[0x00080060].blank


def test_undecodable_value_is_an_error_without_the_value(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "SECRET^NAME"
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    data = bytearray(path.read_bytes())
    # Rows (0028,0010) US with a 1-byte value: pydicom cannot decode it.
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")
    data[at + 6 : at + 10] = b"\x01\x00\x07\x00"
    data[at + 10 : at + 11] = b""
    path.write_bytes(bytes(data))
    row = inspectread.read_one(str(path))
    assert row["kind"] == "error"
    assert "Rows (0028,0010)" in row["reason"] and "SECRET" not in row["reason"]
    assert "\\x07" not in row["reason"]


def test_reader_memo_respects_character_set() -> None:
    """The same raw bytes decode differently under another Specific Character Set."""
    reader = FieldReader(inspectread.FIELD_TAGS, cell=inspectread.table_cell)
    for charset in ("ISO_IR 192", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144"):
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        ds.add_new(0x00080070, "LO", b"M\xc3\xbcller")  # Manufacturer, raw bytes
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        ours = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
        theirs = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
        expected = inspectread.reference_value(theirs, "Manufacturer")
        assert reader.read(ours)[0x00080070].cell == expected
