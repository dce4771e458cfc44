"""DICOMweb STOW-RS target against Orthanc's DICOMweb plugin (a real server)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import requests

from sendit_helpers.core.errors import UploadError
from sendit_helpers.stages.upload import load_release, upload_batch
from sendit_helpers.targets import Item, Receipt, TargetKind, make_targets
from sendit_helpers.targets.dicomweb import DicomWebTarget
from tests.conftest_servers import ReleaseFactory
from tests.servers import OrthancServer, orthanc_plugin

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(
        orthanc_plugin("libOrthancDicomWeb.so") is None,
        reason="Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb",
    ),
]


@pytest.fixture
def stow(
    orthanc: OrthancServer, upload_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("DICOMWEB_USERNAME", orthanc.user)
    monkeypatch.setenv("DICOMWEB_PASSWORD", orthanc.password)
    return {
        **upload_settings,
        "SEND_TO_DICOMWEB": True,
        "DICOMWEB_URL": f"{orthanc.url}/dicom-web",
        "DICOMWEB_BATCH": 3,
    }


def test_stow_upload_verify_and_rerun(
    orthanc: OrthancServer, make_release: ReleaseFactory, stow: dict[str, Any]
) -> None:
    """8 files in requests of 3: all verified; a forgotten manifest stores nothing twice."""
    layout = make_release(entities=2, images=4)
    (target,) = make_targets(stow, layout.work)
    assert isinstance(target, DicomWebTarget) and target.kind is TargetKind.DICOMWEB
    manifest = upload_batch(layout, stow, progress=False)
    latest = manifest.drop_duplicates("item", keep="last")
    assert (latest["status"] == "verified").sum() == 8
    assert set(latest["target"]) == {"dicomweb"}
    assert orthanc.instance_count() == 8
    again = upload_batch(layout, stow, progress=False)  # all verified: nothing sent
    assert len(again) == len(manifest)
    (layout.upload_dir / "manifest.csv").unlink()  # forget everything: create-once must hold
    upload_batch(layout, stow, progress=False)
    assert orthanc.instance_count() == 8


def test_stow_put_many_one_outcome_per_file(
    orthanc: OrthancServer, make_release: ReleaseFactory, stow: dict[str, Any]
) -> None:
    """A file the server cannot parse fails alone; the others of its request are stored."""
    layout = make_release(entities=1, images=3)
    items, _ = load_release(layout, stow)
    target = DicomWebTarget(stow)
    try:
        target.check()
        target.prepare(items)
        loaded = [replace(i, data=i.path.read_bytes()) for i in items]
        data = loaded[1].read(md5=False)
        broken = replace(loaded[1], data=data[: len(data) // 2])  # truncated pixel data
        outcomes = target.put_many([loaded[0], broken, loaded[2]])
        assert [type(o).__name__ for o in outcomes] == ["Receipt", "UploadError", "Receipt"]
        with pytest.raises(UploadError, match=r"refused release/.*HTTP 400.*re-run de-id"):
            raise outcomes[1]
        stored = [o for o in outcomes if not isinstance(o, UploadError)]
        assert target.verify(stored) == {r.key for r in stored}
        assert target.present(items, {}) >= {items[0].key, items[2].key}
    finally:
        target.close()


def test_stow_bad_credentials_and_url_name_the_fix(
    orthanc: OrthancServer, stow: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMWEB_PASSWORD", "wrong")
    with pytest.raises(UploadError, match="refused the credentials.*DICOMWEB_USERNAME"):
        DicomWebTarget(stow).check()
    with pytest.raises(UploadError, match="DICOMWEB_URL is empty"):
        DicomWebTarget({**stow, "DICOMWEB_URL": ""})


def test_stow_verify_trusts_series_counts_and_looks_up_short_series(
    orthanc: OrthancServer, make_release: ReleaseFactory, stow: dict[str, Any]
) -> None:
    """Verification reads the series' instance counts; a short series is listed per instance."""
    layout = make_release(entities=2, images=3)
    items, _ = load_release(layout, stow)
    target = DicomWebTarget(stow)
    try:
        target.check()
        target.prepare(items)
        receipts = [
            r
            for r in target.put_many([replace(i, data=i.path.read_bytes()) for i in items])
            if not isinstance(r, UploadError)
        ]
        assert len(receipts) == 6
        assert target.verify(receipts) == {r.key for r in receipts}
        gone = receipts[0]  # deleted behind our back: its series is one instance short
        found = requests.post(f"{orthanc.url}/tools/lookup", data=gone.remote_id,
                              auth=orthanc.auth, timeout=10).json()  # fmt: skip
        (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
        assert requests.delete(f"{orthanc.url}/instances/{instance}", auth=orthanc.auth,
                               timeout=10).status_code == 200  # fmt: skip
        assert target.verify(receipts) == {r.key for r in receipts[1:]}
        assert target.verify([]) == set()
    finally:
        target.close()


def test_stow_requests_keep_every_thread_busy(
    orthanc: OrthancServer,
    make_release: ReleaseFactory,
    stow: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 files, at most 3 per request, 4 threads: 4 requests of 2 (not 3, 3 and 2)."""
    sizes: list[int] = []
    put_many = DicomWebTarget.put_many

    def counted(self: DicomWebTarget, items: Sequence[Item]) -> list[Receipt | UploadError]:
        sizes.append(len(items))
        return put_many(self, items)

    monkeypatch.setattr(DicomWebTarget, "put_many", counted)
    layout = make_release(entities=2, images=4)
    settings = {**stow, "UPLOAD_THREADS": 4}
    manifest = upload_batch(layout, settings, progress=False)
    assert sorted(sizes) == [2, 2, 2, 2]
    assert (manifest.drop_duplicates("item", keep="last")["status"] == "verified").sum() == 8
    assert orthanc.instance_count() == 8
    sizes.clear()
    upload_batch(layout, {**settings, "UPLOAD_THREADS": 1}, progress=False)
    assert sizes == []  # all verified: nothing sent again
    (layout.upload_dir / "manifest.csv").unlink()
    upload_batch(layout, {**settings, "UPLOAD_THREADS": 1}, progress=False)
    assert sorted(sizes) == [2, 3, 3] and orthanc.instance_count() == 8
