"""The local store target and target selection (no servers needed)."""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sendit_helpers.core.errors import SettingsError, UploadError
from sendit_helpers.stages.upload import load_release, summary, upload_batch
from sendit_helpers.targets import ConflictError, TargetKind, make_targets
from sendit_helpers.targets.base import age_years
from sendit_helpers.targets.local import LocalTarget
from tests.conftest_servers import ReleaseFactory


def test_local_is_default_when_no_target_is_on(
    upload_settings: dict[str, Any], tmp_path: Path
) -> None:
    targets = make_targets(upload_settings, tmp_path)
    assert [t.kind for t in targets] == [TargetKind.LOCAL]
    assert isinstance(targets[0], LocalTarget) and targets[0].root == tmp_path / "storage"


def test_make_targets_picks_orthanc_and_google(
    upload_settings: dict[str, Any], tmp_path: Path
) -> None:
    upload_settings.update(
        SEND_TO_ORTHANC=True, ORTHANC_URL="http://127.0.0.1:1", SEND_TO_GOOGLE=True,
        GOOGLE_CLOUD_STORAGE="b", GOOGLE_PROJECT_NAME="p",
    )  # fmt: skip
    assert [t.kind for t in make_targets(upload_settings, tmp_path)] == ["orthanc", "google"]
    upload_settings["ORTHANC_PROTOCOL"] = "ftp"
    with pytest.raises(SettingsError, match="ORTHANC_PROTOCOL is 'ftp'"):
        make_targets(upload_settings, tmp_path)


def test_missing_google_client_names_the_extra(
    upload_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_google(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("google.cloud"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("importlib.import_module", no_google)
    upload_settings.update(SEND_TO_GOOGLE=True, GOOGLE_CLOUD_STORAGE="b", GOOGLE_PROJECT_NAME="p")
    with pytest.raises(UploadError, match=r"pip install 'sendit-notebooks\[google\]'"):
        make_targets(upload_settings, tmp_path)


def test_local_upload_stores_files_and_index(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=2, images=3)
    manifest = upload_batch(layout, upload_settings, progress=False)
    counts = summary(manifest).drop(columns="destination")
    assert counts.to_dict("records") == [{"target": "local", "status": "verified", "count": 6}]
    store = layout.work / "storage"
    stored = sorted(p.relative_to(store).as_posix() for p in store.rglob("*.dcm"))
    assert stored[0] == "sendit/IR661f30/IR661f30_5_1.dcm" and len(stored) == 6
    for item in load_release(layout, upload_settings)[0]:
        dest = store / "sendit" / item.key
        assert dest.read_bytes() == item.path.read_bytes()
    with sqlite3.connect(store / "index.sqlite") as conn:
        assert conn.execute("SELECT id FROM collection").fetchall() == [("sendit",)]
        ents = conn.execute(
            "SELECT id, PatientSex, PatientAgeYears, IMAGE_COUNT FROM entity"
        ).fetchall()
        assert sorted(ents) == [("IR661f30", "F", 30, 3), ("IR661f31", "M", 40, 3)]
        n_images = conn.execute("SELECT count(*) FROM image").fetchone()[0]
    assert n_images == 6


def test_local_rerun_uploads_nothing(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=4)
    first = upload_batch(layout, upload_settings, progress=False)
    second = upload_batch(layout, upload_settings, progress=False)
    assert len(second) == len(first) == 8  # stored + verified per item, nothing new


def test_local_put_is_create_once(
    make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=1, images=2)
    items, _ = load_release(layout, upload_settings)
    target = LocalTarget(upload_settings, layout.work)
    target.check()
    assert target.put(items[0]).status == "stored"
    assert target.put(items[0]).status == "exists"
    (target.root / "sendit" / items[0].key).write_bytes(b"other bytes")
    with pytest.raises(
        ConflictError, match=r"IR661f30_5_1\.dcm not stored: .* already stored with different"
    ):
        target.put(items[0])
    assert not list(target.root.rglob("*.tmp"))


def test_local_storage_dir_setting(
    make_release: ReleaseFactory, upload_settings: dict[str, Any], tmp_path: Path
) -> None:
    layout = make_release(entities=1, images=1)
    upload_settings.update(
        LOCAL_STORAGE_DIR=str(tmp_path / "elsewhere"), GOOGLE_STORAGE_COLLECTION="IRB9"
    )
    upload_batch(layout, upload_settings, progress=False)
    assert (tmp_path / "elsewhere" / "IRB9" / "IR661f30" / "IR661f30_5_1.dcm").is_file()


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("056Y", 56),
        ("006M", 0),
        ("030M", 2),
        ("002W", 0),
        ("", None),
        (None, None),
        (41, 41),
        ("abc", None),
    ],
)
def test_age_years(value: Any, years: int | None) -> None:
    assert age_years(value) == years
