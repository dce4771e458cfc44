"""Reading a recipe file: validated line by line, parsed with deid's parser, compiled.

``_parse_file`` gives the compiled ``%header`` rules and ``%filter`` labels of one file
(errors name file:line, never a value); ``_implied_adds`` adds the DeidentificationMethod
a recipe's own ``PatientIdentityRemoved YES`` requires.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sendit_helpers.core.errors import RecipeError
from sendit_helpers.deid.recipefields import _compile_field, _entry, _Field, _names, _parse_tag_text
from sendit_helpers.deid.recipemodel import (
    _FILTER_ACTIONS,
    _FUNC,
    _FUNCS,
    _HEADER_ACTIONS,
    _LIT,
    _METHOD_CODES,
    _SECTIONS,
    _VAR,
    VARIABLES,
    Action,
    _Cond,
    _Label,
    _Line,
    _Parsed,
    _Rule,
    _Value,
)


def _compile_value(action: str, raw: str | None, where: str) -> _Value | None:
    if raw is None:
        return None
    text = raw.strip()  # deid already cut trailing comments
    if action == "REMOVE":
        return None  # deid's conditional REMOVE: removed unconditionally here (safer)
    if not text:
        raise RecipeError(f"{where}: {action} requires a value")
    low = text.lower()
    if low.startswith("var:"):
        name = text[4:].strip()
        if not name or " " in name:
            raise RecipeError(f"{where}: 'var:' needs one variable name")
        if name not in VARIABLES:
            close = difflib.get_close_matches(name, list(VARIABLES), n=1)
            hint = f"did you mean var:{close[0]}? " if close else ""
            raise RecipeError(
                f"{where}: unknown variable 'var:{name}'; {hint}sendit supplies "
                f"{', '.join(sorted(VARIABLES))}: use one of these or a literal value"
            )
        return _Value(_VAR, name)
    if low.startswith("func:"):
        parts = text[5:].split()
        if not parts or parts[0] not in _FUNCS:
            known = ", ".join(sorted(_FUNCS))
            raise RecipeError(f"{where}: unknown function '{text[5:].strip()}' (known: {known})")
        if parts[0] == "method_codes":
            if action != "ADD":
                raise RecipeError(f"{where}: func:method_codes is only valid with ADD")
            bad = [c for c in parts[1:] if c not in _METHOD_CODES]
            if bad or len(parts) == 1:
                raise RecipeError(
                    f"{where}: func:method_codes expects CID 7050 code values (1131xx)"
                )
        elif action == "JITTER" and parts[0] != "jitter":
            raise RecipeError(f"{where}: JITTER takes a number of days, var:NAME or func:jitter")
        return _Value(_FUNC, parts[0], tuple(parts[1:]))
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if action == "JITTER":
        try:
            int(text)
        except ValueError:
            raise RecipeError(
                f"{where}: JITTER takes a number of days, var:NAME or func:jitter"
            ) from None
    return _Value(_LIT, text)


def _ctp(raw: str, where: str) -> str:
    """CTP ``x,y,width,height`` -> ``x0,y0,x1,y1``."""
    if raw.strip() == "all":
        return "all"
    nums = _numbers(raw, where)
    return f"{nums[0]},{nums[1]},{nums[0] + nums[2]},{nums[1] + nums[3]}"


def _numbers(raw: str, where: str) -> list[int]:
    try:
        nums = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"{where}: coordinates must be four integers x0,y0,x1,y1") from None
    if len(nums) != 4:
        raise RecipeError(f"{where}: coordinates must be four integers x0,y0,x1,y1")
    return nums


def _parse_condition(text: str, where: str) -> tuple[tuple[_Cond, ...], tuple[str, ...]]:
    """Parse ``contains A x || empty B + equals C y`` into conditions and operators."""
    conds: list[_Cond] = []
    ops: list[str] = []
    pieces = re.split(r"\s*(\|\||\+)\s*(?=(?:" + "|".join(_FILTER_ACTIONS) + r")\b)", text.strip())
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            ops.append("or" if piece == "||" else "and")
            continue
        words = piece.strip().split(None, 2)
        if not words or words[0].lower() not in _FILTER_ACTIONS:
            raise RecipeError(f"{where}: '{words[0] if words else ''}' is not a filter criterion")
        action = words[0].lower()
        if len(words) < 2:
            raise RecipeError(f"{where}: {action} needs a field")
        field_text = words[1]
        value = words[2].strip() if len(words) > 2 else ""
        needs_value = action not in ("missing", "present", "empty")
        if needs_value and not value:
            raise RecipeError(f"{where}: {action} needs a field and a value")
        if not needs_value and value:
            raise RecipeError(f"{where}: {action} takes a field only")
        tag = _parse_tag_text(field_text)
        if tag is None:
            tag = _names().get(field_text.lower())
        regex = None
        if action in ("contains", "notcontains"):
            try:
                regex = re.compile(value, re.IGNORECASE)
            except re.error:
                regex = re.compile(re.escape(value), re.IGNORECASE)
        conds.append(_Cond(action, tag, field_text, value, regex))
    return tuple(conds), tuple(ops)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecipeError(
            f"{path}: cannot read the recipe ({exc.strerror}); check the path"
        ) from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: the recipe is not UTF-8 text") from None


def _parse_file(path: Path, source: int, *, header: bool = True) -> _Parsed:
    """Validate a recipe line by line, parse it with deid, and compile it.

    Parameters
    ----------
    path : Path
        The recipe file.
    source : int
        Its position among the loaded recipes (later wins).
    header : bool
        Compile the ``%header`` section (False: only ``%filter``, as for the
        filters bundled with deid whose header section is not ours).
    """
    lines = _read_lines(path)
    section: str | None = None
    section_name: str | None = None
    header_lines: list[int] = []
    fields: dict[str, list[str]] = {}
    labels: list[_Label] = []
    label: dict[str, Any] | None = None

    def close_label() -> None:
        nonlocal label
        if label is not None:
            labels.append(
                _Label(
                    label["group"],
                    label["name"],
                    tuple(label["lines"]),
                    tuple(label["coords"]),
                    " ".join(label["reason"]).strip(),
                )
            )
            label = None

    for number, original in enumerate(lines, start=1):
        line = original.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        head = line.split(None, 1)[0]
        if head.upper() == "FORMAT":
            fmt = line.split(None, 1)[1].split("#", 1)[0].strip().lower() if " " in line else ""
            if fmt != "dicom":
                raise RecipeError(f"{where}: only 'FORMAT dicom' is supported")
            continue
        if line.startswith("%"):
            close_label()
            parts = line.split("#", 1)[0].split()
            section = parts[0][1:].lower()
            section_name = " ".join(parts[1:]) or None
            if section not in _SECTIONS or section == "labels":
                raise RecipeError(
                    f"{where}: '%{section}' is not a supported section ({', '.join(_SECTIONS[:4])})"
                )
            if section in ("filter", "values", "fields") and not section_name:
                raise RecipeError(f"{where}: '%{section}' needs a name, e.g. '%{section} graylist'")
            if section == "fields":
                fields.setdefault(str(section_name), [])
            continue
        if section is None:
            raise RecipeError(f"{where}: a section such as '%header' must come before this line")
        if section == "header":
            if head.upper() not in _HEADER_ACTIONS:
                raise RecipeError(
                    f"{where}: '{head}' is not a header action "
                    "(ADD, BLANK, JITTER, KEEP, REPLACE, REMOVE)"
                )
            if len(line.split("#", 1)[0].split()) < 2:
                raise RecipeError(f"{where}: {head.upper()} needs a field")
            if (
                head.upper() in ("ADD", "REPLACE", "JITTER")
                and len(line.split("#", 1)[0].split()) < 3
            ):
                raise RecipeError(f"{where}: {head.upper()} needs a field and a value")
            header_lines.append(number)
        elif section == "fields":
            if head.upper() != "FIELD" or len(line.split()) < 2:
                raise RecipeError(f"{where}: %fields sections take 'FIELD <expression>' lines")
            fields[str(section_name)].append(line.split("#", 1)[0].split()[1])
        elif section == "values":
            if head.upper() not in ("FIELD", "SPLIT") or len(line.split()) < 2:
                raise RecipeError(f"{where}: %values sections take 'FIELD' or 'SPLIT' lines")
        elif section == "filter":
            if head.upper() == "LABEL":
                close_label()
                name = line[len(head) :].split("#", 1)[0].strip()
                label = {
                    "group": section_name,
                    "name": name,
                    "lines": [],
                    "coords": [],
                    "reason": [],
                }
                continue
            if label is None:
                raise RecipeError(f"{where}: filter criteria must follow a 'LABEL name' line")
            low = line.lower()
            body = line.split(" #", 1)[0].strip()
            if low.startswith(
                ("ctpcoordinates", "ctpkeepcoordinates", "coordinates", "keepcoordinates")
            ):
                keyword, _, raw = body.partition(" ")
                keyword = keyword.lower()
                raw = raw.strip()
                if keyword.startswith("ctp"):
                    raw = _ctp(raw, where)
                elif raw != "all" and not raw.startswith("from:"):
                    _numbers(raw, where)
                if "keep" not in keyword:  # keep-masks are ignored: scrubbing more is the safe side
                    label["coords"].append(raw)
                continue
            operator = "and"
            if body.startswith("||"):
                operator, body = "or", body[2:].strip()
            elif body.startswith("+"):
                body = body[1:].strip()
            conds, inner = _parse_condition(body, where)
            label["lines"].append(_Line(operator, conds, inner))
            label["reason"].append(body if len(label["lines"]) == 1 else f"{operator} {body}")
    close_label()

    rules: list[_Rule] = []
    notes: list[str] = []
    if header and header_lines:
        config = _deid_load(path)
        entries = list(config.get("header") or [])
        if len(entries) != len(header_lines):
            raise RecipeError(
                f"{path}: deid parsed {len(entries)} header actions but the file has "
                f"{len(header_lines)} action lines; check quoting on the action lines"
            )
        for number, entry in zip(header_lines, entries, strict=True):
            where = f"{path}:{number}"
            action = Action(str(entry["action"]).upper())
            field_text = str(entry["field"])
            compiled = tuple(_compile_field(field_text, fields, where, notes))
            value = _compile_value(action.value, entry.get("value"), where)
            if not compiled and action is not Action.ADD:
                continue  # a line deid ignores (warned above)
            if action is Action.ADD:
                if len(compiled) != 1 or compiled[0].kind != "tag":
                    raise RecipeError(f"{where}: ADD needs a single public keyword or tag number")
                vr = _entry(compiled[0].tag)[0]
                if not vr or compiled[0].tag >> 16 & 1:
                    raise RecipeError(
                        f"{where}: ADD needs a public attribute known to the dictionary"
                    )
                if (
                    value is not None
                    and value.kind == _FUNC
                    and value.text not in ("method_codes", "jitter")
                ):
                    raise RecipeError(f"{where}: ADD supports literals, var: and func:method_codes")
            rules.append(_Rule(action, compiled, value, source, where, field_text))
    return _Parsed(rules, labels, notes)


def _deid_load(path: Path) -> dict[str, Any]:
    """Parse with deid's own parser, turning its ``sys.exit`` into RecipeError."""
    from deid.config.utils import load_deid
    from deid.logger import bot

    saved = bot.level
    bot.level = -3  # deid's ERROR: its debug chatter would flood the notebooks
    try:
        config = load_deid(str(path))
    except SystemExit:
        raise RecipeError(
            f"{path}: deid could not parse the recipe; see deid's message above"
        ) from None
    finally:
        bot.level = saved
    return dict(config)


_PATIENT_IDENTITY_REMOVED = 0x00120062


_DEID_METHOD = 0x00120063


_DEID_METHOD_CODES = 0x00120064


def _implied_adds(adds: Sequence[_Rule], files: Sequence[Path]) -> list[_Rule]:
    """ADD rules the recipe's own ADDs require for a valid file.

    ``PatientIdentityRemoved YES`` (deid's bundled recipes add it) makes
    DeidentificationMethod or its code sequence Type 1 (PS3.3 C.7.1.1): when
    no rule adds either, DeidentificationMethod names the recipe files.
    """
    added = {rule.fields[0].tag: rule for rule in adds}
    said = added.get(_PATIENT_IDENTITY_REMOVED)
    if (
        said is None
        or said.value is None
        or said.value.kind != _LIT
        or said.value.text.strip().upper() != "YES"
        or _DEID_METHOD in added
        or _DEID_METHOD_CODES in added
    ):
        return []
    text = ("sendit with " + ", ".join(Path(p).name for p in files))[:64].strip()
    field = _Field("tag", tag=_DEID_METHOD)
    value = _Value(_LIT, text)
    return [_Rule(Action.ADD, (field,), value, said.source, said.where, "DeidentificationMethod")]


def _breaks_identity(rule: _Rule) -> bool:
    """Whether ``rule`` would leave an identity UID (:data:`IDENTITY_TAGS`) missing or invalid."""
    action, value = rule.action, rule.value
    if action in (Action.REMOVE, Action.BLANK, Action.JITTER):
        return True
    if action is Action.REPLACE and value is not None:
        return value.kind == _VAR or (value.kind == _FUNC and value.text != "uid")
    return False
