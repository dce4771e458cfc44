"""What the tests of ``sendit run`` share: a tiny batch, its command line and environment, trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nbformat
import psutil

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


def tree(folder: Path) -> dict[str, bytes]:
    """Return every file under ``folder`` by its relative POSIX path, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def descendants(pid: int) -> list[psutil.Process]:
    """Return the processes below ``pid`` (none once it has ended)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_when(
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    appeared: Callable[[], bool],
    *,
    timeout: float,
    poll: float,
) -> list[psutil.Process]:
    """Start ``cmd``, SIGKILL it once ``appeared()`` is true; return the processes it had started.

    Parameters
    ----------
    cmd, env : list of str, dict
        The command and its environment.
    log : Path
        Where its stdout and stderr go.
    appeared : callable
        Polled every ``poll`` seconds, for at most ``timeout`` seconds.
    timeout, poll : float
        Seconds.

    Returns
    -------
    list of psutil.Process
        Its descendants as last seen alive (kernels, workers): the caller checks they end.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and proc.poll() is None:
            children = descendants(proc.pid) or children
            if appeared():
                break
            time.sleep(poll)
        children = descendants(proc.pid) or children
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    return children


def stage_notebook(path: Path, cells: Sequence[nbformat.NotebookNode]) -> Path:
    """Write a notebook that ``run_stage`` can run in place of a stage's: the stages'
    ``parameters`` cell, then ``cells``, on the ``python3`` kernel."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'batch_dir = ""\nwork_dir = ""\nparams_files: list = []\noverrides: dict = {}'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Py", "language": "python"}
    nbformat.write(nb, path)
    return path
