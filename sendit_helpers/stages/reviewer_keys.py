"""The reviewer's keyboard: one key per action, kept inside the reviewer.

JupyterLab acts on single letters pressed anywhere in a notebook in command
mode (``a`` inserts a cell, ``m``/``y``/``r`` change cell types), also when a
widget button has the focus.  :class:`KeyCatcher` (a small anywidget) listens on
the whole reviewer (:class:`~sendit_helpers.stages.reviewer.Reviewer`): in the
capture phase it takes the reviewer's own keys (:data:`KEYS`, one per action,
shown on its button) before any widget inside, the drawing widget included; in
the bubbling phase it stops every other key, so nothing reaches JupyterLab's
shortcuts while the reviewer has the focus.  Escape and Ctrl/⌘ combinations
(save, copy) still pass, and typing in a text field is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

__all__ = ["KEYS", "KeyCatcher"]

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
