"""Fixtures for the upload tests: real servers and a tiny gated release.

Load as a plugin from ``tests/conftest.py``::

    pytest_plugins = ["tests.conftest_servers"]

Servers are session-scoped (started once, on free loopback ports) and isolated
per test (Orthanc: delete everything; Datastore: ``POST /reset``; GCS: a fresh
bucket).  A missing server binary FAILS the test with the package to install;
it never skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord
from tests.servers import (
    DatastoreEmulator,
    FakeGcsServer,
    OrthancServer,
    ServerMissing,
    ServerNotReady,
)

GOOGLE_PROJECT = "sendit-test"
ReleaseFactory = Callable[..., BatchLayout]


def _start(server: Any) -> Any:
    try:
        return server.start()
    except (ServerMissing, ServerNotReady) as exc:
        pytest.fail(str(exc), pytrace=False)


# -- servers -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the session (authentication on, no plugins)."""
    server = _start(OrthancServer("orthanc", tmp_path_factory.mktemp("orthanc")))
    yield server
    server.kill()  # in-memory / tmp storage: no need to wait for a clean shutdown


@pytest.fixture
def orthanc(orthanc_server: OrthancServer, monkeypatch: pytest.MonkeyPatch) -> OrthancServer:
    """The session Orthanc emptied, with its credentials in the environment."""
    orthanc_server.delete_all()
    monkeypatch.setenv("ORTHANC_USERNAME", orthanc_server.user)
    monkeypatch.setenv("ORTHANC_PASSWORD", orthanc_server.password)
    return orthanc_server


@pytest.fixture(scope="session")
def datastore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatastoreEmulator]:
    """One in-memory Datastore emulator for the session."""
    server = _start(DatastoreEmulator("datastore", tmp_path_factory.mktemp("datastore")))
    yield server
    server.kill()  # in-memory / tmp storage: no need to wait for a clean shutdown


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """One in-memory fake-gcs-server for the session."""
    server = _start(FakeGcsServer("fake-gcs", tmp_path_factory.mktemp("gcs")))
    yield server
    server.kill()  # in-memory / tmp storage: no need to wait for a clean shutdown


@pytest.fixture
def google_env(
    datastore_emulator: DatastoreEmulator,
    gcs_server: FakeGcsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Emulator hosts in the environment, an empty Datastore and a fresh bucket.

    Returns
    -------
    dict
        The Google settings (``SEND_TO_GOOGLE``, bucket, project, collection).
    """
    datastore_emulator.reset()
    bucket = f"sendit-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(bucket, GOOGLE_PROJECT)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator.host)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return {
        "SEND_TO_GOOGLE": True,
        "GOOGLE_CLOUD_STORAGE": bucket,
        "GOOGLE_PROJECT_NAME": GOOGLE_PROJECT,
        "GOOGLE_STORAGE_COLLECTION": "IRB41449",
    }


# -- settings and release ------------------------------------------------------------------
@pytest.fixture
def upload_settings(tmp_path: Path) -> dict[str, Any]:
    """Upload settings with every target off (the local store) and fast retries."""
    return {
        "SEND_TO_ORTHANC": False,
        "ORTHANC_PROTOCOL": "rest",
        "ORTHANC_URL": "",
        "ORTHANC_IPADDRESS": "127.0.0.1",
        "ORTHANC_PORT": 4747,
        "ORTHANC_AE_TITLE": "ORTHANC",
        "SENDIT_AE_TITLE": "SENDIT",
        "SEND_TO_GOOGLE": False,
        "GOOGLE_CLOUD_STORAGE": "",
        "GOOGLE_PROJECT_NAME": "",
        "GOOGLE_STORAGE_COLLECTION": "",
        "LOCAL_STORAGE_DIR": "",
        "UPLOAD_AGENT": "sendit-notebooks",
        "UPLOAD_THREADS": 8,
        "UPLOAD_RETRIES": 2,
    }


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make retry backoff milliseconds instead of seconds."""
    monkeypatch.setattr("sendit_helpers.stages.upload.BACKOFF_BASE", 0.01)


SEXES = ("F", "M", "O")
MODALITIES = ("CT", "MR", "US")
BODY_PARTS = ("KNEE", "CHEST", "Head")
"""BodyPartExamined per entity; the last one not upper-case, as some scanners write it."""


def _dataset(
    entity: str, index: int, series: int, uids: tuple[str, str], *, tiny: bool
) -> Dataset:
    """A small Secondary Capture instance; ``tiny`` omits the pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = entity
    ds.PatientName = entity
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids
    ds.SeriesNumber = series
    ds.InstanceNumber = index
    ds.Modality = MODALITIES[index % len(MODALITIES)]
    ds.BodyPartExamined = BODY_PARTS[(int(entity[2:], 16) - 0x661F30) % len(BODY_PARTS)]
    if not tiny:
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(16))
    return ds


def build_release(
    root: Path,
    *,
    entities: int = 2,
    images: int = 3,
    tiny: bool = False,
    long_text: bool = False,
) -> BatchLayout:
    """Write a gated ``release/`` with ``entities`` x ``images`` files and both tables."""
    layout = BatchLayout.for_batch(root / "incoming" / "batch1", root / "work").ensure()
    rows, ents = [], []
    for e in range(entities):
        eid = f"IR{0x661F30 + e:06x}"
        sex, age = SEXES[e % len(SEXES)], f"{30 + 10 * e:03d}Y"
        study_uid = generate_uid()
        series_uids = {m: generate_uid() for m in MODALITIES}  # a series has one modality
        (layout.release / eid).mkdir(parents=True, exist_ok=True)
        for i in range(1, images + 1):
            uids = (study_uid, series_uids[MODALITIES[i % len(MODALITIES)]])
            ds = _dataset(eid, i, 5, uids, tiny=tiny)
            name = f"{eid}_5_{i}.dcm"
            row = _row(eid, name, ds, sex, age, long_text)
            for kept in ("PatientSex", "PatientAge", "SeriesDescription", "StudyDescription"):
                setattr(ds, kept, row[kept])  # the file says what its cleaned row says
            ds.save_as(layout.release / eid / name, enforce_file_format=True)
            rows.append(row)
        ents.append(
            {"id": eid, "PatientSex": sex, "PatientAge": age, "IMAGE_COUNT": images,
             "UPLOAD_AGENT": "sendit-notebooks"}
        )  # fmt: skip
    pd.DataFrame(rows).to_parquet(layout.release / "cleaned.parquet")
    pd.DataFrame(ents).to_parquet(layout.release / "entities.parquet")
    gaterecord.write_record(layout, n_files=entities * images, n_values=0)
    return layout


def _row(eid: str, name: str, ds: Dataset, sex: str, age: str, long_text: bool) -> dict[str, Any]:
    return {
        "name": name,
        "entity_id": eid,
        "item_id": name.removesuffix(".dcm"),
        "path": f"{eid}/{name}",
        "Modality": ds.Modality,
        "BodyPartExamined": ds.BodyPartExamined,
        "PatientSex": sex,
        "PatientAge": age,
        "SeriesNumber": int(ds.SeriesNumber),
        "InstanceNumber": int(ds.InstanceNumber),
        "SeriesDescription": f"{ds.Modality} chest series",
        "StudyDescription": "knee follow-up" if eid.endswith("0") else "head scan",
        "ProcedureCodeSequence.CodeMeaning": "x" * 2000 if long_text else "imaging",
        "ContrastBolusAgent": None,
    }


@pytest.fixture
def make_release(tmp_path: Path) -> ReleaseFactory:
    """Factory: ``make_release(entities=2, images=3, tiny=False)`` -> gated BatchLayout."""

    def make(**kwargs: Any) -> BatchLayout:
        return build_release(tmp_path, **kwargs)

    return make
