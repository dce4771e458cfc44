"""The HTML exporter of the executed notebooks' copies, and what it keeps from copy to copy.

:func:`~sendit_helpers.run.runner.export_html` writes nbconvert's ``HTMLExporter``
page (code left out, no script from the network).  The exporter made here (one
per thread, :func:`exporter`) does the same work with less:

- each markdown cell is rendered once per thread (:func:`cached_markdown`: the
  stage notebooks' narrative is the same for every batch);
- the notebook is validated once, after the preprocessors, not after each, and
  not deep-copied first (:func:`owned`: it was read for the copy alone);
- nbconvert's last step parses the whole page with BeautifulSoup (to add ``alt``
  to images and ``tabindex`` to the cells) and writes it out again from its tree.
  Here those attributes are added where the template wrote the tags, by one
  scan (:func:`soup_step`, 4 ms a page instead of 26): BeautifulSoup reads the
  page as the same document, and writes it as nbconvert's, byte for byte.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import threading
from typing import Any

__all__ = [
    "MARKDOWN_CACHE_SIZE",
    "NETWORK_URLS",
    "cached_markdown",
    "exporter",
    "offline",
    "owned",
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
        """``HTMLExporter`` that exports the notebook it is given and adds its last step's
        attributes without re-writing the page."""

        def from_notebook_node(self, nb: Any, resources: Any = None, **kw: Any) -> Any:
            # HTMLExporter.from_notebook_node up to its BeautifulSoup step (nbconvert 7);
            # the notebook is the caller's to give away: exported as it is, not deep-copied
            nb = owned(nb)
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


def owned(nb: Any) -> Any:
    """``nb`` as a notebook an exporter changes in place instead of deep-copying it first.

    nbconvert's exporters deep-copy every notebook before their preprocessors
    (a tenth of an HTML copy's cost: the montages' base64 strings, every output's
    dict).  A copy's notebook has just been read from its file for that copy alone,
    so it is given away: the result shares ``nb``'s cells, which the export
    changes.
    """
    return _owned_type()(nb)


@functools.cache
def _owned_type() -> type:
    notebooknode: Any = importlib.import_module("nbformat.notebooknode")

    class Owned(notebooknode.NotebookNode):  # type: ignore[misc]
        """A notebook whose deep copy is itself."""

        def __deepcopy__(self, memo: Any) -> Any:
            return self

    return Owned


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


#: One token of a page that can hold a start tag, in the order the HTML parser reads them:
#: a comment, a script or style element (its text is not markup), or a start tag (its
#: attributes may hold ``>`` inside quotes).  Anything else is passed over.
_TOKEN = re.compile(
    r"<!--.*?-->"
    r"|<(?P<raw>script|style)\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>.*?</(?P=raw)\s*>"
    r"|<(?P<tag>[a-zA-Z][^\s/>]*)(?P<attrs>(?:[^>\"']|\"[^\"]*\"|'[^']*')*)>",
    re.S | re.I,
)
#: One attribute of a start tag: its name and, when it has one, its value (quoted or not).
_ATTR = re.compile(r"""([^\s=/>"'][^\s=/>"']*)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
#: The classes of the ``<div>`` that get ``tabindex="0"`` below an element of class ``jp-Notebook``.
_TABBED = frozenset({"jp-Cell-inputWrapper", "jp-OutputArea-output"})


def soup_step(page: str, log: Any = None) -> str:
    """What nbconvert's last step (``HTMLExporter.from_notebook_node``'s BeautifulSoup pass) adds.

    That step gives every ``<img>`` without one an ``alt`` text and every cell's
    input wrapper and output under the ``.jp-Notebook`` element ``tabindex="0"``,
    then writes the whole page again from its tree: a third of an HTML copy's cost,
    most of it in parsing cells' tags.  Here the same attributes are added to the
    start tags where they are, by one scan of the page (comments, scripts and
    styles skipped as the parser skips them), and the rest of the page is left as
    the template wrote it.  BeautifulSoup reads both as the same document: written
    by it, this page is nbconvert's, byte for byte (a test checks it).
    """
    missing_alt = 0
    inside = False

    def mark(found: re.Match[str]) -> str:
        nonlocal missing_alt, inside
        name = found.group("tag")
        if name is None:
            return found.group(0)
        attrs = found.group("attrs")
        named = {m.group(1).lower(): m for m in _ATTR.finditer(attrs)}
        lowered = name.lower()
        if lowered == "img" and "alt" not in named:
            missing_alt += 1
            return _with(found, attrs, f' alt="{_NO_ALT}"')
        classes = _classes(named)
        if lowered == "div" and inside and classes & _TABBED:
            held = named.get("tabindex")
            if held is None:
                return _with(found, attrs, ' tabindex="0"')
            start, end = held.span()
            attrs = f'{attrs[:start]}tabindex="0"{attrs[end:]}'
            return f"<{name}{attrs}>"
        if "jp-Notebook" in classes:
            inside = True
        return found.group(0)

    marked = _TOKEN.sub(mark, page)
    if missing_alt and log is not None:
        log.warning("Alternative text is missing on %s image(s).", missing_alt)
    return marked


def _classes(named: dict[str, re.Match[str]]) -> set[str]:
    """The class names of a start tag's ``class`` attribute."""
    held = named.get("class")
    if held is None or held.group(2) is None:
        return set()
    return set(held.group(2).strip("\"'").split())


def _with(found: re.Match[str], attrs: str, added: str) -> str:
    """The start tag ``found`` with ``added`` after its last attribute (before a closing ``/``)."""
    body = attrs.rstrip()
    closing = body.endswith("/")
    if closing:
        body = body[:-1]
    return f"<{found.group('tag')}{body}{added}{' /' if closing else ''}>"
