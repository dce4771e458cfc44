"""What the reviewer shows: its widgets, laid out, and the HTML and pictures in them.

:class:`ReviewerView` builds the widget tree of
:class:`~sendit_helpers.stages.reviewer.Reviewer` (which adds what the widgets do):
a montage per series, one image at a time with the rule that flagged it and the
header values that made it fire, level/window and frame sliders, rectangles
drawn with the mouse, a true preview, decision buttons with one key each
(:mod:`~sendit_helpers.stages.reviewer_keys`).  Widgets carry stable CSS classes
``sendit-<name>`` for browser tests.

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
:func:`to_source` and :func:`on_screen` convert between the drawing's pixels and
the image's.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
from jupyter_bbox_widget import BBoxWidget
from pydicom.dataset import Dataset

from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import plots
from sendit_helpers.deid.plots import modality_values
from sendit_helpers.deid.scrub import Box, check_box
from sendit_helpers.stages.review_items import HELD_BY_GATE, item_file, table_rows
from sendit_helpers.stages.reviewer_keys import KEYS, KeyCatcher

__all__ = [
    "DRAW_WIDTH",
    "SCRUB_LABEL",
    "SUGGESTED_LABEL",
    "ReviewerView",
    "box_summary",
    "escape",
    "is_colour",
    "labelled",
    "montage_png",
    "on_screen",
    "rule_details",
    "series_scrub",
    "to_source",
    "window_bounds",
]

#: Labels of the drawing widget: rectangles to scrub, and suggestions not yet accepted.
SCRUB_LABEL = "scrub"
SUGGESTED_LABEL = "suggested"
_DRAW_COLOURS = ["#e00000", "#ffb000"]
#: Width of the drawing area on screen, in CSS pixels (the image is scaled to it).
DRAW_WIDTH = 512

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


# ------------------------------------------------------------------ small helpers
def escape(text: Any) -> str:
    """``text`` safe to put in HTML."""
    return html.escape(str(text))


def is_colour(ds: Dataset) -> bool:
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


def labelled(widget: Any, name: str) -> Any:
    """``widget`` with CSS class ``sendit-<name>`` (for browser tests)."""
    widget.add_class(f"sendit-{name}")
    return widget


def _box_field(description: str, name: str, low: int) -> Any:
    """A whole-number field of the rectangle (``x``, ``y``: from 0; ``w``, ``h``: from 1)."""
    field = labelled(
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


def montage_png(layout: BatchLayout, group: pd.DataFrame, settings: Mapping[str, Any]) -> bytes:
    """Thumbnails of at most ``MONTAGE_MAX_IMAGES`` images of one series, evenly spaced, as PNG.

    Drawn by :func:`~sendit_helpers.deid.plots.montage_png` (numpy and Pillow).
    """
    cfg = typed(settings).inspect
    limit = cfg.montage_max_images or 16
    chosen = group.iloc[
        np.unique(np.linspace(0, len(group) - 1, min(limit, len(group))).round().astype(int))
    ]
    paths = [item_file(layout, p) for p in chosen["path"]]
    with warnings.catch_warnings():  # a reader's warnings are not the reviewer's business
        warnings.simplefilter("ignore", UserWarning)
        return plots.montage_png(
            paths, [f"#{n}" for n in chosen["instance"]], cfg.thumbnail_size or 128, ""
        )


def window_bounds(ds: Dataset) -> tuple[float, float, float, float] | None:
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


def series_scrub(row: Any, shown: Sequence[Box]) -> tuple[list[Box], str]:
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


def rule_details(row: Any) -> str:
    """HTML: the rule that flagged ``row``, its condition, and the header values it looked at."""
    triggers = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in row.triggers.items()
    )
    return (
        f"<b>Rule</b>: {escape(row.label)} <i>({escape(row.group)})</i><br>"
        f"<small>{escape(row.reason)}</small><table>{triggers}</table>"
    )


def _gate_list(items: pd.DataFrame) -> str:
    """HTML: the items the leak gate holds, each with the field a removed value was found in."""
    held = items[items["held_by"] == HELD_BY_GATE] if "held_by" in items else items.iloc[:0]
    if held.empty:
        return ""
    lines = "".join(
        f"<li><code>{escape(row.item)}</code>: {escape(row.reason)}</li>"
        for row in table_rows(held)
    )
    return (
        f"<b>Held by the leak gate ({len(held)})</b> — a value the recipe removed was found in "
        "these images; scrub it (pixels), or change the recipe and run deidentify again. "
        f"Released, they are scanned again.<ul>{lines}</ul>"
    )


def box_summary(boxes: Sequence[Box], pending: Sequence[Box]) -> str:
    """HTML: the rectangles to scrub, and the suggestions not yet accepted or dropped."""
    shown = ", ".join(str(b) for b in boxes) or "none (drag on the image, or type x, y, w, h)"
    hint = " · suggested: " + ", ".join(str(b) for b in pending) if pending else ""
    return f"Rectangles to scrub: {escape(shown)}{escape(hint)}"


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


def on_screen(box: Box, step: int, label: str) -> dict[str, Any]:
    """``box`` (source pixels) as a rectangle of the drawing widget."""
    return {
        "x": box.x / step,
        "y": box.y / step,
        "width": box.width / step,
        "height": box.height / step,
        "label": label,
    }


# ------------------------------------------------------------------ the widget tree
class ReviewerView:
    """The reviewer's widgets and their layout (no behaviour: see ``Reviewer``).

    A subclass sets :attr:`items` (:func:`~sendit_helpers.stages.review_items.load_items`)
    and calls the ``_make_*_widgets`` methods, then :meth:`_assemble`.
    """

    items: pd.DataFrame

    def _make_series_widgets(self) -> None:
        self.gate_held = labelled(widgets.HTML(_gate_list(self.items)), "gate-held")
        self.progress = labelled(widgets.HTML(), "progress")
        self.message = labelled(widgets.HTML(), "message")
        self.series_select = labelled(
            widgets.Dropdown(
                options=_series_options(self.items),
                description="Series",
                layout=widgets.Layout(width="520px"),
            ),
            "series",
        )
        self.montage = labelled(
            widgets.Image(format="png", layout=widgets.Layout(max_width="900px")), "montage"
        )
        self.series_info = labelled(widgets.HTML(), "series-info")
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
        self.draw = labelled(
            BBoxWidget(
                classes=[SCRUB_LABEL, SUGGESTED_LABEL],
                colors=_DRAW_COLOURS,
                label=SCRUB_LABEL,
                hide_buttons=True,
            ),
            "draw",
        )
        self._step = 1
        self.preview = labelled(
            widgets.Image(format="png", layout=widgets.Layout(width="320px")), "preview"
        )
        self.item_label = labelled(widgets.HTML(), "item")
        self.details = labelled(widgets.HTML(), "details")
        self.center = labelled(
            widgets.FloatSlider(description="Level", continuous_update=False, readout_format=".0f"),
            "level",
        )
        self.width = labelled(
            widgets.FloatSlider(
                description="Window", continuous_update=False, min=1, readout_format=".0f"
            ),
            "window",
        )
        self.frame = labelled(
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
        self.box_list = labelled(widgets.HTML(), "boxes")
        self.suggestions = labelled(widgets.VBox(), "suggestions")

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
        self.apply_result = labelled(widgets.HTML(), "apply-result")
        self.keys = KeyCatcher(action_keys=list(KEYS.values()))

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
                widgets.HTML(f"<small>{escape(_HELP)}</small>"),
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
