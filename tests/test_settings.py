"""Settings: precedence, validation and documentation."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.core.settings import DEFAULT_PARAMS, SETTINGS, load_settings, parse_override


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


# ------------------------------------------------------------------ hostile params files
def test_yaml_alias_bomb_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    lines.append("DEID_RECIPES: *i")
    params = tmp_path / "bomb.yml"
    params.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(
        SettingsError, match=r"bomb\.yml line \d+: YAML aliases expand to more than"
    ):
        load_settings([params], environ={})
    assert time.perf_counter() - start < 2


def test_yaml_recursive_alias_refused(tmp_path: Path) -> None:
    params = tmp_path / "loop.yml"
    params.write_text("DEID_RECIPES: &a [*a]\n")
    with pytest.raises(SettingsError, match=r"loop\.yml line 1: a YAML alias refers to itself"):
        load_settings([params], environ={})


def test_small_aliases_still_work(tmp_path: Path) -> None:
    params = tmp_path / "ok.yml"
    params.write_text("SAFE_PRIVATE_TAGS: &tags ['(0019,0010)']\n")
    assert load_settings([params], environ={})["SAFE_PRIVATE_TAGS"] == ["(0019,0010)"]


def test_non_utf8_params_named_with_line(tmp_path: Path) -> None:
    params = tmp_path / "latin1.yml"
    params.write_bytes("WORKERS: 1\nREVIEWER: Jos\xe9\n".encode("latin-1"))
    with pytest.raises(
        SettingsError, match=r"latin1\.yml is not UTF-8 text \(byte 0xe9 at line 2\)"
    ):
        load_settings([params], environ={})


def test_control_character_params_named_with_line(tmp_path: Path) -> None:
    params = tmp_path / "ctl.yml"
    params.write_text("WORKERS: 1\nREVIEWER: a\x07b\n")
    with pytest.raises(SettingsError, match=r"ctl\.yml is not valid YAML at line 2"):
        load_settings([params], environ={})


def test_unreadable_params_is_a_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"params file .* cannot be read \(IsADirectoryError"):
        load_settings([tmp_path], environ={})


# ------------------------------------------------------------------ secrets
@pytest.mark.parametrize(
    "name",
    [
        "ORTHANC_PASSWORD",
        "ORTHANC_USERNAME",
        "IDENTIFIER_TOKEN",
        "SENDIT_SITE_SECRET",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
)
def test_set_refuses_secrets(name: str) -> None:
    with pytest.raises(
        SettingsError,
        match=rf"^{name} is a secret and must come from the environment, not from --set",
    ) as info:
        load_settings([], {name: "hunter2-distinct"}, environ={})
    assert "hunter2-distinct" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("ORTHANC_URL", "export ORTHANC_USERNAME and ORTHANC_PASSWORD instead"),
        ("IDENTIFIER_URL", "export IDENTIFIER_TOKEN instead"),
    ],
)
def test_url_with_credentials_refused(tmp_path: Path, name: str, fix: str) -> None:
    url = "http://alice:pw-distinct@pacs.example:8042/"
    for source in ("override", "environment", "file"):
        params = tmp_path / "p.yml"
        params.write_text(f"{name}: {url}\n" if source == "file" else "")
        with pytest.raises(SettingsError, match=rf"^{name} .* holds credentials.*{fix}") as info:
            load_settings(
                [params],
                {name: url} if source == "override" else {},
                environ={name: url} if source == "environment" else {},
            )
        assert "pw-distinct" not in str(info.value) and "alice" not in str(info.value)
    plain = load_settings([], {name: "http://pacs.example:8042/"}, environ={})
    assert plain[name] == "http://pacs.example:8042/"


def test_changed_params_file_is_read_again(tmp_path: Path) -> None:
    """Parsed params are reused across calls, but new content at the same path wins."""
    params = tmp_path / "site.yml"
    params.write_text("WORKERS: 3\nSAFE_PRIVATE_TAGS: ['(0019,0010)']\n")
    first = load_settings([params], environ={})
    assert first["WORKERS"] == 3
    again = load_settings([params], environ={})
    assert again["WORKERS"] == 3 and again["SAFE_PRIVATE_TAGS"] == ["(0019,0010)"]
    params.write_text("WORKERS: 4\n")
    assert load_settings([params], environ={})["WORKERS"] == 4
    params.write_text("WORKERS: [\n")
    with pytest.raises(SettingsError, match=r"site\.yml is not valid YAML at line"):
        load_settings([params], environ={})
