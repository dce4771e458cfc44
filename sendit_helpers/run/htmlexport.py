"""The HTML exporter of the executed notebooks' copies, and what it keeps from copy to copy.

:func:`~sendit_helpers.run.runner.export_html` writes what nbconvert's
``HTMLExporter`` writes (code left out, no script from the network).  The
exporter made here (one per thread, :func:`exporter`) does the same work with less:

- each markdown cell is rendered once per thread (:func:`cached_markdown`: the
  stage notebooks' narrative is the same for every batch);
- the notebook is validated once, after the preprocessors, not after each;
- nbconvert's last step parses the whole page with BeautifulSoup (to add ``alt``
  to images and ``tabindex`` to the cells) and writes it out again.  Here the
  images' base64 data (a montage is hundreds of KB of one attribute value, which
  the parser scans and the writer escapes character by character) is set aside
  first, a short placeholder in its place, and put back after
  (:func:`soup_step`): base64 holds no character either of them changes, so the
  page is the same, byte for byte.
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
    "NETWORK_URLS",
    "cached_markdown",
    "exporter",
    "offline",
    "soup_step",
    "warm_up",
]

#: Markdown cells kept per thread; past that, the thread starts afresh.
MARKDOWN_CACHE_SIZE = 512
#: nbconvert's settings naming a script to load from the network (those of the installed
#: version are emptied by :func:`offline`).
NETWORK_URLS = (
    "widget_renderer_url",
    "require_js_url",
    "mathjax_url",
    "mermaid_js_url",
    "mermaid_layout_elk_js_url",
)
#: Alternative text nbconvert gives an image without one.
_NO_ALT = "No description has been provided for this image"

_LOCAL = threading.local()


def cached_markdown(render: Any) -> Any:
    """``render`` (an HTML exporter's ``markdown2html`` filter) remembering its results.

    The stage notebooks' narrative is the same for every batch: each markdown
    cell is rendered once per thread, not once per copy.  A cell with
    attachments is rendered each time (its images are part of it).
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

    class Exporter(nbconvert.HTMLExporter):  # type: ignore[misc]
        """``HTMLExporter`` whose last step sets the images' base64 data aside."""

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
            page, resources = template_exporter.TemplateExporter.from_notebook_node(
                self, nb, resources, **kw
            )
            return soup_step(page, self.log), resources

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
    made.register_filter("markdown2html", cached_markdown(made.markdown2html))
    return offline(made)


def offline(made: Any) -> Any:
    """``made`` (an nbconvert HTML exporter) with no script URL (:data:`NETWORK_URLS`):
    a page it writes loads nothing from the network."""
    for url in NETWORK_URLS:
        if made.has_trait(url):
            setattr(made, url, "")
    return made


def warm_up() -> None:
    """Make this thread's exporter and write one small page with it, to throw away.

    The first HTML copy of a process cost about 0.75 s more than the next
    ones (the exporter and its Jinja templates made, the page's CSS read and
    the templates compiled on first use): at the end of a one-batch
    ``sendit deidentify``, a fifth of the command.  Done while the kernels
    start (:func:`~sendit_helpers.run.runner.warm_html`), it is off that path.
    The page holds a heading, a paragraph and a small table, nothing of a batch.
    """
    nbformat: Any = importlib.import_module("nbformat")
    nb = nbformat.v4.new_notebook()
    table = nbformat.v4.new_output(
        "execute_result",
        data={"text/plain": "  n\n0 1", "text/html": "<table><tr><td>1</td></tr></table>"},
        execution_count=1,
    )
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Warm-up\n\nA *page* to throw away."),
        nbformat.v4.new_code_cell("1", outputs=[table], execution_count=1),
    ]
    exporter().from_notebook_node(nb)


#: A base64 data URI (the images of a page): no character of it is one the HTML parser or
#: BeautifulSoup's writer changes (no ``&``, ``<``, ``>``, quote or white space).
_DATA_URI = re.compile(r"data:[a-z]+/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]+")
#: Data URIs shorter than this stay in place (setting them aside costs more than it saves).
_ASIDE_FROM = 512


def soup_step(page: str, log: Any = None) -> str:
    """nbconvert's last step (``HTMLExporter.from_notebook_node``'s BeautifulSoup pass).

    The same page, byte for byte, as nbconvert's step writes: every long base64
    data URI is replaced by a placeholder (``data:sendit-<nonce>-<n>``, of the same
    kind of characters) before the page is parsed, and put back once it is written.
    """
    nonce = _nonce()
    aside: list[str] = []

    def set_aside(found: re.Match[str]) -> str:
        if len(found.group(0)) < _ASIDE_FROM:
            return found.group(0)
        aside.append(found.group(0))
        return f"data:sendit-{nonce}-{len(aside) - 1}"

    if nonce not in page:
        page = _DATA_URI.sub(set_aside, page)
    html_module: Any = importlib.import_module("nbconvert.exporters.html")
    soup = html_module.BeautifulSoup(page, features="html.parser")  # nbconvert's own
    missing_alt = 0
    for elem in soup.select("img:not([alt])"):
        elem.attrs["alt"] = _NO_ALT
        missing_alt += 1
    if missing_alt and log is not None:
        log.warning("Alternative text is missing on %s image(s).", missing_alt)
    for elem in soup.select(".jp-Notebook div.jp-Cell-inputWrapper"):
        elem.attrs["tabindex"] = "0"
    for elem in soup.select(".jp-Notebook div.jp-OutputArea-output"):
        elem.attrs["tabindex"] = "0"
    written = str(soup)
    if not aside:
        return written
    back = re.compile(f"data:sendit-{nonce}-([0-9]+)")
    return back.sub(lambda m: aside[int(m.group(1))], written)


def _nonce() -> str:
    """This thread's placeholder mark (random: no page holds it)."""
    mark = getattr(_LOCAL, "nonce", None)
    if mark is None:
        mark = _LOCAL.nonce = uuid.uuid4().hex
    return str(mark)
