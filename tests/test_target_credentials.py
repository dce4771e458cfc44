"""Credentials reach the targets through the typed settings, never straight from the environment.

The secret settings (``ORTHANC_USERNAME`` / ``ORTHANC_PASSWORD``, ``DICOMWEB_TOKEN`` /
``DICOMWEB_USERNAME`` / ``DICOMWEB_PASSWORD``, ``GOOGLE_APPLICATION_CREDENTIALS``) are read
once, with the settings (:func:`load_settings`, or :func:`typed` for a plain mapping), and
handed to the targets; they never show in a repr or a log line.  (That no secret reaches
the work folder, the executed notebooks included, or the command's output is pinned by
``tests/test_inputs.py``.)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from sendit_helpers.core.errors import UploadError
from sendit_helpers.core.settings import SECRETS, load_settings, typed
from sendit_helpers.targets.dicomweb import DicomWebTarget
from sendit_helpers.targets.orthanc import OrthancRestTarget
from tests.servers import OrthancServer, orthanc_plugin

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-credentials-7c1e9a"  # noqa: S105 - a test value


def test_a_plain_mapping_takes_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORTHANC_PASSWORD", PASSWORD)
    monkeypatch.setenv("DICOMWEB_TOKEN", "token-from-env")
    monkeypatch.delenv("ORTHANC_USERNAME", raising=False)
    cfg = typed({"ORTHANC_URL": "http://127.0.0.1:8042"})
    assert cfg.targets.orthanc.password == PASSWORD
    assert cfg.targets.dicomweb.token == "token-from-env"
    assert cfg.targets.orthanc.username == ""
    assert typed({"DICOMWEB_TOKEN": "given"}).targets.dicomweb.token == "given"
    for text in (repr(cfg), str(cfg), repr(cfg.targets), str(cfg.public())):
        assert PASSWORD not in text and "token-from-env" not in text


def test_targets_read_no_secret_from_the_environment() -> None:
    """Only core/settings.py reads a secret setting from ``os.environ``."""
    names = "|".join(re.escape(s.name) for s in SECRETS)
    read = re.compile(rf"(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*[\"'](?:{names})[\"']")
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in sorted((ROOT / "sendit_helpers").rglob("*.py"))
        if path.name != "settings.py"
        for match in read.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, found


def _orthanc_settings(server: OrthancServer, environ: dict[str, str], **more: Any) -> Any:
    return load_settings(
        overrides={"SEND_TO_ORTHANC": True, "ORTHANC_URL": server.url, **more}, environ=environ
    )


@pytest.mark.servers
def test_orthanc_credentials_come_from_the_settings(
    orthanc_server: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("ORTHANC_USERNAME", "ORTHANC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    good = {"ORTHANC_USERNAME": orthanc_server.user, "ORTHANC_PASSWORD": orthanc_server.password}
    caplog.set_level(logging.DEBUG)
    target = OrthancRestTarget(_orthanc_settings(orthanc_server, good))
    target.check()  # authenticated with the settings' credentials alone
    with pytest.raises(UploadError, match="refused the credentials.*ORTHANC_USERNAME"):
        OrthancRestTarget(_orthanc_settings(orthanc_server, {})).check()
    wrong = {**good, "ORTHANC_PASSWORD": PASSWORD}
    with pytest.raises(UploadError, match="refused the credentials") as refused:
        OrthancRestTarget(_orthanc_settings(orthanc_server, wrong)).check()
    shown = [caplog.text, str(refused.value), repr(target), target.destination_id]
    for text in shown:
        assert orthanc_server.password not in text and PASSWORD not in text


@pytest.mark.servers
@pytest.mark.skipif(
    orthanc_plugin("libOrthancDicomWeb.so") is None,
    reason="Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb",
)
def test_dicomweb_credentials_come_from_the_settings(
    orthanc_server: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("DICOMWEB_USERNAME", "DICOMWEB_PASSWORD", "DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    overrides = {"SEND_TO_DICOMWEB": True, "DICOMWEB_URL": f"{orthanc_server.url}/dicom-web"}
    good = {"DICOMWEB_USERNAME": orthanc_server.user, "DICOMWEB_PASSWORD": orthanc_server.password}
    caplog.set_level(logging.DEBUG)
    target = DicomWebTarget(load_settings(overrides=overrides, environ=good))
    target.check()
    wrong = {**good, "DICOMWEB_PASSWORD": PASSWORD}
    with pytest.raises(UploadError, match="refused the credentials.*DICOMWEB_USERNAME") as refused:
        DicomWebTarget(load_settings(overrides=overrides, environ=wrong)).check()
    for text in (caplog.text, str(refused.value), repr(target), target.destination_id):
        assert orthanc_server.password not in text and PASSWORD not in text
