"""The leak gate's scanner: identifying values found in bytes, files and tables.

:class:`Scanner` finds values case-insensitively (tokens as whole runs,
phrases anywhere); :func:`scan_file_entry` scans one file's name and every
byte (the header in full, the pixel data unless 16-bit native pixel data
holds no printable word), Parquet tables by what they hold, and names the
field a value was found in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.deid.gatepolicy import Policy
from sendit_helpers.deid.gaterecord import FileEntry, signature

#: Values shorter than this are not searched (they would match everywhere).
MIN_LENGTH = 4
#: Name parts shorter than this are not searched.
MIN_NAME_PART = 3
_TOKEN = re.compile(rb"[a-z0-9._\-]{3,}")
_SPLIT = re.compile(rb"[._\-]")
_ALNUM = b"abcdefghijklmnopqrstuvwxyz0123456789"
#: Byte maps turning every byte outside tokens (or outside their parts) into a space, so
#: that ``split()`` gives the runs :data:`_TOKEN` (or a part) can match (runs shorter than
#: a searched value included, which match nothing).
_TOKEN_RUNS = bytes(b if b in _ALNUM + b"._-" else 0x20 for b in range(256))
_PART_RUNS = bytes(b if b in _ALNUM else 0x20 for b in range(256))
_WORD = re.compile(r"^[a-z0-9._\-]+$")
_NAME_SPLIT = re.compile(r"[\^=,\s]+")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
#: Three printable ASCII bytes: a value holding them is seen by the pixel prefilter.
_PRINTABLE3 = re.compile(rb"[\x20-\x7e]{3}")
Span = tuple[int, int, int, bool]
"""``(pixel value start, pixel value end, file size, 16-bit native)`` of a written file."""


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
    kept_by_policy: int = 0
    """Values (and name parts) left out because the recipe's :class:`Policy` keeps them."""
    _phrase_re: re.Pattern[bytes] | None = None
    prefilter_ok: bool = True
    """False when a value has no run of three printable ASCII bytes (e.g. a
    name in non-Latin script): the pixel prefilter could not see it, so pixel
    data is then always scanned in full."""
    summary_ok: bool = True
    """False when a phrase holds a byte outside :data:`TEXT_BYTES` (a control
    character, say): the text runs kept of a written file (:class:`Written`)
    could miss it, so such files are read and scanned in full."""

    @classmethod
    def build(cls, values: Mapping[str, str], policy: Policy | None = None) -> Scanner:
        """Compile a scanner from ``value -> category``, leaving out what ``policy`` keeps."""
        scanner = cls()
        for value, category in values.items():
            if policy is not None and policy.keeps(value, category):
                scanner.kept_by_policy += 1
            else:
                scanner._add(value.strip().lower(), category)
            if category == "name":
                for part in _NAME_SPLIT.split(value.lower()):
                    if policy is not None and policy.keeps(part, "name part"):
                        scanner.kept_by_policy += 1
                        continue
                    scanner._add(part, "name part", MIN_NAME_PART)
        scanner.prefilter_ok = all(
            _PRINTABLE3.search(v) for v in (*scanner.tokens, *scanner.phrases)
        )
        scanner.summary_ok = all(not p.translate(None, TEXT_BYTES) for p in scanner.phrases)
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

    def found_any(self, data: bytes) -> bool:
        """Whether :meth:`find` finds anything in ``data`` (quicker: no offsets, sets only).

        A token matches a whole run of ``[a-z0-9._-]`` or one of its parts
        split at ``.``/``_``/``-``, which is a whole run of ``[a-z0-9]``; a
        phrase matches anywhere.
        """
        low = data.lower()
        tokens = self.tokens.keys()
        return (
            not tokens.isdisjoint(low.translate(_TOKEN_RUNS).split())
            or not tokens.isdisjoint(low.translate(_PART_RUNS).split())
            or any(phrase in low for phrase in self.phrases)
        )

    def find(self, data: bytes) -> list[tuple[int, str]]:
        """``(offset, category)`` of every value found in ``data``."""
        if not self.found_any(data):
            return []
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


def pixel_value_span(data: bytes) -> tuple[int, int, pydicom.Dataset] | None:
    """Byte span of the pixel data element and the header, or None when unparsable."""
    from io import BytesIO

    buffer = BytesIO(data)
    try:
        ds = pydicom.dcmread(buffer, stop_before_pixels=True, force=True)
    except READ_ERRORS:
        return None
    return buffer.tell(), len(data), ds


def native_words_printable(pixels: bytes | memoryview) -> bool:
    """True when 16-bit native pixel data holds any 2-byte word of printable ASCII.

    Any three consecutive printable bytes contain such a word, so when there
    is none, no searched value can be there (:attr:`Scanner.prefilter_ok`
    says every value holds three printable ASCII bytes).
    """
    words = np.frombuffer(pixels, dtype="<u2", count=len(pixels) // 2)
    # A printable word lies in 0x2020..0x7E7E: most images (CT values below 8224) have
    # none there, which one pass tells; the exact test runs only when some do.
    if not words.size or int(words.max()) < 0x2020 or int(words.min()) > 0x7E7E:
        return False  # one reduction, no temporary array
    if not bool(np.any((words - np.uint16(0x2020)) <= np.uint16(0x5E5E))):
        return False
    low_ok = ((words & 0xFF) - 0x20).astype(np.uint8) < 0x5F
    high_ok = ((words >> 8) - 0x20).astype(np.uint8) < 0x5F
    return bool(np.any(low_ok & high_ok))


def checked_span(data: bytes, span: Span | None) -> tuple[int, int, bool] | None:
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


def parsed_span(data: bytes) -> tuple[int, int, bool] | None:
    """Pixel value start, end of the scanned region and 16-bit-native flag, from pydicom."""
    span = pixel_value_span(data) if data[128:132] == b"DICM" else None
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


#: The bytes a searched value may consist of for the text runs of :class:`Written` to hold
#: every place it can be: tab to carriage return, printable ASCII, and 0x80-0xFF.
TEXT_BYTES = bytes([*range(0x09, 0x0E), *range(0x20, 0x7F), *range(0x80, 0x100)])


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
    entry: FileEntry = (hashlib.sha256(data).hexdigest(), *signature(st))
    if path.suffix == ".parquet":
        found_in_table = _scan_parquet(data, relative, scanner)
        if found_in_table is not None:
            return hits + found_in_table, entry
    found_span = checked_span(data, span) or parsed_span(data)
    if found_span is None:
        where = "table contents" if path.suffix == ".parquet" else "file contents"
        return hits + [(relative, where, c) for _o, c in scanner.find(data)], entry
    start, _end, native16 = found_span
    found = scanner.find(data[:start])
    pixels = data[start:]
    if not (native16 and scanner.prefilter_ok) or native_words_printable(pixels):
        found += [(start + o, c) for o, c in scanner.find(pixels)]
    return hits + [(relative, _field_at(data, offset, start), c) for offset, c in found], entry


#: Parquet schema metadata that only describes the columns (their names are scanned as such).
_FORMAT_METADATA = (b"pandas", b"ARROW:schema")


def _scan_parquet(
    data: bytes, relative: str, scanner: Scanner
) -> list[tuple[str, str, str]] | None:
    """Scan a Parquet table by what it holds: column names, every value, user metadata.

    The values are decoded (a compressed page does not hide them) and the
    format's own words (``field_name`` in the pandas metadata, say) are not
    mistaken for a name.  None when the bytes are no readable Parquet file
    (the caller scans the raw bytes then).
    """
    try:
        source = pq.ParquetFile(pa.BufferReader(data))
        schema = source.schema_arrow
        table = source.read()  # once, not a read per column (a table has ~100)
    except (pa.ArrowException, OSError, ValueError):
        return None
    blobs: list[bytes] = []
    for column in table.columns:
        try:
            text = column if column.type == pa.string() else column.cast(pa.string())
        except (pa.ArrowException, OSError, ValueError):
            return None
        values = [v for v in pc.unique(text).to_pylist() if v]
        blobs.append("\0".join(values).encode("utf-8"))
    # NUL never occurs in a searched value: no match spans two values, names or columns, so
    # one look at all names (all values) tells whether any needs its own scan (most: none).
    names_hit = scanner.found_any("\0".join(schema.names).encode("utf-8"))
    values_hit = scanner.found_any(b"\0".join(blobs))
    hits: list[tuple[str, str, str]] = []
    for name, blob in zip(schema.names, blobs, strict=True):
        if names_hit:
            hits += [(relative, "column name", c) for _o, c in scanner.find(name.encode("utf-8"))]
        if values_hit and blob:
            found = dict.fromkeys(c for _o, c in scanner.find(blob))
            hits += [(relative, f"column {name}", c) for c in found]
    for key, value in (schema.metadata or {}).items():
        if key not in _FORMAT_METADATA:
            hits += [(relative, "table metadata", c) for _o, c in scanner.find(key + b"\0" + value)]
    return hits


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

    from sendit_helpers.core.errors import tag_label

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
