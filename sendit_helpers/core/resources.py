"""Locate files shipped with the project (params, recipes, notebooks).

In a source checkout (editable install) they live at the repository root; a
wheel bundles them under ``sendit_helpers/_bundled/``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # sendit_helpers/
_CANDIDATES = (_PACKAGE.parent, _PACKAGE / "_bundled")


def shipped(relative: str) -> Path:
    """Return the path of a shipped file such as ``"params/default.yml"``.

    Parameters
    ----------
    relative : str
        Path relative to the repository root, e.g. ``"notebooks/01_inspect.ipynb"``.

    Returns
    -------
    Path
        The first existing candidate; the source-checkout path when none exists.
    """
    for base in _CANDIDATES:
        path = base / relative
        if path.exists():
            return path
    return _CANDIDATES[0] / relative


def repo_root() -> Path:
    """The folder holding ``params/`` and ``notebooks/``."""
    return shipped("params").parent


def content_digests(paths: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The SHA-256 (hex) of each file's bytes, in order: a cache key that sees an edited file.

    A process-wide cache of what is loaded from files (recipes, filters) keyed
    by these digests as well as the paths loads a file again once its content
    changed, even at the same path.

    Parameters
    ----------
    paths : sequence of path-like
        The files.

    Returns
    -------
    tuple of str
        One digest per path; ``""`` for a file that cannot be read (loading it
        then fails with its own message).
    """
    found = []
    for path in paths:
        try:
            found.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError:
            found.append("")
    return tuple(found)
