"""Retries of network calls: exponential backoff with jitter, ``Retry-After``, a stop event.

Both clients that retry -- the identifier client
(:class:`~sendit_helpers.pseudonyms.rest.RestProvider`) and upload
(:func:`~sendit_helpers.stages.upload.with_retries`) -- go through :func:`call`, built on
tenacity:

* the wait after failed attempt ``n`` (from 1) is ``min(cap, base * 2**(n-1))``
  seconds times a random factor in ``[0.5, 1]`` (jitter: clients that failed together
  do not come back together);
* when the error carries a ``retry_after`` (seconds the server asked for with
  ``Retry-After``, read by :func:`retry_after_seconds`), the wait is at least that,
  still at most ``cap``;
* after ``retries`` retries the last error is raised as it is;
* a set ``stop`` event ends the retries: a wait in progress ends at once and the last
  error is raised (another item already gave up, or the run is shutting down).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity
from tenacity.wait import wait_base

T = TypeVar("T")

_SECONDS = re.compile(r"\d+(\.\d+)?")


@dataclass(frozen=True)
class Backoff:
    """How often and how long to wait between attempts.

    Attributes
    ----------
    retries : int
        Retries after the first attempt (``0``: one attempt only).
    base : float
        Longest wait before the first retry, seconds; doubles with each further retry.
    cap : float
        Longest wait, seconds, ``Retry-After`` included.
    """

    retries: int
    base: float = 0.5
    cap: float = 30.0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header value asks to wait; ``None`` when absent or unreadable.

    Parameters
    ----------
    value : str or None
        The header: delta-seconds (``"120"``; decimals are accepted) or an HTTP date
        (``"Wed, 21 Oct 2026 07:28:00 GMT"``, RFC 9110).
    now : datetime or None
        The time an HTTP date is counted from (default: now).

    Returns
    -------
    float or None
        Seconds, ``0`` for a date already past.
    """
    text = (value or "").strip()
    if not text:
        return None
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _Wait(wait_base):
    """Exponential backoff with jitter, lengthened to the error's ``retry_after``."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        b = self.backoff
        delay = min(b.cap, b.base * 2.0 ** (retry_state.attempt_number - 1))
        delay *= random.uniform(0.5, 1.0)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, int | float) and asked > delay:
            delay = float(asked)
        return min(b.cap, delay)


class _Stopped(Exception):
    """The stop event was set during a wait (never leaves :func:`call`)."""


def call(
    fn: Callable[[], T],
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...],
    stop: threading.Event | None = None,
) -> T:
    """Call ``fn``, retrying on ``retry_on`` errors as the module docstring says.

    Parameters
    ----------
    fn : callable
        One attempt.
    backoff : Backoff
        Retries and waits.
    retry_on : tuple of exception types
        Errors worth another attempt; any other error is raised at once.  An error's
        ``retry_after`` attribute (seconds or ``None``), when it has one, is honoured.
    stop : threading.Event or None
        When set, no further attempt is made and a wait in progress ends at once.

    Returns
    -------
    The value of the first attempt that succeeds.

    Raises
    ------
    Exception
        The last attempt's error, when every attempt failed, the error was not one
        of ``retry_on``, or ``stop`` was set.
    """
    failed: list[BaseException] = []

    def remember(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            failed[:] = [error]

    def sleep(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    rule: tenacity.stop.stop_base = tenacity.stop_after_attempt(max(0, backoff.retries) + 1)
    if stop is not None:
        rule = rule | tenacity.stop_when_event_set(stop)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        stop=rule,
        wait=_Wait(backoff),
        sleep=sleep,
        before_sleep=remember,
        reraise=True,
    )
    try:
        return retrying(fn)
    except _Stopped:
        pass
    raise failed[0]
