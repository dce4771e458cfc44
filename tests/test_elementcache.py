"""The element cache (de-identify's fast path) gives exactly what the recipe engine gives."""

from __future__ import annotations

import dataclasses
import io
import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from test_leaks_harsh import build

from sendit_helpers.deid import elementcache, fragments, headerscan
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages import engine

CONFIG = engine.WorkerConfig((), True, b"test-secret")
ENGINE = dataclasses.replace(CONFIG, element_cache=False)
PYDICOM_FILES = sorted(
    {Path(p).name: p for p in get_testdata_files("*.dcm") if Path(p).stat().st_size < 4_000_000}
)


def _job(source: Path, output: Path, item: str = "ITEM") -> engine.Job:
    return engine.Job(str(source), str(output), output.name, "ENT", item, 17, False)


def _same(source: Path, tmp_path: Path, item: str = "ITEM") -> bool:
    """Both paths on one file: identical bytes, rows, gate values, lookup and spans.

    Returns whether the cache handled the file.
    """
    cache = engine.element_cache((), True)
    before = cache.stats.general
    a = engine.deidentify_file(_job(source, tmp_path / "cache.dcm", item), CONFIG)
    handled = cache.stats.general == before
    b = engine.deidentify_file(_job(source, tmp_path / "engine.dcm", item), ENGINE)
    assert a.error == b.error
    for name in ("cache.dcm", "engine.dcm"):
        assert (tmp_path / name).exists() == (not a.error)
    if not a.error:
        assert (tmp_path / "cache.dcm").read_bytes() == (tmp_path / "engine.dcm").read_bytes()
    assert list(a.cleaned.items()) == list(b.cleaned.items())
    assert list(a.removed.items()) == list(b.removed.items())
    assert a.lookup == b.lookup
    assert a.pixel_span == b.pixel_span
    for name in ("cache.dcm", "engine.dcm"):
        (tmp_path / name).unlink(missing_ok=True)
    return handled


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_same_as_the_engine_on_pydicom_files(name: str, tmp_path: Path) -> None:
    source = get_testdata_file(name)
    assert source is not None
    for item in ("ITEM", "OTHER"):  # a second context: remembered elements are not reused
        _same(Path(source), tmp_path, item)


def test_same_as_the_engine_on_a_generated_batch(
    batch: tuple[Path, batchspec.Planted], tmp_path: Path
) -> None:
    handled = 0
    files = sorted(p for p in batch[0].rglob("*") if p.is_file())
    for _round in range(2):  # the second round is served from memory
        for path in files:
            handled += _same(path, tmp_path)
    assert handled >= 10


def test_same_as_the_engine_on_the_harsh_corpus(tmp_path: Path) -> None:
    """Planted identifiers everywhere, three patients: nothing crosses from one to another."""
    planted: dict[str, str] = {}

    def plant(where: str) -> str:
        token = f"ZQX{len(planted):04d}PHI"
        planted[token] = where
        return token

    sources = []
    for i in range(3):
        target = tmp_path / "in" / f"p{i}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        build(target, plant)
        sources.append(target)
    for _round in range(2):
        for source in sources:
            _same(source, tmp_path)


def test_series_is_served_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elementcache, "VOLATILE_AFTER", 3)
    folder = tmp_path / "in"
    synthetic.make_batch(
        folder,
        batchspec.BatchSpec(
            n_series=1, images_per_series=12, rows=16, columns=16, junk=False, burned_in=False
        ),
    )
    files = sorted(folder.rglob("*.dcm"))
    cache = elementcache.ElementCache(engine.load_recipe((), True))
    ctx = engine.job_context(_job(files[0], tmp_path / "x.dcm"), CONFIG)
    cache.deidentify(files[0].read_bytes(), ctx)
    first = cache.stats.computed
    for path in files[1:]:
        assert cache.deidentify(path.read_bytes(), ctx) is not None
    per_file = (cache.stats.computed - first) / (len(files) - 1)
    assert first > 50
    assert per_file < 8  # SOPInstanceUID, InstanceNumber, position, ... only
    context = next(iter(cache._contexts.values()))
    volatile = [tag for tag, n in context.misses.items() if n > elementcache.VOLATILE_AFTER]
    assert 0x00080018 in volatile
    assert len(context.memo) <= first + len(volatile) * elementcache.VOLATILE_AFTER


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",  # implicit VR
        "MR_small_bigendian.dcm",  # big endian
        "image_dfl.dcm",  # deflated
    ],
)
def test_other_encodings_go_to_the_general_path(name: str) -> None:
    source = get_testdata_file(name)
    assert source is not None
    assert headerscan.scan_header(Path(source).read_bytes()) is None


def test_elements_after_pixel_data_go_to_the_general_path() -> None:
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    data = Path(source).read_bytes()
    assert headerscan.scan_header(data) is not None
    trailing = struct.pack("<HH2sH", 0xFFFA, 0xFFFA, b"LO", 4) + b"ABCD"
    assert headerscan.scan_header(data + trailing) is None
    assert headerscan.scan_header(data[:-2]) is None  # truncated pixel data


def _saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_kept_private_element_and_add_target_go_to_the_general_path() -> None:
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    ds = pydicom.dcmread(source)
    cache = elementcache.ElementCache(engine.load_recipe((), True))
    ctx = engine.job_context(_job(Path(source), Path("y")), CONFIG)
    assert cache.deidentify(_saved(ds), ctx) is not None
    private = next(int(e.tag) for e in ds if e.tag.is_private and e.tag.element >= 0x1000)
    safe = dataclasses.replace(ctx, safe_private=frozenset({private}))
    assert cache.deidentify(_saved(ds), safe) is None
    ds.PatientIdentityRemoved = "NO"  # an ADD rule writes it: the engine decides
    assert cache.deidentify(_saved(ds), ctx) is None


def test_missing_preamble_or_meta_goes_to_the_general_path(tmp_path: Path) -> None:
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    data = Path(source).read_bytes()
    found = headerscan.scan_header(data)
    assert found is not None
    assert headerscan.scan_header(data[128:]) is None
    body = data[found.elements[0][1] :]
    assert headerscan.scan_header(b"\0" * 128 + b"DICM" + body) is None
    copy = tmp_path / "copy.dcm"
    shutil.copyfile(source, copy)
    assert _same(copy, tmp_path)


def test_group_lengths_and_odd_elements_match_the_engine(tmp_path: Path) -> None:
    """Group lengths (dropped by the writer), UN and private elements, an empty value."""
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    ds = pydicom.dcmread(source)
    ds.add_new(0x00181000, "UN", b"SERIAL42")  # DeviceSerialNumber as UN
    ds.add_new(0x00204000, "LT", "")  # an empty ImageComments
    data = _saved(ds)
    found = headerscan.scan_header(data)
    assert found is not None
    first = next(start for tag, start, _end in found.elements if tag >> 16 == 0x0008)
    length = struct.pack("<HH2sHL", 0x0008, 0x0000, b"UL", 4, 1234)  # pydicom never writes it
    target = tmp_path / "odd.dcm"
    target.write_bytes(data[:first] + length + data[first:])
    found = headerscan.scan_header(target.read_bytes())
    assert found is not None and found.elements[0][0] == 0x00080000
    for _round in range(2):
        assert _same(target, tmp_path)


def _series(tmp_path: Path, images: int = 12) -> list[Path]:
    folder = tmp_path / "in"
    synthetic.make_batch(
        folder,
        batchspec.BatchSpec(
            n_series=1, images_per_series=images, rows=16, columns=16, junk=False, burned_in=False
        ),
    )
    return sorted(folder.rglob("*.dcm"))


def test_uid_shortcut_is_checked_then_replaces_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SOPInstanceUID: the engine runs until the shortcut matched it SHORTCUT_CHECKS times."""
    files = _series(tmp_path)
    cache = elementcache.ElementCache(engine.load_recipe((), True))
    engine_calls: list[int] = []
    compute = elementcache.ElementCache._compute

    def counted(self: elementcache.ElementCache, context: object, tag: int, raw: bytes) -> object:
        engine_calls.append(tag)
        return compute(self, context, tag, raw)  # type: ignore[arg-type]

    monkeypatch.setattr(elementcache.ElementCache, "_compute", counted)
    ctx = engine.job_context(_job(files[0], tmp_path / "x.dcm"), CONFIG)
    for path in files:
        assert cache.deidentify(path.read_bytes(), ctx) is not None
    context = next(iter(cache._contexts.values()))
    shortcut = context.shortcuts[0x00080018]
    assert shortcut is not None
    assert shortcut.checked == fragments.SHORTCUT_CHECKS
    assert engine_calls.count(0x00080018) == 1 + fragments.SHORTCUT_CHECKS
    for path in files[:3]:  # and the files come out as the engine writes them
        _same(path, tmp_path)


def test_uid_shortcut_that_disagrees_is_retired(tmp_path: Path) -> None:
    files = _series(tmp_path, 4)
    cache = elementcache.ElementCache(engine.load_recipe((), True))
    ctx = engine.job_context(_job(files[0], tmp_path / "x.dcm"), CONFIG)
    first = cache.deidentify(files[0].read_bytes(), ctx)
    assert first is not None
    context = next(iter(cache._contexts.values()))
    shortcut = context.shortcuts[0x00080018]
    assert shortcut is not None
    shortcut.keys = ("SomethingElse",)  # a shortcut that no longer matches the engine
    done = cache.deidentify(files[1].read_bytes(), ctx)
    assert done is not None
    assert context.shortcuts[0x00080018] is None
    assert "SomethingElse" not in done.cleaned
    assert "SOPInstanceUID" in done.cleaned


def test_uid_shortcut_only_for_plain_remapped_uids() -> None:
    head = struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 6)
    assert fragments.plain_uid(head + b"1.2.3\x00") == "1.2.3"
    assert fragments.plain_uid(head + b"1.2.3 ") is None  # padding the engine strips
    assert fragments.plain_uid(struct.pack("<HH2sH", 8, 0x18, b"UI", 6) + b"1\\2.3\x00") is None
    kept = fragments.Fragment(head + b"1.2.3\x00", {"SOPInstanceUID": "1.2.3"}, set())
    ctx = engine.job_context(_job(Path("a"), Path("b")), CONFIG)
    assert fragments.UidShortcut.learn(ctx, 0x00080018, head + b"1.2.3\x00", kept) is None


def _fields(outcome: engine.Outcome) -> tuple[object, ...]:
    written = outcome.written
    return (
        outcome.error,
        list(outcome.cleaned.items()),
        list(outcome.removed.items()),
        outcome.lookup,
        outcome.pixel_span,
        None
        if written is None
        else (written.path, written.entry[:2], written.header, written.kind),
        None if written is None else written.tail,
    )


def test_writer_thread_gives_what_the_synchronous_write_gives(tmp_path: Path) -> None:
    """Files written on the Writer's thread: same bytes, rows, gate values and Written."""
    files = _series(tmp_path, 6)
    sync, queued = [], []
    with engine.Writer() as writer:
        for i, path in enumerate(files):
            sync.append(engine.deidentify_file(_job(path, tmp_path / "a" / f"{i}.dcm"), CONFIG))
            queued.append(
                engine.deidentify_file(_job(path, tmp_path / "b" / f"{i}.dcm"), CONFIG, writer)
            )
    for i, (a, b) in enumerate(zip(sync, queued, strict=True)):
        assert not a.error and a.written is not None
        assert _fields(a)[:5] == _fields(b)[:5]
        assert b.written is not None and b.written.path == a.written.path
        assert (b.written.entry[:2], b.written.header, b.written.tail, b.written.kind) == (
            a.written.entry[:2],
            a.written.header,
            a.written.tail,
            a.written.kind,
        )
        assert (tmp_path / "a" / f"{i}.dcm").read_bytes() == (
            tmp_path / "b" / f"{i}.dcm"
        ).read_bytes()


def test_writer_thread_reports_a_failed_write_as_the_synchronous_write_does(
    tmp_path: Path,
) -> None:
    source = _series(tmp_path, 1)[0]
    out = tmp_path / "out"
    for name in ("a", "b"):  # the temporary file's name is taken by a folder: the write fails
        (out / f".{name}.dcm.tmp").mkdir(parents=True)
    a = engine.deidentify_file(_job(source, out / "a.dcm"), CONFIG)
    with engine.Writer() as writer:
        b = engine.deidentify_file(_job(source, out / "b.dcm"), CONFIG, writer)
    assert a.error.startswith("could not de-identify: ")
    assert _fields(a) == _fields(b)
    assert b.written is None and b.pixel_span is None and not b.cleaned and not b.lookup


@pytest.mark.parametrize("config", [CONFIG, ENGINE], ids=["cache", "engine"])
def test_an_output_folder_that_is_a_file_fails_that_file_only(
    tmp_path: Path, config: engine.WorkerConfig
) -> None:
    """The output's parent is a regular file: one error outcome, nothing raised, nothing left."""
    source = Path(get_testdata_file("CT_small.dcm"))
    blocker = tmp_path / "ENT"
    blocker.write_bytes(b"not a folder")
    outcome = engine.deidentify_file(_job(source, blocker / "out.dcm"), config)
    assert outcome.error.startswith("could not de-identify: ")
    assert outcome.written is None
    assert blocker.read_bytes() == b"not a folder"


def test_read_file_gives_the_bytes_of_open_read(tmp_path: Path) -> None:
    """Whole files, empty ones included, as ``open(path, "rb").read()`` gives them."""
    for name, data in [("empty", b""), ("small", b"DICM"), ("big", bytes(range(256)) * 9000)]:
        path = tmp_path / name
        path.write_bytes(data)
        assert engine.read_file(str(path)) == data
    with pytest.raises(FileNotFoundError, match="missing"):
        engine.read_file(str(tmp_path / "missing"))
    with pytest.raises(IsADirectoryError):
        engine.read_file(str(tmp_path))


def test_write_parts_writes_header_then_tail_atomically(tmp_path: Path) -> None:
    """The folder is made when missing; no temporary file is left; a second write replaces."""
    out = tmp_path / "ENT" / "item.dcm"
    tail = bytes(range(256)) * 3000
    engine.write_parts(str(out), b"HEAD", memoryview(tail)[10:])
    assert out.read_bytes() == b"HEAD" + tail[10:]
    engine.write_parts(str(out), b"NEW", memoryview(b"tail"))
    assert out.read_bytes() == b"NEWtail"
    assert sorted(p.name for p in out.parent.iterdir()) == ["item.dcm"]
