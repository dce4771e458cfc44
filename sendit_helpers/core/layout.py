"""The work-folder contract every stage follows.

``WORK/<batch>/phi/`` holds everything that may contain PHI (inspect tables,
executed notebooks, lookup tables, quarantined images, keys);
``WORK/<batch>/release/`` holds only what may leave the site.  ``<batch>`` is
the input folder's name: it names the work folder but is never written
*inside* ``release/``.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from sendit_helpers.core.errors import BatchError

PHI_MODE = 0o700
#: Mode of every file under ``phi/`` (:func:`secure_phi`).
PHI_FILE_MODE = 0o600
#: ``phi/source.json``: the input folder a work folder belongs to.
SOURCE_RECORD = "source.json"
#: ``release/cleaned.parquet`` and ``release/entities.parquet``: the release tables (the only
#: files in release/ outside the entity folders), and the quarantined images' cleaned rows.
CLEANED_FILE = "cleaned.parquet"
ENTITIES_FILE = "entities.parquet"
HELD_FILE = "quarantined.parquet"


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
    loose: bool = False
    """The batch is a root folder's *loose* inputs: its own files and the sub-folders
    that hold no DICOM study (see :mod:`sendit_helpers.core.discovery`), not the study
    folders below it."""

    @classmethod
    def for_batch(
        cls,
        source: str | os.PathLike[str],
        work: str | os.PathLike[str],
        loose: bool | None = None,
    ) -> BatchLayout:
        """Build the layout of ``source`` under ``work`` with absolute paths.

        ``loose`` None takes it from the work folder's ``phi/source.json``
        (so a stage notebook, given only the folder, treats a loose batch as one).
        """
        src = Path(source).expanduser().resolve()
        root = Path(work).expanduser().resolve()
        if loose is None:
            loose = _recorded_loose(root / src.name / "phi" / SOURCE_RECORD, src)
        return cls(src, root, loose)

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
    def cleaned_table(self) -> Path:
        """``release/cleaned.parquet``: one row per released image (:mod:`stages.release`)."""
        return self.release / CLEANED_FILE

    @property
    def entities_table(self) -> Path:
        """``release/entities.parquet``: one row per entity (owner: :mod:`stages.release`)."""
        return self.release / ENTITIES_FILE

    @property
    def held_table(self) -> Path:
        """``phi/deidentify/quarantined.parquet``: the cleaned rows of quarantined images."""
        return self.deid_dir / HELD_FILE

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

    @property
    def source_record(self) -> Path:
        """``phi/source.json``: the input folder this work folder belongs to."""
        return self.phi / SOURCE_RECORD

    def check_source(self) -> None:
        """Raise :class:`BatchError` unless the batch folder exists and holds files."""
        if not self.source.is_dir():
            raise BatchError(
                f"batch folder {self.source} does not exist or is not a folder; "
                "pass the folder that holds one study's DICOM files"
            )
        if self.loose:
            return  # made of what a root holds besides its studies; the work folder is left out
        if not any(p.is_file() for p in self.source.rglob("*")):
            raise BatchError(f"batch folder {self.source} is empty; it holds no files to process")
        if self.work == self.source or self.work.is_relative_to(self.source):
            raise BatchError(
                f"work folder {self.work} lies inside batch folder {self.source}; "
                "choose a work folder outside the input so inputs stay untouched"
            )

    def ensure(self) -> BatchLayout:
        """Create ``phi/`` (owner-only) and ``release/``, claim the work folder; return ``self``.

        Raises
        ------
        BatchError
            When the work folder belongs to another input folder of the same
            name (:meth:`claim`).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.phi.mkdir(mode=PHI_MODE, exist_ok=True)
        os.chmod(self.phi, PHI_MODE)
        self.claim()
        self.release.mkdir(exist_ok=True)
        return self

    def claim(self) -> None:
        """Tie ``WORK/<batch>`` to this input folder, or refuse another one of the same name.

        On first use ``phi/source.json`` records the resolved input folder
        (created atomically: of two runs claiming at once, one wins).  Later
        uses must come from that same folder: a different folder with the
        same name would otherwise overwrite or mix its lookup (the only way
        back to the patient), dispositions and upload manifest.

        Raises
        ------
        BatchError
            When ``phi/source.json`` names another folder (or is unreadable).
        """
        record = self.source_record
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not claimed yet (or unreadable: refused below)
            if self._claim_new(record):
                return
            try:  # claimed by another run meanwhile, or unreadable
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
        if not isinstance(data, dict) or "source" not in data:
            raise BatchError(
                f"{record} is unreadable, so it is not known which input folder the work folder "
                f"{self.root} belongs to; restore it, or run {self.source} with another --work"
            )
        if data["source"] != os.fsdecode(self.source):
            raise BatchError(
                f"work folder {self.root} belongs to the input folder {data['source']} (recorded "
                f"in {record}), not to {self.source}, which has the same name; run it with another "
                f"--work folder, or rename the input folder so its name is new (if the batch "
                f"itself moved, move it back or run it with another --work)"
            )
        if (
            data.get("loose", False) is not self.loose
        ):  # the folder became (or stopped being) a root
            fresh = record.with_name(f".{record.name}.{uuid.uuid4().hex}.tmp")
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PHI_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._record(), fh)
            os.replace(fresh, record)

    def _claim_new(self, record: Path) -> bool:
        """Create ``record`` naming this folder, atomically; False when it exists already."""
        tmp = record.with_name(f".{record.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PHI_FILE_MODE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._record(), fh)
            try:
                os.link(tmp, record)
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: exclusive create instead
                try:
                    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PHI_FILE_MODE)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(self._record(), fh)
                return True
        finally:
            tmp.unlink(missing_ok=True)

    def _record(self) -> dict[str, object]:
        return {"source": os.fsdecode(self.source), "loose": self.loose}

    def secure_phi(self) -> None:
        """Make everything under ``phi/`` owner-only: folders 0700, files 0600.

        Called after each stage (pandas, pyarrow, papermill and ``json`` write
        with the process umask, usually 0644); links are left alone.
        """
        secure_tree(self.phi)


def secure_tree(root: Path) -> None:
    """Set folders under ``root`` (itself included) to 0700 and regular files to 0600."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        _chmod(folder, PHI_MODE)
        for name in (*dirs, *files):
            _chmod(os.path.join(folder, name), None)


def _chmod(path: str, mode: int | None) -> None:
    try:
        st = os.lstat(path)
        if mode is None:
            if stat.S_ISDIR(st.st_mode):
                return  # os.walk visits it as a folder
            if not stat.S_ISREG(st.st_mode):
                return
            mode = PHI_FILE_MODE
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        return  # removed meanwhile (a stage's temporary file)


def _recorded_loose(record: Path, source: Path) -> bool:
    """True when ``record`` (``phi/source.json``) ties its folder to ``source`` as loose."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("source") == os.fsdecode(source)
        and data.get("loose") is True
    )
