"""Google target against fake-gcs-server and the Datastore emulator."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from sendit_helpers.core.errors import UploadError
from sendit_helpers.stages.upload import load_release, upload_batch
from sendit_helpers.targets import ConflictError, Receipt, TransientError
from sendit_helpers.targets import google as google_target
from sendit_helpers.targets.google import GoogleTarget
from tests.conftest_servers import GOOGLE_PROJECT, ReleaseFactory
from tests.servers import DatastoreEmulator, FakeGcsServer

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
    google_env: dict[str, Any],
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # records of 4 images are written while the uploads go on, the last 2 at the end
    monkeypatch.setattr(GoogleTarget, "entity_batch", 4)
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
            ConflictError, match=r"IR661f30_5_2\.dcm not stored: .* already stored with different"
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
    monkeypatch.setattr(GoogleTarget, "entity_batch", 0)  # all records at the end: 3 commits
    layout = make_release(entities=1, images=1200, tiny=True)
    upload_batch(layout, {**upload_settings, **google_env, "UPLOAD_THREADS": 16}, progress=False)
    # collection + images in 3 commits, then the entity with its counted IMAGE_COUNT in one
    assert sum(sizes) == 1 + 1 + 1200 and max(sizes) <= 500 and len(sizes) == 4
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


# -- faults: a server stops mid-upload, the rerun completes exactly once --------------------
def _present_once(env: dict[str, Any], items: list[Any]) -> None:
    """Every item is one object with its MD5 and one Image record, and nothing else."""
    gcs, ds = _clients(env)
    blobs = {b.name: b.md5_hash for b in gcs.list_blobs(env["GOOGLE_CLOUD_STORAGE"])}
    assert blobs == {
        f"IRB41449/{i.key}": base64.b64encode(bytes.fromhex(i.md5)).decode() for i in items
    }
    query = ds.query(kind="Image", ancestor=ds.key("Collection", "IRB41449"))
    records = {(e.key.parent.name, e.key.name): e["md5"] for e in query.fetch()}
    assert records == {(i.entity_id, i.name): i.md5 for i in items}


@pytest.mark.usefixtures("fast_backoff")
def test_gcs_stopped_mid_upload_then_rerun(
    datastore_emulator: DatastoreEmulator,
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kill fake-gcs-server (filesystem backend) after 6 of 16 objects; the rerun completes."""
    root = tmp_path_factory.mktemp("gcs-fault")
    server = FakeGcsServer("fake-gcs-fault", root, backend="filesystem")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        datastore_emulator.reset()
        server.create_bucket("sendit-fault", GOOGLE_PROJECT)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator.host)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        env = {
            "SEND_TO_GOOGLE": True,
            "GOOGLE_CLOUD_STORAGE": "sendit-fault",
            "GOOGLE_PROJECT_NAME": GOOGLE_PROJECT,
            "GOOGLE_STORAGE_COLLECTION": "IRB41449",
        }
        settings = {**upload_settings, **env, "UPLOAD_THREADS": 2}
        layout = make_release(entities=2, images=8)
        done: list[str] = []

        def kill_after_six(receipt: Receipt) -> None:
            done.append(receipt.key)
            if len(done) == 6:
                server.kill()

        with pytest.raises(
            UploadError, match=r"upload incomplete: 16 of 16 item\(s\) to google did not go"
        ) as err:
            upload_batch(layout, settings, progress=False, on_item=kill_after_six)
        assert "connection failed" in str(err.value)
        assert 6 <= len(done) < 16

        server.start()  # same port, same filesystem root: the first objects are still there
        manifest = upload_batch(layout, settings, progress=False)
        latest = manifest.drop_duplicates(["item", "target"], keep="last")
        assert (latest["status"] == "verified").sum() == 16
        items, _ = load_release(layout, settings)
        reput = manifest[manifest["status"].isin(["stored", "exists"])].groupby("item").size()
        assert len(reput) == 16
        _present_once(env, items)
        again = upload_batch(layout, settings, progress=False)  # nothing left to do
        assert len(again) == len(manifest)
    finally:
        server.kill()


def _wait_for_grpc(project: str, timeout: float = 10.0) -> None:
    """Wait until a Datastore call goes through (gRPC backs off after a refused connection)."""
    from google.api_core.exceptions import ServiceUnavailable
    from google.cloud import datastore

    client = datastore.Client(project=project)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.get(client.key("Collection", "probe"), timeout=2)
                return
            except ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        client.close()


@pytest.mark.usefixtures("fast_backoff")
def test_datastore_stopped_mid_upload_then_rerun(
    gcs_server: FakeGcsServer,
    google_env: dict[str, Any],
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stop the Datastore emulator after the objects went: the rerun writes every record once."""
    emulator = DatastoreEmulator("datastore-fault", tmp_path_factory.mktemp("ds-fault"))
    try:
        emulator.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        monkeypatch.setenv("DATASTORE_EMULATOR_HOST", emulator.host)
        settings = {**upload_settings, **google_env, "UPLOAD_THREADS": 2}
        layout = make_release(entities=2, images=5)
        done: list[str] = []

        def stop_after_three(receipt: Receipt) -> None:
            done.append(receipt.key)
            if len(done) == 3:
                emulator.kill()

        with pytest.raises(
            UploadError, match=r"upload incomplete: 10 of 10 item\(s\) to google did not go"
        ) as err:
            upload_batch(layout, settings, progress=False, on_item=stop_after_three)
        assert "datastore" in str(err.value)

        emulator.start()  # same port; in-memory, so the records are gone but the objects stay
        _wait_for_grpc(google_env["GOOGLE_PROJECT_NAME"])
        manifest = upload_batch(layout, settings, progress=False)
        latest = manifest.drop_duplicates(["item", "target"], keep="last")
        assert (latest["status"] == "verified").sum() == 10
        monkeypatch.setenv("DATASTORE_EMULATOR_HOST", emulator.host)
        items, _ = load_release(layout, settings)
        _present_once(google_env, items)
    finally:
        emulator.kill()


# -- permissions -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("service", "role"),
    [
        ("storage", "roles/storage.objectAdmin on bucket b1"),
        ("datastore", "roles/datastore.user in project p1"),
    ],
)
def test_forbidden_names_key_file_and_role(
    tmp_path: Path, service: str, role: str
) -> None:
    from google.api_core.exceptions import Forbidden, PermissionDenied

    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "client_email": "up@p1.iam.example"}))
    for exc in (Forbidden("caller does not have storage.objects.create"), PermissionDenied("no")):
        err = google_target.translate_error(
            exc,
            service=service,
            what="uploading release/IR1/x.dcm",
            bucket="b1",
            project="p1",
            credentials=str(key),
        )
        assert err is not None and not isinstance(err, TransientError)
        text = str(err)
        assert f"GOOGLE_APPLICATION_CREDENTIALS={key}" in text and "up@p1.iam.example" in text
        assert role in text and "release/IR1/x.dcm" in text and "permission denied" in text
    forbidden = google_target.translate_error(
        Forbidden("x"), service=service, what="w", bucket="b1", project="p1", credentials=str(key)
    )
    assert "HTTP 403" in str(forbidden)

    err = google_target.translate_error(
        Forbidden("x"), service=service, what="w", bucket="b1", project="p1"
    )
    assert err is not None and "GOOGLE_APPLICATION_CREDENTIALS is not set" in str(err)
    assert role in str(err)


def test_forbidden_inside_target_is_an_upload_error(
    upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's own error context turns a 403 into the message (not a retry)."""
    from google.api_core.exceptions import Forbidden, ServiceUnavailable

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", "127.0.0.1:9")
    settings = {**upload_settings, "GOOGLE_CLOUD_STORAGE": "b1", "GOOGLE_PROJECT_NAME": "p1"}
    target = GoogleTarget(settings)
    with pytest.raises(UploadError, match=r"roles/storage\.objectAdmin on bucket b1") as err:
        with target._errors("storage", "listing the bucket"):
            raise Forbidden("denied")
    assert not isinstance(err.value, TransientError)
    with pytest.raises(TransientError, match="ServiceUnavailable while committing"):
        with target._errors("datastore", "committing 3 records"):
            raise ServiceUnavailable("down")
    with pytest.raises(ValueError, match="unrelated"):
        with target._errors("datastore", "x"):
            raise ValueError("unrelated")
