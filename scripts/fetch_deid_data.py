"""Fetch the ``deid-data`` example DICOM files for the real-world tests.

Source: the ``deid-data`` package on PyPI (https://pypi.org/project/deid-data/),
deid's own example files: CR "dicom-cookies" with fake identities, CT heads,
ultrasounds with burned-in text, a cat.  It is published as an sdist only, so
it is downloaded with ``pip download --no-deps`` (the ordinary client, through
whatever index pip is configured for) and the archive's ``deid_data/data/``
folder is unpacked into DEST.  ``make test`` runs this into
``.venv/share/deid-data``, where ``tests/realworld.py`` looks for it.

Usage::

    python scripts/fetch_deid_data.py DEST   # no-op when DEST already holds this version
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.0.20"
MARKER = ".deid-data-version"


def fetch(dest: Path) -> Path:
    """Download deid-data ``VERSION`` and unpack its ``deid_data/data`` into ``dest``.

    Parameters
    ----------
    dest : Path
        The folder to create (replaced when it holds another version).

    Returns
    -------
    Path
        ``dest``.
    """
    marker = dest / MARKER
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"deid-data=={VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("deid*data-*.tar.gz"))
        prefix = f"{archive.name.removesuffix('.tar.gz')}/deid_data/data/"
        unpacked = Path(tmp) / "data"
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                if member.name.startswith(prefix) and member.isfile():
                    member.name = member.name[len(prefix) :]
                    members.append(member)
            tar.extractall(unpacked, members=members, filter="data")
        (unpacked / MARKER).write_text(VERSION + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        unpacked.rename(dest)
    return dest


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    print(f"deid-data {VERSION} in {fetch(args.dest)}")


if __name__ == "__main__":
    main()
