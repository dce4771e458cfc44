"""What de-identification made of one header element (:class:`Fragment`), and UID shortcuts.

A :class:`Fragment` is the element as written, its cells of the ``cleaned``
table, the values it leaves in the output and what the recipe removed or
replaced.  A :class:`UidShortcut` makes the fragment of a UID element the
recipe only remaps from the new UID alone, once it has matched the engine's
result :data:`SHORTCUT_CHECKS` times.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom._uid_dict import UID_dictionary

from sendit_helpers.core.explicitvr import HEAD
from sendit_helpers.deid.recipemodel import Changes, DeidContext

#: Engine results a UID shortcut must reproduce (per tag and context) before it is trusted.
SHORTCUT_CHECKS = 4
_PLAIN_UID = re.compile(rb"[0-9][0-9.]{0,63}")


class Fragment:
    """What de-identification made of one top-level element (shared: never mutate)."""

    __slots__ = ("kept", "noted", "originals", "out", "removed_text", "replaced", "row")

    def __init__(
        self,
        out: bytes,
        row: dict[str, Any],
        kept: set[str] | frozenset[str],
        changes: Changes | None = None,
    ) -> None:
        self.out = out
        """The element as written (empty when removed)."""
        self.row = row
        """Its cells of the ``cleaned`` table."""
        self.kept = frozenset(kept)
        """Values it leaves in the output (see :func:`~sendit_helpers.deid.cleaned.describe`)."""
        changes = changes or Changes()
        self.originals = tuple(changes.originals)
        self.removed_text = tuple(changes.removed_text)
        self.replaced = tuple(changes.replaced.items())
        self.noted = bool(self.originals or self.removed_text or self.replaced)
        """Whether the recipe removed or replaced anything here."""


def uid_value(out: bytes) -> str | None:
    """The single UID an element written as ``out`` holds."""
    if len(out) < 8 or out[4:6] != b"UI":
        return None
    value = out[8:].rstrip(b"\x00 ")
    return None if b"\\" in value else value.decode("ascii", "replace")


def plain_uid(raw: bytes) -> str | None:
    """The value of a UI element ``raw`` when it is one plain UID (digits and dots), else None."""
    if len(raw) < 10 or HEAD.unpack_from(raw)[3] != len(raw) - 8:
        return None
    value = raw[8:-1] if raw[-1] == 0 else raw[8:]
    if _PLAIN_UID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


class UidShortcut:
    """A UID element the recipe only remaps: its fragment made from the new UID alone.

    Learned from one engine result (:meth:`learn`): the element written with
    the mapped UID, its table cells holding the new UID, the new UID kept (with
    values that do not depend on the UID), the old one reported and the pair
    in the lookup, nothing else.  :meth:`make` builds the same fragment for
    another plain UID of the tag with one call of the job's UID mapper; the
    first :data:`SHORTCUT_CHECKS` are compared with the engine's result (a
    difference retires the shortcut).
    """

    __slots__ = ("category", "checked", "extra", "keep", "key", "keys")

    def __init__(
        self,
        keys: tuple[str, ...],
        keep: bool,
        extra: frozenset[str],
        category: str | None,
        key: str,
    ) -> None:
        self.keys = keys
        self.keep = keep
        self.extra = extra
        self.category = category
        self.key = key
        self.checked = 0

    @classmethod
    def learn(
        cls, ctx: DeidContext, tag: int, raw: bytes, fragment: Fragment
    ) -> UidShortcut | None:
        """The shortcut ``fragment`` (the engine's result for ``raw``) follows, if any."""
        old = plain_uid(raw)
        if old is None or old in UID_dictionary or fragment.removed_text:
            return None
        new = uid_value(fragment.out)
        if not new or new == old or fragment.out != uid_element(tag, new):
            return None
        if ctx.uid_map(old) != new:
            return None
        if len(fragment.replaced) != 1 or fragment.replaced[0][1] != (old, new):
            return None
        if any(value != new for value in fragment.row.values()):
            return None
        category = None
        if fragment.originals:
            if len(fragment.originals) != 1:
                return None
            vr, category, values = fragment.originals[0]
            if vr != "UI" or list(values) != [old]:
                return None
        folded = new.casefold()
        extra = fragment.kept - {folded}  # the character set's words, say
        key = fragment.replaced[0][0]
        return cls(tuple(fragment.row), folded in fragment.kept, extra, category, key)

    def make(self, ctx: DeidContext, tag: int, raw: bytes) -> Fragment | None:
        """The fragment of ``raw`` (None when it is not one plain UID the mapper replaces)."""
        old = plain_uid(raw)
        if old is None or old in UID_dictionary:
            return None
        new = ctx.uid_map(old)
        changes = Changes()
        if self.category is not None:
            changes.originals.append(("UI", self.category, [old]))
        changes.replaced[self.key] = (old, new)
        return Fragment(
            uid_element(tag, new),
            dict.fromkeys(self.keys, new),
            self.extra | {new.casefold()} if self.keep else self.extra,
            changes,
        )


def same_fragment(a: Fragment, b: Fragment) -> bool:
    """Whether two fragments are the same in every part (bytes, cells and their order, changes)."""
    return (
        a.out == b.out
        and a.row == b.row
        and list(a.row) == list(b.row)
        and a.kept == b.kept
        and a.originals == b.originals
        and a.removed_text == b.removed_text
        and a.replaced == b.replaced
    )


def uid_element(tag: int, uid: str) -> bytes:
    """The explicit VR little endian UI element ``tag`` holding ``uid`` (padded with NUL)."""
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return HEAD.pack(tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value
