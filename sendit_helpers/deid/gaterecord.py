"""The leak gate's record of ``release/``: what is there, and the digest of a pass.

``release/`` may hold only regular files in its entity folders
(:func:`release_entries`).  A gate that passes records the SHA-256 and stat
signature of every file it scanned (:func:`write_record`); upload requires
that record to match the folder as it is now (:func:`require_pass`,
:func:`passed_index`), reading again only the files whose size, times or
inode changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from sendit_helpers.core.errors import GateError
from sendit_helpers.core.layout import BatchLayout

CHUNK = 1 << 20


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
    found: list[tuple[str, str]] = []  # (relative name, path) of the regular files
    folders: list[str] = []
    odd: list[tuple[str, str]] = []
    if not root.is_dir():
        return [], folders, odd
    # One lstat per entry (DirEntry.stat, no pathlib per file); every folder is listed,
    # links are not followed (as os.walk).
    pending: list[tuple[str, str, int]] = [(os.fspath(root), "", 0)]
    while pending:
        folder, prefix, depth = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            name = os.path.relpath(exc.filename, root) if exc.filename else "."
            odd.append((Path(name).as_posix(), f"a folder that cannot be listed ({exc.strerror})"))
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                odd.append((rel, f"an entry that cannot be read ({exc.strerror})"))
                continue
            if stat.S_ISDIR(mode):
                folders.append(rel)
                if depth >= 1:
                    odd.append((rel, "a folder inside an entity folder"))
                pending.append((entry.path, rel + "/", depth + 1))
            elif stat.S_ISREG(mode):
                found.append((rel, entry.path))
            else:
                odd.append((rel, _entry_kind(mode)))
    found.sort()
    return [Path(path) for _rel, path in found], sorted(folders), sorted(odd)


def release_name(layout: BatchLayout, path: Path) -> str:
    """``path``'s name relative to ``release/`` (``<entity>/<name>``), for a path
    :func:`release_entries` gave (no pathlib parsing: the gate names every file)."""
    root = os.fspath(layout.release)
    text = os.fspath(path)
    if text.startswith(root + "/"):
        return text[len(root) + 1 :]
    return path.relative_to(layout.release).as_posix()


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


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)``: what tells that a file is unchanged."""
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
    return (sha, *signature(st))


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
        rel = release_name(layout, path)
        entry = None if known is None else known.get(rel)
        if entry is not None and tuple(entry[1:]) == signature(path.stat()):
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
