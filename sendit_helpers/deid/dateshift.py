"""Dates moved by a whole number of days (JITTER, ``func:jitter``) and ages capped at 90.

DA values (ranges and dotted dates too), DT values and multi-valued ones; a value that
cannot be parsed gives None (the engine blanks it).  TM is unchanged by whole days.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from pydicom.multival import MultiValue

__all__ = [
    "age_over_89",
    "shift_date",
    "shift_value",
]

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def age_over_89(value: str) -> str:
    """Cap a PatientAge (AS) value at ``090Y``.

    Parameters
    ----------
    value : str
        An age string such as ``"093Y"``, ``"045Y"`` or ``"006M"``.

    Returns
    -------
    str
        ``"090Y"`` for ages of 90 years or more (also when expressed in
        months, weeks or days), the value unchanged otherwise, and ``""`` when
        the value is not a valid age string (it cannot be checked).
    """
    if not value:
        return value
    match = _AGE_RE.match(value)
    if match is None:
        return ""
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = {"Y": number, "M": number / 12, "W": number / 52.18, "D": number / 365.25}[unit]
    return "090Y" if years >= 90 else value


def _shift_da(value: str, days: int) -> str | None:
    v = value.strip()
    if not v:
        return v
    if "-" in v:  # a date range (query datasets)
        parts = [_shift_da(p, days) if p else "" for p in v.split("-")]
        return None if any(p is None for p in parts) else "-".join(str(p) for p in parts)
    dotted = len(v) == 10 and v[4] == "." and v[7] == "."
    digits = v.replace(".", "") if dotted else v
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        new = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) + _dt.timedelta(
            days=days
        )
    except (ValueError, OverflowError):
        return None
    out = f"{new.year:04d}{new.month:02d}{new.day:02d}"
    return f"{out[:4]}.{out[4:6]}.{out[6:]}" if dotted else out


def shift_date(value: str | None, days: int) -> str:
    """A ``YYYYMMDD`` date moved by ``days`` (``""`` when empty or not a date).

    The value of the ``entity_timestamp`` and ``item_timestamp`` variables
    (:data:`VARIABLES`).
    """
    text = (value or "").strip()
    shifted = _shift_da(text, days) if text else ""
    return shifted if shifted and "-" not in text else ""


def _shift_dt(value: str, days: int) -> str | None:
    v = value.strip()
    if not v:
        return v
    if len(v) < 8:
        return None  # YYYY or YYYYMM cannot be shifted by days
    head = _shift_da(v[:8], days)
    return None if head is None else head + v[8:]


def _shift(value: Any, vr: str, days: int) -> Any:
    """Shift DA/DT values (multi-valued too); TM is unchanged by whole days.

    Returns None when a value cannot be parsed (the caller blanks it).
    """
    if vr == "TM":
        return value
    func = _shift_dt if vr == "DT" else _shift_da
    if isinstance(value, (MultiValue, list, tuple)):
        out = [func(str(v), days) for v in value]
        return None if any(v is None for v in out) else "\\".join(str(v) for v in out)
    if vr not in ("DA", "DT"):  # JITTER on another VR: accept a date or a datetime
        text = str(value)
        shifted = _shift_da(text, days) if len(text.strip()) == 8 else _shift_dt(text, days)
        return shifted
    return func(str(value), days)


def shift_value(value: Any, vr: str, days: int) -> Any:
    """A DA / DT value moved by ``days`` (None when it cannot be parsed)."""
    return _shift(value, vr, days)
