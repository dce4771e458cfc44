"""Locate files shipped with the project (params, recipes, notebooks).

In a source checkout (editable install) they live at the repository root; a
wheel bundles them under ``sendit_helpers/_bundled/``.
"""

from __future__ import annotations

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
