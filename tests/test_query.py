"""find_images / find_entities on the local index, Datastore and Orthanc; links; the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.run import cli
from sendit_helpers.stages.query import (
    Backend,
    backend_for,
    find_entities,
    find_images,
    links_table,
    open_link,
    orthanc_link,
)
from sendit_helpers.stages.upload import upload_batch
from tests.conftest_servers import ReleaseFactory
from tests.servers import OrthancServer


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
    # BodyPartExamined, stored as KNEE / CHEST / Head (tests/conftest_servers.BODY_PARTS)
    assert set(images["BodyPartExamined"]) == {"KNEE", "CHEST", "Head"}
    assert set(find_images(settings, work, body_part="knee")["entity_id"]) == {"IR661f30"}
    assert set(find_images(settings, work, body_part="HEAD ")["entity_id"]) == {"IR661f32"}
    assert len(find_images(settings, work, body_part="chest", modality="mr")) == 1
    assert find_images(settings, work, body_part="foot").empty


def _cli_query(work: Path, settings: dict[str, Any], *filters: str) -> None:
    """``sendit query`` with ``filters`` writes the same rows as CSV and as Parquet."""
    sets = [f"--set={k}={v}" for k, v in settings.items() if isinstance(v, (str, bool))]
    expected = find_images(settings, work, sex="m", body_part="Chest")
    assert len(expected) == 3
    for name, read in (("q.csv", pd.read_csv), ("q.parquet", pd.read_parquet)):
        out = work / name
        argv = ["query", "--work", str(work), *filters, "--out", str(out), *sets]
        assert cli.main(argv) == 0
        got = read(out)
        assert list(got.columns) == list(expected.columns)
        assert list(got["name"]) == list(expected["name"])
        assert list(got["url"]) == list(expected["url"])
        assert set(got["BodyPartExamined"]) == {"CHEST"}


def test_local_queries(make_release: ReleaseFactory, upload_settings: dict[str, Any]) -> None:
    layout = make_release(entities=3, images=3)
    upload_batch(layout, upload_settings, progress=False)
    images = find_images(upload_settings, layout.work)
    entities = find_entities(upload_settings, layout.work)
    _check(images, entities, upload_settings, layout.work, "file://")
    assert entities["url"].iloc[0].endswith("/storage/sendit/IR661f30/")
    _cli_query(layout.work, upload_settings, "--sex", "m", "--body-part", "chest")


def test_cli_query_prints_and_refuses_other_formats(
    make_release: ReleaseFactory,
    upload_settings: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = make_release(entities=3, images=1, tiny=True)
    upload_batch(layout, upload_settings, progress=False)
    work = str(layout.work)
    assert cli.main(["query", "--work", work, "--body-part", "KNEE"]) == 0
    printed = capsys.readouterr().out
    assert "IR661f30_5_1.dcm" in printed and "IR661f31" not in printed
    assert cli.main(["query", "--work", work, "--modality", "xa"]) == 0
    assert capsys.readouterr().out.strip() == "no images match"
    assert cli.main(["query", "--work", work, "--out", str(layout.work / "q.xlsx")]) == 2
    assert "--out " in capsys.readouterr().err
    assert not (layout.work / "q.xlsx").exists()


def test_cli_query_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["query", "--help"])
    text = capsys.readouterr().out
    assert "Search the images uploaded so far" in text
    assert "--body-part CODE" in text and "notebooks/05_query.ipynb" in text
    assert "``" not in text and ":func:" not in text  # plain text, no reST markup


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
    _cli_query(layout.work, settings, "--sex", "M", "--body-part", "CHEST")


@pytest.mark.servers
def test_orthanc_queries(
    orthanc: OrthancServer, make_release: ReleaseFactory, upload_settings: dict[str, Any]
) -> None:
    layout = make_release(entities=3, images=3)
    settings = {**upload_settings, "SEND_TO_ORTHANC": True, "ORTHANC_URL": orthanc.url}
    assert backend_for(settings) is Backend.ORTHANC
    manifest = upload_batch(layout, settings, progress=False)
    images = find_images(settings, layout.work)
    entities = find_entities(settings, layout.work)
    _check(images, entities, settings, layout.work, f"{orthanc.url}/instances/")
    # each row is tied to its upload: the released file's name, the instance the manifest names
    stored = manifest[manifest["status"] == "verified"].set_index("remote_id")["item"]
    for name, url in zip(images["name"], images["url"], strict=True):
        assert stored[url.rpartition("/")[2]].endswith("/" + name)
    links = links_table(images, None).frame["link"]
    assert links.str.startswith(f"{orthanc.url}/app/explorer.html#instance?uuid=").all()
    assert orthanc.password not in images.to_csv() + "".join(links)
    _cli_query(layout.work, settings, "--sex", "m", "--body-part", "chest")


def test_orthanc_backend_needs_rest_url(upload_settings: dict[str, Any], tmp_path: Path) -> None:
    settings = {**upload_settings, "SEND_TO_ORTHANC": True, "ORTHANC_URL": ""}
    with pytest.raises(SettingsError, match="SEND_TO_ORTHANC is on but ORTHANC_URL is empty"):
        find_images(settings, tmp_path)


def test_open_link_per_backend(tmp_path: Any) -> None:
    assert open_link("gs://bkt/sendit/IR1/img.dcm") == (
        "https://console.cloud.google.com/storage/browser/_details/bkt/sendit/IR1/img.dcm"
    )
    assert open_link("gs://bkt/sendit/IR1/") == (
        "https://console.cloud.google.com/storage/browser/bkt/sendit/IR1/"
    )
    inside = (tmp_path / "storage" / "a.dcm").as_uri()
    # JupyterLab resolves it against the notebook's folder and serves <base_url>files/storage/a.dcm
    assert open_link(inside, tmp_path, cwd=tmp_path / "notebooks") == "../storage/a.dcm"
    assert open_link(inside, tmp_path, cwd=tmp_path) == "storage/a.dcm"
    assert open_link(inside, tmp_path / "storage", cwd=tmp_path) == inside  # notebook outside
    outside = "file:///elsewhere/a.dcm"
    assert open_link(outside, tmp_path) == outside
    assert open_link(inside) == inside
    assert open_link("http://127.0.0.1:8042/instances/ab-12") == (
        "http://127.0.0.1:8042/app/explorer.html#instance?uuid=ab-12"
    )
    assert open_link("http://orthanc:8042/o/patients/ff-1") == (
        "http://orthanc:8042/o/app/explorer.html#patient?uuid=ff-1"
    )


def test_links_table_renders_links_that_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the notebook's folder, where JupyterLab starts its kernel
    stored = tmp_path / "storage" / "sendit" / "IR1" / "IR1_5_1.dcm"
    frame = pd.DataFrame(
        {
            "name": ["IR1_5_1.dcm", "IR1_5_2.dcm", "x"],
            "url": [
                stored.as_uri(),
                "gs://bkt/sendit/IR1/IR1_5_2.dcm",
                "http://o:8042/instances/c-3",
            ],
            "SeriesDescription": ["<b>CT</b> & chest", None, "MR"],
        }
    )
    table = links_table(frame, tmp_path)
    html = table._repr_html_()
    assert len(table) == 3
    assert f'<a href="storage/sendit/IR1/IR1_5_1.dcm" download>{stored}</a>' in html
    console = "https://console.cloud.google.com/storage/browser/_details/bkt/sendit/IR1/IR1_5_2.dcm"
    assert f'<a href="{console}" target="_blank" rel="noopener">gs://bkt/sendit' in html
    assert 'href="http://o:8042/app/explorer.html#instance?uuid=c-3"' in html
    assert "&lt;b&gt;CT&lt;/b&gt; &amp; chest" in html and "<b>CT" not in html
    assert "None" not in html and "nan" not in html
    outside = links_table(frame, tmp_path / "elsewhere", rows=1)
    assert f'href="{stored.as_uri()}"' in outside._repr_html_()
    assert "1 of 3 rows" in outside._repr_html_() and "<p>3 entities</p>" in html
    assert list(outside.frame["link"])[1] == console


def test_orthanc_link_drops_credentials() -> None:
    assert orthanc_link("http://u:secret@orthanc:8042/", "abc-1") == (
        "http://orthanc:8042/app/explorer.html#instance?uuid=abc-1"
    )
    assert orthanc_link("http://u:secret@orthanc:8042/", "s-1", "studie") == (
        "http://orthanc:8042/app/explorer.html#study?uuid=s-1"
    )
