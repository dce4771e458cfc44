"""The work-folder contract every stage follows.

``WORK/<batch>/phi/`` holds everything that may contain PHI (inspect tables,
executed notebooks, lookup tables, quarantined images, keys);
``WORK/<batch>/release/`` holds only what may leave the site.  ``<batch>`` is
the input folder's name: it names the work folder but is never written
*inside* ``release/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BatchError

PHI_MODE = 0o700


@dataclass(frozen=True)
class BatchLayout:
    """Paths of one batch's work folder.

    Parameters
    ----------
    source : Path
        The input batch folder (read only, never modified).
    work : Path
        The work root shared by all batches of a run.
    """

    source: Path
    work: Path

    @classmethod
    def for_batch(cls, source: str | os.PathLike[str], work: str | os.PathLike[str]) -> BatchLayout:
        """Build the layout of ``source`` under ``work`` with absolute paths."""
        return cls(Path(source).expanduser().resolve(), Path(work).expanduser().resolve())

    @property
    def name(self) -> str:
        """The batch name: the input folder's name."""
        return self.source.name

    @property
    def root(self) -> Path:
        return self.work / self.name

    @property
    def phi(self) -> Path:
        return self.root / "phi"

    @property
    def release(self) -> Path:
        return self.root / "release"

    @property
    def inspect_dir(self) -> Path:
        return self.phi / "inspect"

    @property
    def deid_dir(self) -> Path:
        return self.phi / "deidentify"

    @property
    def quarantine(self) -> Path:
        return self.phi / "quarantine"

    @property
    def review_dir(self) -> Path:
        return self.phi / "review"

    @property
    def upload_dir(self) -> Path:
        return self.phi / "upload"

    @property
    def notebooks_dir(self) -> Path:
        return self.phi / "notebooks"

    @property
    def disposition_csv(self) -> Path:
        return self.phi / "disposition.csv"

    @property
    def gate_record(self) -> Path:
        return self.phi / "leak_gate.json"

    def check_source(self) -> None:
        """Raise :class:`BatchError` unless the batch folder exists and holds files."""
        if not self.source.is_dir():
            raise BatchError(
                f"batch folder {self.source} does not exist or is not a folder; "
                "pass the folder that holds one study's DICOM files"
            )
        if not any(p.is_file() for p in self.source.rglob("*")):
            raise BatchError(f"batch folder {self.source} is empty; it holds no files to process")
        if self.work == self.source or self.work.is_relative_to(self.source):
            raise BatchError(
                f"work folder {self.work} lies inside batch folder {self.source}; "
                "choose a work folder outside the input so inputs stay untouched"
            )

    def ensure(self) -> BatchLayout:
        """Create ``phi/`` (owner-only) and ``release/``; return ``self``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.phi.mkdir(mode=PHI_MODE, exist_ok=True)
        os.chmod(self.phi, PHI_MODE)
        self.release.mkdir(exist_ok=True)
        return self
