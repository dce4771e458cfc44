"""The leak gate: nothing leaves ``release/`` unless it was scanned clean.

After de-identification (and again after review) every byte and every file
name under ``release/`` is scanned for every identifying value in the batch's
lookup.  A hit fails the stage with a report in ``phi/`` that names the file
and the field — never the value.  A pass leaves a record holding a SHA-256
digest of ``release/``'s contents; the upload stage requires that record to
match the folder as it is now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from .dicomio import READ_ERRORS
from .errors import GateError, LeakError
from .layout import BatchLayout

CHUNK = 1 << 20
#: Values shorter than this are not searched (they would match everywhere).
MIN_LENGTH = 4
#: Name parts shorter than this are not searched.
MIN_NAME_PART = 3
_TOKEN = re.compile(rb"[a-z0-9._\-]{3,}")
_SPLIT = re.compile(rb"[._\-]")
_WORD = re.compile(r"^[a-z0-9._\-]+$")
_NAME_SPLIT = re.compile(r"[\^=,\s]+")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
#: Three printable ASCII bytes: a value holding them is seen by the pixel prefilter.
_PRINTABLE3 = re.compile(rb"[\x20-\x7e]{3}")
SPANS_FILE = "pixel_spans.json"
Span = tuple[int, int, int, bool]
"""``(pixel value start, pixel value end, file size, 16-bit native)`` of a written file."""


def release_files(layout: BatchLayout) -> list[Path]:
    """Every regular file under ``release/`` (links not followed), sorted by relative path.

    Everything else there is listed by :func:`release_entries`.
    """
    return release_entries(layout)[0]


def release_entries(layout: BatchLayout) -> tuple[list[Path], list[str], list[tuple[str, str]]]:
    """``release/`` as the gate sees it: regular files, folders, and entries that may not be there.

    ``release/`` may hold only regular files, in the entity folders the stage
    creates (folders directly in ``release/``).  A symbolic link, FIFO,
    socket or device, a folder inside an entity folder, or a folder that
    cannot be listed is *odd*: the gate fails on it and upload refuses
    (no byte of it was scanned; its name alone may carry PHI).

    Returns
    -------
    tuple
        Regular files (sorted by relative name), folders' relative names
        (sorted), and ``(relative name, what it is)`` of the odd entries.
    """
    root = layout.release
    files: list[Path] = []
    folders: list[str] = []
    odd: list[tuple[str, str]] = []
    if not root.is_dir():
        return files, folders, odd

    def failed(exc: OSError) -> None:
        name = os.path.relpath(exc.filename, root) if exc.filename else "."
        odd.append((Path(name).as_posix(), f"a folder that cannot be listed ({exc.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=failed):
        base = Path(folder)
        depth = len(base.relative_to(root).parts)
        for name in [*dirs, *names]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            try:
                mode = path.lstat().st_mode
            except OSError as exc:
                odd.append((rel, f"an entry that cannot be read ({exc.strerror})"))
                continue
            if stat.S_ISDIR(mode):
                folders.append(rel)
                if depth >= 1:
                    odd.append((rel, "a folder inside an entity folder"))
            elif stat.S_ISREG(mode):
                files.append(path)
            else:
                odd.append((rel, _entry_kind(mode)))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files, sorted(folders), sorted(odd)


def _entry_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _odd_message(layout: BatchLayout, odd: list[tuple[str, str]]) -> str:
    rel, what = odd[0]
    more = f" and {len(odd) - 1} more" if len(odd) > 1 else ""
    return (
        f"{layout.release} holds {rel!s}, {what}{more}: release/ may hold only the regular "
        "files de-identification wrote, in its entity folders; remove it and rerun "
        "`sendit deidentify` (or `sendit review`)"
    )


FileEntry = tuple[str, int, int, int, int]
"""``(sha256 hex, size, mtime_ns, ctime_ns, inode)`` of one released file, as the gate read it."""


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_entry(path: Path, data: bytes | None = None) -> FileEntry:
    """The SHA-256 and stat signature of one file (``data``: its bytes, when already read).

    The file is stat'ed before it is read: a change after that point gives
    it a new ``ctime``, so :func:`release_digest` reads it again.
    """
    st = path.stat()
    if data is None:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
    else:
        sha = hashlib.sha256(data).hexdigest()
    return (sha, *_signature(st))


def release_digest(layout: BatchLayout, known: Mapping[str, FileEntry] | None = None) -> str:
    """SHA-256 over the relative names and the SHA-256 of every file in ``release/``.

    ``known`` holds the entries the gate recorded (:func:`write_record`): a
    file whose size, modification and change times and inode are still the
    ones recorded is not read again (as git and rsync decide that a file is
    unchanged); every other file is read and hashed.  Writing to a file, or
    replacing it, always changes its change time (``ctime``), which no
    program can set back.
    """
    return _digest(release_index(layout, known))


def release_index(
    layout: BatchLayout, known: Mapping[str, FileEntry] | None = None
) -> dict[str, FileEntry]:
    """``relative name -> entry`` of every file in ``release/`` (see :func:`release_digest`)."""
    index: dict[str, FileEntry] = {}
    for path in release_files(layout):
        rel = path.relative_to(layout.release).as_posix()
        entry = None if known is None else known.get(rel)
        if entry is not None and tuple(entry[1:]) == _signature(path.stat()):
            index[rel] = entry
        else:
            index[rel] = file_entry(path)
    return index


def _digest(index: Mapping[str, FileEntry]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(index):
        digest.update(f"{rel}\0{index[rel][0]}\n".encode())
    return digest.hexdigest()


def write_record(
    layout: BatchLayout,
    *,
    n_files: int,
    n_values: int,
    index: Mapping[str, FileEntry] | None = None,
) -> dict[str, object]:
    """Record a passing gate for ``release/`` as it is now.

    ``index`` holds the entries of the files as the gate scanned them
    (:func:`file_entry`); without it every file is read and hashed here.
    """
    entries = dict(index) if index is not None else release_index(layout)
    record: dict[str, object] = {
        "passed": True,
        "digest": _digest(entries),
        "folders": release_entries(layout)[1],
        "files": n_files,
        "values_checked": n_values,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "index": {rel: list(entry) for rel, entry in sorted(entries.items())},
    }
    tmp = layout.gate_record.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, layout.gate_record)
    return record


def _recorded_index(record: Mapping[str, object]) -> dict[str, FileEntry]:
    raw = record.get("index")
    index: dict[str, FileEntry] = {}
    if isinstance(raw, dict):
        for rel, entry in raw.items():
            if (
                isinstance(entry, list)
                and len(entry) == 5
                and isinstance(entry[0], str)
                and all(isinstance(v, int) for v in entry[1:])
            ):
                index[str(rel)] = (entry[0], entry[1], entry[2], entry[3], entry[4])
    return index


def require_pass(layout: BatchLayout) -> str:
    """Raise :class:`GateError` unless the last gate passed on ``release/`` as it is now.

    Files unchanged since the gate scanned them (same size, times and inode)
    are not read again; see :func:`release_digest`.

    Returns
    -------
    str
        The digest of ``release/``.
    """
    return _digest(passed_index(layout))


def passed_index(layout: BatchLayout) -> dict[str, FileEntry]:
    """:func:`require_pass`, giving the index of ``release/`` (relative name -> entry).

    Raises
    ------
    GateError
        As :func:`require_pass`.
    """
    path = layout.gate_record
    if not path.exists():
        raise GateError(
            f"{layout.release} has no leak-gate record ({path} is missing); "
            "run `sendit deidentify` (or `sendit review`) on this batch first"
        )
    record = json.loads(path.read_text())
    _files, folders, odd = release_entries(layout)
    if odd:
        raise GateError(_odd_message(layout, odd))
    recorded_folders = record.get("folders")
    if isinstance(recorded_folders, list) and recorded_folders != folders:
        raise GateError(
            f"{layout.release} has folders the leak gate did not scan (record {path}); run "
            "`sendit deidentify` or `sendit review` again so the gate scans its current contents"
        )
    index = release_index(layout, _recorded_index(record))
    if not record.get("passed") or record.get("digest") != _digest(index):
        raise GateError(
            f"{layout.release} changed since the leak gate last passed "
            f"(record {path}); run `sendit deidentify` or `sendit review` again so the gate "
            "scans its current contents"
        )
    return index


# ------------------------------------------------------------------ scanning
def _encodings(value: str) -> set[bytes]:
    """The byte forms a value can take in a file, lowered the way :meth:`Scanner.find` lowers data.

    ``bytes.lower`` only folds ASCII, so a non-ASCII value is searched in its
    lower-case, upper-case and written forms, in UTF-8 and (where it fits)
    Latin-1 — the character sets DICOM files use most.
    """
    forms = {value, value.lower(), value.upper(), value.title(), value.capitalize()}
    out = set()
    for form in forms:
        for codec in ("utf-8", "latin-1"):
            try:
                out.add(form.encode(codec).lower())
            except UnicodeEncodeError:
                continue
    return out


@dataclass
class Scanner:
    """Finds identifying values in bytes, case-insensitively.

    Single-word values (IDs, UIDs, dates, name parts) are matched as whole
    tokens (runs of letters, digits, ``.``, ``_`` and ``-``, and their parts
    split at ``.``/``_``/``-``); values with spaces or other characters are
    matched as phrases anywhere.  Values shorter than :data:`MIN_LENGTH`
    (name parts: :data:`MIN_NAME_PART`) are not searched and counted in
    :attr:`too_short`.
    """

    tokens: dict[bytes, str] = field(default_factory=dict)
    phrases: dict[bytes, str] = field(default_factory=dict)
    too_short: int = 0
    _phrase_re: re.Pattern[bytes] | None = None
    prefilter_ok: bool = True
    """False when a value has no run of three printable ASCII bytes (e.g. a
    name in non-Latin script): the pixel prefilter could not see it, so pixel
    data is then always scanned in full."""

    @classmethod
    def build(cls, values: Mapping[str, str]) -> Scanner:
        """Compile a scanner from ``value -> category``."""
        scanner = cls()
        for value, category in values.items():
            scanner._add(value.strip().lower(), category)
            if category == "name":
                for part in _NAME_SPLIT.split(value.lower()):
                    scanner._add(part, "name part", MIN_NAME_PART)
        scanner.prefilter_ok = all(
            _PRINTABLE3.search(v) for v in (*scanner.tokens, *scanner.phrases)
        )
        if scanner.phrases:
            alternatives = sorted(scanner.phrases, key=len, reverse=True)
            scanner._phrase_re = re.compile(b"|".join(re.escape(p) for p in alternatives))
        return scanner

    def _add(self, value: str, category: str, minimum: int = MIN_LENGTH) -> None:
        if len(value) < minimum:
            self.too_short += bool(value)
            return
        if _WORD.match(value):
            self.tokens.setdefault(value.encode("utf-8"), category)
            return
        for variant in _encodings(value):
            self.phrases.setdefault(variant, category)

    def __len__(self) -> int:
        return len(self.tokens) + len(self.phrases)

    def find(self, data: bytes) -> list[tuple[int, str]]:
        """``(offset, category)`` of every value found in ``data``."""
        low = data.lower()
        hits = []
        for match in _TOKEN.finditer(low):
            word = match.group()
            category = self.tokens.get(word)
            if category is not None:
                hits.append((match.start(), category))
                continue
            for part in _SPLIT.split(word):
                category = self.tokens.get(part)
                if category is not None:
                    hits.append((match.start(), category))
                    break
        if self._phrase_re is not None:
            hits.extend((m.start(), self.phrases[m.group()]) for m in self._phrase_re.finditer(low))
        return hits


def _pixel_span(data: bytes) -> tuple[int, int, pydicom.Dataset] | None:
    """Byte span of the pixel data element and the header, or None when unparsable."""
    from io import BytesIO

    buffer = BytesIO(data)
    try:
        ds = pydicom.dcmread(buffer, stop_before_pixels=True, force=True)
    except READ_ERRORS:
        return None
    return buffer.tell(), len(data), ds


def _native_words_printable(pixels: bytes) -> bool:
    """True when 16-bit native pixel data holds any 2-byte word of printable ASCII.

    Any three consecutive printable bytes contain such a word, so when there
    is none, no searched value can be there (:attr:`Scanner.prefilter_ok`
    says every value holds three printable ASCII bytes).
    """
    words = np.frombuffer(pixels[: len(pixels) // 2 * 2], dtype="<u2")
    low_ok = ((words & 0xFF) - 0x20).astype(np.uint8) < 0x5F
    high_ok = ((words >> 8) - 0x20).astype(np.uint8) < 0x5F
    return bool(np.any(low_ok & high_ok))


def _checked_span(data: bytes, span: Span | None) -> tuple[int, int, bool] | None:
    """A recorded span, when it still fits the file: same size, pixel data tag just before it."""
    if span is None:
        return None
    start, end, size, native16 = span
    if len(data) != size or not 12 <= start <= end <= size:
        return None
    if data[start - 12 : start - 8] in _PIXEL_TAG_BYTES or (
        data[start - 8 : start - 4] in _PIXEL_TAG_BYTES
    ):
        return start, end, native16
    return None


def _parsed_span(data: bytes) -> tuple[int, int, bool] | None:
    """Pixel value start, end of the scanned region and 16-bit-native flag, from pydicom."""
    span = _pixel_span(data) if data[128:132] == b"DICM" else None
    if span is None:
        return None
    tag_at, end, header = span
    start = tag_at + (
        12 if data[tag_at + 4 : tag_at + 6].isalpha() else 8
    )  # past the element header
    native16 = (
        header.get("BitsAllocated") == 16
        and not getattr(header, "file_meta", pydicom.Dataset())
        .get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
        .is_compressed
    )
    return min(start, end), end, bool(native16)


def scan_file(
    path: Path, relative: str, scanner: Scanner, span: Span | None = None
) -> list[tuple[str, str, str]]:
    """Scan one file's name and every byte; return ``(file, field, category)`` hits.

    See :func:`scan_file_entry`, which also gives the file's :data:`FileEntry`.
    """
    return scan_file_entry(path, relative, scanner, span)[0]


def scan_file_entry(
    path: Path, relative: str, scanner: Scanner, span: Span | None = None
) -> tuple[list[tuple[str, str, str]], FileEntry]:
    """:func:`scan_file`, also giving the file's entry (SHA-256 of the bytes scanned).

    ``span`` is the pixel data span recorded when the file was written
    (:func:`save_spans`); it spares parsing the header again and is only used
    when the file still has the recorded size and the pixel data tag right
    before the span.  Every byte is scanned either way: the header in full,
    the pixel data (and anything after it) in full unless 16-bit native pixel
    data holds no printable word at all.
    """
    hits = [(relative, "file name", c) for _o, c in scanner.find(relative.encode("utf-8"))]
    st = path.stat()  # before the read: see file_entry
    data = path.read_bytes()
    entry: FileEntry = (hashlib.sha256(data).hexdigest(), *_signature(st))
    found_span = _checked_span(data, span) or _parsed_span(data)
    if found_span is None:
        where = "table contents" if path.suffix == ".parquet" else "file contents"
        return hits + [(relative, where, c) for _o, c in scanner.find(data)], entry
    start, _end, native16 = found_span
    found = scanner.find(data[:start])
    pixels = data[start:]
    if not (native16 and scanner.prefilter_ok) or _native_words_printable(pixels):
        found += [(start + o, c) for o, c in scanner.find(pixels)]
    return hits + [(relative, _field_at(data, offset, start), c) for offset, c in found], entry


def _pixel_end(data: bytes, start: int) -> int | None:
    """End of the pixel data value starting at ``start`` (little endian), when it can be told."""
    if start < 4:
        return None
    length = int.from_bytes(data[start - 4 : start], "little")
    if length != 0xFFFFFFFF:
        return start + length
    delimiter = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", start)
    return None if delimiter < 0 else delimiter + 8


def _field_at(data: bytes, offset: int, pixel_start: int) -> str:
    """Name the element holding byte ``offset`` (keyword and tag), best effort.

    Never raises: bytes that do not parse (after the pixel data, say) are
    named by where they sit.
    """
    from io import BytesIO

    from .errors import tag_label

    whole = offset >= pixel_start
    fallback = "(header)"
    if whole:
        end = _pixel_end(data, pixel_start)
        inside = end is None or offset < end
        fallback = "PixelData (7FE0,0010)" if inside else "bytes after PixelData (7FE0,0010)"
        if inside:
            return fallback
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=not whole, force=True)
        elements = list(ds.iterall())
    except READ_ERRORS:
        return fallback
    best, best_start = fallback, -1
    for elem in elements:
        start = getattr(elem, "file_tell", None)
        if start is not None and best_start < start <= offset:
            best, best_start = tag_label(elem.keyword, int(elem.tag)), start
    return best


def _scan_chunk(
    items: list[tuple[str, str, Span | None]], scanner: Scanner
) -> tuple[list[tuple[str, str, str]], dict[str, FileEntry]]:
    hits: list[tuple[str, str, str]] = []
    index: dict[str, FileEntry] = {}
    for path, rel, span in items:
        found, index[rel] = scan_file_entry(Path(path), rel, scanner, span)
        hits.extend(found)
    return hits, index


@dataclass
class GateReport:
    """Outcome of one gate run (no values, only where they were found)."""

    passed: bool
    files: int
    values_checked: int
    too_short: int
    hits: pd.DataFrame
    report: Path | None = None


def save_values(layout: BatchLayout, values: Mapping[str, str]) -> Path:
    """Keep the batch's identifying values (PHI) in ``phi/deidentify/`` for later gate runs."""
    path = layout.deid_dir / "gate_values.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(values), ensure_ascii=False))
    return path


def save_spans(layout: BatchLayout, spans: Mapping[str, Span]) -> Path:
    """Record the pixel data span of each written file (``<entity>/<name>`` -> span).

    Kept in ``phi/deidentify/`` (never in ``release/``); the gate uses a span
    only while the file still matches it (:func:`scan_file`).
    """
    path = layout.deid_dir / SPANS_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: list(v) for k, v in sorted(spans.items())}))
    os.replace(tmp, path)
    return path


def load_spans(layout: BatchLayout) -> dict[str, Span]:
    """The spans saved by :func:`save_spans` (empty when there are none or they are unreadable)."""
    path = layout.deid_dir / SPANS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    spans: dict[str, Span] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, list) and len(value) == 4:
                start, end, size, native16 = value
                if all(isinstance(v, int) for v in (start, end, size)):
                    spans[str(key)] = (start, end, size, bool(native16))
    return spans


def load_values(layout: BatchLayout) -> dict[str, str]:
    """The values saved by :func:`save_values`."""
    path = layout.deid_dir / "gate_values.json"
    if not path.exists():
        raise GateError(f"{path} is missing; run `sendit deidentify` on this batch first")
    data: dict[str, str] = json.loads(path.read_text())
    return data


def _chunks(
    items: list[tuple[str, str, Span | None]], n: int
) -> Iterable[list[tuple[str, str, Span | None]]]:
    size = max(1, len(items) // (n * 4) or 1)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_gate(layout: BatchLayout, values: Mapping[str, str], *, workers: int = 1) -> GateReport:
    """Scan ``release/`` for ``values``; record a pass, or write a report and raise.

    Raises
    ------
    LeakError
        When any value is found; the message gives counts and the report path.
    """
    scanner = Scanner.build(values)
    files, folders, odd = release_entries(layout)
    spans = load_spans(layout)
    items: list[tuple[str, str, Span | None]] = []
    for p in files:
        rel = p.relative_to(layout.release).as_posix()
        items.append((str(p), rel, spans.get(rel)))
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(items) >= 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(
                pool.map(_scan_chunk, list(_chunks(items, workers)), [scanner] * len(items))
            )
    else:
        parts = [_scan_chunk(items, scanner)]
    hits = [h for part_hits, _index in parts for h in part_hits]
    for rel in folders:  # an empty folder's name is in no file's name
        hits += [(rel, "folder name", c) for _o, c in scanner.find(rel.encode("utf-8"))]
    hits += [(rel, "entry type", f"not allowed in release/: {what}") for rel, what in odd]
    index = {rel: entry for _hits, part_index in parts for rel, entry in part_index.items()}
    table = pd.DataFrame(hits, columns=["file", "field", "category"]).drop_duplicates()
    report = GateReport(not hits, len(files), len(scanner), scanner.too_short, table)
    layout.gate_record.unlink(missing_ok=True)
    if hits:
        report.report = layout.deid_dir / "leak_report.csv"
        table.to_csv(report.report, index=False)
        raise LeakError(
            f"leak gate failed: {len(table)} identifying value(s) found in "
            f"{table['file'].nunique()} file(s) of {layout.release}; nothing may be uploaded. "
            f"See {report.report} (file, field, category) and fix the recipe, then rerun"
        )
    write_record(layout, n_files=len(files), n_values=len(scanner), index=index)
    return report
