"""De-identification recipes (deid format) compiled into a fast per-file plan.

Recipes are written in the format of the ``deid`` project
(https://pydicom.github.io/deid/) and parsed with deid's own parser
(:func:`deid.config.utils.load_deid`).  deid's per-file machinery
(``get_identifiers`` / ``replace_identifiers``) is far too slow for the
de-identify stage (it expands every field expression against every file), so
the parsed actions are compiled here into a tag -> action plan that is
resolved once per tag and cached; :meth:`Recipe.apply` then walks a dataset
once, recursing into sequences.

Semantics (the contract the leak gate and the tests rely on)
------------------------------------------------------------
* ``%header`` actions ADD, REPLACE, REMOVE, BLANK, KEEP, JITTER.  Field
  expressions: keywords, attribute names, tag numbers (``00100010``,
  ``(0010,0010)``, ``0x00100010``), tags with ``X`` wildcards for repeating
  groups (``(50XX,XXXX)``, ``(60XX,4000)``; an extension of deid's syntax),
  private tags with their creator (``(0019,"GEMS_ACQU_01",1A)``),
  ``endswith:``, ``startswith:``, ``contains:``, ``except:`` (regular
  expressions matched case-insensitively against keyword, name and tag
  strings as deid does), ``select:VR:XX``, ``select:group:gggg``, ``all`` and
  ``fields:NAME`` (a ``%fields`` list).  ``values:NAME`` (value-based lists)
  needs a per-file scan of every value and is rejected with a
  :class:`~sendit_helpers.core.errors.RecipeError`.
* deid's own recipes load as they are: an old keyword (``PatientsName``) is
  read as today's, a field deid ignores (``REMOVE jitter``: an action or
  function name) is ignored, each with a :class:`RecipeWarning` naming
  file:line; any other unknown field is a RecipeError naming file:line and the
  closest keyword.  A REMOVE / BLANK / JITTER (or REPLACE with var:) that
  decides an :data:`IDENTITY_TAGS` element keeps class UIDs and maps instance
  UIDs (as ``func:uid``) instead, warned at load: outputs stay DICOM files.
* Values: literal strings (surrounding double quotes stripped), ``var:NAME``
  (a name of :data:`VARIABLES`, else a RecipeError at load; the value from
  ``DeidContext.variables``), ``func:uid`` (``DeidContext.uid_map``),
  ``func:clean_text`` (remove known identifying values from the text),
  ``func:jitter`` (shift a date by ``DeidContext.date_shift_days``) and, for
  ADD only, ``func:method_codes CODE ...`` (a DCM-coded
  DeidentificationMethodCodeSequence, CID 7050).  JITTER takes an integer,
  ``var:NAME`` or ``func:jitter`` (= ``DeidContext.date_shift_days``).
  ``REMOVE field func:...`` (deid's conditional removal) is treated as an
  unconditional REMOVE.
* Combination: recipe files are applied in order and, per tag, the *last*
  file with a matching rule decides.  Within that file a matching KEEP
  protects the tag (deid semantics); otherwise the last matching rule wins.
  ADD always runs, after every other action, on the top-level dataset only.
* Actions apply at every nesting depth.  KEEP on a sequence keeps the
  sequence but still processes its items; REMOVE drops it with its items;
  BLANK empties it.
* REMOVE and BLANK follow the attribute's Type in the object's IOD
  (PS3.15 E.1.1, :mod:`sendit_helpers.deid.iodtypes`): Type 1 gets a dummy value
  (a sequence keeps its de-identified items), Type 2 zero length, Type 3 or
  an attribute outside the IOD is removed; a removed Overlay Data
  ``(60xx,3000)`` removes its whole group.
* Engine defaults for tags no rule matches: public tags are kept (PS3.15
  lists the identifying ones) except UI values, which are mapped through
  ``uid_map`` unless the keyword names a class / transfer syntax / coding
  scheme UID or the value is a UID defined by the standard (so no original
  instance UID survives); private tags are removed unless ``safe_private``
  holds their full tag (``0xggggbbee`` as found in the file, i.e. with the
  creator's block already resolved) or a rule matches them (use the
  creator syntax for a file-independent rule).  Private creator elements
  are kept only while a data element of their block is kept.
* PatientAge is always capped at ``090Y`` (:func:`age_over_89`);
  file_meta MediaStorageSOPInstanceUID is set to the new SOPInstanceUID and
  file_meta AE titles / private information are removed.
* Errors never carry values: they name the recipe file and line, or the tag
  as ``Keyword (gggg,eeee)``.

``%filter`` screening: see :mod:`~sendit_helpers.deid.recipefilters`.  One element's
plan carried out (the actions above, from the raw bytes when possible) and the ADD
rules: :mod:`~sendit_helpers.deid.recipeactions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.config import IGNORE as _IGNORE
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from sendit_helpers.core.errors import RecipeError, tag_label
from sendit_helpers.deid import iodtypes, structured
from sendit_helpers.deid.cleantext import _Tokens
from sendit_helpers.deid.dicomwrite import text_codec
from sendit_helpers.deid.recipeactions import _act, _add, _fast, _record_removed
from sendit_helpers.deid.recipefields import _entry, _warn
from sendit_helpers.deid.recipefilters import _coordinates, _label_matches
from sendit_helpers.deid.recipemodel import (
    _AGE_TAG,
    _FUNC,
    _LIT,
    _MEDIA_SOP,
    _SOP_CLASS,
    _SOP_INSTANCE_UID,
    _UID_KEEP_KEYWORDS,
    _UID_KEEP_SUFFIXES,
    _VAR,
    DEFAULT_RECIPE,
    FILE_META_DROP,
    IDENTITY_TAGS,
    Action,
    Changes,
    DeidContext,
    ScreenResult,
    _Label,
    _Rule,
)
from sendit_helpers.deid.recipeparser import _breaks_identity, _implied_adds, _parse_file
from sendit_helpers.deid.recipeplan import (
    _K_AGE,
    _K_BLANK,
    _K_CLEAN,
    _K_FUNC_JITTER,
    _K_JITTER,
    _K_KEEP,
    _K_LIT,
    _K_REMOVE,
    _K_SEQ,
    _K_STRUCT,
    _K_UID,
    _K_UID_DEFAULT,
    _K_VAR,
    _PLAN_AGE,
    _PLAN_KEEP,
    _PLAN_SEQ,
    _PLAN_UID_DEFAULT,
    _creator,
    _iod_plan,
    _originals,
    _Plan,
    _typed,
)

__all__ = [
    "Recipe",
]


class Recipe:
    """A set of deid recipes compiled for fast, repeatable de-identification.

    Use :meth:`load`; then :meth:`apply` de-identifies a dataset in place and
    :meth:`screen` evaluates the ``%filter`` groups.
    """

    def __init__(
        self,
        rules: list[_Rule],
        labels: list[_Label],
        files: list[Path],
        notes: Sequence[str] = (),
    ) -> None:
        self._rules = rules
        self._labels = labels
        self.files: tuple[Path, ...] = tuple(files)
        self._adds = [r for r in rules if r.action is Action.ADD]
        self._adds.extend(_implied_adds(self._adds, self.files))
        self._header = [r for r in rules if r.action is not Action.ADD]
        self._sources = sorted({r.source for r in self._header}, reverse=True)
        self._cache: dict[int, _Plan] = {}
        self._private_cache: dict[tuple[int, str | None], _Plan | None] = {}
        self._code_items: dict[str, list[Dataset]] = {}
        for rule in self._adds:  # validate literal ADD values once (pydicom warns)
            if rule.value is not None and rule.value.kind == _LIT:
                vr = _entry(rule.fields[0].tag)[0].split(" or ")[0]
                DataElement(rule.fields[0].tag, vr, _typed(rule.value.text, vr, rule, None, 0))
        self._default_source = 0 if files and Path(files[0]) == DEFAULT_RECIPE else None
        self._structured = frozenset(
            tag
            for tag in structured.STRUCTURED_TAGS
            if self._cleans_structured(self._resolve(tag, "SQ", *_entry(tag)[1:], None))
        )
        self._clean = bool(self._structured) or any(
            r.value is not None and r.value.text == "clean_text" for r in rules
        )
        groups: list[str] = []
        for lab in labels:
            if lab.group not in groups:
                groups.append(lab.group)
        self._groups = groups
        found = list(notes)
        self._identity_notes(found)
        self.warnings: tuple[str, ...] = tuple(found)
        """What loading warned about (also given as :class:`RecipeWarning`): old keywords
        resolved, lines ignored as deid ignores them, identity UIDs kept or replaced."""

    def _identity_notes(self, notes: list[str]) -> None:
        """Warn once per rule that would remove what makes a file a DICOM object."""
        reached: dict[str, list[int]] = {}
        rules: dict[str, _Rule] = {}
        for tag in IDENTITY_TAGS:
            vr, keyword, name = _entry(tag)
            rule = self._resolve(tag, vr, keyword, name, None)
            if rule is not None and _breaks_identity(rule):
                reached.setdefault(rule.where, []).append(tag)
                rules[rule.where] = rule
        for where, tags in reached.items():
            rule = rules[where]
            labels = ", ".join(tag_label(IDENTITY_TAGS[t], t) for t in tags)
            _warn(
                notes,
                f"{where}: {rule.action.value} {rule.field_text} reaches {labels}, which every "
                "DICOM file needs; class UIDs are kept and instance UIDs replaced by new UIDs "
                "(as func:uid) instead (KEEP or REPLACE them with func:uid to silence this)",
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path] = (),
        *,
        include_default: bool = True,
        include_deid_filters: bool = True,
    ) -> Recipe:
        """Load and compile recipes.

        Parameters
        ----------
        paths : sequence of str or Path
            Recipe files, applied in order (later files win, see the module
            docstring).
        include_default : bool
            Put :data:`DEFAULT_RECIPE` first.
        include_deid_filters : bool
            Add the ``%filter`` groups bundled with deid (``deid.dicom``; its
            ``%header`` section is not used).  A user's filter labels are
            evaluated before the bundled labels of the same group.

        Returns
        -------
        Recipe
            The compiled recipe.

        Raises
        ------
        RecipeError
            A file is missing or malformed; the message names file and line.
        """
        files = [Path(p) for p in paths]
        if include_default:
            files.insert(0, DEFAULT_RECIPE)
        rules: list[_Rule] = []
        notes: list[str] = []
        user_labels: list[list[_Label]] = []
        for index, path in enumerate(files):
            if not path.is_file():
                raise RecipeError(f"{path}: recipe file not found; check the recipe setting")
            parsed = _parse_file(path, index)
            rules.extend(parsed.rules)
            user_labels.append(parsed.labels)
            notes.extend(parsed.notes)
        labels: list[_Label] = []
        for parsed_labels in reversed(user_labels):  # later files first ("on top")
            labels.extend(parsed_labels)
        order: list[str] = []
        if include_deid_filters:
            from deid.data import data_base

            bundled = _parse_file(Path(data_base) / "deid.dicom", -1, header=False).labels
            order.extend(dict.fromkeys(lab.group for lab in bundled))
            labels.extend(bundled)
        for parsed_labels in user_labels:
            order.extend(
                g for g in dict.fromkeys(lab.group for lab in parsed_labels) if g not in order
            )
        labels.sort(key=lambda lab: order.index(lab.group))  # stable: keeps label order per group
        return cls(rules, labels, files, notes)

    @property
    def filter_groups(self) -> list[str]:
        """Filter group names in evaluation order."""
        return list(self._groups)

    # ------------------------------------------------------------------ plan
    def _resolve(
        self, tag: int, vr: str, keyword: str, name: str, creator: str | None
    ) -> _Rule | None:
        """The deciding rule for one tag (later file wins; KEEP protects within a file)."""
        for source in self._sources:
            chosen: _Rule | None = None
            for rule in self._header:
                if rule.source != source:
                    continue
                if any(f.matches(tag, vr, keyword, name, creator) for f in rule.fields):
                    if rule.action is Action.KEEP:
                        return rule
                    chosen = rule
            if chosen is not None:
                return chosen
        return None

    def _cleans_structured(self, rule: _Rule | None) -> bool:
        """Whether a structured sequence under ``rule`` gets the Clean Structured Content /
        Clean Graphics options (:mod:`.structured`): no rule, or the default profile's."""
        return rule is None or (
            rule.source == self._default_source and rule.action in (Action.BLANK, Action.REMOVE)
        )

    def _plan_for(self, rule: _Rule | None, tag: int, vr: str, keyword: str) -> _Plan:
        if vr == "SQ" and tag in self._structured:
            return (_K_STRUCT, None, rule, "", "")
        if rule is None:
            if vr == "SQ":
                return _PLAN_SEQ
            if tag == _AGE_TAG:
                return _PLAN_AGE
            if vr == "UI" and not (
                keyword.endswith(_UID_KEEP_SUFFIXES) or keyword in _UID_KEEP_KEYWORDS
            ):
                return _PLAN_UID_DEFAULT
            return _PLAN_KEEP
        if tag in IDENTITY_TAGS and _breaks_identity(rule):
            # What makes the file a file: replaced, not removed (warned at load).
            if keyword.endswith("ClassUID"):
                return (_K_KEEP, None, rule, "", "")
            return (_K_UID, None, rule, "", "")
        action, value = rule.action, rule.value
        if action is Action.KEEP:
            return (
                _PLAN_SEQ
                if vr == "SQ"
                else (_PLAN_AGE if tag == _AGE_TAG else (_K_KEEP, None, rule, "", ""))
            )
        if action is Action.REMOVE:
            return (_K_REMOVE, None, rule, "", "")
        if action is Action.BLANK:
            return (_K_BLANK, None, rule, "", "")
        if vr == "SQ":
            raise RecipeError(
                f"{rule.where}: {action.value} cannot be applied to the sequence "
                f"{tag_label(keyword, tag)}; use KEEP, BLANK or REMOVE"
            )
        assert value is not None
        if action is Action.JITTER:
            if value.kind == _LIT:
                return (_K_JITTER, int(value.text), rule, "", "")
            if value.kind == _VAR:
                return (_K_JITTER, value.text, rule, "", "")
            return (_K_JITTER, None, rule, "", "")
        if value.kind == _VAR:
            return (_K_VAR, value.text, rule, "", "")
        if value.kind == _FUNC:
            kind = {"uid": _K_UID, "clean_text": _K_CLEAN, "jitter": _K_FUNC_JITTER}.get(value.text)
            if kind is None:
                raise RecipeError(
                    f"{rule.where}: func:{value.text} cannot be used with {action.value}"
                )
            return (kind, None, rule, "", "")
        return (_K_LIT, value.text, rule, "", "")

    def _public_plan(self, tag: int, elem_vr: str) -> _Plan:
        vr, keyword, name = _entry(tag)
        if not vr:
            vr = elem_vr or "UN"
        elif " or " in vr:  # ambiguous (US or SS, OB or OW): the file's VR, else the first
            vr = elem_vr if elem_vr not in ("", "UN") else vr.split(" or ")[0]
        base = self._plan_for(self._resolve(tag, vr, keyword, name, None), tag, vr, keyword)
        anchor = iodtypes.overlay_anchor(tag)
        if anchor is not None and base[0] != _K_REMOVE:  # a removed overlay takes its group
            data = self._cache.get(anchor) or self._public_plan(anchor, "OW")
            if data[0] in (_K_REMOVE, _K_BLANK):
                base = (_K_REMOVE, None, data[2], "", "")
        plan = (base[0], base[1], base[2], vr, keyword)
        self._cache[tag] = plan
        return plan

    # ------------------------------------------------------------------ apply
    def apply(self, ds: Dataset, ctx: DeidContext) -> Changes:
        """De-identify ``ds`` in place.

        Parameters
        ----------
        ds : pydicom.Dataset
            The dataset (with ``file_meta`` when read from a file).
        ctx : DeidContext
            Pseudonyms, date shift, UID map and per-patient values.

        Returns
        -------
        Changes
            Removed free text and ``(old, new)`` identifier/UID pairs.

        Raises
        ------
        RecipeError
            A rule cannot be applied (e.g. a missing ``var:``); the message
            names the recipe line and the tag, never a value.
        """
        changes = Changes()
        sop_class = str(ds[_SOP_CLASS].value or "") if _SOP_CLASS in ds else ""
        if sop_class != ctx.sop_class_uid:
            ctx = dataclasses.replace(ctx, sop_class_uid=sop_class)
        self._walk(ds, ctx, changes, "", _Tokens(ds if self._clean else None, ctx))
        for rule in self._adds:
            _add(ds, rule, ctx, changes, self._code_items)
        if self._structured:
            self._structured_codes(ds)
        sop = str(ds[_SOP_INSTANCE_UID].value or "") if _SOP_INSTANCE_UID in ds else ""
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in FILE_META_DROP:
                if tag in meta:
                    del meta[tag]
            if sop:
                meta[_MEDIA_SOP] = DataElement(_MEDIA_SOP, "UI", sop, validation_mode=_IGNORE)
            elif _MEDIA_SOP in meta and meta[_MEDIA_SOP].value:
                new = ctx.uid_map(str(meta[_MEDIA_SOP].value))
                meta[_MEDIA_SOP] = DataElement(_MEDIA_SOP, "UI", new, validation_mode=_IGNORE)
                ds.SOPInstanceUID = new
        return changes

    def _structured_codes(self, ds: Dataset) -> None:
        """List the structured-content options applied in DeidentificationMethodCodeSequence."""
        done = {
            tag
            for tag in self._structured
            if tag in ds._dict and ds[tag].VR == "SQ" and ds[tag].value
        }
        codes = structured.method_code_items(ds, done)
        if codes is not None:
            ds.DeidentificationMethodCodeSequence = codes

    def walk_item(
        self, item: Dataset, ctx: DeidContext, changes: Changes, prefix: str, tokens: _Tokens
    ) -> None:
        """Apply the recipe's rules to one sequence item, as :meth:`apply` does at any depth.

        Parameters
        ----------
        item : pydicom.Dataset
            The item, changed in place.
        ctx, changes, prefix, tokens
            The file's context, the changes so far, the item's path
            (``Seq[i].``) and the file's ``func:clean_text`` tokens.
        """
        self._walk(item, ctx, changes, prefix, tokens)

    def decides(self, tag: int, vr: str) -> bool:
        """Whether a rule of the recipe (or its UID / age default) decides the public ``tag``.

        False for an element no rule names (kept, or recursed into when a sequence).
        """
        plan = self._cache.get(tag)
        if plan is None:
            plan = self._public_plan(tag, vr)
        return plan[2] is not None or plan[0] in (_K_UID_DEFAULT, _K_AGE, _K_STRUCT)

    def _walk(
        self,
        ds: Dataset,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> None:
        cache = self._cache
        pcache = self._private_cache
        safe = ctx.safe_private
        kept_blocks: set[int] = set()
        creator_tags: list[int] = []
        creators: dict[int, str | None] = {}
        codec = text_codec(ds)  # the original character set, before any change
        for btag, raw in list(ds.items()):
            tag = int(btag)  # plain int: BaseTag.__eq__ is Python code, slow in dict lookups
            if not (tag >> 16) & 1:  # public
                plan = cache.get(tag)
                if plan is None:
                    plan = self._public_plan(tag, str(getattr(raw, "VR", "") or ""))
                if plan[0] != _K_KEEP:
                    self._public_step(ds, btag, raw, plan, ctx, changes, prefix, tokens, codec)
                continue
            # private group: creators (gggg,0010-00FF) are decided after their blocks
            elem_no = tag & 0xFFFF
            if 0x0010 <= elem_no <= 0x00FF:
                creator_tags.append(tag)
                continue
            block = (tag & 0xFFFF0000) | (elem_no >> 8)
            creator: str | None = None
            if elem_no >= 0x1000:
                if block in creators:
                    creator = creators[block]
                else:
                    creator = creators[block] = _creator(ds, block)
            key = (tag, creator)
            if key in pcache:
                pplan = pcache[key]
            else:
                pplan = self._private_plan(ds, tag, creator)
                pcache[key] = pplan
            if pplan is None:  # no rule: removed unless listed as safe
                if tag in safe:
                    kept_blocks.add(block)
                else:
                    _originals(ds, tag, "", changes.originals, codec)
                    del ds[btag]
                continue
            if pplan[0] == _K_REMOVE:
                _originals(ds, tag, "", changes.originals, codec)
                del ds[btag]
                continue
            if pplan[0] != _K_KEEP:
                _originals(ds, tag, "", changes.originals, codec)
                self._do(ds, tag, pplan, ctx, changes, prefix, tokens)
            if tag in ds:
                kept_blocks.add(block)
        for ctag in creator_tags:
            if ctag not in kept_blocks:
                _originals(ds, ctag, "", changes.originals, codec)
                del ds[ctag]

    def _public_step(
        self,
        ds: Dataset,
        btag: BaseTag,
        raw: Any,
        plan: _Plan,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
        codec: str | None,
    ) -> None:
        """Act on one public element whose plan is not KEEP."""
        tag = int(btag)
        if (plan[0] == _K_REMOVE or plan[0] == _K_BLANK) and ctx.sop_class_uid:
            plan = _iod_plan(plan, tag, raw, ctx.sop_class_uid, prefix)
        if plan[0] not in (_K_SEQ, _K_STRUCT):
            _originals(ds, tag, plan[3], changes.originals, codec)
        if type(raw) is RawDataElement and raw.value is not None:
            if _fast(ds, btag, raw, plan, ctx, changes, prefix, tokens):
                return
        self._do(ds, tag, plan, ctx, changes, prefix, tokens)

    # ------------------------------------------------------------------ one element
    @property
    def add_tags(self) -> frozenset[int]:
        """Tags the recipe's ADD rules write."""
        return frozenset(rule.fields[0].tag for rule in self._adds)

    @property
    def cleans_text(self) -> bool:
        """Whether a rule uses ``func:clean_text`` (tokens from :data:`CLEAN_SOURCE_TAGS`)."""
        return self._clean

    def keeps(self, tag: int, vr: str) -> bool:
        """Whether the public element ``tag`` (read with VR ``vr``) is kept as it is."""
        plan = self._cache.get(tag)
        if plan is None:
            plan = self._public_plan(tag, vr)
        return plan[0] == _K_KEEP

    def clean_tokens(self, ds: Dataset, ctx: DeidContext) -> _Tokens:
        """The ``func:clean_text`` tokens of ``ds`` (its :data:`CLEAN_SOURCE_TAGS` are read)."""
        return _Tokens(ds if self._clean else None, ctx)

    def apply_element(
        self, ds: Dataset, tag: int, ctx: DeidContext, changes: Changes, tokens: _Tokens
    ) -> bool:
        """De-identify the one top-level element ``tag`` of ``ds`` exactly as :meth:`apply` would.

        For callers that de-identify a file element by element
        (:mod:`sendit_helpers.deid.elementcache`): ``ds`` holds the element (and,
        for a private one, its creator; for text, the character set); the
        result is the element left in ``ds`` (or gone) and what ``changes``
        received.  ADD rules and the file meta are not handled here.

        Returns
        -------
        bool
            False when the result depends on other elements: a private
            element (or creator) the recipe or the safe list keeps.
        """
        btag = BaseTag(tag)
        raw = ds.get_item(btag, keep_deferred=True)
        if raw is None:
            return True
        codec = text_codec(ds)
        if not (tag >> 16) & 1:
            plan = self._cache.get(tag)
            if plan is None:
                plan = self._public_plan(tag, str(getattr(raw, "VR", "") or ""))
            if plan[0] != _K_KEEP:
                self._public_step(ds, btag, raw, plan, ctx, changes, "", tokens, codec)
            return True
        elem_no = tag & 0xFFFF
        if 0x0010 <= elem_no <= 0x00FF:  # a creator: removed when its block keeps nothing
            _originals(ds, tag, "", changes.originals, codec)
            del ds[btag]
            return True
        block = (tag & 0xFFFF0000) | (elem_no >> 8)
        creator = _creator(ds, block) if elem_no >= 0x1000 else None
        key = (tag, creator)
        if key in self._private_cache:
            pplan = self._private_cache[key]
        else:
            pplan = self._private_cache[key] = self._private_plan(ds, tag, creator)
        removed = (pplan is None and tag not in ctx.safe_private) or (
            pplan is not None and pplan[0] == _K_REMOVE
        )
        if not removed:
            return False
        _originals(ds, tag, "", changes.originals, codec)
        del ds[btag]
        return True

    def apply_adds(self, ds: Dataset, ctx: DeidContext, changes: Changes) -> None:
        """Apply the ADD rules to ``ds`` as :meth:`apply` does after the walk."""
        for rule in self._adds:
            _add(ds, rule, ctx, changes, self._code_items)

    def _private_plan(self, ds: Dataset, tag: int, creator: str | None) -> _Plan | None:
        rule = self._resolve(tag, "", "", "", creator)
        if rule is None:
            return None
        raw = ds.get_item(tag, keep_deferred=True)
        vr = str(getattr(raw, "VR", "") or "UN")
        base = self._plan_for(rule, tag, vr, "")
        return (base[0], base[1], base[2], vr, "")

    def _do(
        self,
        ds: Dataset,
        tag: int,
        plan: _Plan,
        ctx: DeidContext,
        changes: Changes,
        prefix: str,
        tokens: _Tokens,
    ) -> None:
        kind = plan[0]
        elem = ds[tag]
        if kind == _K_STRUCT:
            if not structured.clean_sequence(self, ds, tag, ctx, changes, prefix, tokens):
                _record_removed(elem, changes)  # not a sequence in this file: dropped
                del ds[tag]
            return
        if kind == _K_SEQ:
            if elem.VR != "SQ":  # dictionary says SQ, the file disagrees: nothing to recurse into
                return
            seq_name = elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            for i, item in enumerate(elem.value or ()):
                self._walk(item, ctx, changes, f"{prefix}{seq_name}[{i}].", tokens)
            return
        _act(ds, tag, elem, plan, ctx, changes, prefix, tokens)

    # ------------------------------------------------------------------ screen
    def screen(self, ds: Dataset) -> ScreenResult:
        """Evaluate the ``%filter`` groups on an already-read dataset.

        Labels are evaluated group by group in :attr:`filter_groups` order;
        the first matching label decides.  A ``whitelist`` hit means clean.

        Parameters
        ----------
        ds : pydicom.Dataset
            The dataset (pixel data need not be loaded).

        Returns
        -------
        ScreenResult
            Whether the pixels need scrubbing, why, and where.
        """
        for lab in self._labels:
            if not _label_matches(lab, ds):
                continue
            if lab.group.lower() == "whitelist":
                return ScreenResult(False, lab.group, lab.name, lab.reason, ())
            return ScreenResult(True, lab.group, lab.name, lab.reason, _coordinates(lab, ds))
        return ScreenResult(False, None, None, "no filter label matched", ())
