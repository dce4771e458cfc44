"""The cut-down header parse (``core.headselect``) reads what a full parse reads."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from sendit_helpers.core import headselect
from sendit_helpers.core.dicomio import HEAD_BYTES, probe
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import inspect, inspectread


def _plan() -> inspectread.ReadPlan:
    return inspectread.read_plan((str(inspect.SENDIT_FILTERS),), True, ())


def _same_as_full(path: Path, plan: inspectread.ReadPlan) -> None:
    assert plan.tags is not None
    full, cut = probe(path), probe(path, plan.tags)
    assert (cut.kind, cut.reason, cut.size, cut.pixel_offset) == (
        full.kind,
        full.reason,
        full.size,
        full.pixel_offset,
    ), path.name
    if full.kind != "dicom" or full.dataset is None:
        return
    assert cut.dataset is not None
    assert plan.reader.read(cut.dataset) == plan.reader.read(full.dataset), path.name
    assert plan.screener is not None
    assert plan.screener.screen(cut.dataset) == plan.screener.screen(full.dataset), path.name


def test_generated_study_is_cut_and_reads_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    synthetic.make_batch(folder, batchspec.BatchSpec(n_series=2, images_per_series=3))
    synthetic.make_ct_corpus(tmp_path / "ct", 4, rows=300, columns=300, seed=5)
    plan = _plan()
    assert plan.tags is not None
    cut = 0
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        head = path.read_bytes()[:HEAD_BYTES]
        cut += headselect.select(head, plan.tags) is not None
        _same_as_full(path, plan)
    assert cut >= 10  # the common files take the cut-down parse


def test_pydicom_files_read_the_same() -> None:
    """Every pydicom test file (implicit VR, big endian, deflated, no preamble, truncated ...)."""
    source = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    plan = _plan()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        _same_as_full(path, plan)


def test_odd_headers_are_not_cut() -> None:
    plan = _plan()
    assert plan.tags is not None
    for name in ("no_meta.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        path = Path(get_testdata_file(name))  # type: ignore[arg-type]
        assert headselect.select(path.read_bytes()[:HEAD_BYTES], plan.tags) is None, name
    assert headselect.select(b"\0" * 128 + b"DICM", plan.tags) is None
