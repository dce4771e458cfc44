"""Retries (sendit_helpers.core.retry): backoff with jitter, Retry-After, the stop event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate

import pytest

from sendit_helpers.core.errors import SenditError
from sendit_helpers.core.retry import Backoff, call, retry_after_seconds


class Busy(SenditError):
    """A retryable failure, optionally with the server's Retry-After."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class Waits(threading.Event):
    """A stop event that records each wait instead of sleeping (never set)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return False


def failing(n: int, retry_after: float | None = None) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= n:
            raise Busy(retry_after)
        return "done"

    return calls, fn


NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("Thu, 03 Dec 2026 12:00:42 GMT", 42.0),
        ("Thu, 03 Dec 2026 11:59:00 GMT", 0.0),  # already past
        ("", None),
        (None, None),
        ("-5", None),
        ("soon", None),
    ],
)
def test_retry_after_seconds_reads_seconds_and_http_dates(
    value: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds


def test_backoff_doubles_with_jitter_and_cap() -> None:
    rounds = []
    for _ in range(20):
        stop = Waits()
        calls, fn = failing(5)
        assert call(fn, Backoff(retries=5, base=0.1, cap=1.0), (Busy,), stop) == "done"
        assert len(calls) == 6
        for n, wait in enumerate(stop.waits):
            longest = min(1.0, 0.1 * 2**n)
            assert longest / 2 <= wait <= longest
        rounds.append(tuple(stop.waits))
    assert len(set(rounds)) > 1, "no jitter: every run waited the same"


def test_retry_after_lengthens_the_wait_up_to_the_cap() -> None:
    stop = Waits()
    calls, fn = failing(2, retry_after=0.7)
    call(fn, Backoff(retries=3, base=0.01, cap=5.0), (Busy,), stop)
    assert stop.waits == [0.7, 0.7]
    stop = Waits()
    calls, fn = failing(1, retry_after=3600.0)
    call(fn, Backoff(retries=3, base=0.01, cap=2.0), (Busy,), stop)
    assert stop.waits == [2.0]


def test_gives_up_after_retries_with_the_last_error() -> None:
    calls, fn = failing(10)
    with pytest.raises(Busy, match="busy"):
        call(fn, Backoff(retries=2, base=0.001), (Busy,))
    assert len(calls) == 3


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise SenditError("refused")

    with pytest.raises(SenditError, match="refused"):
        call(fn, Backoff(retries=5, base=0.001), (Busy,))
    assert calls == [1]


def test_stop_event_ends_a_wait_at_once() -> None:
    stop = threading.Event()
    calls, fn = failing(10, retry_after=20.0)
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    with pytest.raises(Busy):
        call(fn, Backoff(retries=5, base=0.001, cap=30.0), (Busy,), stop)
    assert time.monotonic() - start < 2.0
    assert len(calls) == 1


def test_stop_event_already_set_means_one_attempt() -> None:
    stop = threading.Event()
    stop.set()
    calls, fn = failing(10)
    with pytest.raises(Busy):
        call(fn, Backoff(retries=5, base=0.001), (Busy,), stop)
    assert len(calls) == 1


# -- the targets read Retry-After -------------------------------------------------------------
def test_orthanc_rest_reads_retry_after_seconds_and_dates() -> None:
    """A real HTTP server answers 429 / 503 with Retry-After (the identifier stand-in)."""
    from identifier_server import PATH, start_identifier_server

    from sendit_helpers.targets import TransientError
    from sendit_helpers.targets.orthanc import OrthancRest

    url, server = start_identifier_server()
    rest = OrthancRest(url.removesuffix(PATH))
    later = time.time() + 90
    try:
        for status, header, wanted in [
            (429, "7", 7.0),
            (503, formatdate(later, usegmt=True), 90.0),
            (500, "7", None),  # Retry-After counts only with 429 and 503
            (429, None, None),
        ]:
            server.fail_next(1, status, retry_after=header)
            with pytest.raises(TransientError, match=f"answered HTTP {status} for a test") as ei:
                rest.request("POST", PATH, body=b"{}", what="a test")
            got = ei.value.retry_after
            assert got is None if wanted is None else got == pytest.approx(wanted, abs=2.0)
    finally:
        rest.close()
        server.stop()


def test_google_errors_carry_retry_after() -> None:
    exceptions = pytest.importorskip("google.api_core.exceptions")
    import requests

    from sendit_helpers.targets.google import translate_error

    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "4"
    where = {"service": "storage", "what": "uploading x", "bucket": "b", "project": "p"}
    busy = translate_error(exceptions.TooManyRequests("slow down", response=response), **where)
    assert busy is not None and getattr(busy, "retry_after", None) == 4.0
    failed = translate_error(exceptions.InternalServerError("oops", response=response), **where)
    assert failed is not None and getattr(failed, "retry_after", "absent") is None
