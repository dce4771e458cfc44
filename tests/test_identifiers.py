"""Tests of ``sendit_helpers.pseudonyms``: providers, UID mapper, site secret."""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from email.utils import formatdate
from pathlib import Path

import pytest
from identifier_server import IdentifierServer, start_identifier_server
from pydicom.uid import UID

from sendit_helpers.core.errors import IdentifierError, SettingsError
from sendit_helpers.pseudonyms.crosswalk import CrosswalkProvider
from sendit_helpers.pseudonyms.local import KeyedProvider
from sendit_helpers.pseudonyms.provider import (
    ProviderKind,
    Pseudonyms,
    StudyKey,
    make_provider,
    unique_codes,
)
from sendit_helpers.pseudonyms.rest import RestProvider
from sendit_helpers.pseudonyms.secret import load_site_secret, site_secret_path
from sendit_helpers.pseudonyms.uids import UidMapper

SECRET = b"s" * 32
ENTITY_RE = re.compile(r"^IR[0-9a-f]{6,}$")

KEYS = [
    StudyKey("MRN0001", "ACC100", "20200101"),
    StudyKey("MRN0001", "ACC101", "20210315"),
    StudyKey("MRN0002", "ACC200", "20190707"),
    StudyKey("MRN0003", "ACC300", ""),
]


@pytest.fixture
def identifier_server() -> Iterator[tuple[str, IdentifierServer]]:
    url, server = start_identifier_server()
    try:
        yield url, server
    finally:
        server.stop()


def _rest(url: str, **kw: object) -> RestProvider:
    opts: dict[str, object] = {"timeout": 2.0, "retries": 2, "backoff": 0.01}
    opts.update(kw)
    return RestProvider(url, **opts)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- local


def test_keyed_stable_across_instances_and_batches() -> None:
    whole = KeyedProvider(SECRET).pseudonymize(KEYS)
    part1 = KeyedProvider(SECRET).pseudonymize(KEYS[:2])
    part2 = KeyedProvider(SECRET).pseudonymize(list(reversed(KEYS[2:])))
    assert {**part1, **part2} == whole
    assert set(whole) == set(KEYS)


def test_keyed_different_secret_gives_different_ids() -> None:
    a = KeyedProvider(SECRET).pseudonymize(KEYS)
    b = KeyedProvider(b"another secret").pseudonymize(KEYS)
    for key in KEYS:
        assert a[key].entity_id != b[key].entity_id
        assert a[key].item_id != b[key].item_id


def test_keyed_format_one_jitter_per_patient() -> None:
    p = KeyedProvider(SECRET, max_jitter_days=30).pseudonymize(KEYS)
    for ps in p.values():
        assert ENTITY_RE.match(ps.entity_id)
        assert ENTITY_RE.match(ps.item_id)
        assert ps.jitter_days != 0 and -30 <= ps.jitter_days <= 30
    a, b = p[KEYS[0]], p[KEYS[1]]
    assert a.entity_id == b.entity_id
    assert a.jitter_days == b.jitter_days
    assert a.item_id != b.item_id
    assert p[KEYS[0]].entity_id != p[KEYS[2]].entity_id


def test_keyed_jitter_range_and_spread() -> None:
    prov = KeyedProvider(SECRET, max_jitter_days=3)
    seen = {prov.jitter_for(f"P{i}") for i in range(400)}
    assert seen == {-3, -2, -1, 1, 2, 3}


def test_keyed_duplicates_and_whitespace() -> None:
    p = KeyedProvider(SECRET).pseudonymize(
        [StudyKey("MRN0001", "ACC100"), StudyKey("MRN0001 ", " ACC100", "20200101")]
    )
    assert len(set(p.values())) == 1


def test_keyed_id_source_and_prefix() -> None:
    a = KeyedProvider(SECRET).pseudonymize(KEYS[:1])[KEYS[0]]
    b = KeyedProvider(SECRET, id_source="other").pseudonymize(KEYS[:1])[KEYS[0]]
    c = KeyedProvider(SECRET, prefix="XY").pseudonymize(KEYS[:1])[KEYS[0]]
    assert a.entity_id != b.entity_id
    assert c.entity_id == "XY" + a.entity_id[2:]


def test_keyed_empty_accession_told_apart_by_date() -> None:
    k1, k2 = StudyKey("P", "", "20200101"), StudyKey("P", "", "20200202")
    p = KeyedProvider(SECRET).pseudonymize([k1, k2])
    assert p[k1].item_id != p[k2].item_id


def test_keyed_empty_patient_id_error_has_no_values() -> None:
    with pytest.raises(IdentifierError, match=r"1 of 2 studies have an empty PatientID"):
        KeyedProvider(SECRET).pseudonymize([StudyKey("", "ACC9"), StudyKey("P", "ACC8")])


def test_keyed_bad_settings() -> None:
    with pytest.raises(SettingsError, match="MAX_JITTER_DAYS"):
        KeyedProvider(SECRET, max_jitter_days=0)
    with pytest.raises(SettingsError, match="ENTITY_PREFIX"):
        KeyedProvider(SECRET, prefix="I/R")
    with pytest.raises(SettingsError, match="secret"):
        KeyedProvider(b"")


def test_unique_codes_extends_colliding_group_only() -> None:
    codes = unique_codes({"a": "abcdef01", "b": "abcdef02", "c": "123456ff"}, 6)
    assert len(set(codes.values())) == 3
    assert codes["c"] == "123456"
    assert codes["a"] == "abcdef01" and codes["b"] == "abcdef02"


def test_keyed_many_patients_unique() -> None:
    keys = [StudyKey(f"PAT{i:06d}", "A1") for i in range(20000)]
    p = KeyedProvider(SECRET).pseudonymize(keys)
    entities = [p[k].entity_id for k in keys]
    assert len(set(entities)) == len(keys)
    assert all(ENTITY_RE.match(e) for e in entities)
    # with 20,000 patients a few 6-hex collisions are expected and were extended
    assert any(len(e) > 8 for e in entities)
    items = [p[k].item_id for k in keys]
    assert len(set(items)) == len(keys)


# ----------------------------------------------------------------------------- crosswalk


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_crosswalk_happy_path(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "xwalk.csv",
        "patient_id,entity_id,jitter_days,accession,item_id\n"
        "MRN0001,IRaaaaaa,-12,ACC100,st100\n"
        "MRN0001,IRaaaaaa,-12,,\n"
        "MRN0002,IRbbbbbb,7,,\n"
        "MRN0003,IRcccccc,3,,\n",
    )
    prov = CrosswalkProvider.from_csv(csv, SECRET)
    p = prov.pseudonymize(KEYS)
    assert p[KEYS[0]] == Pseudonyms("IRaaaaaa", "st100", -12)
    assert p[KEYS[1]].entity_id == "IRaaaaaa" and p[KEYS[1]].jitter_days == -12
    assert ENTITY_RE.match(p[KEYS[1]].item_id)
    assert p[KEYS[2]].entity_id == "IRbbbbbb" and p[KEYS[2]].jitter_days == 7
    again = CrosswalkProvider.from_csv(csv, SECRET).pseudonymize(KEYS[1:2])
    assert again[KEYS[1]] == p[KEYS[1]]


def test_crosswalk_missing_patient(tmp_path: Path) -> None:
    csv = _write(tmp_path / "broker.csv", "patient_id,entity_id,jitter_days\nMRN0001,IRaaaaaa,5\n")
    prov = CrosswalkProvider.from_csv(csv, SECRET)
    with pytest.raises(IdentifierError, match=r"broker\.csv: 2 of 3 patients \(2 studies\)") as ei:
        prov.pseudonymize(KEYS)
    msg = str(ei.value)
    assert "add" in msg and "MRN0002" not in msg and "MRN0003" not in msg


def test_crosswalk_bad_files(tmp_path: Path) -> None:
    with pytest.raises(IdentifierError, match="lacks column.*jitter_days"):
        CrosswalkProvider.from_csv(
            _write(tmp_path / "a.csv", "patient_id,entity_id\nP,E\n"), SECRET
        )
    with pytest.raises(IdentifierError, match="line 3: the patient has another entity_id"):
        CrosswalkProvider.from_csv(
            _write(tmp_path / "b.csv", "patient_id,entity_id,jitter_days\nP,E1,1\nP,E2,1\n"),
            SECRET,
        )
    with pytest.raises(IdentifierError, match="line 3: entity_id is already used"):
        CrosswalkProvider.from_csv(
            _write(tmp_path / "c.csv", "patient_id,entity_id,jitter_days\nP,E1,1\nQ,E1,1\n"),
            SECRET,
        )
    with pytest.raises(IdentifierError, match="line 2: jitter_days is not a whole number"):
        CrosswalkProvider.from_csv(
            _write(tmp_path / "d.csv", "patient_id,entity_id,jitter_days\nP,E1,x\n"), SECRET
        )
    with pytest.raises(IdentifierError, match="does not exist"):
        CrosswalkProvider.from_csv(tmp_path / "none.csv", SECRET)


# ----------------------------------------------------------------------------- rest


def test_rest_happy_path(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    p = _rest(url).pseudonymize(KEYS)
    assert server.request_count == 1
    for ps in p.values():
        assert ENTITY_RE.match(ps.entity_id)
    assert p[KEYS[0]].entity_id == p[KEYS[1]].entity_id
    assert p[KEYS[0]].jitter_days == p[KEYS[1]].jitter_days
    assert p[KEYS[0]].item_id != p[KEYS[1]].item_id
    assert len({p[k].entity_id for k in KEYS}) == 3
    body = server.bodies[0]
    first = body["identifiers"][0]
    assert first["id"] == "MRN0001" and first["id_source"] == "Stanford MRN"
    assert first["id_timestamp"] == "2020-01-01T00:00:00Z"
    assert first["items"][1] == {
        "id": "ACC101",
        "id_source": "DCM Accession #",
        "id_timestamp": "2021-03-15T00:00:00Z",
    }
    assert "id_timestamp" not in body["identifiers"][2]["items"][0]
    # stable: the (stateful) service gives the same codes again
    assert _rest(url).pseudonymize(KEYS) == p


def test_rest_splits_2500_items_into_3_requests(
    identifier_server: tuple[str, IdentifierServer],
) -> None:
    url, server = identifier_server
    keys = [StudyKey("MRN0001", f"ACC{i:05d}", "20200101") for i in range(2500)]
    p = _rest(url).pseudonymize(keys)
    assert server.request_count == 3
    sizes = [sum(len(e["items"]) for e in b["identifiers"]) for b in server.bodies]
    assert sizes == [1000, 1000, 500]
    assert len(p) == 2500
    assert len({ps.entity_id for ps in p.values()}) == 1
    assert len({ps.item_id for ps in p.values()}) == 2500


def test_rest_too_many_items_is_refused_not_retried(
    identifier_server: tuple[str, IdentifierServer],
) -> None:
    url, server = identifier_server
    keys = [StudyKey("MRN0001", f"ACC{i:05d}") for i in range(1200)]
    with pytest.raises(IdentifierError, match=r"HTTP 413.*not retried.*max_items"):
        _rest(url, max_items=1500).pseudonymize(keys)
    assert server.request_count == 1


def test_rest_retries_503_then_succeeds(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    server.fail_next(2, 503)
    p = _rest(url, retries=4).pseudonymize(KEYS)
    assert server.request_count == 3
    assert len(p) == len(KEYS)


def test_rest_persistent_failure(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    server.fail_next(10, 503)
    with pytest.raises(IdentifierError) as ei:
        _rest(url, retries=2).pseudonymize(KEYS)
    msg = str(ei.value)
    assert url in msg and "after 3 attempts" in msg and "HTTP 503" in msg
    assert "MRN" not in msg and "ACC" not in msg
    assert server.request_count == 3


def test_rest_honours_retry_after_seconds(
    identifier_server: tuple[str, IdentifierServer],
) -> None:
    url, server = identifier_server
    server.fail_next(1, 429, retry_after="0.4")
    p = _rest(url, retries=2).pseudonymize(KEYS)  # backoff alone: 0.01 s
    assert len(p) == len(KEYS) and server.request_count == 2
    assert server.times[1] - server.times[0] >= 0.4


def test_rest_honours_retry_after_http_date(
    identifier_server: tuple[str, IdentifierServer],
) -> None:
    url, server = identifier_server
    when = int(time.time()) + 1
    if when - time.time() < 0.3:
        when += 1
    server.fail_next(1, 503, retry_after=formatdate(when, usegmt=True))
    p = _rest(url, retries=2).pseudonymize(KEYS)
    assert len(p) == len(KEYS) and server.request_count == 2
    assert server.times[1] >= when - 0.05  # the date has whole seconds


def test_rest_stop_event_ends_retries_at_once(
    identifier_server: tuple[str, IdentifierServer],
) -> None:
    url, server = identifier_server
    server.fail_next(5, 503, retry_after="20")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    with pytest.raises(IdentifierError, match=r"after 1 attempt \(stopped\) \(last: HTTP 503\)"):
        _rest(url, retries=4, stop=stop).pseudonymize(KEYS)
    assert time.monotonic() - start < 2.0
    assert server.request_count == 1


def test_rest_timeout(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    server.stall_next(3, 5.0)
    start = time.monotonic()
    with pytest.raises(IdentifierError, match=r"after 2 attempts \(last: timed out after 0.2 s\)"):
        _rest(url, timeout=0.2, retries=1).pseudonymize(KEYS)
    assert time.monotonic() - start < 3.0


def test_rest_timeout_then_success(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    server.stall_next(1, 5.0)
    p = _rest(url, timeout=0.3, retries=2).pseudonymize(KEYS)
    assert len(p) == len(KEYS)
    assert server.request_count == 2


def test_rest_unreachable() -> None:
    url, server = start_identifier_server()
    server.stop()
    with pytest.raises(IdentifierError, match=r"after 2 attempts \(last: connection failed"):
        _rest(url, retries=1).pseudonymize(KEYS)


def test_rest_token(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    server.token = "t0ken"
    assert len(_rest(url, token="t0ken").pseudonymize(KEYS)) == len(KEYS)
    with pytest.raises(IdentifierError, match=r"HTTP 401.*IDENTIFIER_TOKEN") as ei:
        _rest(url, token="wrong").pseudonymize(KEYS)
    assert "wrong" not in str(ei.value)


def test_rest_needs_accession(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    with pytest.raises(IdentifierError, match="1 of 1 studies have an empty AccessionNumber"):
        _rest(url).pseudonymize([StudyKey("MRN0001", "")])
    assert server.request_count == 0


def test_rest_bad_answers(identifier_server: tuple[str, IdentifierServer]) -> None:
    url, server = identifier_server
    with pytest.raises(IdentifierError, match=r"HTTP 404 .*not retried.*IDENTIFIER_URL"):
        _rest(url.replace("/identifiers", "/other")).pseudonymize(KEYS)
    server.answer_next({"unexpected": 1})
    with pytest.raises(IdentifierError, match="without a 'results' list"):
        _rest(url).pseudonymize(KEYS)
    server.answer_next({"results": []})
    with pytest.raises(IdentifierError, match=r"without patient 1 of 3"):
        _rest(url).pseudonymize(KEYS)
    server.answer_next({"results": [{"id": "MRN0001", "suid": "abc123", "jitter": 4, "items": []}]})
    with pytest.raises(IdentifierError, match=r"without 1 of the 1 studies of patient 1") as ei:
        _rest(url).pseudonymize(KEYS[:1])
    assert "MRN" not in str(ei.value) and "ACC" not in str(ei.value)
    server.answer_next(
        {"results": [{"id": "MRN0001", "suid": "a/b", "items": [{"id": "ACC100", "suid": "x"}]}]}
    )
    with pytest.raises(IdentifierError, match=r"usable 'suid' for patient 1"):
        _rest(url).pseudonymize(KEYS[:1])
    items = [{"id": a, "suid": "same", "jitter": 2} for a in ("ACC100", "ACC101")]
    server.answer_next({"results": [{"id": "MRN0001", "suid": "abc123", "items": items}]})
    with pytest.raises(IdentifierError, match=r"gave 1 studies the 'suid' of another"):
        _rest(url).pseudonymize(KEYS[:2])


# ----------------------------------------------------------------------------- UIDs


def test_uid_mapper_valid_and_consistent() -> None:
    m1, m2 = UidMapper(SECRET), UidMapper(SECRET)
    olds = ["1.2.840.113619.2.55.3.604688119.969.1268071029.320", "1.2.3", "9" * 64]
    for old in olds:
        new = m1(old)
        assert new == m2(old) == m1(old + "\x00") == m1(f" {old} ")
        assert new.startswith("2.25.") and len(new) <= 64
        assert UID(new).is_valid
        assert new != old
    assert len({m1(o) for o in olds}) == len(olds)
    assert UidMapper(b"other")(olds[0]) != m1(olds[0])
    assert m1("") == ""


def test_uid_mapper_remembers_a_bounded_number_and_still_maps_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mapper that saw more UIDs than it remembers starts afresh: its memory stays
    bounded in a warm kernel, and every UID still gets the same replacement."""
    from sendit_helpers.pseudonyms import uids

    monkeypatch.setattr(uids, "MAX_REMEMBERED", 4)
    bounded, fresh = UidMapper(SECRET), UidMapper(SECRET)
    olds = [f"1.2.3.{i}" for i in range(10)]
    first = [bounded(o) for o in olds]
    assert len(bounded) <= 4
    assert first == [bounded(o) for o in olds] == [fresh(o) for o in reversed(olds)][::-1]


def test_uid_mapper_formula() -> None:
    import hashlib
    import hmac

    old = "1.2.3.4"
    expect = "2.25." + str(
        int.from_bytes(hmac.new(SECRET, old.encode(), hashlib.sha256).digest()[:16], "big")
    )
    assert UidMapper(SECRET)(old) == expect


def test_uid_mapper_bad_root() -> None:
    with pytest.raises(SettingsError, match="UID root"):
        UidMapper(SECRET, root="2.25")
    with pytest.raises(SettingsError, match="UID root"):
        UidMapper(SECRET, root="1." + "2." * 20)


# ----------------------------------------------------------------------------- site secret


def test_site_secret_created_with_permissions(tmp_path: Path) -> None:
    secret = load_site_secret(tmp_path, environ={})
    path = site_secret_path(tmp_path)
    assert path == tmp_path / ".site" / "phi" / "site_secret.key"
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_site_secret(tmp_path, environ={}) == secret
    # the file's text can be copied into SENDIT_SITE_SECRET unchanged
    env = {"SENDIT_SITE_SECRET": path.read_text()}
    assert load_site_secret(tmp_path / "elsewhere", environ=env) == secret
    assert list(path.parent.iterdir()) == [path]  # no temporary files left


def test_site_secret_env_wins(tmp_path: Path) -> None:
    assert load_site_secret(tmp_path, environ={"SENDIT_SITE_SECRET": "00ff10"}) == b"\x00\xff\x10"
    assert load_site_secret(tmp_path, environ={"SENDIT_SITE_SECRET": "pass phrase é"}) == (
        "pass phrase é".encode()
    )
    assert not site_secret_path(tmp_path).exists()
    # blank counts as unset
    assert len(load_site_secret(tmp_path, environ={"SENDIT_SITE_SECRET": "  "})) == 32


def test_site_secret_tightens_loose_permissions(tmp_path: Path) -> None:
    secret = load_site_secret(tmp_path, environ={})
    path = site_secret_path(tmp_path)
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    assert load_site_secret(tmp_path, environ={}) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_site_secret_race_ends_with_one_secret(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(load_site_secret, [tmp_path] * 16, [{}] * 16))
    assert len(set(got)) == 1
    assert load_site_secret(tmp_path, environ={}) == got[0]


# ----------------------------------------------------------------------------- factory


def test_make_provider(tmp_path: Path, identifier_server: tuple[str, IdentifierServer]) -> None:
    url, _ = identifier_server
    assert isinstance(make_provider("local", secret=SECRET), KeyedProvider)
    assert isinstance(make_provider(ProviderKind.REST, secret=SECRET, url=url), RestProvider)
    csv = _write(tmp_path / "x.csv", "patient_id,entity_id,jitter_days\nP,E,1\n")
    assert isinstance(
        make_provider("CROSSWALK", secret=SECRET, crosswalk_csv=csv), CrosswalkProvider
    )
    local = make_provider("local", secret=SECRET).pseudonymize(KEYS)
    assert local == KeyedProvider(SECRET).pseudonymize(KEYS)


def test_make_provider_errors() -> None:
    with pytest.raises(
        SettingsError,
        match=r"IDENTIFIER_PROVIDER is 'rest' but IDENTIFIER_URL is empty; set IDENTIFIER_URL",
    ):
        make_provider("rest", secret=SECRET)
    with pytest.raises(SettingsError, match="CROSSWALK_CSV is empty"):
        make_provider("crosswalk", secret=SECRET)
    with pytest.raises(SettingsError, match=r"IDENTIFIER_PROVIDER is 'dasher'; use one of"):
        make_provider("dasher", secret=SECRET)
