"""Google target against fake-gcs-server and the Datastore emulator."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sendit_helpers.errors import UploadError
from sendit_helpers.targets import google as google_target
from sendit_helpers.targets.google import GoogleTarget
from sendit_helpers.upload import load_release, upload_batch
from tests.conftest_servers import ReleaseFactory

pytestmark = pytest.mark.servers


def _clients(env: dict[str, Any]) -> tuple[Any, Any]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import datastore, storage

    project = env["GOOGLE_PROJECT_NAME"]
    return (
        storage.Client(project=project, credentials=AnonymousCredentials()),
        datastore.Client(project=project),
    )


def test_objects_and_records(
    google_env: dict[str, Any], make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=2, images=3, long_text=True)
    settings = {**upload_settings, **google_env}
    manifest = upload_batch(layout, settings, progress=False)
    assert (manifest.drop_duplicates("item", keep="last")["status"] == "verified").sum() == 6
    gcs, ds = _clients(google_env)
    items, _ = load_release(layout, settings)
    bucket = gcs.bucket(google_env["GOOGLE_CLOUD_STORAGE"])
    for item in items:
        blob = bucket.get_blob(f"IRB41449/{item.key}")
        assert blob is not None and blob.content_type == "application/dicom"
        assert blob.md5_hash == base64.b64encode(bytes.fromhex(item.md5)).decode()
    acl = bucket.blob(f"IRB41449/{items[0].key}").acl
    acl.reload()
    assert {e["role"] for e in acl} >= {"OWNER"} and not any(
        e["entity"] in ("allUsers", "allAuthenticatedUsers") for e in acl
    )
    coll = ds.key("Collection", "IRB41449")
    assert ds.get(coll) is not None
    entity = ds.get(ds.key("Entity", "IR661f30", parent=coll))
    assert (
        entity["PatientSex"] == "F"
        and entity["PatientAgeYears"] == 30
        and entity["IMAGE_COUNT"] == 3
    )
    image = ds.get(ds.key("Entity", "IR661f30", "Image", "IR661f30_5_1.dcm", parent=coll))
    assert (
        image["url"]
        == f"gs://{google_env['GOOGLE_CLOUD_STORAGE']}/IRB41449/IR661f30/IR661f30_5_1.dcm"
    )
    assert image["md5"] == items[0].md5 and image["content_type"] == "application/dicom"
    assert image["size"] == items[0].size and image["generation"] and image["crc32c"]
    assert image["Modality"] == "MR" and image["SeriesNumber"] == 5
    assert {"ProcedureCodeSequence.CodeMeaning", "SeriesDescription"} <= set(
        image.exclude_from_indexes
    )


def test_rerun_is_create_once(
    google_env: dict[str, Any], make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=2)
    settings = {**upload_settings, **google_env}
    upload_batch(layout, settings, progress=False)
    items, _ = load_release(layout, settings)
    target = GoogleTarget(settings)
    try:
        receipt = target.put(items[0])  # 412 -> same md5 -> exists
        assert receipt.status == "exists"
        gcs, _ = _clients(google_env)
        blob = gcs.bucket(google_env["GOOGLE_CLOUD_STORAGE"]).blob(f"IRB41449/{items[1].key}")
        blob.upload_from_string(b"different", if_generation_match=None)
        with pytest.raises(
            UploadError, match=r"already exists with different content.*IR661f30_5_2\.dcm"
        ):
            target.put(items[1])
    finally:
        target.close()


def test_commits_stay_under_limits(
    google_env: dict[str, Any],
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,200 tiny images in one entity: every Datastore commit holds <= 500 mutations."""
    from google.cloud import datastore

    sizes: list[int] = []
    real_commit = datastore.Batch.commit

    def counting_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(self.mutations))
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(datastore.Batch, "commit", counting_commit)
    layout = make_release(entities=1, images=1200, tiny=True)
    upload_batch(layout, {**upload_settings, **google_env, "UPLOAD_THREADS": 16}, progress=False)
    assert sum(sizes) == 1 + 1 + 1200 and max(sizes) <= 500 and len(sizes) == 3
    _, ds = _clients(google_env)
    query = ds.query(kind="Image", ancestor=ds.key("Collection", "IRB41449"))
    assert len(list(query.fetch())) == 1200


def test_commit_chunks_respect_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import datastore

    monkeypatch.setattr(google_target, "MAX_COMMIT_BYTES", 10_000)
    key = datastore.Key("Image", "x", project="p")
    records = []
    for _ in range(30):
        entity = datastore.Entity(key=key, exclude_from_indexes=("blob",))
        entity["blob"] = "y" * 1000
        records.append(entity)
    chunks = list(google_target.chunk_commits(records, datastore))
    assert all(sum(n for _, n in c) <= 10_000 for c in chunks) and len(chunks) >= 3
    assert sum(len(c) for c in chunks) == 30


def test_missing_credentials_file_is_named(
    upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("STORAGE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    settings = {
        **upload_settings,
        "SEND_TO_GOOGLE": True,
        "GOOGLE_CLOUD_STORAGE": "b",
        "GOOGLE_PROJECT_NAME": "p",
    }
    with pytest.raises(
        UploadError, match=r"GOOGLE_APPLICATION_CREDENTIALS names /nonexistent/key\.json"
    ):
        GoogleTarget(settings).check()
