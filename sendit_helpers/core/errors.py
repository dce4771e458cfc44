"""One base exception for the project, and its few specialisations.

Messages follow one rule: name the file (or setting), the DICOM tag as
keyword and ``(gggg,eeee)`` where one is involved, what was found, and how
to fix it.  They never carry an identifying *value* — only where it sits.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
from functools import lru_cache


class SenditError(Exception):
    """Base class of every error raised on purpose by ``sendit_helpers``."""


class SettingsError(SenditError):
    """A setting is missing, malformed or contradicts another one."""


class BatchError(SenditError):
    """A batch folder is missing, empty or cannot be read."""


class RecipeError(SenditError):
    """A de-identification recipe cannot be parsed or applied."""


class IdentifierError(SenditError):
    """The identifier provider failed to give pseudonyms."""


class LeakError(SenditError):
    """The leak gate found an identifying value in ``release/``."""


class GateError(SenditError):
    """``release/`` has no passing leak-gate record for its current contents."""


class ReviewError(SenditError):
    """A review decision is malformed or cannot be applied."""


class UploadError(SenditError):
    """An upload target refused, failed or could not be reached."""


class StageError(SenditError):
    """A stage notebook failed while running under papermill."""


class SenditWarning(UserWarning):
    """Base class of the warnings ``sendit_helpers`` gives (same message rule as errors)."""


class RecipeWarning(SenditWarning):
    """A recipe line is accepted but not as written (old keyword, tolerated line, kept UID)."""


class UploadWarning(SenditWarning):
    """Items were not stored but the upload is complete (destination keeps another copy)."""


def tag_label(keyword: str, tag: int) -> str:
    """Return ``Keyword (gggg,eeee)`` for use in messages.

    Parameters
    ----------
    keyword : str
        DICOM keyword, may be empty for private or unknown tags.
    tag : int
        The tag as a 32-bit integer.

    Returns
    -------
    str
        For example ``"PatientName (0010,0010)"``.
    """
    group, elem = tag >> 16, tag & 0xFFFF
    code = f"({group:04X},{elem:04X})"
    return f"{keyword} {code}" if keyword else f"private/unknown tag {code}"


def os_error_line(
    exc: OSError, fix: str = "check the work folder", near: str | os.PathLike[str] | None = None
) -> str:
    """One line for an :class:`OSError`: what happened, on which path, and the fix.

    Parameters
    ----------
    exc : OSError
        The error (its ``filename`` names the path, when known).
    fix : str
        Advice for errors without a specific one.
    near : path-like, optional
        The folder being written, named when the error does not say which file.

    Returns
    -------
    str
        For example ``"no space left on the device (ENOSPC) writing /w/b/phi/x; free space on
        that disk or choose another --work folder, then rerun"``.
    """
    path = exc.filename if exc.filename is not None else ""
    if path:
        where = f" on {os.fsdecode(path)}"
    else:
        where = f" writing under {os.fsdecode(near)}" if near is not None else ""
    code = exc.errno
    name = errno.errorcode.get(code, type(exc).__name__) if code is not None else type(exc).__name__
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what, advice = (
            "the disk is full or a file-size/quota limit was reached",
            (
                "free space on that disk (or raise the limit) or choose another --work folder, "
                "then rerun"
            ),
        )
    elif code == errno.EROFS:
        what, advice = "the filesystem is read-only", "choose a writable --work folder"
    elif code in (errno.EACCES, errno.EPERM):
        what, advice = (
            "permission denied",
            (
                "give the user running sendit access to it (chmod/chown), or choose another "
                "--work folder"
            ),
        )
    else:
        what, advice = f"{type(exc).__name__}: {exc.strerror or 'error'}", fix
    return f"{what} ({name}){where}; {advice}"


# --------------------------------------------------------------------------- causes
#
# A failure's one-line cause, safe to print, log and write into disposition.csv.
# SenditError messages follow the rule above and pass through.  Any other message
# may quote a value (pydicom quotes the bytes it could not convert), so it is
# reduced to what cannot be identifying: the exception type, the tags, keywords and
# VRs it names, and a fixed wording for the messages known here.

_TAG_RE = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_VR_RE = re.compile(r"\bVR (?:of )?'?([A-Z]{2})\b'?")
_WORD_RE = re.compile(r"\b[A-Z][A-Za-z0-9]{3,}\b")
_ATTRIBUTE_RE = re.compile(r"^'([A-Za-z_]\w*)' object has no attribute '([A-Za-z_]\w*)'")
#: Known messages (their start) of other libraries -> what they mean, value-free.
_KNOWN: tuple[tuple[str, str], ...] = (
    (
        "Expected total bytes to be an even multiple of bytes per value",
        "the value's length is not a multiple of its VR's value size; fix or re-export the "
        "file, or REMOVE the element in the recipe",
    ),
    ("could not convert string to float", "a value is not a number"),
    ("invalid literal for int()", "a value is not a whole number"),
    ("unpack requires a buffer", "the data ends inside an element (truncated file?)"),
    ("day is out of range for month", "a date does not exist"),
    ("month must be in 1..12", "a date does not exist"),
    ("No such file or directory", "the file does not exist"),
    ("Permission denied", "permission denied; check the file's owner and mode"),
)


@lru_cache(maxsize=1)
def _keywords() -> dict[str, int]:
    from pydicom.datadict import keyword_dict

    return dict(keyword_dict)


def _labels(text: str) -> list[str]:
    """``Keyword (gggg,eeee)`` for every tag or DICOM keyword ``text`` names, in order."""
    from pydicom.datadict import keyword_for_tag

    found: list[str] = []
    for group, elem in _TAG_RE.findall(text):
        tag = int(group + elem, 16)
        label = tag_label(keyword_for_tag(tag) if not (tag >> 16) & 1 else "", tag)
        if label not in found:
            found.append(label)
    words = _keywords()
    for word in _WORD_RE.findall(_TAG_RE.sub(" ", text)):
        if word in words and words[word] >> 16:  # not a command element (Status, Priority)
            label = tag_label(word, words[word])
            if label not in found:
                found.append(label)
    return found


_CLASS_RE = re.compile(r"^class\s+(\w+)\s*\(([^)]*)\)", re.MULTILINE)


@lru_cache(maxsize=1)
def sendit_error_names() -> frozenset[str]:
    """Class names of every :class:`SenditError` subclass in ``sendit_helpers``.

    Read from the package's source (class statements and their bases), not by
    importing every module: an exception that crossed a process boundary as
    text (a notebook cell's ``ename``) is trusted by its name only if it is one
    of these (see :func:`reduce_message`).
    """
    from pathlib import Path

    bases: dict[str, set[str]] = {}
    for path in Path(__file__).resolve().parents[1].rglob("*.py"):  # every sub-package
        for name, listed in _CLASS_RE.findall(path.read_text(encoding="utf-8")):
            words = {part.strip().rsplit(".", 1)[-1] for part in listed.split(",")}
            bases.setdefault(name, set()).update(words)
    names = {"SenditError"}
    grown = True
    while grown:
        more = {name for name, of in bases.items() if of & names} - names
        names |= more
        grown = bool(more)
    todo: list[type[BaseException]] = [SenditError]  # and any defined elsewhere, imported
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def _one(text: str) -> str:
    return " ".join(text.split())


def reduce_message(ename: str, evalue: str, *, sendit: bool | None = None) -> str:
    """The PHI-safe one-line cause of an exception known by type name and message.

    Used for exceptions that crossed a process boundary as text (a notebook
    cell's ``ename``/``evalue`` under papermill) and, through :func:`one_line`,
    for live ones.

    Parameters
    ----------
    ename : str
        The exception's class name.
    evalue : str
        Its message.
    sendit : bool, optional
        Whether ``ename`` is a :class:`SenditError`; None looks the name up
        among the subclasses ``sendit_helpers`` defines.

    Returns
    -------
    str
        ``Type: message`` for a SenditError (its messages never carry values).
        Otherwise the type, the ``Keyword (gggg,eeee)`` tags and the VR the
        message names, and a fixed wording for known messages; the message
        itself only when it names just code (``'X' object has no attribute 'y'``).
    """
    if sendit is None:
        sendit = ename in sendit_error_names()
    if sendit:
        return f"{ename}: {_one(evalue)}" if evalue.strip() else ename
    attribute = _ATTRIBUTE_RE.match(evalue)
    if attribute is not None:
        owner, name = attribute.groups()
        tag = _keywords().get(name)
        if tag is not None:
            return (
                f"{ename}: the data set has no {tag_label(name, tag)}, which is needed here; the "
                "file lacks it or a recipe rule removed it (KEEP it in the recipe, or re-export "
                "the file)"
            )
        return f"{ename}: '{owner}' object has no attribute '{name}'"
    labels = _labels(evalue)
    vr = _VR_RE.search(evalue)
    where = f" on {', '.join(labels)}" if labels else ""
    if vr is not None:
        where += f" (VR {vr.group(1)})"
    meaning = next((text for start, text in _KNOWN if start in evalue), "")
    if meaning:
        return f"{ename}{where}: {meaning}"
    if evalue.strip():
        return f"{ename}{where} (its message is not shown: it may quote a value)"
    return f"{ename}{where}"


def one_line(exc: BaseException) -> str:
    """The PHI-safe one-line cause of ``exc`` (see :func:`reduce_message`).

    Parameters
    ----------
    exc : BaseException
        Any exception.

    Returns
    -------
    str
        For example ``"RecipeError: r.deid:3: unknown field ..."`` or
        ``"BytesLengthException on Rows (0028,0010) (VR US): the value's length ..."``.
    """
    name = type(exc).__name__
    if isinstance(exc, SenditError):
        return reduce_message(name, str(exc), sendit=True)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        key = exc.args[0]
        if isinstance(key, int):  # pydicom's BaseTag
            return f"{name}: {tag_label(_keyword_of(key), key)} is missing"
        if isinstance(key, str) and key in _keywords():
            return f"{name}: {tag_label(key, _keywords()[key])} is missing"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    return reduce_message(name, str(exc), sendit=False)


def _keyword_of(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return "" if (tag >> 16) & 1 else str(keyword_for_tag(tag))


_ERRNO_TEXT = re.compile(r"^\[Errno (\d+)\] ([^:]*)(?:: '(.*)')?")
_ERRNO_ANYWHERE = re.compile(r"\[errno (\d+)\] ([^\]:'\"]+)", re.IGNORECASE)


def os_error_from_text(ename: str, evalue: str) -> OSError | None:
    """Rebuild an :class:`OSError` from a notebook error's type name and text, or None.

    A stage notebook reports only ``ename``/``evalue`` (e.g. ``OSError`` and
    ``[Errno 28] No space left on device: '/w/b/phi/x'``); this lets the
    command say what happened and the fix with :func:`os_error_line`.
    """
    cls = getattr(builtins, ename, None)
    if not (isinstance(cls, type) and issubclass(cls, OSError)):
        return None
    match = _ERRNO_TEXT.match(evalue or "")
    if match is None:  # pyarrow: "Error writing bytes to file. Detail: [errno 28] No space ..."
        found = _ERRNO_ANYWHERE.search(evalue or "")
        return None if found is None else OSError(int(found.group(1)), found.group(2).strip())
    code, text, filename = int(match.group(1)), match.group(2), match.group(3)
    return OSError(code, text, filename) if filename is not None else OSError(code, text)
