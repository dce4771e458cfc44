"""Consistent UID replacement keyed with the site secret (:class:`UidMapper`)."""

from __future__ import annotations

import hashlib
import hmac
import re

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.pseudonyms.provider import (
    _check_secret,
)

__all__ = [
    "MAX_REMEMBERED",
    "UidMapper",
]

#: UIDs a :class:`UidMapper` remembers before it starts afresh: a process that maps the
#: UIDs of many batches (a warm notebook kernel) keeps a bounded memory; a forgotten UID
#: is computed again, to the same replacement.
MAX_REMEMBERED = 65_536


_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")


class UidMapper:
    """Consistent UID replacement.

    ``new = root + str(int.from_bytes(HMAC-SHA256(secret, old)[:16], "big"))``:
    at most 39 digits after ``2.25.``, so a valid UID of at most 44
    characters; the same input gives the same output in every batch and run
    with the same secret.  Surrounding spaces and NUL padding of ``old`` are
    ignored; an empty UID stays empty.

    Parameters
    ----------
    secret : bytes
        The site secret.
    root : str
        UID root ending in ``.``; ``len(root) + 39`` must not exceed 64.
    """

    def __init__(self, secret: bytes, root: str = "2.25.") -> None:
        _check_secret(secret)
        if not _UID_ROOT.match(root) or len(root) + 39 > 64:
            raise SettingsError(
                f"UID root {root!r} is not a dotted numeric root ending in '.' of at most "
                "25 characters; use the default '2.25.'"
            )
        self._secret = bytes(secret)
        self.root = root
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        """Return the replacement of ``uid``."""
        old = str(uid).strip(" \x00")
        if not old:
            return ""
        new = self._cache.get(old)
        if new is None:
            mac = hmac.new(self._secret, old.encode("utf-8"), hashlib.sha256).digest()
            new = self.root + str(int.from_bytes(mac[:16], "big"))
            if len(self._cache) >= MAX_REMEMBERED:
                self._cache.clear()
            self._cache[old] = new
        return new

    def __len__(self) -> int:
        """UIDs remembered now (at most :data:`MAX_REMEMBERED`)."""
        return len(self._cache)
