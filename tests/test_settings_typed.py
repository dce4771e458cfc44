"""Typed settings: one field per declared setting, same type, secrets out of repr."""

from __future__ import annotations

import pytest

from sendit_helpers.core import settings as settings_mod
from sendit_helpers.core.errors import SettingsError
from sendit_helpers.core.settings import SETTINGS, Settings, bound_fields, load_settings, typed

_TYPES: dict[type, object] = {str: str, int: int, float: float, bool: bool, list: tuple[str, ...]}


def test_every_declared_setting_has_one_typed_field_of_its_type() -> None:
    bound = list(bound_fields(Settings))
    names = [name for name, _, _ in bound]
    assert None not in names, "a typed field is not bound to a declared setting"
    assert sorted(names) == sorted(s.name for s in SETTINGS), "declared and typed settings differ"
    assert len(names) == len(set(names)), "a setting is bound to two fields"
    for name, path, kind in bound:
        assert kind == _TYPES[settings_mod.BY_NAME[name].kind], f"{name} -> {path}: {kind}"


def test_attributes_read_the_resolved_values(tmp_path: object) -> None:
    settings = load_settings(
        overrides={"ORTHANC_URL": "http://orthanc:8042", "DEID_RECIPES": "", "WORKERS": "3"},
        environ={"ORTHANC_PASSWORD": "pw"},
    )
    assert settings.targets.orthanc.url == "http://orthanc:8042"
    assert settings.targets.orthanc.password == "pw"
    assert settings.run.workers == 3
    assert settings.deid.recipes == ()
    assert settings["WORKERS"] == 3  # the mapping view stays for fingerprints and receipts
    for name, path, _ in bound_fields(Settings):
        value: object = settings
        for part in path.split("."):
            value = getattr(value, part)
        expected = settings[name]
        assert value == (tuple(expected) if isinstance(expected, list) else expected), path


def test_secrets_stay_out_of_repr_and_str() -> None:
    secret = "s3cr3t-value-xyz"
    environ = {s.name: secret for s in SETTINGS if s.secret}
    settings = load_settings(environ=environ)
    shown = [repr(settings), str(settings)]
    shown += [repr(getattr(settings, group)) for group in settings_mod.GROUPS]
    shown += [str(settings.targets.orthanc), repr(settings.targets.google)]
    for text in shown:
        assert secret not in text
    assert "ORTHANC_PASSWORD" in repr(settings)  # the names are shown, their values are not


def test_a_plain_mapping_is_completed_from_the_defaults() -> None:
    settings = typed({"UPLOAD_THREADS": "2", "NOT_A_SETTING": 1})
    assert settings.upload.threads == 2
    assert settings.upload.retries == 5
    assert typed(settings) is settings
    with pytest.raises(SettingsError, match=r"UPLOAD_THREADS: 'many' from settings given"):
        typed({"UPLOAD_THREADS": "many"})
