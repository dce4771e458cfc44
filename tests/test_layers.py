"""The package's layers (issue #13): every import, read with ``ast``, points down, never up.

``core`` imports nothing of ours outside itself; ``deid``, ``pseudonyms`` and ``targets``
import ``core``; ``stages`` import those; ``run`` imports the stages; ``samples`` (generated
batches) imports only ``core`` and ``deid`` and is never imported by production code, except
lazily (inside a function) by ``run``, for the demo batch a notebook opens when given none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sendit_helpers"
LOWER = {"core", "deid", "pseudonyms", "targets"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "deid": {"core", "deid"},
    "pseudonyms": {"core", "pseudonyms"},
    "targets": {"core", "targets"},
    "stages": LOWER | {"stages"},
    "run": LOWER | {"stages", "run"},
    "samples": {"core", "deid", "samples"},
}
LAZY_ONLY = {("run", "samples")}  # run.runner.open_batch: the demo batch, imported on use


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def _imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(absolute module imported, line, whether at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = rel[:-1]  # the package holding the module (or, for __init__.py, itself)
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "sendit_helpers":  # from sendit_helpers import core, ... / __version__
                for alias in node.names:
                    name = alias.name
                    target = module if name.startswith("__") else f"sendit_helpers.{name}"
                    yield target, node.lineno, id(node) in top
            else:
                yield module, node.lineno, id(node) in top


def _edges() -> list[tuple[str, str, str, bool]]:
    """(importing layer, imported layer, where, module level) for imports of ``sendit_helpers``."""
    return _edges_of(PACKAGE)


@lru_cache(maxsize=4)
def _edges_of(package: Path) -> list[tuple[str, str, str, bool]]:
    return list(_walk(package))


def _walk(package: Path) -> Iterator[tuple[str, str, str, bool]]:
    for path in sorted(package.rglob("*.py")):
        for module, line, module_level in _imports(path):
            parts = module.split(".")
            if parts[0] != "sendit_helpers" or len(parts) == 1:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            yield _layer(path), parts[1], where, module_level


def test_every_module_is_in_a_layer() -> None:
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert flat == [], f"modules outside the layer folders: {flat}"
    folders = {p.parent.relative_to(PACKAGE).parts[0] for p in _modules() if p.parent != PACKAGE}
    assert folders == set(ALLOWED)
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc, f"sendit_helpers/{layer}/__init__.py has no docstring"


def test_no_import_goes_up() -> None:
    wrong = []
    for layer, imported, where, module_level in _edges():
        if imported not in ALLOWED:
            wrong.append(f"{where}: not a layer (old flat path?)")
        elif layer == "":
            wrong.append(f"{where}: the package root imports nothing of ours")
        elif imported not in ALLOWED[layer]:
            if (layer, imported) in LAZY_ONLY and not module_level:
                continue
            wrong.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer])}")
    assert wrong == []


def test_only_run_reaches_samples_and_lazily() -> None:
    reach = [
        (where, module_level)
        for layer, imported, where, module_level in _edges()
        if imported == "samples" and layer != "samples"
    ]
    assert [w for w, level in reach if level or not w.startswith("sendit_helpers/run/")] == []


def test_no_cycles_between_layers() -> None:
    graph: dict[str, set[str]] = {layer: set() for layer in ALLOWED}
    for layer, imported, _, _ in _edges():
        if layer and layer != imported and imported in graph:
            graph[layer].add(imported)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return seen

    cycles = [layer for layer in graph if layer in reach(layer)]
    assert cycles == [], f"layers in an import cycle: {cycles} ({graph})"


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from sendit_helpers.stages import inspect\n", "core may import only"),
        ("def f():\n    from ..run import cli\n", "core may import only"),
        ("from sendit_helpers import errors\n", "not a layer"),
    ],
)
def test_the_check_sees_an_upward_import(
    source: str, found: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walker itself: an upward import (also a lazy, relative one) and an old flat path."""
    fake = tmp_path / "sendit_helpers"
    for layer in ALLOWED:
        (fake / layer).mkdir(parents=True)
        (fake / layer / "__init__.py").write_text('"""Layer."""\n')
    (fake / "__init__.py").write_text("")
    (fake / "core" / "bad.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    with pytest.raises(AssertionError, match=found):
        test_no_import_goes_up()
