"""upload_batch: leak-gate refusal, manifest resume, retries, and a killed Orthanc."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sendit_helpers.core.errors import GateError, UploadError
from sendit_helpers.stages.upload import (
    MANIFEST_COLUMNS,
    Manifest,
    load_release,
    summary,
    upload_batch,
    with_retries,
)
from sendit_helpers.targets import Item, Receipt, TargetKind, TransientError
from sendit_helpers.targets.base import request_chunks
from sendit_helpers.targets.local import LocalTarget
from tests.conftest_servers import ReleaseFactory, build_release
from tests.servers import OrthancServer


def test_refuses_without_gate_record(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=1)
    layout.gate_record.unlink()
    with pytest.raises(GateError, match=r"has no leak-gate record .*leak_gate\.json is missing"):
        upload_batch(layout, upload_settings, progress=False)
    assert not (layout.work / "storage").exists()


def test_refuses_changed_release(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=2)
    (layout.release / "IR661f30" / "IR661f30_5_2.dcm").write_bytes(b"changed after the gate")
    with pytest.raises(GateError, match="changed since the leak gate last passed"):
        upload_batch(layout, upload_settings, progress=False)
    assert not layout.upload_dir.exists()


def test_resume_after_interrupt(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    """A run stopped after 3 items resumes: only the rest is put, each item verified once."""
    layout = make_release(entities=2, images=5)
    upload_settings["UPLOAD_THREADS"] = 1
    seen: list[str] = []

    def stop_after_three(receipt: Receipt) -> None:
        seen.append(receipt.key)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_batch(layout, upload_settings, progress=False, on_item=stop_after_three)
    partial = Manifest(layout.upload_dir / "manifest.csv").read()
    assert list(partial.columns) == MANIFEST_COLUMNS
    assert set(partial["status"]) == {"stored"}

    upload_batch(layout, upload_settings, progress=False)
    upload_batch(layout, upload_settings, progress=False)  # nothing left to do
    manifest = Manifest(layout.upload_dir / "manifest.csv").read()
    assert (manifest["status"] == "verified").sum() == 10
    assert manifest.groupby("item").size().max() == 3  # stored, stored(exists), verified at most
    assert summary(manifest).drop(columns="destination").to_dict("records") == [
        {"target": "local", "status": "verified", "count": 10}
    ]
    # the manifest's checksum is the SHA-256 the leak gate computed as it scanned the file
    for row in manifest.itertuples():
        data = (layout.release / row.item).read_bytes()
        assert row.checksum == hashlib.sha256(data).hexdigest()


class FlakyLocal(LocalTarget):
    """Local store that fails the first ``failures`` puts of each item with 503."""

    failures = 2
    calls: dict[str, int] = {}

    def put(self, item: Item) -> Receipt:
        n = self.calls[item.key] = self.calls.get(item.key, 0) + 1
        if n <= self.failures:
            raise TransientError("local target: simulated HTTP 503")
        return super().put(item)


@pytest.mark.usefixtures("fast_backoff")
def test_retries_transient_errors(
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    layout = make_release(entities=1, images=3)
    FlakyLocal.calls = {}
    monkeypatch.setattr(
        "sendit_helpers.stages.upload.make_targets", lambda s, w: [FlakyLocal(s, w)]
    )
    upload_batch(layout, upload_settings, progress=False)
    assert FlakyLocal.calls == {f"IR661f30/IR661f30_5_{i}.dcm": 3 for i in (1, 2, 3)}

    FlakyLocal.calls, FlakyLocal.failures = {}, 99
    other = build_release(tmp_path / "other", entities=1, images=2)
    with pytest.raises(UploadError, match=r"2 of 2 item\(s\) to local did not go"):
        upload_batch(other, upload_settings, progress=False)
    assert max(FlakyLocal.calls.values()) <= upload_settings["UPLOAD_RETRIES"] + 1


def test_with_retries_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sendit_helpers.stages.upload.BACKOFF_BASE", 0.001)
    calls = []

    def boom() -> None:
        calls.append(1)
        raise TransientError("x target: HTTP 429", retry_after=0.0)

    with pytest.raises(TransientError):
        with_retries(boom, 3)
    assert len(calls) == 4


def test_with_retries_stops_at_once_when_stop_is_set() -> None:
    calls = []

    def busy() -> None:
        calls.append(1)
        raise TransientError("x target: HTTP 503", retry_after=20.0)

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    with pytest.raises(TransientError, match="HTTP 503"):
        with_retries(busy, 5, stop)
    assert time.monotonic() - start < 2.0 and len(calls) == 1


@pytest.mark.parametrize(
    ("n", "most", "threads", "sizes"),
    [
        (500, 50, 16, [32] * 4 + [31] * 12),  # 50 at a time: 10 requests, 6 threads idle
        (8, 3, 4, [2, 2, 2, 2]),
        (8, 3, 1, [3, 3, 2]),  # one thread: as many round trips as 3 at a time
        (17, 50, 16, [2] + [1] * 15),
        (3, 0, 0, [1, 1, 1]),  # settings below 1 count as 1
        (0, 50, 16, []),
    ],
)
def test_request_chunks_fill_every_thread(
    n: int, most: int, threads: int, sizes: list[int]
) -> None:
    items = list(range(n))
    chunks = request_chunks(items, most, threads)
    assert [len(c) for c in chunks] == sizes
    assert [i for c in chunks for i in c] == items  # consecutive slices, in order


def test_request_chunks_never_add_round_trips() -> None:
    """No request over ``most``; per thread, as many rounds as ``most`` at a time needs."""
    for n in (1, 7, 100, 499, 500, 801, 5000):
        for most in (1, 10, 50):
            for threads in (1, 4, 16):
                chunks = request_chunks(list(range(n)), most, threads)
                assert max(len(c) for c in chunks) <= most
                assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1
                rounds = math.ceil(math.ceil(n / most) / threads)
                assert math.ceil(len(chunks) / threads) == rounds
                assert len(chunks) == min(n, rounds * threads)


def test_summary_counts_latest_status() -> None:
    rows = [
        ("a", "orthanc", "stored"), ("a", "orthanc", "verified"), ("b", "orthanc", "failed"),
        ("a", "google", "stored"),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["item", "target", "status"]).assign(destination="d")
    got = summary(table).drop(columns="destination").to_dict("records")
    assert got == [
        {"target": "google", "status": "stored", "count": 1},
        {"target": "orthanc", "status": "failed", "count": 1},
        {"target": "orthanc", "status": "verified", "count": 1},
    ]


@pytest.mark.servers
@pytest.mark.usefixtures("fast_backoff")
def test_orthanc_killed_mid_upload_then_rerun(
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kill Orthanc after half the items: UploadError names the count; rerun completes once."""
    server = OrthancServer("orthanc-fault", tmp_path_factory.mktemp("orthanc-fault"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        monkeypatch.setenv("ORTHANC_USERNAME", server.user)
        monkeypatch.setenv("ORTHANC_PASSWORD", server.password)
        layout = make_release(entities=2, images=10)
        upload_settings.update(SEND_TO_ORTHANC=True, ORTHANC_URL=server.url, UPLOAD_THREADS=2)
        done: list[str] = []

        def kill_at_half(receipt: Receipt) -> None:
            done.append(receipt.key)
            if len(done) == 10:
                server.kill()

        with pytest.raises(
            UploadError, match=r"upload incomplete: \d+ of 20 item\(s\) to orthanc did not go"
        ) as err:
            upload_batch(layout, upload_settings, progress=False, on_item=kill_at_half)
        assert "IR661f30_5" not in str(err.value).split("first error")[0]
        failed = int(str(err.value).split("upload incomplete: ")[1].split(" of")[0])
        assert 20 - len(done) <= failed <= 20

        server.start()  # same storage directory and ports
        manifest = upload_batch(layout, upload_settings, progress=False)
        latest = manifest.drop_duplicates(["item", "target"], keep="last")
        assert (latest["status"] == "verified").sum() == 20
        assert server.instance_count() == 20
    finally:
        server.kill()  # tmp storage: no need for Orthanc's ~4 s clean shutdown


def test_receipt_kind_is_stable() -> None:
    assert [str(k) for k in TargetKind] == ["orthanc", "google", "local", "dicomweb"]


def _keys(receipts: Sequence[Receipt]) -> list[str]:
    return [r.key for r in receipts]


class BrokenTarget(LocalTarget):
    """A local store whose check() fails, under its own label."""

    @property
    def label(self) -> str:
        return "broken"

    def check(self) -> None:
        raise UploadError("broken target: cannot reach it; start it")


def test_failed_check_lets_other_targets_go(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_release(entities=1, images=3)
    monkeypatch.setattr(
        "sendit_helpers.stages.upload.make_targets",
        lambda s, w: [BrokenTarget(s, w), LocalTarget(s, w)],
    )
    with pytest.raises(UploadError) as err:
        upload_batch(layout, upload_settings, progress=False)
    text = str(err.value)
    assert "3 of 3 item(s) to broken did not go (target unusable: broken target: cannot" in text
    assert "All items are on local (3 sent in this run)" in text
    latest = Manifest(layout.upload_dir / "manifest.csv").read()
    assert summary(latest).drop(columns="destination").to_dict("records") == [
        {"target": "broken", "status": "failed", "count": 3},
        {"target": "local", "status": "verified", "count": 3},
    ]


@pytest.mark.servers
def test_unreachable_orthanc_does_not_stop_google(
    orthanc: OrthancServer,
    google_env: dict[str, Any],
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
) -> None:
    """Orthanc down: Google still gets everything; once Orthanc is up, only Orthanc is sent."""
    from tests.servers import free_port

    layout = make_release(entities=2, images=3)
    settings = {**upload_settings, **google_env, "SEND_TO_ORTHANC": True}
    dead = settings["ORTHANC_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(
        UploadError,
        match=r"6 of 6 item\(s\) to orthanc did not go \(target unusable: orthanc target: "
        r"cannot reach .*All items are on google \(6 sent in this run\)",
    ):
        upload_batch(layout, settings, progress=False)
    assert orthanc.instance_count() == 0

    settings["ORTHANC_URL"] = orthanc.url
    manifest = upload_batch(layout, settings, progress=False)
    counts = summary(manifest)
    assert counts[counts["status"] == "verified"].to_dict("records") == [
        {"target": "google", "destination": f"google gs://{settings['GOOGLE_CLOUD_STORAGE']}/"
         f"IRB41449 project={settings['GOOGLE_PROJECT_NAME']}", "status": "verified", "count": 6},
        {"target": "orthanc", "destination": f"orthanc {orthanc.url}", "status": "verified",
         "count": 6},
    ]  # fmt: skip
    # the dead URL is another destination: its failed rows stay as they were
    assert counts[counts["status"] == "failed"]["destination"].tolist() == [f"orthanc {dead}"]
    google_rows = manifest[manifest["target"] == "google"]
    assert len(google_rows) == 12  # stored + verified once each: the rerun skipped google
    assert orthanc.instance_count() == 6


class BatchedLocal(LocalTarget):
    """Local store writing its index every 2 stored items; the first ``refuse`` writes fail."""

    entity_batch = 2
    refuse = 0
    writes: list[int] = []

    def put_entities(self, entities: Any, stored: Any) -> None:
        self.writes.append(len(stored))
        if len(self.writes) <= self.refuse:
            raise UploadError("local target: index locked")
        super().put_entities(entities, stored)


def test_records_written_while_uploading(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """entity_batch: records go in the background; a refused write fails only its items."""
    layout = make_release(entities=1, images=5)
    monkeypatch.setattr(
        "sendit_helpers.stages.upload.make_targets", lambda s, w: [BatchedLocal(s, w)]
    )
    BatchedLocal.writes, BatchedLocal.refuse = [], 1
    with pytest.raises(UploadError, match=r"4 of 5 item\(s\) to local did not go"):
        upload_batch(layout, upload_settings, progress=False)
    assert BatchedLocal.writes == [2, 1]  # the second batch was skipped, the last 1 went at the end
    BatchedLocal.writes, BatchedLocal.refuse = [], 0
    manifest = upload_batch(layout, upload_settings, progress=False)
    assert BatchedLocal.writes == [2, 2]  # only the 4 unverified items went again
    assert summary(manifest).drop(columns="destination").to_dict("records") == [
        {"target": "local", "status": "verified", "count": 5}
    ]


@pytest.mark.parametrize("escape", ["dotdot", "symlink"])
def test_load_release_refuses_files_outside_release(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], escape: str
) -> None:
    layout = make_release(entities=1, images=2)
    table = layout.release / "cleaned.parquet"
    cleaned = pd.read_parquet(table)
    outside = layout.release.parent / "outside.dcm"
    first = layout.release / str(cleaned.loc[0, "path"])
    outside.write_bytes(first.read_bytes())
    if escape == "dotdot":
        first.unlink()
        cleaned.loc[0, "path"] = "../outside.dcm"
        cleaned.to_parquet(table)
    else:
        first.unlink()
        first.symlink_to(outside)
    with pytest.raises(UploadError, match="which is not a file under"):
        load_release(layout, upload_settings)


def test_load_release_items_and_entities(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=2, images=3)
    items, entities = load_release(layout, upload_settings)
    assert len(items) == 6 and len({i.key for i in items}) == 6
    assert all(i.path.is_file() and i.path.is_relative_to(layout.release.resolve()) for i in items)
    assert all(i.size == i.path.stat().st_size and i.key.endswith(i.name) for i in items)
    assert not {"path", "name", "entity_id"} & set(items[0].metadata)
    values = items[0].metadata.values()
    assert all(isinstance(v, str | int | float | bool) or v is None for v in values)
    assert [e.metadata["IMAGE_COUNT"] for e in entities] == [3, 3]
    assert [e.id for e in entities] == sorted({i.entity_id for i in items})
