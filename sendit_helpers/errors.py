"""One base exception for the project, and its few specialisations.

Messages follow one rule: name the file (or setting), the DICOM tag as
keyword and ``(gggg,eeee)`` where one is involved, what was found, and how
to fix it.  They never carry an identifying *value* — only where it sits.
"""

from __future__ import annotations


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
