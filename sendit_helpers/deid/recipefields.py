"""Field expressions of a recipe: tag text, keywords (old ones too), wildcards, private tags.

``_compile_field`` turns a field as written (``PatientName``, ``(0010,0010)``,
``(50XX,XXXX)``, ``(0019,"GEMS_ACQU_01",1A)``, ``contains:``, ``select:VR:XX`` ...)
into a ``_Field`` the engine matches against every tag; ``_entry`` gives a tag's
dictionary VR, keyword and name.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary
from pydicom.datadict import get_entry

from sendit_helpers.core.errors import RecipeError, RecipeWarning, tag_label

#: Words deid reads as a field name on an action line without finding a field, so it
#: ignores the line (``REMOVE jitter`` in deid's bundled ``deid.dicom``): the action and
#: function names.  sendit ignores such a line too, with a :class:`RecipeWarning`.
_DEID_WORDS = frozenset({"add", "blank", "jitter", "keep", "replace", "remove", "uid", "label"})


def _parse_tag_text(text: str) -> int | None:
    """Return the tag for ``00100010``, ``(0010,0010)`` or ``0x00100010``."""
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if t.startswith("(") and t.endswith(")"):
        t = t[1:-1]
    t = t.replace(",", "").replace(" ", "")
    if len(t) == 8 and all(c in "0123456789abcdefABCDEF" for c in t):
        return int(t, 16)
    return None


_WILDCARD_RE = re.compile(r"^\(?([0-9A-Fa-fXx]{4}),\s*([0-9A-Fa-fXx]{4})\)?$")


_PRIVATE_RE = re.compile(r'^\(?([0-9A-Fa-f]{4}),\s*"([^"]*)",\s*([0-9A-Fa-f]{2})\)?$')


def _wildcard(text: str) -> tuple[int, int] | None:
    """Return ``(mask, value)`` for a tag with X wildcards, e.g. ``(60XX,4000)``."""
    match = _WILDCARD_RE.match(text.strip())
    if match is None:
        return None
    digits = (match.group(1) + match.group(2)).upper()
    if "X" not in digits:
        return None
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    value = int("".join("0" if c == "X" else c for c in digits), 16)
    return mask, value


@lru_cache(maxsize=1)
def _names() -> dict[str, int]:
    """Lower-case keyword / attribute name -> tag, for the public dictionary."""
    table: dict[str, int] = {}
    for tag, entry in DicomDictionary.items():
        table.setdefault(entry[2].lower(), tag)
        if entry[4]:
            table[entry[4].lower()] = tag
    return table


@lru_cache(maxsize=1)
def _old_names() -> dict[str, int]:
    """Lower-case old-style keyword -> tag.

    Before keywords were standardised (pydicom < 1.0, DICOM 2008 and earlier)
    a keyword was the attribute name without its spaces and punctuation:
    ``PatientsName`` for Patient's Name.  Recipes written then still carry them.
    """
    current = _names()
    table: dict[str, int] = {}
    for tag, entry in DicomDictionary.items():
        old = re.sub(r"[^A-Za-z0-9]", "", str(entry[2])).lower()
        if old and old not in current:
            table.setdefault(old, tag)
    return table


def _suggest(text: str) -> str:
    """`` (did you mean Keyword (gggg,eeee)?)`` for a near miss, else ``""``."""
    keywords = {str(entry[4]).lower(): tag for tag, entry in DicomDictionary.items() if entry[4]}
    close = difflib.get_close_matches(text.lower(), list(keywords), n=1, cutoff=0.8)
    if not close:
        return ""
    tag = keywords[close[0]]
    return f" (did you mean {tag_label(_entry(tag)[1], tag)}?)"


def _warn(notes: list[str], message: str) -> None:
    notes.append(message)
    warnings.warn(message, RecipeWarning, stacklevel=3)


@lru_cache(maxsize=1)
def _repeater_names() -> dict[str, tuple[int, int]]:
    """Lower-case keyword of a repeating-group attribute -> (mask, value)."""
    table: dict[str, tuple[int, int]] = {}
    for pattern, entry in RepeatersDictionary.items():
        wc = _wildcard(f"({pattern[:4]},{pattern[4:]})")
        if wc is not None:
            table[entry[2].lower()] = wc
            if entry[4]:
                table[entry[4].lower()] = wc
    return table


def _entry(tag: int) -> tuple[str, str, str]:
    """``(VR, keyword, name)`` from the public dictionary, or ``("", "", "")``."""
    try:
        vr, _vm, name, _retired, keyword = get_entry(tag)
    except KeyError:
        return "", "", ""
    return str(vr), str(keyword), str(name)


def _tag_strings(tag: int) -> tuple[str, str]:
    return f"({tag >> 16:04x},{tag & 0xFFFF:04x})", f"{tag:08X}"


@dataclass(frozen=True)
class _Field:
    kind: str  # tag, wild, private, regex, except, vr, group, all, name
    tag: int = 0
    mask: int = 0
    creator: str = ""
    regex: re.Pattern[str] | None = None
    text: str = ""

    def matches(self, tag: int, vr: str, keyword: str, name: str, creator: str | None) -> bool:
        kind = self.kind
        if kind == "tag":
            return tag == self.tag
        if kind == "wild":
            return (tag & self.mask) == self.tag
        if kind == "all":
            return True
        if kind == "private":
            return (
                creator is not None
                and (tag >> 16) == (self.tag >> 16)
                and (tag & 0xFF) == (self.tag & 0xFF)
                and creator.strip() == self.creator
            )
        if kind == "vr":
            return vr.upper().startswith(self.text)
        if kind == "group":
            return (tag >> 16) == self.tag
        if kind == "name":  # unknown exact name: compare like deid's exact matches
            return self.text in (keyword.lower(), name.lower(), *_tag_strings(tag))
        assert self.regex is not None
        strings = [*_tag_strings(tag), keyword, name]
        if creator is not None:
            strings.append(f'{tag >> 16:04X},"{creator}",{tag & 0xFF:02X}')
        hit = any(self.regex.search(s) for s in strings if s)
        return hit if kind == "regex" else not hit


def _compile_field(
    text: str, fields: dict[str, list[str]], where: str, notes: list[str] | None = None
) -> list[_Field]:
    """Compile one field expression; ``where`` names file and line for errors.

    ``notes`` receives the warnings given (old keyword resolved, line ignored as
    deid ignores it); an empty result means the line matches nothing.
    """
    if notes is None:
        notes = []
    raw = text.strip()
    low = raw.lower()
    if low == "all":
        return [_Field("all")]
    if low.startswith("values:"):
        raise RecipeError(
            f"{where}: value lists ('values:') are not supported by the fast engine; "
            "list the fields in a %fields section and use 'fields:' instead"
        )
    if low.startswith("fields:"):
        name = raw.split(":", 1)[1]
        if name not in fields:
            raise RecipeError(f"{where}: '%fields {name}' is not defined in this recipe")
        out: list[_Field] = []
        for member in fields[name]:
            out.extend(_compile_field(member, fields, where, notes))
        return out
    private = _PRIVATE_RE.match(raw)
    if private is not None:
        group, creator, offset = private.groups()
        if not int(group, 16) & 1:
            raise RecipeError(f"{where}: creator syntax is only valid for private (odd) groups")
        return [
            _Field("private", tag=(int(group, 16) << 16) | int(offset, 16), creator=creator.strip())
        ]
    if ":" in raw and not raw.startswith("("):
        expander, expression = raw.split(":", 1)
        expander = expander.lower()
        if expander == "select":
            attr, _, value = expression.partition(":")
            if attr.upper() == "VR" and value:
                return [_Field("vr", text=value[:2].upper())]
            if attr.upper() == "GROUP" and value:
                try:
                    return [_Field("group", tag=int(value, 16))]
                except ValueError:
                    pass
            raise RecipeError(f"{where}: 'select:' expects 'select:VR:XX' or 'select:group:gggg'")
        if expander in ("endswith", "startswith", "contains", "except"):
            pattern = expression
            if expander == "endswith":
                pattern = f"({expression})$"
            elif expander == "startswith":
                pattern = f"^({expression})"
            try:
                regex = re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise RecipeError(
                    f"{where}: invalid regular expression in '{expander}:' ({exc})"
                ) from None
            return [_Field("except" if expander == "except" else "regex", regex=regex)]
        raise RecipeError(f"{where}: unknown field expander '{expander}:'")
    tag = _parse_tag_text(raw)
    if tag is not None:
        return [_Field("tag", tag=tag)]
    wild = _wildcard(raw)
    if wild is not None:
        return [_Field("wild", mask=wild[0], tag=wild[1])]
    known = _names().get(low)
    if known is not None:
        return [_Field("tag", tag=known)]
    rep = _repeater_names().get(low)
    if rep is not None:
        return [_Field("wild", mask=rep[0], tag=rep[1])]
    old = _old_names().get(low)
    if old is not None:
        label = tag_label(_entry(old)[1], old)
        _warn(
            notes,
            f"{where}: '{raw}' is the old keyword of {label}; read as {label} "
            f"(write {_entry(old)[1]} to silence this warning)",
        )
        return [_Field("tag", tag=old)]
    if low in _DEID_WORDS:
        _warn(
            notes,
            f"{where}: '{raw}' is an action or function name, not a field; the line matches "
            "nothing and is ignored, as deid ignores it (delete the line)",
        )
        return []
    raise RecipeError(
        f"{where}: unknown field '{raw}'{_suggest(raw)}; write a DICOM keyword (PatientName), "
        "a tag ((0010,0010) or 00100010), a wildcard tag ((60XX,3000)), a private tag with "
        "its creator or a field expression (contains:, startswith:, endswith:, fields:NAME)"
    )
