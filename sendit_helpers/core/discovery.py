"""Finding a batch's input files without ever failing on one of them.

:func:`scan` lists the regular files under a batch folder, and gives every
other entry a disposition row with a reason instead: a folder that cannot be
read, a name that is not UTF-8, a dangling or looping symbolic link, a link
to a folder (not followed), a FIFO, socket or device.  Nothing is opened
here (a FIFO opened for reading would block); entries are only ``lstat``-ed
and links ``stat``-ed.

A *loose* batch is what a root folder holds besides its study folders
(:func:`has_study`): its own files and its sub-folders that hold no DICOM
study.  ``sendit run`` makes one of it, so that no input goes without a row.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.disposition import Disposition, Row


@dataclass
class Found:
    """What :func:`scan` found below a folder."""

    files: list[str] = field(default_factory=list)
    """Regular files (or links to one), in walk order: each folder's files, then its folders."""
    rows: list[Row] = field(default_factory=list)
    """A row with a reason for every other entry."""


def shown(path: str) -> str:
    """``path`` as text that can be written anywhere: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str) -> bool:
    """True when ``path`` (as decoded by the filesystem encoding) is valid UTF-8 text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special(mode: int) -> str:
    for test, what in _SPECIAL:
        if test(mode):
            return what
    return "not a regular file"


def _odd_row(path: str, reason: str, state: Disposition = Disposition.ERROR) -> Row:
    return Row(shown(path), state, reason)


def classify(path: str, st: os.stat_result | None = None) -> tuple[str, Row | None]:
    """``("file", None)`` for a regular file (or a link to one), ``("dir", None)`` for a
    folder, else ``("odd", row)`` with the row to report.

    Parameters
    ----------
    path : str
        The entry.
    st : os.stat_result, optional
        Its ``lstat`` when already known.
    """
    try:
        st = st if st is not None else os.lstat(path)
    except OSError as exc:
        return "odd", _odd_row(path, f"cannot read the entry ({_cause(exc)}); {_ACCESS_FIX}")
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except FileNotFoundError:
            return "odd", _odd_row(
                path,
                "dangling symbolic link: its target does not exist; "
                "copy the file itself into the batch, or remove the link",
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                why = "symbolic link loop: the link leads back to itself"
            else:
                why = f"symbolic link whose target cannot be read ({_cause(exc)})"
            return "odd", _odd_row(path, f"{why}; copy the file itself into the batch")
        if stat.S_ISDIR(target.st_mode):
            return "odd", _odd_row(
                path,
                "symbolic link to a folder, not followed; "
                "pass the folder it points to as a batch, or copy it in",
                Disposition.SKIPPED,
            )
        if not stat.S_ISREG(target.st_mode):
            return "odd", _odd_row(
                path,
                f"symbolic link to {_special(target.st_mode)}, not read; only regular files "
                "are inputs",
                Disposition.NON_DICOM,
            )
        return "file", None
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    if stat.S_ISREG(st.st_mode):
        return "file", None
    return "odd", _odd_row(
        path,
        f"{_special(st.st_mode)}, not read; only regular files are inputs",
        Disposition.NON_DICOM,
    )


_ACCESS_FIX = "give the user running sendit read access (chmod u+r, folders u+rx) and rerun"


def _cause(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{exc.strerror or type(exc).__name__}, {name}"


def scan(
    source: Path,
    *,
    include: Callable[[str, bool], bool] | None = None,
    exclude: Path | None = None,
) -> Found:
    """Every input below ``source``: regular files to read, and a row for each other entry.

    Parameters
    ----------
    source : Path
        The batch folder.
    include : callable, optional
        ``include(path, is_folder)`` decides, for the entries directly in
        ``source``, which belong to the batch (a loose batch leaves out the
        study folders); everything below an included folder belongs to it.
    exclude : Path, optional
        A folder to leave out wherever it is (the work folder, when it lies
        inside a root).

    Returns
    -------
    Found
        Files whose path is not UTF-8 text are reported (with the undecodable
        bytes shown as ``\\xNN``), not listed: no table could hold their name.
    """
    found = Found()
    skip = os.fspath(exclude) if exclude is not None else None
    _scan_folder(os.fspath(source), found, include, skip)
    return found


def _scan_folder(
    folder: str,
    found: Found,
    include: Callable[[str, bool], bool] | None,
    skip: str | None,
) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        found.rows.append(
            _odd_row(
                folder,
                f"cannot read the folder ({_cause(exc)}): the files in it are not processed; "
                f"{_ACCESS_FIX}",
            )
        )
        return
    folders: list[str] = []
    for entry in entries:
        path = entry.path
        if skip is not None and path == skip:
            continue
        try:  # the entry's type from the listing itself (no system call) when it is plain
            plain = "dir" if entry.is_dir(follow_symlinks=False) else ""
            plain = plain or ("file" if entry.is_file(follow_symlinks=False) else "")
        except OSError:
            plain = ""
        kind, row = (plain, None) if plain else classify(path)
        if include is not None and not include(path, kind == "dir"):
            continue
        if kind == "dir":
            folders.append(path)
        elif row is not None:
            found.rows.append(row)
        elif not is_utf8(path):
            found.rows.append(
                _odd_row(
                    path,
                    "the file's path is not valid UTF-8 text (bytes shown as \\xNN), so it "
                    "cannot be recorded; rename it (e.g. with convmv) and rerun",
                )
            )
        else:
            found.files.append(path)
    for path in folders:
        _scan_folder(path, found, None, skip)


# ------------------------------------------------------------------ studies and loose batches
def study_of(folder: Path) -> str | None:
    """StudyInstanceUID of the first readable DICOM file directly in ``folder``.

    Only regular files are read; a folder that cannot be listed has none.
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return None
    for entry in entries:
        if classify(os.fspath(entry))[0] != "file" or not is_utf8(os.fspath(entry)):
            continue
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except READ_ERRORS:
            continue
        return str(ds.get("StudyInstanceUID", "")) or None
    return None


def subfolders(folder: Path) -> list[Path]:
    """The real sub-folders of ``folder`` (no links) with UTF-8 names; none when unreadable."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if not is_utf8(os.fspath(entry)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                out.append(entry)
        except OSError:
            continue
    return out


def studies(folder: Path, cache: dict[Path, set[str]] | None = None) -> set[str]:
    """The StudyInstanceUIDs found below ``folder`` (one file read per folder)."""
    cache = {} if cache is None else cache
    if folder not in cache:
        found: set[str] = set()
        here = study_of(folder)
        if here:
            found.add(here)
        for child in subfolders(folder):
            found |= studies(child, cache)
        cache[folder] = found
    return cache[folder]


def has_study(folder: Path, cache: dict[Path, set[str]] | None = None) -> bool:
    """True when some DICOM file below ``folder`` names a study."""
    return bool(studies(folder, cache))


def loose_filter(
    root: Path, cache: dict[Path, set[str]] | None = None
) -> Callable[[str, bool], bool]:
    """:func:`scan`'s ``include`` for the loose batch of ``root``: all but its study folders."""
    cache = {} if cache is None else cache

    def include(path: str, is_folder: bool) -> bool:
        if not is_folder:
            return True
        folder = Path(path)
        return not is_utf8(path) or not has_study(folder, cache)

    return include
