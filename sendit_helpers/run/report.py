"""Executed notebooks made into reports people read (the HTML copies in ``phi/notebooks/``).

:func:`prepare` changes a copy of an executed notebook before
:func:`runner.export_html <sendit_helpers.run.runner.export_html>` converts it
(with the code cells' inputs left out):

* a header first: batch, stage, status, start and end, sendit and pydicom
  versions, and one summary of the parameters the run was given (from
  papermill's record);
* widgets become what they showed last: a tqdm progress bar its final line
  (``inspect: 100%|██████████| 18/18 [...]`` instead of the ``0%`` the
  notebook's plain-text fallback froze), an HTML widget its HTML, any other
  widget a note that it is interactive.  The widget state comes from the
  notebook's metadata (nbclient stores it) and is then dropped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["header_html", "prepare"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_PROGRESS = ("FloatProgressModel", "IntProgressModel")
_TAG = re.compile(r"<[^>]+>")
_INTERACTIVE = "(interactive widget: it works when the notebook runs in JupyterLab or Voilà)"


def _plain(markup: str) -> str:
    """HTML widget text as plain text (tags dropped, entities and figure spaces resolved)."""
    return html.unescape(_TAG.sub("", markup)).replace("\u2007", " ")


def _bar(state: Mapping[str, Any]) -> str:
    """A progress model as tqdm draws it: ``|█████     |``."""
    top = float(state.get("max") or 0)
    done = float(state.get("value") or 0) / top if top > 0 else 0.0
    filled = max(0, min(10, int(round(done * 10))))
    return "|" + "█" * filled + " " * (10 - filled) + "|"


def _final(models: Mapping[str, Any], model_id: str) -> tuple[str, str] | None:
    """``(mime type, text)`` a widget showed last, None when it is not in the state."""
    model = models.get(model_id)
    if not isinstance(model, Mapping):
        return None
    name = str(model.get("model_name", ""))
    state = model.get("state") or {}
    if name == "HTMLModel":
        return "text/html", str(state.get("value", ""))
    if name in _PROGRESS:
        return "text/plain", _bar(state)
    if name in ("HBoxModel", "BoxModel"):
        parts: list[str] = []
        kinds: list[str] = []
        for child in state.get("children") or []:
            child_id = str(child).removeprefix("IPY_MODEL_")
            child_model = models.get(child_id) or {}
            kinds.append(str(child_model.get("model_name", "")))
            found = _final(models, child_id)
            if found is not None:
                parts.append(found[1] if found[0] == "text/plain" else _plain(found[1]))
        if any(kind in _PROGRESS for kind in kinds):  # tqdm: description, bar, counts
            return "text/plain", "".join(parts)
    return "text/plain", _INTERACTIVE


def _final_widgets(nb: Any) -> None:
    """Replace every widget output by what it showed last; drop the widget state."""
    stored = nb.metadata.pop("widgets", None) or {}
    models = (stored.get(WIDGET_STATE) or {}).get("state") or {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data or WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            found = _final(models, str((view or {}).get("model_id", "")))
            if found is not None:
                mime, text = found
                for key in [k for k in data if k.startswith("text/")]:
                    del data[key]
                data[mime] = text


def _status(nb: Any) -> str:
    """``failed`` when a cell raised or papermill recorded an exception, else ``done``."""
    record = nb.metadata.get("papermill") or {}
    errors = any(
        output.get("output_type") == "error"
        for cell in nb.cells
        for output in cell.get("outputs", [])
    )
    return "failed" if errors or record.get("exception") else "done"


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v!r}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    return str(value) if value not in ("", None) else "—"


def header_html(nb: Any, notebook: Path) -> str:
    """The report's header: batch, stage, status, times, versions, parameters (HTML).

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The executed notebook (papermill's record in ``metadata.papermill``).
    notebook : Path
        Where it is: ``WORK/<batch>/phi/notebooks/NN_stage.ipynb``.
    """
    import pydicom

    from sendit_helpers import __version__

    record = nb.metadata.get("papermill") or {}
    batch = notebook.parent.parent.parent.name if notebook.parent.name == "notebooks" else "—"
    stage = notebook.stem.split("_", 1)[-1]
    rows = [
        ("batch", batch),
        ("stage", stage),
        ("status", _status(nb)),
        ("started", record.get("start_time") or "—"),
        ("ended", record.get("end_time") or "—"),
        ("versions", f"sendit-notebooks {__version__}, pydicom {pydicom.__version__}"),
    ]
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    parameters = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='word-break:break-all'>{html.escape(_value(v))}</td></tr>"
        for k, v in (record.get("parameters") or {}).items()
    )
    return (
        f"<h2>sendit · {html.escape(stage)} · batch {html.escape(batch)}</h2>"
        f"<table>{cells}</table>"
        "<h3>Parameters</h3>"
        f"<table>{parameters or '<tr><td>none (the notebook defaults)</td></tr>'}</table>"
        "<p><small>Code is left out of this copy; open the .ipynb beside it to see it.</small></p>"
    )


def prepare(nb: Any, notebook: Path) -> Any:
    """Make an executed notebook (a copy: it is changed in place) ready to export as a report.

    Returns
    -------
    nbformat.NotebookNode
        ``nb``, with the header cell first and widgets as they ended.
    """
    import nbformat

    header = header_html(nb, notebook)
    _final_widgets(nb)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(header))  # type: ignore[no-untyped-call]
    return nb
