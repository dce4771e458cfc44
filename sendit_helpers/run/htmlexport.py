"""The HTML exporter of the executed notebooks' copies, and what it keeps from copy to copy.

:func:`~sendit_helpers.run.runner.export_html` writes what nbconvert's
``HTMLExporter`` writes (code left out, no script from the network).  Most of
that work is the same for every batch: the page's ``<head>`` (some 280 KB of
styles) and the notebooks' narrative.  The exporter made here (one per thread,
:func:`exporter`) keeps it:

- each markdown cell is rendered once (:func:`cached_markdown`);
- the notebook is validated once, after the preprocessors, not after each;
- nbconvert's last step parses the whole page with BeautifulSoup (to add ``alt``
  to images and ``tabindex`` to the cells) and writes it out again.  That
  step, more than half of a copy's time, is done here on the page with the
  ``<head>``'s contents and the rendered markdown set aside: each of those
  pieces is parsed and written once, then put back.  A piece is set aside
  only after a copy showed that doing so gives, byte for byte, the page
  nbconvert's own step gives (:class:`Pieces`); until then, and whenever in
  doubt, nbconvert's step runs on the whole page.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import uuid
from typing import Any

__all__ = [
    "MARKDOWN_CACHE_SIZE",
    "PAGE",
    "Pieces",
    "cached_markdown",
    "exporter",
    "finish",
    "soup_step",
]

#: Markdown cells (and page pieces) kept per thread; past that, the thread starts afresh.
MARKDOWN_CACHE_SIZE = 512
#: Times a piece must have been seen before a copy checks whether it can be set aside.
_SEEN_BEFORE_CHECK = 2
#: Alternative text nbconvert gives an image without one.
_NO_ALT = "No description has been provided for this image"

_LOCAL = threading.local()


class Pieces:
    """What one thread's exporter keeps from copy to copy (see the module's description)."""

    def __init__(self) -> None:
        self.rendered: list[str] = []
        """The markdown rendered for the copy being made (in order)."""
        self.written: dict[tuple[str, str | None], str] = {}
        """``(piece, its scope) ->`` the piece parsed and written alone (:func:`soup_step`)."""
        self.seen: dict[str, int] = {}
        self.safe: set[str] = set()
        """Pieces shown to be written alone as they are written within the page."""
        self.unsafe: set[str] = set()
        """Pieces that were not: never set aside."""
        self.nonce = uuid.uuid4().hex
        """Part of the placeholders' text (no page holds it)."""

    def forget_if_full(self) -> None:
        """Start afresh when the caches have grown past :data:`MARKDOWN_CACHE_SIZE`."""
        if max(len(self.written), len(self.seen)) >= MARKDOWN_CACHE_SIZE:
            self.written.clear()
            self.seen.clear()
            self.safe.clear()
            self.unsafe.clear()


def cached_markdown(render: Any, pieces: Pieces | None = None) -> Any:
    """``render`` (an HTML exporter's ``markdown2html`` filter) remembering its results.

    The stage notebooks' narrative is the same for every batch: each markdown
    cell is rendered once per thread, not once per copy.  A cell with
    attachments is rendered each time (its images are part of it).  With
    ``pieces``, each result is also noted in :attr:`Pieces.rendered`.
    """
    html_module: Any = importlib.import_module("nbconvert.exporters.html")
    done: dict[tuple[str, str], Any] = {}

    def markdown2html(context: Any, source: str) -> Any:
        cell = context.get("cell", {})
        if cell.get("attachments"):
            return render(context, source)
        path = context.get("resources", {}).get("metadata", {}).get("path", "")
        key = (source, str(path))
        html = done.get(key)
        if html is None:
            if len(done) >= MARKDOWN_CACHE_SIZE:
                done.clear()
            html = done[key] = render(context, source)
        if pieces is not None:
            pieces.rendered.append(str(html))
        return html

    # nbconvert's own decorator of its filter (jinja2's pass_context): the template's context
    return html_module.contextfilter(markdown2html)


def exporter() -> Any:
    """This thread's HTML exporter (made on first use: its templates load once).

    Its ``from_notebook_node`` gives what ``nbconvert.HTMLExporter`` with
    ``exclude_input``, ``exclude_input_prompt`` and ``exclude_output_prompt``
    and no script URL gives.
    """
    made = getattr(_LOCAL, "exporter", None)
    if made is None:
        made = _LOCAL.exporter = _make()
    return made


def _make() -> Any:
    nbconvert: Any = importlib.import_module("nbconvert")
    html_module: Any = importlib.import_module("nbconvert.exporters.html")
    template_exporter: Any = importlib.import_module("nbconvert.exporters.templateexporter")
    pieces = Pieces()

    class Exporter(nbconvert.HTMLExporter):  # type: ignore[misc]
        """``HTMLExporter`` whose last step sets aside the pieces it has written before."""

        def from_notebook_node(self, nb: Any, resources: Any = None, **kw: Any) -> Any:
            # HTMLExporter.from_notebook_node up to its BeautifulSoup step (nbconvert 7)
            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            highlight_code = self.filters.get(
                "highlight_code", html_module.Highlight2HTML(pygments_lexer=lexer, parent=self)
            )
            resources = self._init_resources(resources)
            filter_data_type = html_module.WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources
            )
            self.register_filter("highlight_code", highlight_code)
            self.register_filter("filter_data_type", filter_data_type)
            pieces.rendered = []
            try:
                page, resources = template_exporter.TemplateExporter.from_notebook_node(
                    self, nb, resources, **kw
                )
                rendered, pieces.rendered = pieces.rendered, []
            finally:
                pieces.rendered = []
            return finish(page, rendered, pieces, self.log), resources

    quiet = logging.getLogger("sendit.html")
    quiet.setLevel(logging.ERROR)  # nbconvert warns about images without alt text
    made = Exporter(
        log=quiet,
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        # The notebook is checked once, after the preprocessors, not after each of
        # them (none of those a copy runs changes it): the same HTML, a fifth less work.
        optimistic_validation=True,
    )
    made.register_filter("markdown2html", cached_markdown(made.markdown2html, pieces))
    for url in (
        "widget_renderer_url",
        "require_js_url",
        "mathjax_url",
        "mermaid_js_url",
        "mermaid_layout_elk_js_url",
    ):
        if made.has_trait(url):
            setattr(made, url, "")
    return made


#: The selectors' scope nbconvert gives them on a page: the notebook's body element.
PAGE = ".jp-Notebook "


def soup_step(page: str, log: Any = None, *, scope: str | None = PAGE) -> str:
    """nbconvert's last step (``HTMLExporter.from_notebook_node``'s BeautifulSoup pass).

    ``scope`` prefixes the selectors of the cells given a ``tabindex``: :data:`PAGE`
    on a whole page (nbconvert's selectors), ``""`` on a piece of the notebook's body
    (parsed without that element), None on a piece outside it (no cell is selected).
    """
    html_module: Any = importlib.import_module("nbconvert.exporters.html")
    soup = html_module.BeautifulSoup(page, features="html.parser")  # nbconvert's own
    missing_alt = 0
    for elem in soup.select("img:not([alt])"):
        elem.attrs["alt"] = _NO_ALT
        missing_alt += 1
    if missing_alt and log is not None:
        log.warning("Alternative text is missing on %s image(s).", missing_alt)
    if scope is not None:
        for elem in soup.select(f"{scope}div.jp-Cell-inputWrapper"):
            elem.attrs["tabindex"] = "0"
        for elem in soup.select(f"{scope}div.jp-OutputArea-output"):
            elem.attrs["tabindex"] = "0"
    return str(soup)


_HEAD = re.compile(r"<head>(.*?)</head>", re.DOTALL)


def finish(page: str, rendered: list[str], pieces: Pieces, log: Any = None) -> str:
    """:func:`soup_step` of the whole ``page``, with the pieces known to be safe set aside.

    ``rendered``: the markdown rendered for this page.  The ``<head>``'s
    contents and each rendered markdown found in the page's body are its pieces.
    The pieces known safe are replaced by placeholders, the page is stepped and
    each piece's own written form is put back.  A piece seen for the second
    time is checked first: the whole page is stepped (nbconvert's result,
    which this copy gets) and the page with the piece set aside too; when both
    are the same, byte for byte, the piece is known safe from then on, else
    never set aside.  A piece seen once (a batch's own header) stays in place.
    """
    pieces.forget_if_full()
    head = _HEAD.search(page)
    body_start = head.end() if head is not None else 0
    found: list[tuple[str, str | None]] = []
    # A piece's first and last characters are no white space: BeautifulSoup writes a run
    # of white space as one character, and a placeholder would split a run in two.
    if head is not None and head.group(1).strip():
        found.append((head.group(1).strip(), None))
    for html in dict.fromkeys(h.strip() for h in rendered):
        if html and page.find(html, body_start) >= 0 and page.find(html, 0, body_start) < 0:
            found.append((html, ""))
    if pieces.nonce in page:
        return soup_step(page, log)
    for piece, _scope in found:
        pieces.seen[piece] = pieces.seen.get(piece, 0) + 1
    ready = [(p, scope) for p, scope in found if p in pieces.safe]
    check = [
        (p, scope)
        for p, scope in found
        if p not in pieces.safe and p not in pieces.unsafe and pieces.seen[p] >= _SEEN_BEFORE_CHECK
    ]
    if check:
        whole = soup_step(page, log)
        if _set_aside(page, ready + check, pieces, None) == whole:
            pieces.safe.update(p for p, _scope in check)
        else:  # one at a time (once): which of them may not be set aside
            for one in check:
                same = _set_aside(page, [*ready, one], pieces, None) == whole
                (pieces.safe if same else pieces.unsafe).add(one[0])
        return whole
    if ready:
        return _set_aside(page, ready, pieces, log)
    return soup_step(page, log)


def _set_aside(page: str, found: list[tuple[str, str | None]], pieces: Pieces, log: Any) -> str:
    """:func:`soup_step` of ``page`` with ``found`` replaced by placeholders, then put back."""
    marks: dict[str, str] = {}
    reduced = page
    for number, (piece, scope) in enumerate(sorted(found, key=lambda f: -len(f[0]))):
        mark = f"<!--sendit-{pieces.nonce}-{number}-->"
        reduced = reduced.replace(piece, mark)
        written = pieces.written.get((piece, scope))
        if written is None:
            written = pieces.written[(piece, scope)] = soup_step(piece, scope=scope)
        marks[mark] = written
    stepped = soup_step(reduced, log)
    pattern = re.compile(f"<!--sendit-{pieces.nonce}-[0-9]+-->")
    return pattern.sub(lambda m: marks[m.group(0)], stepped)
