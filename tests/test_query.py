"""find_images / find_entities on the local index and on Datastore."""

from __future__ import annotations

from typing import Any

import pytest

from sendit_helpers.query import find_entities, find_images, open_link, orthanc_link
from sendit_helpers.upload import upload_batch
from tests.conftest_servers import ReleaseFactory


def _check(images: Any, entities: Any, settings: dict[str, Any], work: Any, scheme: str) -> None:
    assert len(images) == 9 and images["url"].str.startswith(scheme).all()
    assert set(find_images(settings, work, sex="M")["entity_id"]) == {"IR661f31"}
    assert len(find_images(settings, work, age_min=35, age_max=45)) == 3
    assert set(find_images(settings, work, modality="CT")["Modality"]) == {"CT"}
    assert len(find_images(settings, work, modality="CT")) == 3
    assert len(find_images(settings, work, modality=" ct")) == 3
    assert set(find_images(settings, work, sex="m")["entity_id"]) == {"IR661f31"}
    assert list(find_entities(settings, work, sex="o")["IMAGE_COUNT"]) == [3]
    assert set(find_images(settings, work, text="KNEE")["entity_id"]) == {"IR661f30"}
    assert len(find_images(settings, work, sex="F", text="chest", modality="MR")) == 1
    assert list(entities["id"]) == ["IR661f30", "IR661f31", "IR661f32"]
    assert list(find_entities(settings, work, age_min=40)["id"]) == ["IR661f31", "IR661f32"]
    assert list(find_entities(settings, work, sex="O")["IMAGE_COUNT"]) == [3]


def test_local_queries(make_release: ReleaseFactory, upload_settings: dict[str, Any]) -> None:
    layout = make_release(entities=3, images=3)
    upload_batch(layout, upload_settings, progress=False)
    images = find_images(upload_settings, layout.work)
    entities = find_entities(upload_settings, layout.work)
    _check(images, entities, upload_settings, layout.work, "file://")
    assert entities["url"].iloc[0].endswith("/storage/sendit/IR661f30/")
    pytest.importorskip("pyarrow")
    import pandas as pd

    from sendit_helpers import cli

    sets = [f"--set={k}={v}" for k, v in upload_settings.items() if isinstance(v, (str, bool))]
    for name, read in (("q.csv", pd.read_csv), ("q.parquet", pd.read_parquet)):
        out = layout.work / name
        argv = ["query", "--work", str(layout.work), "--sex", "m", "--out", str(out), *sets]
        assert cli.main(argv) == 0
        assert set(read(out)["entity_id"]) == {"IR661f31"}


def test_local_query_without_index_is_empty(upload_settings: dict[str, Any], tmp_path: Any) -> None:
    assert find_images(upload_settings, tmp_path).empty
    assert find_entities(upload_settings, tmp_path).empty


@pytest.mark.servers
def test_datastore_queries(
    google_env: dict[str, Any], make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=3, images=3)
    settings = {**upload_settings, **google_env}
    upload_batch(layout, settings, progress=False)
    images = find_images(settings, layout.work)
    entities = find_entities(settings, layout.work)
    _check(images, entities, settings, layout.work, "gs://")


def test_open_link_per_backend(tmp_path: Any) -> None:
    assert open_link("gs://bkt/sendit/IR1/img.dcm") == (
        "https://console.cloud.google.com/storage/browser/_details/bkt/sendit/IR1/img.dcm"
    )
    inside = (tmp_path / "storage" / "a.dcm").as_uri()
    assert open_link(inside, tmp_path) == "files/storage/a.dcm"
    outside = "file:///elsewhere/a.dcm"
    assert open_link(outside, tmp_path) == outside
    assert open_link(inside) == inside


def test_orthanc_link_drops_credentials() -> None:
    assert orthanc_link("http://u:secret@orthanc:8042/", "abc-1") == (
        "http://orthanc:8042/app/explorer.html#instance?uuid=abc-1"
    )
