"""Settings: precedence, validation and documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sendit_helpers.errors import SettingsError
from sendit_helpers.settings import DEFAULT_PARAMS, SETTINGS, load_settings, parse_override


def test_defaults_load_and_every_setting_is_documented() -> None:
    settings = load_settings(environ={})
    assert set(settings) == {s.name for s in SETTINGS}
    text = DEFAULT_PARAMS.read_text()
    documented = yaml.safe_load(text)
    assert set(documented) == {s.name for s in SETTINGS}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z_]+:", line):
            assert lines[index - 1].startswith("# "), (
                f"{line.split(':')[0]} has no comment above it"
            )


def test_original_sendit_names_are_there() -> None:
    settings = load_settings(environ={})
    for name in (
        "SEND_TO_ORTHANC",
        "ORTHANC_IPADDRESS",
        "ORTHANC_PORT",
        "SEND_TO_GOOGLE",
        "GOOGLE_CLOUD_STORAGE",
        "GOOGLE_PROJECT_NAME",
        "GOOGLE_STORAGE_COLLECTION",
    ):
        assert name in settings
    assert settings["ORTHANC_PORT"] == 4747


def test_precedence_file_env_override(tmp_path: Path) -> None:
    params = tmp_path / "site.yml"
    params.write_text("ORTHANC_PORT: 1111\nWORKERS: 3\nUPLOAD_THREADS: 2\n")
    settings = load_settings([params], {"WORKERS": "5"}, environ={"ORTHANC_PORT": "2222"})
    assert settings["ORTHANC_PORT"] == 2222 and settings.sources["ORTHANC_PORT"] == "environment"
    assert settings["WORKERS"] == 5 and settings.sources["WORKERS"] == "override"
    assert settings["UPLOAD_THREADS"] == 2 and str(params) in settings.sources["UPLOAD_THREADS"]


def test_bad_type_names_setting_source_and_fix() -> None:
    with pytest.raises(
        SettingsError,
        match=r"ORTHANC_PORT: 'abc' from environment variable ORTHANC_PORT is not a valid int",
    ):
        load_settings(environ={"ORTHANC_PORT": "abc"})


def test_unknown_setting_suggests(tmp_path: Path) -> None:
    params = tmp_path / "p.yml"
    params.write_text("ORTHANC_PROT: 1\n")
    with pytest.raises(
        SettingsError,
        match=r"unknown setting 'ORTHANC_PROT' in params file .*did you mean ORTHANC_PORT\?",
    ):
        load_settings([params], environ={})


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    params = tmp_path / "broken.yml"
    params.write_text("WORKERS: 1\nSEND_TO_ORTHANC: [true\n")
    with pytest.raises(SettingsError, match=r"broken.yml is not valid YAML at line"):
        load_settings([params], environ={})


def test_missing_params_file() -> None:
    with pytest.raises(SettingsError, match=r"params file /nonexistent.yml does not exist"):
        load_settings(["/nonexistent.yml"], environ={})


def test_secret_in_file_refused(tmp_path: Path) -> None:
    params = tmp_path / "p.yml"
    params.write_text("ORTHANC_PASSWORD: hunter2\n")
    with pytest.raises(
        SettingsError, match=r"ORTHANC_PASSWORD is a secret and must come from the environment"
    ) as err:
        load_settings([params], environ={})
    assert "hunter2" not in str(err.value)


def test_google_needs_its_companions() -> None:
    with pytest.raises(
        SettingsError, match=r"SEND_TO_GOOGLE is true but GOOGLE_CLOUD_STORAGE is empty"
    ):
        load_settings(environ={"SEND_TO_GOOGLE": "true"})


def test_choices_and_minimum() -> None:
    with pytest.raises(
        SettingsError, match=r"ORTHANC_PROTOCOL: 'ftp' .* is not one of rest, dicom"
    ):
        load_settings(overrides={"ORTHANC_PROTOCOL": "ftp"}, environ={})
    with pytest.raises(SettingsError, match=r"ORTHANC_PORT .* is not a TCP port"):
        load_settings(
            overrides={"ORTHANC_PORT": 70000, "SEND_TO_ORTHANC": True, "ORTHANC_PROTOCOL": "dicom"},
            environ={},
        )


def test_lists_from_environment(tmp_path: Path) -> None:
    a, b = tmp_path / "a.deid", tmp_path / "b.deid"
    a.write_text("FORMAT dicom\n")
    b.write_text("FORMAT dicom\n")
    settings = load_settings(environ={"DEID_RECIPES": f"{a},{b}"})
    assert settings["DEID_RECIPES"] == [str(a), str(b)]


def test_public_hides_secrets() -> None:
    settings = load_settings(environ={"ORTHANC_PASSWORD": "s3cret"})
    assert settings.public()["ORTHANC_PASSWORD"] == "***"


def test_parse_override() -> None:
    assert parse_override("send_to_orthanc=true") == ("SEND_TO_ORTHANC", "true")
    with pytest.raises(SettingsError, match=r"--set 'oops' is not NAME=VALUE"):
        parse_override("oops")


def test_examples_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for example in sorted((DEFAULT_PARAMS.parent / "examples").glob("*.yml")):
        assert load_settings([example], environ={}) is not None
