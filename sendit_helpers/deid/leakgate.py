"""The leak gate: nothing leaves ``release/`` unless it was scanned clean.

After de-identification (and again after review) every byte and every file
name under ``release/`` is scanned for every identifying value the recipe
removed.  The gate holds files, not batches: the files a value is found in
(and the files whose rows of ``cleaned.parquet`` hold one) are moved to
``phi/quarantine/`` by the stage's ``hold`` function, with a reason naming
the field and the category of the value, never the value; the rest is
scanned clean and released.  A report in ``phi/`` names file, field and
category.  The gate fails the stage only when it cannot run, or cannot hold
what it found (a value in a table row or file that belongs to no image).  A
pass leaves a record holding a SHA-256 digest of ``release/``'s contents; the
upload stage requires that record to match the folder as it is now.

Values the recipe's own policy keeps are not searched (:class:`Policy`): a
removed value that is, or is part of, a technical field the outputs keep
verbatim (Manufacturer, model, software versions, station and device
descriptors), or that consists only of words Clean Descriptors keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.errors import GateError, LeakError
from sendit_helpers.core.layout import CLEANED_FILE, BatchLayout
from sendit_helpers.deid.cleaned import TECHNICAL_KEYWORDS, WORDS
from sendit_helpers.deid.descriptors import allowed_words

CHUNK = 1 << 20
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


# ------------------------------------------------------------------ policy
#: Categories of names (a PN value, and each of its parts).
NAME_CATEGORIES = frozenset({"name", "name part"})
POLICY_FILE = "gate_policy.json"
#: Coded and enumerated fields kept verbatim in the outputs (at any depth): code
#: sequences come from controlled terminologies, and an SR's ValueType /
#: RelationshipType are enumerated.  Their values and words are technical, not PHI.
CODE_KEYWORDS = frozenset(
    {
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodeMeaning",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
    }
)
_DESCRIPTOR_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Policy:
    """What the recipe's own policy keeps, so the gate does not search for it.

    A removed value is not a leak where the outputs keep it by policy:

    1. it equals a value, or a word, of a technical field kept in the
       batch's outputs (:data:`~sendit_helpers.deid.cleaned.TECHNICAL_KEYWORDS`:
       Manufacturer, ManufacturerModelName, SoftwareVersions, StationName,
       DeviceSerialNumber ... as the outputs have them; a field the recipe
       removes or blanks contributes nothing); or it is part of such a value
       starting at a word boundary, when it has no digit and is not a name
       (``LightSpeed Ultr`` in ``LightSpeed Ultra``);
    2. or it equals a value of a coded or enumerated field kept in the outputs
       (:data:`CODE_KEYWORDS`: CodeValue, CodeMeaning, ValueType ... of code
       sequences and SR content items, which come from controlled terminologies):
       a StudyID ``1234`` that is also a CodeValue, a creator UID that a
       code carries as its value, an ImplementationClassUID an output's file
       meta carries; or it is a word of letters only (a name part, a word cut
       from a text) equal to a word of such a value (``Name`` of
       ``Last Name^First Name`` beside the concept ``Person Observer Name``,
       ``text`` beside the value type ``TEXT``).  A whole name is never kept
       this way;
    3. or it consists only of words Clean Descriptors keeps by name
       (``descriptor-words.txt``, and words of one or two letters), at
       least one of them listed (``CT, HEAD/BRAIN WO CONT``).  Numbers and
       codes never qualify, so IDs, dates and UIDs are always searched.

    A name part equal to such a word (a family name ``Head``, or ``Siemens``
    beside a Manufacturer ``SIEMENS``) is therefore not searched on its own;
    the whole name and its other parts still are.

    Parameters
    ----------
    technical : frozenset of str
        Case-folded values of the kept technical fields.
    words : frozenset of str
        Their words (split at anything but letters and digits).
    """

    technical: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    """Case-folded values of the kept coded fields (:data:`CODE_KEYWORDS`), and the
    ImplementationClassUIDs of the outputs' file meta."""
    code_words: frozenset[str] = frozenset()
    """Their words."""

    @classmethod
    def of_values(cls, values: Iterable[str], codes: Iterable[str] = ()) -> Policy:
        """The policy of kept technical values and coded values (as written in the outputs)."""
        technical = {v.strip().casefold() for v in values if v and v.strip()}
        words = {w for v in technical for w in WORDS.split(v) if w}
        coded = {v.strip().casefold() for v in codes if v and v.strip()}
        code_words = {w for v in coded for w in WORDS.split(v) if w}
        return cls(frozenset(technical), frozenset(words), frozenset(coded), frozenset(code_words))

    def keeps(self, value: str, category: str) -> bool:
        """Whether the policy keeps ``value`` (of ``category``), so it is not searched."""
        folded = value.strip().casefold()
        if not folded:
            return False
        if folded in self.technical or folded in self.words:
            return True
        if category != "name" and folded in self.codes:
            return True
        if category != "name" and folded.isalpha() and folded in self.code_words:
            return True
        if category not in NAME_CATEGORIES and not any(c.isdigit() for c in folded):
            for kept in self.technical:
                start = kept.find(folded)
                while start >= 0:
                    if start == 0 or not kept[start - 1].isalnum():
                        return True
                    start = kept.find(folded, start + 1)
        return only_descriptor_words(folded)


def only_descriptor_words(text: str) -> bool:
    """True when ``text`` holds only words Clean Descriptors keeps by name, one of them listed.

    Words of one or two letters count as kept; numbers, codes and words with
    digits do not (so an ID is never "only descriptor words").
    """
    words = _DESCRIPTOR_WORD.findall(text.casefold())
    listed = allowed_words()
    if not words or not all(w in listed or (w.isalpha() and len(w) <= 2) for w in words):
        return False
    return any(w in listed for w in words)


def policy_of_tables(paths: Iterable[Path]) -> Policy:
    """The :class:`Policy` of the kept technical fields in cleaned tables (any depth).

    Parameters
    ----------
    paths : iterable of Path
        ``cleaned.parquet`` and ``quarantined.parquet`` (missing ones are skipped).
    """
    values: set[str] = set()
    codes: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        names = pq.read_schema(path).names
        wanted = [n for n in names if n.rsplit(".", 1)[-1] in TECHNICAL_KEYWORDS | CODE_KEYWORDS]
        if not wanted:
            continue
        table = pq.read_table(path, columns=wanted)
        for name, column in zip(wanted, table.columns, strict=True):
            into = values if name.rsplit(".", 1)[-1] in TECHNICAL_KEYWORDS else codes
            for text in pc.unique(column.cast(pa.string())).to_pylist():
                if text:
                    into.update(v for part in text.split(" | ") for v in part.split("\\"))
    return Policy.of_values(values, codes)


def save_policy(layout: BatchLayout, policy: Policy) -> Path:
    """Keep the batch's :class:`Policy` in ``phi/deidentify/`` for later gate runs (review)."""
    path = layout.deid_dir / POLICY_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = {"technical": sorted(policy.technical), "codes": sorted(policy.codes)}
    path.write_text(json.dumps(kept, ensure_ascii=False))
    return path


def load_policy(layout: BatchLayout) -> Policy:
    """The policy saved by :func:`save_policy` (none kept when there is none)."""
    path = layout.deid_dir / POLICY_FILE
    if not path.exists():
        return Policy()
    raw = json.loads(path.read_text())
    return Policy.of_values(
        (str(v) for v in raw.get("technical", [])), (str(v) for v in raw.get("codes", []))
    )


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
_TEXT_LUT = np.zeros(256, dtype=bool)
_TEXT_LUT[list(TEXT_BYTES)] = True
#: Text runs of a file's pixel data above this many bytes: the gate reads the file instead.
RUNS_LIMIT = 1 << 16
#: Shortest run that can hold a searched value (name parts are 3 characters or more).
_MIN_RUN = min(MIN_LENGTH, MIN_NAME_PART)


class Tail(StrEnum):
    """What :class:`Written` keeps of the bytes from the pixel data value on."""

    CLEAN16 = "clean16"
    """16-bit native pixel data without a printable word: nothing to search there
    (when every value holds three printable ASCII bytes, :attr:`Scanner.prefilter_ok`)."""
    RUNS = "runs"
    """The runs of :data:`TEXT_BYTES` (3 bytes or longer), NUL-separated."""
    FILE = "file"
    """Nothing kept: the gate reads the file."""


@dataclass(frozen=True, slots=True)
class Written:
    """One file de-identification wrote into ``release/``, as the gate needs it.

    Taken from the bytes while they are in memory (:func:`written`), so the
    gate neither reads the file again nor hashes it again: the gate scans
    :attr:`header` and :attr:`tail` with the batch's values once they are all
    known, as long as the file still has the size, times and inode recorded
    in :attr:`entry` (else it reads the file).  A hit there makes the gate
    read the file, to name the field.

    Attributes
    ----------
    path : str
        ``<entity>/<name>`` relative to ``release/``.
    entry : FileEntry
        SHA-256 of the bytes written and the file's stat signature after writing.
    header : bytes
        Every byte before the pixel data value.
    tail : bytes
        What :attr:`kind` says of the bytes from the pixel data value on.
    kind : Tail
        What :attr:`tail` holds.
    """

    path: str
    entry: FileEntry
    header: bytes
    tail: bytes
    kind: Tail


def _text_runs(tail: memoryview) -> bytes | None:
    """The runs of :data:`TEXT_BYTES` in ``tail``, NUL-separated; None above :data:`RUNS_LIMIT`."""
    mask = _TEXT_LUT[np.frombuffer(tail, dtype=np.uint8)]
    if not bool(mask.any()):
        return b""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= _MIN_RUN
    if int((ends - starts)[keep].sum()) > RUNS_LIMIT:
        return None
    return b"\0".join(bytes(tail[a:b]) for a, b in zip(starts[keep], ends[keep], strict=True))


def written(
    relative: str,
    output: str,
    header: bytes,
    tail: memoryview,
    pixel_start: int,
    native16: bool,
) -> Written:
    """The :class:`Written` of a file just written as ``header + tail``.

    Parameters
    ----------
    relative : str
        ``<entity>/<name>`` relative to ``release/``.
    output : str
        The file (stat'ed here, after it was written and renamed into place).
    header, tail : bytes
        The file's bytes, in two parts.
    pixel_start : int
        Offset of the pixel data value in the file (at or after ``len(header)``).
    native16 : bool
        Pixel data is 16-bit and not compressed.
    """
    digest = hashlib.sha256(header)
    digest.update(tail)
    entry: FileEntry = (digest.hexdigest(), *_signature(os.stat(output)))
    at = pixel_start - len(header)
    if not 0 <= at <= len(tail):
        return Written(relative, entry, b"", b"", Tail.FILE)
    head = header + tail[:at].tobytes()
    rest = tail[at:]
    if native16 and not native_words_printable(rest):
        return Written(relative, entry, head, b"", Tail.CLEAN16)
    runs = _text_runs(rest)
    if runs is None:
        return Written(relative, entry, b"", b"", Tail.FILE)
    return Written(relative, entry, head, runs, Tail.RUNS)


def clean_written(item: Written, scanner: Scanner) -> bool:
    """True when ``item`` is known clean: its name, header and kept tail hold no value.

    False when a value is there, or when what was kept cannot tell (the file
    must be read then).
    """
    if item.kind is Tail.FILE:
        return False
    if item.kind is Tail.CLEAN16 and not scanner.prefilter_ok:
        return False
    if item.kind is Tail.RUNS and not scanner.summary_ok:
        return False
    return not (
        scanner.found_any(item.path.encode("utf-8"))
        or scanner.found_any(item.header)
        or (item.tail and scanner.found_any(item.tail))
    )


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
    except (pa.ArrowException, OSError, ValueError):
        return None
    hits: list[tuple[str, str, str]] = []
    for name in schema.names:
        hits += [(relative, "column name", c) for _o, c in scanner.find(name.encode("utf-8"))]
        try:
            column = source.read(columns=[name]).column(0).cast(pa.string())
        except (pa.ArrowException, OSError, ValueError):
            return None
        values = [v for v in pc.unique(column).to_pylist() if v]
        if values:  # NUL never occurs in a searched value: no match spans two values
            blob = "\0".join(values).encode("utf-8")
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
    """Outcome of one gate run (no values, only where they were found).

    ``passed`` is True when ``release/`` is now clean: every file the gate
    found a value in was held (``held``).
    """

    passed: bool
    files: int
    values_checked: int
    too_short: int
    hits: pd.DataFrame
    report: Path | None = None
    held: list[Held] = field(default_factory=list)
    """The files moved out of ``release/`` to quarantine, with the first place a value was found."""
    kept_by_policy: int = 0
    """Values (and name parts) not searched because the recipe's :class:`Policy` keeps them."""


#: Files at the top of ``release/`` that hold one row per released image.
TABLE_FILES = (CLEANED_FILE,)
#: Tables of ``release/`` whose rows belong to no single image (a hit there cannot be held).
_CATEGORY_TEXT = {
    "name": "a removed name",
    "name part": "part of a removed name",
    "free text": "removed free text",
    "batch folder name": "the batch folder name",
}


@dataclass(frozen=True)
class Held:
    """One file the gate holds: where the first value was found, never the value.

    Attributes
    ----------
    path : str
        ``<entity>/<name>`` relative to ``release/`` (and to the quarantine).
    field : str
        Where the value was found: ``Keyword (gggg,eeee)``, ``file name``,
        or ``cleaned.parquet column <name>``.
    category : str
        What the value was: the keyword of the field it was removed from,
        ``name``, ``name part``, ``free text`` or ``batch folder name``.
    more : int
        How many other places of the file hold a value.
    """

    path: str
    field: str
    category: str
    more: int = 0

    @property
    def reason(self) -> str:
        """The disposition reason: field and category, never the value."""
        what = _CATEGORY_TEXT.get(self.category, f"a removed {self.category} value")
        plural = "s" if self.more != 1 else ""
        others = f" (and {self.more} more place{plural})" if self.more else ""
        return f"{GATE_REASON_PREFIX} {what} found in {self.field}{others}; held for review"


#: The start of the disposition reason of every file the gate holds.
GATE_REASON_PREFIX = "leak gate:"
HoldFunction = Callable[[list[Held]], set[str]]
"""Moves the files given out of ``release/`` (tables and dispositions updated); returns the
paths it held.  The de-identify and review stages each provide one."""


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


def _scan_items(
    items: list[tuple[str, str, Span | None]], scanner: Scanner, workers: int
) -> tuple[list[tuple[str, str, str]], dict[str, FileEntry]]:
    """Scan files (in parallel when many), giving hits and entries."""
    if workers > 1 and len(items) >= 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(
                pool.map(_scan_chunk, list(_chunks(items, workers)), [scanner] * len(items))
            )
    else:
        parts = [_scan_chunk(items, scanner)]
    hits = [h for part_hits, _index in parts for h in part_hits]
    index = {rel: entry for _hits, part_index in parts for rel, entry in part_index.items()}
    return hits, index


def _scan_written(
    layout: BatchLayout,
    todo: list[Path],
    written: Iterable[Written],
    scanner: Scanner,
    index: dict[str, FileEntry],
) -> list[Path]:
    """Scan the files of ``todo`` still as written from what was kept; return the rest.

    The entries of the files found clean go into ``index``.
    """
    pending = {p.relative_to(layout.release).as_posix(): p for p in todo}
    for item in written:
        path = pending.get(item.path)
        if path is None:
            continue
        try:
            unchanged = _signature(path.stat()) == tuple(item.entry[1:])
        except OSError:
            continue
        if unchanged and clean_written(item, scanner):
            index[item.path] = item.entry
            del pending[item.path]
    return [p for p in todo if p.relative_to(layout.release).as_posix() in pending]


def table_rows_hit(path: Path, scanner: Scanner) -> list[tuple[str, str, str]]:
    """``(image path, column, category)`` of every row of a cleaned table holding a value.

    Parameters
    ----------
    path : Path
        A ``cleaned.parquet`` (its ``path`` column names each row's image).
    scanner : Scanner
        The gate's scanner.

    Returns
    -------
    list of (str, str, str)
        One entry per row and column a value was found in, by column order.
    """
    table = pq.read_table(path)
    if "path" not in table.column_names or not table.num_rows:
        return []
    paths = table.column("path").cast(pa.string())
    found: list[tuple[str, str, str]] = []
    for name in table.column_names:
        column = table.column(name).cast(pa.string())
        hits = {}
        for text in pc.unique(column).to_pylist():
            if text:
                where = scanner.find(text.encode("utf-8"))
                if where:
                    hits[text] = where[0][1]
        if not hits:
            continue
        for row_path, text in zip(paths.to_pylist(), column.to_pylist(), strict=True):
            if text in hits and row_path:
                found.append((str(row_path), f"cleaned.parquet column {name}", hits[text]))
    return found


def _to_hold(
    layout: BatchLayout, hits: list[tuple[str, str, str]], scanner: Scanner
) -> dict[str, Held]:
    """The files to hold for ``hits`` (first place per file, in scan order)."""
    places: dict[str, list[tuple[str, str]]] = {}
    for rel, where, category in hits:
        if rel in TABLE_FILES:
            for image, column, found in table_rows_hit(layout.release / rel, scanner):
                places.setdefault(image, []).append((column, found))
        else:
            places.setdefault(rel, []).append((where, category))
    return {
        rel: Held(rel, where[0][0], where[0][1], len(dict.fromkeys(where)) - 1)
        for rel, where in places.items()
    }


#: Columns of ``phi/deidentify/leak_report.csv`` (never the value).
_REPORT_COLUMNS = ["file", "field", "category"]
#: Rounds of holding and scanning again before the gate gives up.
_MAX_ROUNDS = 4


def run_gate(
    layout: BatchLayout,
    values: Mapping[str, str],
    *,
    workers: int = 1,
    policy: Policy | None = None,
    hold: HoldFunction | None = None,
    written: Iterable[Written] = (),
) -> GateReport:
    """Scan ``release/`` for ``values``; hold the files they are found in; record a pass.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    values : mapping of str to str
        Identifying value -> category (:func:`load_values`).
    workers : int
        Processes scanning files (0: one per core).
    policy : Policy, optional
        What the recipe's policy keeps (not searched); default: nothing.
    hold : callable, optional
        Moves files out of ``release/`` (:data:`HoldFunction`).  Without it,
        any hit fails the gate (nothing is moved).
    written : iterable of Written
        What de-identification kept of the files it wrote (:func:`written`):
        a file still as written is scanned from these bytes (and its recorded
        SHA-256 used), not read again; every other file of ``release/`` is read.

    Returns
    -------
    GateReport
        ``passed`` (``release/`` is clean now), the files held and the hits.

    Raises
    ------
    LeakError
        When a value is found and there is no ``hold``, or a hit cannot be held
        (a file that is no image, a table row of no image, or a file still hit
        after holding); the message gives counts and the report path.
    """
    scanner = Scanner.build(values, policy)
    workers = workers or os.cpu_count() or 1
    layout.gate_record.unlink(missing_ok=True)
    spans = load_spans(layout)
    index: dict[str, FileEntry] = {}
    todo, _folders, _odd = release_entries(layout)
    todo = _scan_written(layout, todo, written, scanner, index)
    all_hits: list[tuple[str, str, str]] = []
    held: dict[str, Held] = {}
    report_path = layout.deid_dir / "leak_report.csv"
    earlier = (  # the stage's earlier runs (de-identify, then each review) stay in the report
        pd.read_csv(report_path, dtype=str, keep_default_na=False).reindex(columns=_REPORT_COLUMNS)
        if report_path.exists()
        else pd.DataFrame(columns=_REPORT_COLUMNS)
    )
    for _round in range(_MAX_ROUNDS):
        items: list[tuple[str, str, Span | None]] = []
        for p in todo:
            rel = p.relative_to(layout.release).as_posix()
            items.append((str(p), rel, spans.get(rel)))
        hits, scanned = _scan_items(items, scanner, workers)
        index.update(scanned)
        _files, folders, odd = release_entries(layout)
        for rel in folders:  # an empty folder's name is in no file's name
            hits += [(rel, "folder name", c) for _o, c in scanner.find(rel.encode("utf-8"))]
        hits += [(rel, "entry type", f"not allowed in release/: {what}") for rel, what in odd]
        if not hits:
            break
        all_hits += hits
        table = pd.DataFrame(all_hits, columns=_REPORT_COLUMNS).drop_duplicates()
        report_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pd.concat([earlier, table]).drop_duplicates().to_csv(report_path, index=False)
        wanted = _to_hold(layout, hits, scanner) if hold is not None else {}
        wanted = {rel: h for rel, h in wanted.items() if rel not in held}
        done = hold(list(wanted.values())) if hold is not None and wanted else set()
        held.update({rel: h for rel, h in wanted.items() if rel in done})
        stuck = sorted({rel for rel, _w, _c in hits if rel not in held and rel not in TABLE_FILES})
        if hold is None or stuck or not done:
            raise LeakError(
                f"leak gate failed: {len(table)} identifying value(s) found in "
                f"{table['file'].nunique()} file(s) of {layout.release}; "
                + (
                    "nothing may be uploaded. "
                    if hold is None
                    else f"{len(stuck) or 'some'} of them cannot be held (no image of this batch "
                    f"owns them, e.g. {(stuck or sorted(set(table['file'])))[0]}); nothing may be "
                    "uploaded. "
                )
                + f"See {report_path} (file, field, category) and fix the recipe, then rerun"
            )
        for rel in done:
            index.pop(rel, None)
        # Scan again what holding changed (the tables) or left new; the rest was scanned clean.
        known = {rel: index.pop(rel) for rel in list(index)}
        current = release_index(layout, known)
        index = {rel: entry for rel, entry in current.items() if known.get(rel) == entry}
        todo = [layout.release / rel for rel in current if rel not in index]
    else:
        raise LeakError(
            f"leak gate failed: values still found in {layout.release} after holding "
            f"{len(held)} file(s); nothing may be uploaded. See {report_path} and fix the "
            "recipe, then rerun"
        )
    table = pd.DataFrame(all_hits, columns=_REPORT_COLUMNS).drop_duplicates()
    write_record(layout, n_files=len(index), n_values=len(scanner), index=index)
    return GateReport(
        True,
        len(index) + len(held),
        len(scanner),
        scanner.too_short,
        table,
        report_path if all_hits else None,
        list(held.values()),
        scanner.kept_by_policy,
    )
