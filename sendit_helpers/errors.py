"""One base exception for the project, and its few specialisations.

Messages follow one rule: name the file (or setting), the DICOM tag as
keyword and ``(gggg,eeee)`` where one is involved, what was found, and how
to fix it.  They never carry an identifying *value* — only where it sits.
"""

from __future__ import annotations

import errno
import os


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
        what, advice = exc.strerror or type(exc).__name__, fix
    return f"{what} ({name}){where}; {advice}"
