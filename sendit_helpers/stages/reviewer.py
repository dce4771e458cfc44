"""The review stage's user interface: ipywidgets for deciding on quarantined images.

Stage 3 has two modules.  :mod:`~sendit_helpers.stages.review` holds the logic (the
items, the decision log, decisions files, applying); this module is only what
a person sees and clicks in ``03_review_phi`` (in JupyterLab or Voilà): a montage
per series, one image at a time with the rule that flagged it and the header
values that made it fire, level/window and frame sliders, rectangles drawn
with the mouse, a true preview, decision buttons with one key each.

Drawing.  Rectangles are drawn on the image with ``jupyter-bbox-widget``
(:class:`jupyter_bbox_widget.BBoxWidget`).  The three candidates were tried in
JupyterLab 4 and Voilà 0.5 with Chromium: all three report a drag in source
pixels.  ``ipyevents`` only reports events (a dragged image starts the
browser's own image drag, and every rubber band would be a PNG re-rendered
in Python); ``ipycanvas`` draws, but moving, resizing and deleting boxes would
be our own code with a round trip per mouse move.  ``jupyter-bbox-widget``
draws, moves, resizes and deletes boxes in the browser, in the image's
natural pixels, and is an anywidget (no JupyterLab extension to build), so it
behaves the same in JupyterLab and Voilà.  Boxes labelled ``scrub`` (red) are
the ones to black out; ``suggested`` ones (yellow: the recipe's coordinates
and the OCR screen's text) are accepted or dropped one by one.  The preview
beside it shows the image as the scrub will write it (rectangles black).

Keys.  JupyterLab acts on single letters pressed anywhere in a notebook in
command mode (``a`` inserts a cell, ``m``/``y``/``r`` change cell types), also
when a widget button has the focus.  :class:`KeyCatcher` (a small anywidget)
listens on the whole reviewer: in the capture phase it takes the reviewer's
own keys (one per action, shown on its button) before any widget inside, the
drawing widget included; in the bubbling phase it stops every other key, so
nothing reaches JupyterLab's shortcuts while the reviewer has the focus.
Escape and Ctrl/⌘ combinations (save, copy) still pass, and typing in a text
field is left alone.

The interface decides and changes nothing by itself: every decision goes
through :class:`review.DecisionLog <sendit_helpers.stages.review.DecisionLog>` (saved
the moment it is made), and every effect on the batch through
:func:`review.apply_decisions <sendit_helpers.stages.review.apply_decisions>`.  The
pictures come from :mod:`~sendit_helpers.deid.plots`.
"""

from __future__ import annotations

import html
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anywidget
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pydicom
import traitlets
from IPython.display import display
from jupyter_bbox_widget import BBoxWidget
from pydicom.dataset import Dataset

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.errors import LeakError, ReviewError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid.plots import modality_values, montage, png_step, preview_png
from sendit_helpers.deid.scrub import Box, check_box
from sendit_helpers.deid.siterules import SiteRule, add_rule
from sendit_helpers.stages.review import (
    HELD_BY_GATE,
    ApplyResult,
    Decision,
    DecisionLog,
    apply_decisions,
    item_file,
    load_items,
    reviewer_name,
    waiting_message,
)

__all__ = ["KEYS", "KeyCatcher", "Reviewer"]

#: The one key of each action, by the action's CSS class ``sendit-<name>``.
KEYS = {
    "release": "r",
    "scrub": "s",
    "keep": "k",
    "release-series": "e",
    "scrub-series": "c",
    "keep-series": "h",
    "prev": "p",
    "next": "n",
    "next-undecided": "u",
    "accept-suggestion": "y",
    "drop-suggestion": "x",
    "clear-boxes": "z",
    "add-box": "b",
    "make-rule": "g",
    "apply": "a",
}
if len(set(KEYS.values())) != len(KEYS):  # pragma: no cover - a programming error
    raise RuntimeError("every reviewer action needs its own key")

#: Labels of the drawing widget: rectangles to scrub, and suggestions not yet accepted.
SCRUB_LABEL = "scrub"
SUGGESTED_LABEL = "suggested"
_DRAW_COLOURS = ["#e00000", "#ffb000"]
#: Width of the drawing area on screen, in CSS pixels (the image is scaled to it).
DRAW_WIDTH = 512

_KEYS_ESM = """
function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable ||
    ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}
function attach(el, model) {
  const root = el.closest('.sendit-reviewer');
  if (!root) { return false; }
  if (root.dataset.senditKeys === 'on') { return true; }
  root.dataset.senditKeys = 'on';
  root.tabIndex = 0;
  root.setAttribute('data-lm-suppress-shortcuts', 'true');
  const free = (event) => event.ctrlKey || event.metaKey || event.key === 'Escape';
  // capture phase: the reviewer's own keys, before any widget inside (the drawing widget too)
  root.addEventListener('keydown', (event) => {
    if (typing(event.target) || free(event) || event.altKey) { return; }
    if (model.get('action_keys').includes(event.key)) {
      event.preventDefault();
      event.stopPropagation();
      model.set('pressed', model.get('pressed') + 1);
      model.send({ key: event.key });
    }
  }, true);
  // bubbling phase: no other key leaves the reviewer for JupyterLab's shortcuts
  for (const type of ['keydown', 'keypress', 'keyup']) {
    root.addEventListener(type, (event) => { if (!free(event)) { event.stopPropagation(); } });
  }
  // a click on the reviewer (outside fields and the drawing) gives it the keyboard
  root.addEventListener('mouseup', (event) => {
    if (typing(event.target) || event.target.closest('.sendit-draw')) { return; }
    setTimeout(() => { if (!root.contains(document.activeElement)) { root.focus(); } }, 0);
  });
  return true;
}
export default {
  render({ model, el }) {
    el.classList.add('sendit-keys');
    let tries = 0;
    const tick = () => { if (!attach(el, model) && tries++ < 200) { setTimeout(tick, 50); } };
    tick();
  }
};
"""
_STYLE = f"""<style>
.sendit-draw img {{ width: {DRAW_WIDTH}px; height: auto; image-rendering: pixelated; }}
.sendit-preview img, .sendit-preview {{ image-rendering: pixelated; }}
.sendit-reviewer:focus {{ outline: 2px solid #1976d2; }}
</style>"""
_HELP = (
    "Keys (while the reviewer has the focus; click on it first): "
    + " · ".join(f"{key} {name.replace('-', ' ')}" for name, key in KEYS.items())
    + ". Drag on the image to draw a rectangle; drag its edges to resize it, click it and press "
    "Delete (or its ✕) to remove it."
)
_ERROR_COLOUR = "#b00020"
_OK_COLOUR = "#1b5e20"


class KeyCatcher(anywidget.AnyWidget):
    """Keeps key presses inside the reviewer and sends the reviewer's keys to Python.

    Rendered inside the reviewer's root box (CSS class ``sendit-reviewer``), it
    listens on that box: see the module docstring.  ``action_keys`` are the
    keys it takes, ``pressed`` counts those sent (for tests); :meth:`on_key` registers
    the handler.
    """

    _esm = _KEYS_ESM
    action_keys = traitlets.List(traitlets.Unicode()).tag(sync=True)
    pressed = traitlets.Int(0).tag(sync=True)

    def on_key(self, handler: Callable[[str], object]) -> None:
        """Call ``handler(key)`` for each key of ``action_keys`` pressed in the reviewer."""

        def receive(_widget: Any, content: Any, _buffers: Any) -> None:
            if isinstance(content, dict) and isinstance(content.get("key"), str):
                handler(content["key"])

        self.on_msg(receive)


# ------------------------------------------------------------------ small helpers
def _escape(text: Any) -> str:
    """``text`` safe to put in HTML."""
    return html.escape(str(text))


def _rows(table: pd.DataFrame) -> list[Any]:
    """Rows as named tuples (typed loosely: columns vary)."""
    return list(table.itertuples(index=False))


def _is_colour(ds: Dataset) -> bool:
    """Whether the image has several samples per pixel (no level/window then)."""
    return int(ds.get("SamplesPerPixel", 1) or 1) > 1


def _button(text: str, name: str, tip: str, style: str = "") -> Any:
    """A button with CSS class ``sendit-<name>``, its key shown on it and in its tooltip."""
    key = KEYS.get(name, "")
    button = widgets.Button(
        description=f"{text} ({key})" if key else text,
        tooltip=f"{tip} (key {key})" if key else tip,
        button_style=style,
    )
    button.add_class(f"sendit-{name}")
    return button


def _labelled(widget: Any, name: str) -> Any:
    """``widget`` with CSS class ``sendit-<name>`` (for browser tests)."""
    widget.add_class(f"sendit-{name}")
    return widget


def _box_field(description: str, name: str, low: int) -> Any:
    """A whole-number field of the rectangle (``x``, ``y``: from 0; ``w``, ``h``: from 1)."""
    field = _labelled(
        widgets.BoundedIntText(
            description=description,
            value=low,
            min=low,
            max=100000,
            layout=widgets.Layout(width="130px"),
        ),
        name,
    )
    field.style.description_width = "20px"
    return field


def _series_options(items: pd.DataFrame) -> list[tuple[str, str]]:
    """``(label, SeriesInstanceUID)`` per series of the items, in their order."""
    series = list(dict.fromkeys(zip(items["series_uid"], items["series"], strict=True)))
    options = []
    for uid, name in series:
        count = int((items["series_uid"] == uid).sum())
        options.append((f"series {name} ({count} image{'s' if count != 1 else ''})", uid))
    return options


def _montage_png(layout: BatchLayout, group: pd.DataFrame, settings: Mapping[str, Any]) -> bytes:
    """Thumbnails of at most ``MONTAGE_MAX_IMAGES`` images of one series, evenly spaced, as PNG."""
    cfg = typed(settings).inspect
    limit = cfg.montage_max_images or 16
    chosen = group.iloc[
        np.unique(np.linspace(0, len(group) - 1, min(limit, len(group))).round().astype(int))
    ]
    paths = [item_file(layout, p) for p in chosen["path"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig = montage(
            paths,
            [f"#{n}" for n in chosen["instance"]],
            cfg.thumbnail_size or 128,
            "",
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _window_bounds(ds: Dataset) -> tuple[float, float, float, float] | None:
    """``(lowest, highest, 1st percentile, 99th percentile)`` of the pixels in modality units.

    None when the pixels cannot be decoded.
    """
    try:
        data = modality_values(ds, ds.pixel_array)
    except (*READ_ERRORS, RuntimeError):
        return None
    lo, hi = float(data.min()), float(data.max())
    hi = hi if hi > lo else lo + 1
    p1, p99 = (float(v) for v in np.percentile(data, (1, 99)))
    return lo, hi, p1, p99


def _series_scrub(row: Any, shown: Sequence[Box]) -> tuple[list[Box], str]:
    """The rectangles a series scrub gives ``row`` (``shown``, else its suggested boxes).

    Returns
    -------
    tuple of (list of Box, str)
        The rectangles, and why they cannot be used (``""`` when they can).
    """
    boxes = list(shown) or list(row.suggested)
    problems = [p for p in (check_box(b, int(row.columns), int(row.rows)) for b in boxes) if p]
    if not boxes or problems:
        why = problems[0] if problems else "no rectangle to scrub; draw one first"
        return boxes, f"{row.item}: {why}"
    return boxes, ""


def _rule_details(row: Any) -> str:
    """HTML: the rule that flagged ``row``, its condition, and the header values it looked at."""
    triggers = "".join(
        f"<tr><td>{_escape(k)}</td><td>{_escape(v)}</td></tr>" for k, v in row.triggers.items()
    )
    return (
        f"<b>Rule</b>: {_escape(row.label)} <i>({_escape(row.group)})</i><br>"
        f"<small>{_escape(row.reason)}</small><table>{triggers}</table>"
    )


def _gate_list(items: pd.DataFrame) -> str:
    """HTML: the items the leak gate holds, each with the field a removed value was found in."""
    held = items[items["held_by"] == HELD_BY_GATE] if "held_by" in items else items.iloc[:0]
    if held.empty:
        return ""
    lines = "".join(
        f"<li><code>{_escape(row.item)}</code>: {_escape(row.reason)}</li>" for row in _rows(held)
    )
    return (
        f"<b>Held by the leak gate ({len(held)})</b> — a value the recipe removed was found in "
        "these images; scrub it (pixels), or change the recipe and run deidentify again. "
        f"Released, they are scanned again.<ul>{lines}</ul>"
    )


def _box_summary(boxes: Sequence[Box], pending: Sequence[Box]) -> str:
    """HTML: the rectangles to scrub, and the suggestions not yet accepted or dropped."""
    shown = ", ".join(str(b) for b in boxes) or "none (drag on the image, or type x, y, w, h)"
    hint = " · suggested: " + ", ".join(str(b) for b in pending) if pending else ""
    return f"Rectangles to scrub: {_escape(shown)}{_escape(hint)}"


def to_source(drawn: Mapping[str, Any], step: int, columns: int, rows: int) -> Box | None:
    """A rectangle of the drawing widget (rendering pixels) in source pixels, clipped.

    Parameters
    ----------
    drawn : mapping
        ``x``, ``y``, ``width``, ``height`` as the drawing widget reports them.
    step : int
        :func:`~sendit_helpers.deid.plots.png_step` of the image.
    columns, rows : int
        The image's size in source pixels.

    Returns
    -------
    Box or None
        None when nothing of it lies inside the image.
    """
    x0 = round(float(drawn.get("x", 0)) * step)
    y0 = round(float(drawn.get("y", 0)) * step)
    x1 = x0 + round(float(drawn.get("width", 0)) * step)
    y1 = y0 + round(float(drawn.get("height", 0)) * step)
    x0, x1 = sorted((max(0, min(x0, columns)), max(0, min(x1, columns))))
    y0, y1 = sorted((max(0, min(y0, rows)), max(0, min(y1, rows))))
    return Box(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _on_screen(box: Box, step: int, label: str) -> dict[str, Any]:
    """``box`` (source pixels) as a rectangle of the drawing widget."""
    return {
        "x": box.x / step,
        "y": box.y / step,
        "width": box.width / step,
        "height": box.height / step,
        "label": label,
    }


# ------------------------------------------------------------------ the reviewer
class Reviewer:
    """The review user interface (ipywidgets): series montages, one image, decisions.

    Every decision is saved the moment it is made
    (:class:`~sendit_helpers.stages.review.DecisionLog`);
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

    # -- building
    def _make_series_widgets(self) -> None:
        self.gate_held = _labelled(widgets.HTML(_gate_list(self.items)), "gate-held")
        self.progress = _labelled(widgets.HTML(), "progress")
        self.message = _labelled(widgets.HTML(), "message")
        self.series_select = _labelled(
            widgets.Dropdown(
                options=_series_options(self.items),
                description="Series",
                layout=widgets.Layout(width="520px"),
            ),
            "series",
        )
        self.montage = _labelled(
            widgets.Image(format="png", layout=widgets.Layout(max_width="900px")), "montage"
        )
        self.series_info = _labelled(widgets.HTML(), "series-info")
        self.release_series = _button(
            "Release series",
            "release-series",
            "release every image of this series as it is",
            "success",
        )
        self.scrub_series = _button(
            "Scrub series",
            "scrub-series",
            "scrub the rectangles on every image of this series",
            "warning",
        )
        self.keep_series = _button(
            "Keep series", "keep-series", "keep every image of this series in quarantine", "danger"
        )

    def _make_image_widgets(self) -> None:
        self.draw = _labelled(
            BBoxWidget(
                classes=[SCRUB_LABEL, SUGGESTED_LABEL],
                colors=_DRAW_COLOURS,
                label=SCRUB_LABEL,
                hide_buttons=True,
            ),
            "draw",
        )
        self._step = 1
        self.preview = _labelled(
            widgets.Image(format="png", layout=widgets.Layout(width="320px")), "preview"
        )
        self.item_label = _labelled(widgets.HTML(), "item")
        self.details = _labelled(widgets.HTML(), "details")
        self.center = _labelled(
            widgets.FloatSlider(description="Level", continuous_update=False, readout_format=".0f"),
            "level",
        )
        self.width = _labelled(
            widgets.FloatSlider(
                description="Window", continuous_update=False, min=1, readout_format=".0f"
            ),
            "window",
        )
        self.frame = _labelled(
            widgets.IntSlider(description="Frame", min=0, max=0, continuous_update=False), "frame"
        )

    def _make_box_widgets(self) -> None:
        self.box_x = _box_field("x", "box-x", 0)
        self.box_y = _box_field("y", "box-y", 0)
        self.box_w = _box_field("w", "box-w", 1)
        self.box_h = _box_field("h", "box-h", 1)
        self.add_box = _button("Add box", "add-box", "add the rectangle x, y, w, h to this image")
        self.clear_boxes = _button(
            "Clear boxes", "clear-boxes", "remove the rectangles drawn on this image"
        )
        self.make_rule_button = _button(
            "Make a rule",
            "make-rule",
            "write a %filter rule to the site filter file: every image with this Manufacturer, "
            "model and size gets these rectangles suggested from the next batch on",
        )
        self.box_list = _labelled(widgets.HTML(), "boxes")
        self.suggestions = _labelled(widgets.VBox(), "suggestions")

    def _make_decision_widgets(self) -> None:
        self.release = _button("Release", "release", "release this image as it is", "success")
        self.scrub = _button("Scrub", "scrub", "black out the rectangles, then release", "warning")
        self.keep = _button("Keep", "keep", "keep this image in quarantine", "danger")
        self.prev = _button("◀ Previous", "prev", "previous image")
        self.next = _button("Next ▶", "next", "next image")
        self.next_open = _button(
            "Next undecided", "next-undecided", "next image without a decision"
        )
        self.apply_button = _button(
            "Apply decisions",
            "apply",
            "move released/scrubbed images to release/ and re-run the leak gate",
            "primary",
        )
        self.apply_result = _labelled(widgets.HTML(), "apply-result")
        self.keys = KeyCatcher(action_keys=list(KEYS.values()))

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

    def _assemble(self) -> Any:
        series_box = widgets.VBox(
            [
                widgets.HTML(
                    "<b>Series</b> — pick a series; its flagged images are shown together."
                ),
                self.series_select,
                self.series_info,
                self.montage,
                widgets.HBox([self.release_series, self.scrub_series, self.keep_series]),
            ]
        )
        image_box = widgets.VBox(
            [
                self.item_label,
                widgets.HBox(
                    [
                        self.draw,
                        widgets.VBox(
                            [
                                widgets.HTML("<b>Preview</b> (as it will be written)"),
                                self.preview,
                                self.details,
                                self.center,
                                self.width,
                                self.frame,
                            ]
                        ),
                    ]
                ),
                self.suggestions,
                widgets.HBox(
                    [
                        self.box_x,
                        self.box_y,
                        self.box_w,
                        self.box_h,
                        self.add_box,
                        self.clear_boxes,
                        self.make_rule_button,
                    ]
                ),
                self.box_list,
                widgets.HBox(
                    [self.prev, self.release, self.scrub, self.keep, self.next, self.next_open]
                ),
                widgets.HTML(f"<small>{_escape(_HELP)}</small>"),
            ]
        )
        whole = widgets.VBox(
            [
                widgets.HTML(_STYLE),
                self.keys,
                widgets.HBox([self.progress, self.message]),
                self.gate_held,
                series_box,
                widgets.HTML("<hr>"),
                image_box,
                widgets.HTML("<hr>"),
                widgets.HBox([self.apply_button, self.apply_result]),
            ]
        )
        whole.add_class("sendit-reviewer")
        return whole

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
        line = _labelled(widgets.HTML(self._status_text()), "status")
        self._statuses.append(line)
        return line

    # -- state
    @property
    def current(self) -> Any:
        """The row of :attr:`items` shown now."""
        return _rows(self.items.iloc[[self.index]])[0]

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
        self.message.value = f"<span style='color:{colour}'>{_escape(text)}</span>"

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
            f"{len(group)} flagged image(s), {_escape(first['modality'])}; rule: "
            f"<i>{_escape(first['label'])}</i> ({_escape(first['group'])})"
        )
        if uid not in self._montages:
            self._montages[uid] = _montage_png(self.layout, group, self.settings)
        self.montage.value = self._montages[uid]
        self.montage.layout.width = f"{min(8, len(group)) * 150 + 40}px"

    def _set_window(self, row: Any) -> None:
        ds = self._ds(row)
        colour = _is_colour(ds)
        self.center.disabled = self.width.disabled = colour
        self.frame.max = max(0, int(row.frames) - 1)
        self.frame.value = 0
        bounds = None if colour else _window_bounds(ds)
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
        colour = _is_colour(ds)
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
            f"decided: <b>{decision[0]}</b> by {_escape(decision[2])}"
            if decision
            else "<b>no decision yet</b>"
        )
        self.item_label.value = (
            f"<b>{self.index + 1} / {len(self.items)}</b> · "
            f"<code class='sendit-item-name'>{_escape(row.item)}</code>"
            f" · series {_escape(row.series)} #{row.instance} · {row.columns}×{row.rows} · {state}"
        )
        self.details.value = _rule_details(row)

    def _show_boxes(self, row: Any, push: bool = True) -> None:
        """Put the image's rectangles and pending suggestions in the lists (and, with
        ``push``, on the drawing widget: not while a rectangle is being drawn there)."""
        boxes, pending = self._boxes_of(row), self._pending_of(row)
        if push:
            drawn = [_on_screen(b, self._step, SCRUB_LABEL) for b in boxes]
            drawn += [_on_screen(b, self._step, SUGGESTED_LABEL) for b in pending]
            self._busy = True
            try:
                if self.draw.bboxes != drawn:
                    self.draw.bboxes = drawn
            finally:
                self._busy = False
        self.box_list.value = _box_summary(boxes, pending)
        self.suggestions.children = [self._suggestion_row(row, box) for box in pending]

    def _suggestion_row(self, row: Any, box: Box) -> Any:
        source = "OCR text" if box in list(row.ocr_boxes) else "rule"
        accept = _labelled(
            widgets.Button(description="Accept", button_style="warning", tooltip=f"scrub {box}"),
            "accept-one",
        )
        drop = _labelled(widgets.Button(description="Drop", tooltip=f"forget {box}"), "drop-one")
        accept.on_click(lambda _b: self.accept_suggestion(box))
        drop.on_click(lambda _b: self.drop_suggestion(box))
        text = widgets.HTML(f"suggested by the {source}: {_escape(box)}")
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
        for other in _rows(group):
            boxes: list[Box] = []
            if decision == Decision.SCRUB:
                boxes, problem = _series_scrub(other, shown)
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
                f"<span style='color:{_ERROR_COLOUR}'>{_escape(str(exc))}</span>"
            )
            return None
        self.apply_result.value = (
            f"<b>Applied:</b> {_escape(result.summary())}. {_escape(waiting_message(self.layout))}."
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
