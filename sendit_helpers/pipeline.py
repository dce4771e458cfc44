"""``sendit run``: find batches and run every stage on each, through papermill.

A folder whose DICOM files all belong to one study is a batch (a folder
holding no files but one sub-folder is looked into: that sub-folder is the
batch); any other folder given is a root, searched for batches below it.  A failing batch does
not stop the others; the run ends with a status table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom

from .dicomio import READ_ERRORS
from .errors import BatchError, SenditError
from .layout import BatchLayout
from .runner import Stage, run_stage

log = logging.getLogger("sendit")

PIPELINE = (Stage.INSPECT, Stage.DEIDENTIFY, Stage.REVIEW, Stage.UPLOAD)


@dataclass
class BatchStatus:
    """How one batch fared in a run."""

    batch: str
    status: str
    stage: str = ""
    detail: str = ""


def _study_of(folder: Path) -> str | None:
    """StudyInstanceUID of the first readable DICOM file directly in ``folder``."""
    for entry in sorted(folder.iterdir()):
        if not entry.is_file():
            continue
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except READ_ERRORS:
            continue
        return str(ds.get("StudyInstanceUID", "")) or None
    return None


def _studies(folder: Path, cache: dict[Path, set[str]]) -> set[str]:
    if folder not in cache:
        found: set[str] = set()
        here = _study_of(folder)
        if here:
            found.add(here)
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            found |= _studies(child, cache)
        cache[folder] = found
    return cache[folder]


def find_batches(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve batch folders and roots to the list of batch folders.

    Raises
    ------
    BatchError
        When a path does not exist or holds no DICOM study.
    """
    cache: dict[Path, set[str]] = {}
    batches: list[Path] = []

    def walk(folder: Path) -> None:
        studies = _studies(folder, cache)
        children = [
            p
            for p in sorted(folder.iterdir())
            if p.is_dir() and not p.is_symlink() and _studies(p, cache)
        ]
        has_files = any(p.is_file() for p in folder.iterdir())
        if len(studies) == 1 and (has_files or len(children) != 1):
            batches.append(folder)
            return
        for child in children:
            walk(child)

    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise BatchError(f"{path} is not a folder; pass batch folders or a root holding them")
        before = len(batches)
        walk(path)
        if len(batches) == before:
            raise BatchError(f"{path} holds no readable DICOM study; check the path")
    return batches


def run_batch(
    layout: BatchLayout,
    stages: Sequence[Stage],
    params: Sequence[str | os.PathLike[str]],
    overrides: Mapping[str, Any],
) -> BatchStatus:
    """Run ``stages`` in order on one batch; stop at the first failure."""
    for stage in stages:
        try:
            run_stage(stage, layout, params_files=params, overrides=overrides)
        except SenditError as exc:
            return BatchStatus(layout.name, "failed", str(stage), str(exc))
    return BatchStatus(layout.name, "done", str(stages[-1]) if stages else "")


def run_batches(
    paths: Iterable[str | os.PathLike[str]],
    work: str | os.PathLike[str],
    params: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run the pipeline on every batch found; print a status table; return the exit status."""
    stages = [s for s in PIPELINE if s.source().exists()]
    statuses = []
    for folder in find_batches(paths):
        layout = BatchLayout.for_batch(folder, work)
        status = run_batch(layout, stages, params, overrides or {})
        log.info(
            "batch %s: %s%s",
            status.batch,
            status.status,
            f" at {status.stage}" if status.status != "done" else "",
        )
        statuses.append(status)
    table = pd.DataFrame([vars(s) for s in statuses])
    print(table.to_string(index=False))
    return 0 if all(s.status == "done" for s in statuses) else 1
