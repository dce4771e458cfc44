"""What the tests of ``sendit run`` share: a tiny batch, the command line and its environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sendit_helpers.samples import batchspec

TINY = batchspec.BatchSpec(n_series=1, images_per_series=2, rows=16, columns=16)
"""One series of two 16 x 16 images: the smallest batch every stage runs on."""


def cli_env(secret_hex: str) -> dict[str, str]:
    """Return the environment of a ``sendit run`` subprocess.

    Parameters
    ----------
    secret_hex : str
        The site secret (hex) the run uses, so outputs compare with an in-process run.

    Returns
    -------
    dict of str to str
        This process's environment, progress bars off, without ``WORKERS``.
    """
    env = dict(os.environ, PROGRESS="false", SENDIT_SITE_SECRET=secret_hex)
    env.pop("WORKERS", None)
    return env


def run_cmd(root: Path, work: Path, *extra: str) -> list[str]:
    """Return the command line of ``sendit run ROOT --work WORK EXTRA...`` in this interpreter.

    Parameters
    ----------
    root : Path
        Folder of batch folders.
    work : Path
        Work folder.
    *extra : str
        Further options (``--workers``, ``--executor`` ...).

    Returns
    -------
    list of str
        Arguments for :mod:`subprocess`.
    """
    cli = [sys.executable, "-m", "sendit_helpers.run.cli", "run", str(root), "--work", str(work)]
    return [*cli, *extra]
