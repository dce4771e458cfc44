"""Uploads true to their destination (issue 12, points 1-3).

1. What is sent is what was gated: a file edited after the gate check is refused, the
   rest verified; every stage command holds the batch lock.
2. Destinations have an identity: a new store, Orthanc or bucket receives everything; a
   destination that lost what the manifest calls verified is refilled by the rerun.
3. Entities are right: ``IMAGE_COUNT`` counts the Images under the Entity in the
   destination after two batches of one patient (local index and Datastore).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord
from sendit_helpers.run import cli, pipeline, runner, upstream
from sendit_helpers.run.runner import Stage, open_batch
from sendit_helpers.samples import batchspec, synthetic
from sendit_helpers.stages.query import find_entities, find_images
from sendit_helpers.stages.upload import (
    MISSING,
    VERIFIED,
    Manifest,
    load_release,
    still_uploaded,
    upload_batch,
)
from sendit_helpers.targets import ChangedError, Item, Target
from sendit_helpers.targets.base import RACY_NS, public_url
from sendit_helpers.targets.dicom import OrthancDicomTarget
from sendit_helpers.targets.local import LocalTarget
from sendit_helpers.targets.orthanc import OrthancRestTarget
from tests.conftest_servers import ReleaseFactory
from tests.servers import FakeGcsServer, OrthancServer

VICTIM = "IR661f30/IR661f30_5_2.dcm"


def _latest(layout: BatchLayout) -> pd.DataFrame:
    table = Manifest(layout.upload_dir / "manifest.csv").read()
    return table.drop_duplicates(["item", "destination"], keep="last")


def _edit(path: Path) -> None:
    """Put a patient name where the released file holds its pseudonym (same length)."""
    data = path.read_bytes()
    assert b"IR661f30" in data
    path.write_bytes(data.replace(b"IR661f30", b"DOE^JANE"))


def _edit_in_prepare(monkeypatch: pytest.MonkeyPatch, cls: type[Target]) -> None:
    """Make ``cls.prepare`` edit release/VICTIM: after the gate check, before any send."""
    real = cls.prepare

    def prepare(self: Target, items: Sequence[Item]) -> None:
        real(self, items)
        _edit(next(i.path for i in items if i.key == VICTIM))

    monkeypatch.setattr(cls, "prepare", prepare)


REFUSED = (
    r"1 of 6 item\(s\) to {kind} did not go \(first error: release/IR661f30/IR661f30_5_2\.dcm "
    r"changed after the leak gate passed; re-run deidentify"
)


# -- 1. what is sent is what was gated -----------------------------------------------------
def test_file_edited_after_gate_is_refused_local(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_release(entities=2, images=3)
    gated = {p.relative_to(layout.release).as_posix(): p.read_bytes() for p in
             layout.release.rglob("*.dcm")}  # fmt: skip
    _edit_in_prepare(monkeypatch, LocalTarget)
    with pytest.raises(UploadError, match=REFUSED.format(kind="local")):
        upload_batch(layout, upload_settings, progress=False)
    latest = _latest(layout).set_index("item")
    assert latest.loc[VICTIM, "status"] == "failed"
    assert (latest.drop(index=VICTIM)["status"] == VERIFIED).all() and len(latest) == 6
    store = layout.work / "storage" / "sendit"
    assert not (store / VICTIM).exists()
    for key, row in latest.drop(index=VICTIM).iterrows():
        sent = (store / str(key)).read_bytes()
        assert sent == gated[str(key)]
        assert row["checksum"] == hashlib.sha256(sent).hexdigest()  # SHA-256 of what was sent
    assert b"DOE^JANE" not in b"".join(p.read_bytes() for p in store.rglob("*.dcm"))


def test_item_load_checks_the_bytes_against_the_gate(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=1)
    (item,), _ = load_release(layout, upload_settings, gaterecord.passed_index(layout))
    gated = item.path.read_bytes()
    loaded = item.load()
    _edit(item.path)
    assert loaded.read() == gated  # what was checked is what is sent, whatever the disk says
    with loaded.sent_file() as copy:
        assert copy.read_bytes() == gated
    with pytest.raises(
        ChangedError,
        match=r"^release/IR661f30/IR661f30_5_1\.dcm changed after the leak gate passed; "
        r"re-run deidentify",
    ):
        item.load()


def test_item_load_trusts_the_gate_signature_only_while_the_file_is_unchanged(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=2)
    index = gaterecord.passed_index(layout)
    (fresh, _), _ = load_release(layout, upload_settings, index, time.time_ns())
    assert fresh.signature is None  # changed within RACY_NS of the check: hashed on load
    later = time.time_ns() + 2 * RACY_NS  # as if the gate check ran well after the writes
    (item, other), _ = load_release(layout, upload_settings, index, later)
    assert item.signature == tuple(index[item.key][1:])
    gated = item.path.read_bytes()
    # same stat signature as the gate recorded: not hashed again (a wrong SHA-256 shows it)
    assert replace(item, sha256="0" * 64).load().read() == gated
    other.path.chmod(0o600)  # a new change time, same bytes: hashed, and they match
    assert other.load().read() == other.path.read_bytes()
    _edit(item.path)  # same size; its change time moves on
    with pytest.raises(ChangedError, match=r"^release/IR661f30/IR661f30_5_1\.dcm changed after"):
        item.load()


@pytest.mark.servers
@pytest.mark.parametrize("protocol", ["rest", "dicom"])
def test_file_edited_after_gate_is_refused_orthanc(
    orthanc: OrthancServer,
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
) -> None:
    layout = make_release(entities=2, images=3)
    settings = _orthanc(upload_settings, orthanc, protocol)
    _edit_in_prepare(monkeypatch, OrthancRestTarget if protocol == "rest" else OrthancDicomTarget)
    with pytest.raises(UploadError, match=REFUSED.format(kind="orthanc")):
        upload_batch(layout, settings, progress=False)
    latest = _latest(layout).set_index("item")
    assert latest.loc[VICTIM, "status"] == "failed"
    assert (latest.drop(index=VICTIM)["status"] == VERIFIED).all()
    assert orthanc.instance_count() == 5
    names = {
        requests.get(f"{orthanc.url}/instances/{i}/simplified-tags", auth=orthanc.auth,
                     timeout=10).json()["PatientName"]
        for i in orthanc.instances()
    }  # fmt: skip
    assert names == {"IR661f30", "IR661f31"}


def test_stage_commands_hold_the_batch_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sendit deidentify` waits for a batch another process holds, and holds it itself."""
    batch = tmp_path / "in" / "b1"
    batch.mkdir(parents=True)
    (batch / "x.dcm").write_bytes(b"")
    layout = BatchLayout.for_batch(batch, tmp_path / "work").ensure()
    command = ["deidentify", str(batch), "--work", str(tmp_path / "work")]
    monkeypatch.setattr(pipeline, "LOCK_TIMEOUT", 0.3)
    with pipeline.batch_lock(layout):
        assert cli.main(command) == 1
    assert "is being run by another sendit process" in capsys.readouterr().err

    ran: list[Stage] = []

    def execute(stage: Stage, held: BatchLayout, *args: Any) -> Path:
        with pytest.raises(pipeline.LockError):  # held while the notebook would run
            with pipeline.batch_lock(held, timeout=0.1):
                pass
        ran.append(stage)
        return held.notebooks_dir / "nb.ipynb"

    monkeypatch.setattr(runner, "_execute", execute)
    assert cli.main(command) == 0
    assert ran == [Stage.DEIDENTIFY]


# -- 2. destinations have an identity ------------------------------------------------------
def _orthanc(base: dict[str, Any], server: OrthancServer, protocol: str = "rest") -> dict[str, Any]:
    return {
        **base,
        "SEND_TO_ORTHANC": True,
        "ORTHANC_PROTOCOL": protocol,
        "ORTHANC_URL": server.url,
        "ORTHANC_PORT": server.dicom_port,
        "ORTHANC_AE_TITLE": server.aet,
    }


def test_destination_ids_name_where_not_who(
    upload_settings: dict[str, Any], tmp_path: Path
) -> None:
    assert public_url("http://u:s3cret@LOCALHOST:8042/orthanc/?token=t#x") == (
        "http://localhost:8042/orthanc"
    )
    store = {**upload_settings, "LOCAL_STORAGE_DIR": str(tmp_path / "s")}
    assert LocalTarget(store, tmp_path).destination_id == f"local {tmp_path}/s/sendit"
    dicom = {**upload_settings, "ORTHANC_PORT": 4242, "ORTHANC_AE_TITLE": "PACS"}
    assert (
        OrthancDicomTarget(dicom).destination_id == "orthanc-dicom PACS@127.0.0.1:4242 from SENDIT"
    )


def test_new_local_store_receives_everything(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], tmp_path: Path
) -> None:
    layout = make_release(entities=2, images=3)
    upload_batch(layout, upload_settings, progress=False)
    second = {**upload_settings, "LOCAL_STORAGE_DIR": str(tmp_path / "second")}
    assert not still_uploaded(layout, second)
    upload_batch(layout, second, progress=False)
    assert len(list((tmp_path / "second" / "sendit").rglob("*.dcm"))) == 6
    assert len(find_images(second, layout.work)) == 6
    latest = _latest(layout)
    assert latest.groupby("destination")["status"].apply(
        lambda s: (s == VERIFIED).sum()
    ).to_dict() == {
        f"local {layout.work}/storage/sendit": 6,
        f"local {tmp_path}/second/sendit": 6,
    }


def test_emptied_local_store_is_refilled(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=2, images=3)
    assert not still_uploaded(layout, upload_settings)
    upload_batch(layout, upload_settings, progress=False)
    assert still_uploaded(layout, upload_settings)  # `sendit run` may skip the stage
    store = layout.work / "storage"
    (store / "sendit" / VICTIM).unlink()  # one file lost
    assert not still_uploaded(layout, upload_settings)  # `sendit run` runs the stage again
    upload_batch(layout, upload_settings, progress=False)
    assert still_uploaded(layout, upload_settings)
    assert (store / "sendit" / VICTIM).is_file()
    unusable = {**upload_settings, "SEND_TO_GOOGLE": True}  # no bucket: the stage says why
    assert not still_uploaded(layout, unusable)
    shutil.rmtree(store)  # the whole store lost, index included
    upload_batch(layout, upload_settings, progress=False)
    assert len(list(store.rglob("*.dcm"))) == 6
    rows = Manifest(layout.upload_dir / "manifest.csv").read()
    assert (rows["status"] == MISSING).sum() == 1 + 6
    assert (_latest(layout)["status"] == VERIFIED).all()


@pytest.mark.servers
def test_second_orthanc_receives_everything_and_emptied_one_is_refilled(
    orthanc: OrthancServer,
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    layout = make_release(entities=2, images=3)
    upload_batch(layout, _orthanc(upload_settings, orthanc), progress=False)
    assert orthanc.instance_count() == 6
    second = OrthancServer("orthanc2", tmp_path / "orthanc2").start()
    try:
        upload_batch(layout, _orthanc(upload_settings, second), progress=False)
        assert second.instance_count() == 6
        # the first one emptied between two runs: the rerun sees it and sends everything
        assert still_uploaded(layout, _orthanc(upload_settings, orthanc))
        for instance in orthanc.instances():
            requests.delete(f"{orthanc.url}/instances/{instance}", auth=orthanc.auth, timeout=10)
        assert orthanc.instance_count() == 0
        assert not still_uploaded(layout, _orthanc(upload_settings, orthanc))
        upload_batch(layout, _orthanc(upload_settings, orthanc), progress=False)
        assert orthanc.instance_count() == 6
        # over C-STORE (C-FIND confirms): emptied again, refilled again
        orthanc.delete_all()
        dicom = {**_orthanc(upload_settings, orthanc, "dicom"), "ORTHANC_URL": ""}
        upload_batch(layout, dicom, progress=False)
        assert orthanc.instance_count() == 6
        second.delete_all()
        upload_batch(layout, {**dicom, "ORTHANC_PORT": second.dicom_port}, progress=False)
        assert second.instance_count() == 6  # the DICOM destination of `second` is new: sent
    finally:
        second.kill()
    latest = _latest(layout)
    assert set(latest["status"]) == {VERIFIED}
    assert sorted(set(latest["destination"])) == sorted(
        [
            f"orthanc {orthanc.url}",
            f"orthanc {second.url}",
            f"orthanc-dicom ORTHANC@127.0.0.1:{orthanc.dicom_port} from SENDIT",
            f"orthanc-dicom ORTHANC@127.0.0.1:{second.dicom_port} from SENDIT",
        ]
    )


@pytest.mark.servers
def test_second_bucket_receives_everything(
    google_env: dict[str, Any],
    gcs_server: FakeGcsServer,
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    layout = make_release(entities=2, images=3)
    settings = {**upload_settings, **google_env}
    upload_batch(layout, settings, progress=False)
    bucket = f"{google_env['GOOGLE_CLOUD_STORAGE']}-2"
    gcs_server.create_bucket(bucket, google_env["GOOGLE_PROJECT_NAME"])
    upload_batch(layout, {**settings, "GOOGLE_CLOUD_STORAGE": bucket}, progress=False)
    client = storage.Client(
        project=settings["GOOGLE_PROJECT_NAME"], credentials=AnonymousCredentials()
    )
    try:
        for name in (google_env["GOOGLE_CLOUD_STORAGE"], bucket):
            assert len(list(client.list_blobs(name, prefix="IRB41449/"))) == 6
        # objects deleted from the first bucket: the rerun confirms and sends them again
        for blob in client.list_blobs(google_env["GOOGLE_CLOUD_STORAGE"]):
            blob.delete()
        upload_batch(layout, settings, progress=False)
        assert len(list(client.list_blobs(google_env["GOOGLE_CLOUD_STORAGE"]))) == 6
    finally:
        client.close()
    assert set(_latest(layout)["status"]) == {VERIFIED}


# -- 3. entities are right -----------------------------------------------------------------
SPEC = batchspec.BatchSpec(
    n_series=1, images_per_series=3, rows=16, columns=16, burned_in=False, junk=False
)


def _two_studies(tmp_path: Path) -> tuple[list[BatchLayout], int]:
    """Two batches (studies) of one patient, de-identified into one WORK."""
    layouts, total = [], 0
    for study, images in ((0, 3), (1, 4)):
        folder = tmp_path / "in" / f"study{study}"
        synthetic.make_batch(folder, replace(SPEC, study=study, images_per_series=images))
        layout, settings = open_batch(folder, tmp_path / "work", [], {"PROGRESS": False})
        upstream.deidentify(layout, settings)
        layouts.append(layout)
        total += images
    return layouts, total


def _entity(layouts: Sequence[BatchLayout]) -> str:
    ids = {
        str(e) for lay in layouts for e in pd.read_parquet(lay.release / "entities.parquet")["id"]
    }
    assert len(ids) == 1, "two studies of one patient are one entity"
    return ids.pop()


def _upload_twice(layouts: Sequence[BatchLayout], settings: dict[str, Any]) -> None:
    for layout in layouts:
        upload_batch(layout, settings, progress=False)
    (layouts[0].upload_dir / "manifest.csv").unlink()  # a rerun that forgot: no double count
    upload_batch(layouts[0], settings, progress=False)


def test_image_count_across_batches_local(tmp_path: Path, upload_settings: dict[str, Any]) -> None:
    layouts, total = _two_studies(tmp_path)
    eid = _entity(layouts)
    _upload_twice(layouts, upload_settings)
    work = layouts[0].work
    with sqlite3.connect(work / "storage" / "index.sqlite") as conn:
        count, stored = conn.execute(
            "SELECT IMAGE_COUNT, (SELECT count(*) FROM image WHERE entity_id = ?) FROM entity "
            "WHERE id = ?",
            (eid, eid),
        ).fetchone()
    assert count == stored == total == len(list((work / "storage").rglob("*.dcm")))
    entities = find_entities(upload_settings, work)
    assert entities.set_index("id").loc[eid, "IMAGE_COUNT"] == total
    assert len(find_images(upload_settings, work)) == total


@pytest.mark.servers
def test_image_count_across_batches_datastore(
    tmp_path: Path, google_env: dict[str, Any], upload_settings: dict[str, Any]
) -> None:
    from google.cloud import datastore

    layouts, total = _two_studies(tmp_path)
    eid = _entity(layouts)
    settings = {**upload_settings, **google_env}
    _upload_twice(layouts, settings)
    client = datastore.Client(project=settings["GOOGLE_PROJECT_NAME"])
    key = client.key("Collection", "IRB41449", "Entity", eid)
    record = client.get(key)
    assert record is not None
    assert {"id", "PatientSex", "PatientAge", "IMAGE_COUNT", "UPLOAD_AGENT"} <= set(record)
    assert record["id"] == eid
    query = client.query(kind="Image", ancestor=key)
    query.keys_only()
    assert record["IMAGE_COUNT"] == len(list(query.fetch())) == total
    entities = find_entities(settings, layouts[0].work)
    assert entities.set_index("id").loc[eid, "IMAGE_COUNT"] == total
    assert len(find_images(settings, layouts[0].work)) == total


def test_sendit_run_reruns_a_current_upload_when_the_store_lost_items(
    make_release: ReleaseFactory, tmp_path: Path
) -> None:
    """The upload stage's stamp is current only while the destination still holds everything."""
    from sendit_helpers.core.settings import load_settings
    from sendit_helpers.run.runner import notebook_path

    layout = make_release(entities=1, images=2)
    layout.source.mkdir(parents=True, exist_ok=True)
    (layout.source / "a.dcm").write_bytes(b"input")
    settings = load_settings(overrides={"PROGRESS": False}, environ={})
    upload_batch(layout, settings, progress=False)
    stages = (Stage.UPLOAD,)
    notebook_path(Stage.UPLOAD, layout).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    notebook_path(Stage.UPLOAD, layout).write_text("{}")
    pipeline.write_stamp(layout, Stage.UPLOAD, settings, 1.0, stages)
    assert pipeline.is_current(Stage.UPLOAD, layout, settings, stages)
    (layout.work / "storage" / "sendit" / "IR661f30" / "IR661f30_5_1.dcm").unlink()
    assert not pipeline.is_current(Stage.UPLOAD, layout, settings, stages)


@pytest.mark.servers
def test_image_count_rewritten_when_another_upload_moved_it(
    google_env: dict[str, Any],
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A count taken before another batch's images landed is corrected by the recount."""
    from sendit_helpers.targets.google import GoogleTarget

    layout = make_release(entities=1, images=3)
    settings = {**upload_settings, **google_env}
    real = GoogleTarget.image_counts
    calls: list[dict[str, int]] = []

    def stale_first(self: GoogleTarget, entity_ids: set[str]) -> dict[str, int]:
        counts = real(self, entity_ids)
        calls.append(counts)
        return {k: v - 1 for k, v in counts.items()} if len(calls) == 1 else counts

    monkeypatch.setattr(GoogleTarget, "image_counts", stale_first)
    upload_batch(layout, settings, progress=False)
    assert len(calls) == 3  # stale count written, recount differs and is written, recount agrees
    entities = find_entities(settings, layout.work)
    assert entities["IMAGE_COUNT"].tolist() == [3]
