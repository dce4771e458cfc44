"""Upload targets: Orthanc (REST or DICOM), Google (Storage + Datastore), local store.

One small interface (:class:`Target`), one implementation per destination,
chosen by settings with :func:`make_targets`.  Optional client libraries
(pynetdicom, google-cloud-*) are imported only by the target that needs them.
``targets`` imports only ``core`` (``tests/test_layers.py`` enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import (
    ChangedError,
    ConflictError,
    Entity,
    Item,
    Receipt,
    Target,
    TargetKind,
    TransientError,
)
from sendit_helpers.targets.local import LocalTarget

__all__ = [
    "ChangedError",
    "ConflictError",
    "Entity",
    "Item",
    "Receipt",
    "Target",
    "TargetKind",
    "TransientError",
    "make_targets",
]


def make_targets(settings: Mapping[str, Any], work: str | Path) -> list[Target]:
    """Build the targets the settings ask for.

    Parameters
    ----------
    settings : Mapping[str, Any]
        ``SEND_TO_ORTHANC`` (with ``ORTHANC_PROTOCOL`` ``"rest"`` or ``"dicom"``),
        ``SEND_TO_DICOMWEB`` (STOW-RS) and ``SEND_TO_GOOGLE`` choose the targets; when none
        is on, the local store is used.
    work : str or Path
        The work root (the local store defaults to ``<work>/storage``).

    Returns
    -------
    list[Target]
        Orthanc first, then DICOMweb, then Google; or just the local store.

    Raises
    ------
    SettingsError
        ``ORTHANC_PROTOCOL`` is neither ``rest`` nor ``dicom``.
    """
    chosen = typed(settings).targets
    targets: list[Target] = []
    if chosen.orthanc.send:
        targets.append(_orthanc(settings))
    if chosen.dicomweb.send:
        from sendit_helpers.targets.dicomweb import DicomWebTarget

        targets.append(DicomWebTarget(settings))
    if chosen.google.send:
        from sendit_helpers.targets.google import GoogleTarget

        targets.append(GoogleTarget(settings))
    if not targets:
        targets.append(LocalTarget(settings, Path(work)))
    return targets


def _orthanc(settings: Mapping[str, Any]) -> Target:
    from sendit_helpers.targets.dicom import OrthancDicomTarget
    from sendit_helpers.targets.orthanc import OrthancRestTarget

    protocol = typed(settings).targets.orthanc.protocol.lower()
    if protocol == "rest":
        return OrthancRestTarget(settings)
    if protocol == "dicom":
        return OrthancDicomTarget(settings)
    raise SettingsError(
        f"setting ORTHANC_PROTOCOL is {protocol!r}; "
        "use 'rest' (POST /instances) or 'dicom' (C-STORE)"
    )
