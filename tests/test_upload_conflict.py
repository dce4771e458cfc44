"""The same object in two batches: a destination holding other bytes under its name.

pydicom's ``ExplVR_BigEndNoMeta.dcm`` / ``ExplVR_LitEndNoMeta.dcm`` are one RT plan in two
encodings: both de-identify to the same SOPInstanceUID and output name with different
bytes.  The second batch's item is recorded ``conflict`` (the stored copy is kept), the
batch's other items go, and the upload does not fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from sendit_helpers.core.errors import UploadWarning
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid import gaterecord
from sendit_helpers.stages.upload import CONFLICT, VERIFIED, upload_batch
from tests.conftest_servers import build_release
from tests.servers import OrthancServer


def _latest(manifest: Any) -> dict[str, str]:
    latest = manifest.drop_duplicates(["item", "destination"], keep="last")
    return dict(zip(latest["item"], latest["status"], strict=True))


def _regated_with_change(layout: BatchLayout, key: str) -> None:
    """Change one released file's bytes (same UIDs, same name) and gate it again."""
    path = layout.release / key
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "same object, other bytes"
    ds.save_as(path, enforce_file_format=True)
    (layout.upload_dir / "manifest.csv").unlink()  # another batch: its own manifest
    gaterecord.write_record(layout, n_files=3, n_values=0)


def test_local_store_records_conflict_and_uploads_the_rest(
    tmp_path: Path, upload_settings: dict[str, Any]
) -> None:
    settings = {**upload_settings, "LOCAL_STORAGE_DIR": str(tmp_path / "store")}
    first = build_release(tmp_path / "a", entities=1, images=3)
    upload_batch(first, settings, progress=False)
    # another batch whose first three outputs have the same names, other bytes, plus a new one
    second = build_release(tmp_path / "b", entities=1, images=4)
    with pytest.warns(UploadWarning, match=r"3 item\(s\) recorded as 'conflict'.*already stored"):
        manifest = upload_batch(second, settings, progress=False)
    status = _latest(manifest)
    assert sorted(status.values()) == [CONFLICT] * 3 + [VERIFIED]
    assert status["IR661f30/IR661f30_5_4.dcm"] == VERIFIED
    stored = tmp_path / "store"
    kept = next(stored.rglob("IR661f30_5_1.dcm")).read_bytes()
    assert kept == (first.release / "IR661f30" / "IR661f30_5_1.dcm").read_bytes()
    # a rerun neither fails nor sends the conflicting items again
    again = upload_batch(second, settings, progress=False)
    assert len(again) == len(manifest)


@pytest.mark.servers
def test_orthanc_rest_records_conflict(
    orthanc: OrthancServer, tmp_path: Path, upload_settings: dict[str, Any]
) -> None:
    settings = {
        **upload_settings,
        "SEND_TO_ORTHANC": True,
        "ORTHANC_PROTOCOL": "rest",
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_PORT": orthanc.dicom_port,
        "ORTHANC_AE_TITLE": orthanc.aet,
    }
    layout = build_release(tmp_path, entities=1, images=3)
    upload_batch(layout, settings, progress=False)
    _regated_with_change(layout, "IR661f30/IR661f30_5_2.dcm")
    with pytest.warns(UploadWarning, match=r"orthanc target: release/IR661f30/IR661f30_5_2\.dcm"):
        manifest = upload_batch(layout, settings, progress=False)
    status = _latest(manifest)
    assert status.pop("IR661f30/IR661f30_5_2.dcm") == CONFLICT
    assert list(status.values()) == [VERIFIED, VERIFIED]
    assert orthanc.instance_count() == 3
