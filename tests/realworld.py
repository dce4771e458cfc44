"""DICOM that nobody on the project generated, and dciodvfy to judge outputs against inputs.

* :func:`pydicom_test_files`: pydicom's bundled vendor test files (``dicomdirtests/`` included).
* :func:`deid_data_dir` / :func:`deid_data_files`: deid's example files from the ``deid-data``
  package, unpacked by ``make test`` (``scripts/fetch_deid_data.py``) into
  ``<venv>/share/deid-data`` (or where ``DEID_DATA`` points).  Missing: the test fails under CI
  (``CI`` set), and is skipped on a developer's machine.
* :func:`dciodvfy_errors` / :func:`new_dciodvfy_errors`: dicom3tools' IOD checker; an output
  must not have an error its input did not have.  Errors are compared after normalising what
  legitimately changes in de-identification: values (``= <…>``, quoted UIDs), indices and
  UIDs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pydicom.errors
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

__all__ = [
    "DCIODVFY",
    "deid_data_dir",
    "deid_data_files",
    "dciodvfy_errors",
    "new_dciodvfy_errors",
    "new_dciodvfy_errors_many",
    "pydicom_test_dir",
    "pydicom_test_files",
]

#: The dciodvfy executable (dicom3tools, a test extra), next to this interpreter first.
DCIODVFY = str(Path(sys.executable).parent / "dciodvfy")
if not Path(DCIODVFY).is_file():
    DCIODVFY = shutil.which("dciodvfy") or DCIODVFY


def _missing(what: str) -> None:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; `make .venv/.installed-test` installs it", pytrace=False)
    pytest.skip(f"{what} is missing; run `make .venv/.installed-test`")


def pydicom_test_dir() -> Path:
    """The folder of pydicom's bundled test files."""
    return Path(pydicom.data.__file__).parent / "test_files"


def pydicom_test_files() -> list[Path]:
    """Every file pydicom bundles as test data (``dicomdirtests/`` included), sorted."""
    return sorted(p for p in pydicom_test_dir().rglob("*") if p.is_file())


def deid_data_dir() -> Path:
    """The unpacked ``deid_data/data`` folder (fails under CI, skips elsewhere when missing)."""
    env = os.environ.get("DEID_DATA")
    folder = Path(env) if env else Path(sys.prefix) / "share" / "deid-data"
    if not (folder / "dicom-cookies").is_dir():
        _missing(f"deid-data ({folder})")
    return folder


def deid_data_files() -> list[Path]:
    """deid-data's DICOM files (``*.dcm``; the zipped cines are left out), sorted."""
    return sorted(deid_data_dir().rglob("*.dcm"))


# ---------------------------------------------------------------------------------- dciodvfy

_NORMALISE = (
    (re.compile(r"= <[^>]*>"), "= <>"),  # values
    (re.compile(r'"[^"]*"'), '""'),  # quoted values (UIDs in root checks)
    (re.compile(r"\[\d+\]"), "[]"),  # value indices
    (re.compile(r"(UID) [0-9.]+$"), r"\1 <uid>"),  # a trailing UID, however short
    (re.compile(r"\b\d+(\.\d+){2,}\b"), "<uid>"),  # UIDs written bare or in <…>
    (re.compile(r"(?i)\b(item|frame|value)s?\s*#?\s*\d+"), r"\1 #"),  # item / frame numbers
    (re.compile(r"\s+"), " "),
)


def _normalise(line: str) -> str:
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line.strip()


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error - …`` lines dciodvfy reports for one file, normalised.

    Parameters
    ----------
    path : Path
        A DICOM file.

    Returns
    -------
    list of str
        Normalised error lines, in dciodvfy's order.
    """
    if not Path(DCIODVFY).is_file():
        _missing("dciodvfy (dicom3tools)")
    run = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    lines = (run.stdout + "\n" + run.stderr).splitlines()
    return [_normalise(line) for line in lines if line.startswith("Error")]


def new_dciodvfy_errors(input_path: Path, output_path: Path) -> list[str]:
    """The dciodvfy errors ``output_path`` has that ``input_path`` lacks (normalised, counted).

    An input dciodvfy cannot read whole (deflated) is compared as pydicom reads it (re-encoded
    without deflate), which is what de-identification started from; one that stays unreadable
    (truncated) is not valid in, and its output is only checked for read failures.

    Parameters
    ----------
    input_path, output_path : Path
        An input file and what de-identification made of it.

    Returns
    -------
    list of str
        Each normalised error line as many times as the output has it more often than the input.
    """
    before = dciodvfy_errors(input_path)
    if _READ_FAILED in before:  # deflated or truncated: judge against the input as read
        with tempfile.TemporaryDirectory() as tmp:
            readable = Path(tmp) / "input.dcm"
            if _reencode(input_path, readable):
                before = dciodvfy_errors(readable)
    after = dciodvfy_errors(output_path)
    if _READ_FAILED in before:  # still unreadable (truncated): not valid in, so only
        after = [e for e in after if "read failed" in e]  # the output must read as far
    gained = Counter(after) - Counter(before)
    return sorted(gained.elements())


_READ_FAILED = "Error - Dicom dataset read failed"


def _reencode(source: Path, target: Path) -> bool:
    """Write ``source`` as pydicom reads it (deflate undone), for dciodvfy; False if unreadable."""
    try:
        ds = pydicom.dcmread(source)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
        return False
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not syntax.is_implicit_VR and not all(e.VR for e in ds.elements()):
        for _elem in ds.iterall():  # an implicit-VR data set under an explicit syntax: give VRs
            pass
    ds.save_as(target, enforce_file_format=False)
    return True


def new_dciodvfy_errors_many(
    pairs: Iterable[tuple[Path, Path]], workers: int | None = None
) -> dict[Path, list[str]]:
    """:func:`new_dciodvfy_errors` over many ``(input, output)`` pairs, in parallel.

    Returns
    -------
    dict of Path to list of str
        Output path -> its new errors, only for outputs that gained some.
    """
    todo: Sequence[tuple[Path, Path]] = list(pairs)
    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        found = list(pool.map(lambda pair: new_dciodvfy_errors(*pair), todo))
    return {out: errors for (_, out), errors in zip(todo, found, strict=True) if errors}


def output_pairs(release: Path, quarantine: Path, table: Any) -> list[tuple[Path, Path]]:
    """``(input, output)`` for every file the de-identify stage released or held.

    Parameters
    ----------
    release, quarantine : Path
        The batch's ``release/`` and ``phi/quarantine/`` folders (outputs are found by name
        anywhere under them, so new kinds of held files are included as they appear).
    table : pandas.DataFrame
        The disposition table (``source_path``, ``output_name``).

    Returns
    -------
    list of (Path, Path)
        Sorted by input path.
    """
    found = {
        p.name: p for root in (release, quarantine) if root.exists() for p in root.rglob("*.dcm")
    }
    pairs = [
        (Path(str(source)), found[str(name)])
        for source, name in zip(table["source_path"], table["output_name"], strict=True)
        if isinstance(name, str) and name in found
    ]
    return sorted(pairs)
