"""The review stage's user interface: ipywidgets for deciding on quarantined images.

Stage 3's logic is in :mod:`~sendit_helpers.stages.review` (applying),
:mod:`~sendit_helpers.stages.review_items` (the items) and
:mod:`~sendit_helpers.stages.review_decisions` (the decision log, decisions files);
its user interface is what a person sees and clicks in ``03_review_phi`` (in
JupyterLab or Voilà): :class:`Reviewer` here, what each widget does, on the widget
tree of :mod:`~sendit_helpers.stages.reviewer_view` (montages, the drawing, the
preview) and the keyboard of :mod:`~sendit_helpers.stages.reviewer_keys` (one key
per action, caught inside the reviewer).

The interface decides and changes nothing by itself: every decision goes
through :class:`~sendit_helpers.stages.review_decisions.DecisionLog` (saved
the moment it is made), and every effect on the batch through
:func:`review.apply_decisions <sendit_helpers.stages.review.apply_decisions>`.  The
pictures come from :mod:`~sendit_helpers.deid.plots`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pydicom
from IPython.display import display
from pydicom.dataset import Dataset

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.errors import LeakError, ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.deid.plots import png_step, preview_png
from sendit_helpers.deid.scrub import Box, check_box
from sendit_helpers.deid.siterules import SiteRule, add_rule
from sendit_helpers.stages.review import ApplyResult, apply_decisions, waiting_message
from sendit_helpers.stages.review_decisions import Decision, DecisionLog, reviewer_name
from sendit_helpers.stages.review_items import item_file, load_items, table_rows
from sendit_helpers.stages.reviewer_keys import KEYS
from sendit_helpers.stages.reviewer_view import (
    SCRUB_LABEL,
    SUGGESTED_LABEL,
    ReviewerView,
    box_summary,
    escape,
    is_colour,
    labelled,
    montage_png,
    on_screen,
    rule_details,
    series_scrub,
    to_source,
    window_bounds,
)

__all__ = ["Reviewer"]

_ERROR_COLOUR = "#b00020"
_OK_COLOUR = "#1b5e20"


class Reviewer(ReviewerView):
    """The review user interface (ipywidgets): series montages, one image, decisions.

    Every decision is saved the moment it is made
    (:class:`~sendit_helpers.stages.review_decisions.DecisionLog`);
    "Apply decisions" calls :func:`~sendit_helpers.stages.review.apply_decisions`.  It opens
    at the first image without a decision.  Widgets carry stable CSS classes
    (``sendit-release``, ``sendit-scrub``, ``sendit-keep``, ``sendit-release-series`` …,
    ``sendit-draw``, ``sendit-preview``, ``sendit-box-x`` …, ``sendit-add-box``,
    ``sendit-accept-one``, ``sendit-drop-one``, ``sendit-make-rule``, ``sendit-apply``,
    ``sendit-progress``, ``sendit-item``, ``sendit-series``) for browser tests.

    Parameters
    ----------
    layout : BatchLayout
        A de-identified batch.
    settings : mapping
        Resolved settings (``REVIEWER``, ``MONTAGE_MAX_IMAGES``, ``THUMBNAIL_SIZE``, ...).
    reviewer : str, optional
        Name written with each decision (default ``REVIEWER`` or the login name).
    """

    def __init__(
        self, layout: BatchLayout, settings: Mapping[str, Any], reviewer: str = ""
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.items = load_items(layout)
        self.log = DecisionLog(layout, reviewer or reviewer_name(settings))
        self.decided = self.log.decisions()
        self.boxes: dict[str, list[Box]] = {}
        self.pending: dict[str, list[Box]] = {}
        self.index = 0
        self._montages: dict[str, bytes] = {}
        self._dataset: tuple[str, Dataset] | None = None
        self._busy = False
        self._statuses: list[Any] = []
        self._make_series_widgets()
        self._make_image_widgets()
        self._make_box_widgets()
        self._make_decision_widgets()
        self._connect()
        self.widget = self._assemble()
        if self.items.empty:
            self.message.value = "No image is quarantined in this batch: nothing to review."
            for b in (
                self.release,
                self.scrub,
                self.keep,
                self.release_series,
                self.scrub_series,
                self.keep_series,
            ):
                b.disabled = True
        else:
            self.go(self.first_undecided())
        self._update_progress()

    def _connect(self) -> None:
        self.release.on_click(lambda _b: self.decide(Decision.RELEASE))
        self.scrub.on_click(lambda _b: self.decide(Decision.SCRUB))
        self.keep.on_click(lambda _b: self.decide(Decision.KEEP))
        self.release_series.on_click(lambda _b: self.decide_series(Decision.RELEASE))
        self.scrub_series.on_click(lambda _b: self.decide_series(Decision.SCRUB))
        self.keep_series.on_click(lambda _b: self.decide_series(Decision.KEEP))
        self.prev.on_click(lambda _b: self.go(self.index - 1))
        self.next.on_click(lambda _b: self.go(self.index + 1))
        self.next_open.on_click(lambda _b: self.go_undecided())
        self.add_box.on_click(lambda _b: self.add(self.typed_box()))
        self.clear_boxes.on_click(lambda _b: self.clear())
        self.make_rule_button.on_click(lambda _b: self.make_rule())
        self.apply_button.on_click(lambda _b: self.apply())
        self.series_select.observe(self._on_series, names="value")
        for slider in (self.center, self.width, self.frame):
            slider.observe(lambda _c: self._redraw(), names="value")
        self.draw.observe(self._on_draw, names="bboxes")
        self.keys.on_key(self.press)

    # -- display
    def show(self) -> None:
        """Display the reviewer in a notebook."""
        display(self.widget)  # type: ignore[no-untyped-call]

    def _ipython_display_(self) -> None:
        self.show()

    def status_widget(self) -> Any:
        """A line that says where the review stands, kept up to date as decisions are made.

        For the notebook's "Where things stand" cell: unlike a printed table,
        it follows the reviewer.
        """
        line = labelled(widgets.HTML(self._status_text()), "status")
        self._statuses.append(line)
        return line

    # -- state
    @property
    def current(self) -> Any:
        """The row of :attr:`items` shown now."""
        return table_rows(self.items.iloc[[self.index]])[0]

    def counts(self) -> dict[str, int]:
        """Images per decision in force (``release``, ``scrub``, ``keep``) and ``undecided``."""
        found = {str(d): 0 for d in Decision} | {"undecided": 0}
        for item in self.items["item"]:
            decided = self.decided.get(item)
            found[str(decided[0]) if decided else "undecided"] += 1
        return found

    def _status_text(self) -> str:
        counts = self.counts()
        total = len(self.items)
        done = total - counts["undecided"]
        parts = " · ".join(f"{d} {counts[str(d)]}" for d in Decision)
        return (
            f"<b>{done} of {total} decided</b> · {parts} · "
            f"<b>{counts['undecided']} waiting</b> for a decision"
        )

    def _update_progress(self) -> None:
        text = self._status_text()
        self.progress.value = text
        for line in self._statuses:
            line.value = text

    def _say(self, text: str, error: bool = False) -> None:
        colour = _ERROR_COLOUR if error else _OK_COLOUR
        self.message.value = f"<span style='color:{colour}'>{escape(text)}</span>"

    def _boxes_of(self, row: Any) -> list[Box]:
        if row.item not in self.boxes:
            decided = self.decided.get(row.item)
            start = list(decided[1]) if decided and decided[0] == Decision.SCRUB else []
            self.boxes[row.item] = start
            self.pending[row.item] = [b for b in row.suggested if b not in start]
        return self.boxes[row.item]

    def _pending_of(self, row: Any) -> list[Box]:
        self._boxes_of(row)
        return self.pending[row.item]

    def _ds(self, row: Any) -> Dataset:
        if self._dataset is None or self._dataset[0] != row.item:
            self._dataset = (row.item, pydicom.dcmread(item_file(self.layout, row.path)))
        return self._dataset[1]

    # -- navigation
    def first_undecided(self) -> int:
        """Index of the first image without a decision (0 when every image has one)."""
        for index, item in enumerate(self.items["item"]):
            if item not in self.decided:
                return index
        return 0

    def go(self, index: int) -> None:
        """Show image ``index`` (clamped to the list); the typed rectangle fields start afresh."""
        if self.items.empty:
            return
        self.index = max(0, min(index, len(self.items) - 1))
        row = self.current
        self._busy = True
        try:
            if self.series_select.value != row.series_uid:
                self.series_select.value = row.series_uid
            self._show_series(row.series_uid)
            self._set_window(row)
            self.box_x.value, self.box_y.value, self.box_w.value, self.box_h.value = 0, 0, 1, 1
        finally:
            self._busy = False
        self._redraw(image=True)

    def go_undecided(self) -> None:
        """Show the next image without a decision (wrapping around)."""
        n = len(self.items)
        for step in range(1, n + 1):
            index = (self.index + step) % n
            if self.items.iloc[index]["item"] not in self.decided:
                self.go(index)
                return
        self._say("Every image has a decision. Press Apply decisions.")

    def select(self, item: str) -> None:
        """Show the image named ``item``."""
        matches = np.flatnonzero(self.items["item"].to_numpy() == item)
        if not len(matches):
            raise ReviewError(f"{item} is not a quarantined image of batch {self.layout.name}")
        self.go(int(matches[0]))

    def _on_series(self, change: Mapping[str, Any]) -> None:
        if self._busy or change.get("new") is None:
            return
        matches = np.flatnonzero(self.items["series_uid"].to_numpy() == change["new"])
        if len(matches):
            self.go(int(matches[0]))

    def _show_series(self, uid: str) -> None:
        group = self.items[self.items["series_uid"] == uid]
        first = group.iloc[0]
        self.series_info.value = (
            f"{len(group)} flagged image(s), {escape(first['modality'])}; rule: "
            f"<i>{escape(first['label'])}</i> ({escape(first['group'])})"
        )
        if uid not in self._montages:
            self._montages[uid] = montage_png(self.layout, group, self.settings)
        self.montage.value = self._montages[uid]
        self.montage.layout.width = f"{min(8, len(group)) * 150 + 40}px"

    def _set_window(self, row: Any) -> None:
        ds = self._ds(row)
        colour = is_colour(ds)
        self.center.disabled = self.width.disabled = colour
        self.frame.max = max(0, int(row.frames) - 1)
        self.frame.value = 0
        bounds = None if colour else window_bounds(ds)
        if bounds is None:
            return
        lo, hi, p1, p99 = bounds
        self.center.min, self.center.max = -1e9, 1e9
        self.width.max = 1e9
        self.center.min, self.center.max = lo, hi
        self.width.max = max(2.0, hi - lo) * 2
        self.center.step = self.width.step = max((hi - lo) / 256, 0.01)
        self.center.value = (p1 + p99) / 2
        self.width.value = max(p99 - p1, 1.0)

    def _redraw(self, image: bool = True, push: bool = True) -> None:
        """Show the image shown now: drawing (when ``image``), rectangles, preview, labels.

        ``push=False`` leaves the drawing widget's rectangles alone (they come from it).
        """
        if self._busy or self.items.empty:
            return
        row = self.current
        boxes = self._boxes_of(row)
        ds = self._ds(row)
        colour = is_colour(ds)
        window = {
            "frame": self.frame.value,
            "center": None if colour else self.center.value,
            "width": None if colour else self.width.value,
        }
        try:
            if image:
                self._step = png_step(int(row.rows), int(row.columns))
                self.draw.image_bytes = preview_png(ds, **window)
            self.preview.value = preview_png(ds, boxes, **window)
        except (*READ_ERRORS, RuntimeError) as exc:
            self._say(f"cannot draw {row.item}: {type(exc).__name__}", error=True)
        self._show_boxes(row, push)
        decision = self.decided.get(row.item)
        state = (
            f"decided: <b>{decision[0]}</b> by {escape(decision[2])}"
            if decision
            else "<b>no decision yet</b>"
        )
        self.item_label.value = (
            f"<b>{self.index + 1} / {len(self.items)}</b> · "
            f"<code class='sendit-item-name'>{escape(row.item)}</code>"
            f" · series {escape(row.series)} #{row.instance} · {row.columns}×{row.rows} · {state}"
        )
        self.details.value = rule_details(row)

    def _show_boxes(self, row: Any, push: bool = True) -> None:
        """Put the image's rectangles and pending suggestions in the lists (and, with
        ``push``, on the drawing widget: not while a rectangle is being drawn there)."""
        boxes, pending = self._boxes_of(row), self._pending_of(row)
        if push:
            drawn = [on_screen(b, self._step, SCRUB_LABEL) for b in boxes]
            drawn += [on_screen(b, self._step, SUGGESTED_LABEL) for b in pending]
            self._busy = True
            try:
                if self.draw.bboxes != drawn:
                    self.draw.bboxes = drawn
            finally:
                self._busy = False
        self.box_list.value = box_summary(boxes, pending)
        self.suggestions.children = [self._suggestion_row(row, box) for box in pending]

    def _suggestion_row(self, row: Any, box: Box) -> Any:
        source = "OCR text" if box in list(row.ocr_boxes) else "rule"
        accept = labelled(
            widgets.Button(description="Accept", button_style="warning", tooltip=f"scrub {box}"),
            "accept-one",
        )
        drop = labelled(widgets.Button(description="Drop", tooltip=f"forget {box}"), "drop-one")
        accept.on_click(lambda _b: self.accept_suggestion(box))
        drop.on_click(lambda _b: self.drop_suggestion(box))
        text = widgets.HTML(f"suggested by the {source}: {escape(box)}")
        return widgets.HBox([text, accept, drop])

    def _on_draw(self, change: Mapping[str, Any]) -> None:
        """The person drew, moved, resized, relabelled or deleted a rectangle."""
        if self._busy or self.items.empty:
            return
        row = self.current
        boxes: list[Box] = []
        pending: list[Box] = []
        for drawn in change.get("new") or []:
            box = to_source(drawn, self._step, int(row.columns), int(row.rows))
            target = pending if drawn.get("label") == SUGGESTED_LABEL else boxes
            if box is not None and box not in target:
                target.append(box)
        self.boxes[row.item] = boxes
        self.pending[row.item] = [b for b in pending if b not in boxes]
        self._redraw(image=False, push=False)

    # -- actions
    def typed_box(self) -> Box:
        """The rectangle typed in the x, y, w, h fields."""
        return Box(self.box_x.value, self.box_y.value, self.box_w.value, self.box_h.value)

    def add(self, box: Box) -> None:
        """Add a rectangle to the image shown (and redraw)."""
        row = self.current
        problem = check_box(box, int(row.columns), int(row.rows))
        if problem:
            self._say(problem, error=True)
            return
        boxes = self._boxes_of(row)
        if box not in boxes:
            boxes.append(box)
        self._say(f"rectangle {box} added to {row.item}; press Scrub to save the decision")
        self._redraw(image=False)

    def accept_suggestion(self, box: Box | None = None) -> None:
        """Make a suggested rectangle (``box``, default the first pending one) one to scrub."""
        row = self.current
        pending = self._pending_of(row)
        chosen = box if box is not None else (pending[0] if pending else None)
        if chosen is None or chosen not in pending:
            self._say("no suggested rectangle left on this image", error=True)
            return
        pending.remove(chosen)
        boxes = self._boxes_of(row)
        if chosen not in boxes:
            boxes.append(chosen)
        self._say(f"suggested rectangle {chosen} accepted")
        self._redraw(image=False)

    def drop_suggestion(self, box: Box | None = None) -> None:
        """Forget a suggested rectangle (``box``, default the first pending one)."""
        pending = self._pending_of(self.current)
        chosen = box if box is not None else (pending[0] if pending else None)
        if chosen is None or chosen not in pending:
            self._say("no suggested rectangle left on this image", error=True)
            return
        pending.remove(chosen)
        self._say(f"suggested rectangle {chosen} dropped")
        self._redraw(image=False)

    def clear(self) -> None:
        """Remove the rectangles drawn on the image shown (its suggestions stay)."""
        self.boxes[self.current.item] = []
        self._redraw(image=False)

    def make_rule(self) -> SiteRule | None:
        """Turn the rectangles of the image shown into a site ``%filter`` rule.

        See :func:`~sendit_helpers.deid.siterules.add_rule`: every image with the same
        Manufacturer, ManufacturerModelName, Rows and Columns gets them suggested
        from the next inspected batch on.  Returns None (and says why) when it cannot.
        """
        row = self.current
        try:
            rule = add_rule(self.settings, self._ds(row), self._boxes_of(row), self.log.reviewer)
        except ReviewError as exc:
            self._say(str(exc), error=True)
            return None
        self._say(
            f"rule '{rule.label}' written to {rule.path}: the next batch from this scanner "
            "arrives with these rectangles suggested"
        )
        return rule

    def _record(self, decisions: list[tuple[str, Decision, Sequence[Box]]]) -> None:
        self.log.record_many(decisions)
        for item, decision, boxes in decisions:
            self.decided[item] = (decision, list(boxes), self.log.reviewer)
        self._update_progress()

    def decide(self, decision: Decision | str) -> None:
        """Decide for the image shown, save at once, and move to the next image."""
        decision = Decision(decision)
        row = self.current
        boxes = list(self._boxes_of(row)) if decision == Decision.SCRUB else []
        if decision == Decision.SCRUB and not boxes:
            self._say(
                f"{row.item}: draw a rectangle, accept a suggested one or type x, y, w, h and "
                "press Add box before Scrub",
                error=True,
            )
            return
        self._record([(row.item, decision, boxes)])
        self._say(
            f"{row.item}: {decision} saved" + (f" ({len(boxes)} rectangle(s))" if boxes else "")
        )
        if self.index < len(self.items) - 1:
            self.go(self.index + 1)
        else:
            self._redraw(image=False)

    def decide_series(self, decision: Decision | str) -> None:
        """Decide for every image of the series shown, in one durable write.

        A series scrub uses the rectangles of the image shown (or, when it has
        none, each image's suggested boxes); every rectangle must fit every image.
        """
        decision = Decision(decision)
        row = self.current
        group = self.items[self.items["series_uid"] == row.series_uid]
        shown = list(self._boxes_of(row))
        batch: list[tuple[str, Decision, Sequence[Box]]] = []
        for other in table_rows(group):
            boxes: list[Box] = []
            if decision == Decision.SCRUB:
                boxes, problem = series_scrub(other, shown)
                if problem:
                    self._say(problem, error=True)
                    return
                self.boxes[other.item] = list(boxes)
                self.pending[other.item] = [b for b in other.suggested if b not in boxes]
            batch.append((other.item, decision, boxes))
        self._record(batch)
        self._say(f"series {row.series}: {decision} saved for {len(batch)} image(s)")
        after = np.flatnonzero(self.items["series_uid"].to_numpy() == row.series_uid).max() + 1
        self.go(int(after) if after < len(self.items) else self.index)

    def apply(self) -> ApplyResult | None:
        """Apply the decisions in force and show the outcome.

        See :func:`~sendit_helpers.stages.review.apply_decisions` (with ``auto_ocr=False``).
        """
        self.apply_result.value = "applying…"
        try:
            result = apply_decisions(self.layout, self.settings, auto_ocr=False)
        except (ReviewError, LeakError) as exc:
            self.apply_result.value = (
                f"<span style='color:{_ERROR_COLOUR}'>{escape(str(exc))}</span>"
            )
            return None
        self.apply_result.value = (
            f"<b>Applied:</b> {escape(result.summary())}. {escape(waiting_message(self.layout))}."
        )
        self._say("decisions applied")
        return result

    def press(self, key: str) -> None:
        """Carry out the action of ``key`` (see :data:`KEYS`), as the keyboard does."""
        if self.items.empty and key != KEYS["apply"]:
            return
        actions: dict[str, Callable[[], object]] = {
            "release": lambda: self.decide(Decision.RELEASE),
            "scrub": lambda: self.decide(Decision.SCRUB),
            "keep": lambda: self.decide(Decision.KEEP),
            "release-series": lambda: self.decide_series(Decision.RELEASE),
            "scrub-series": lambda: self.decide_series(Decision.SCRUB),
            "keep-series": lambda: self.decide_series(Decision.KEEP),
            "prev": lambda: self.go(self.index - 1),
            "next": lambda: self.go(self.index + 1),
            "next-undecided": self.go_undecided,
            "accept-suggestion": self.accept_suggestion,
            "drop-suggestion": self.drop_suggestion,
            "clear-boxes": self.clear,
            "add-box": lambda: self.add(self.typed_box()),
            "make-rule": self.make_rule,
            "apply": self.apply,
        }
        by_key = {KEYS[name]: action for name, action in actions.items()}
        action = by_key.get(key)
        if action is None:
            self._say(f"no action for key {key!r}; the keys are shown on the buttons", error=True)
            return
        action()
