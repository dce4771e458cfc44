"""Tests and benchmarks use only public names of sendit_helpers (issue #13, Deliver 5).

Read with ``ast``: ``from sendit_helpers... import _name`` and ``module._name`` (where
``module`` was imported from sendit_helpers) in ``tests/`` and ``benchmarks/``.  The
per-file engine is public (:mod:`sendit_helpers.stages.engine`); a test that needs
something private should test through a public function, or the name should become
public.  ``KNOWN`` lists the uses left from before this rule, to be made public one
by one; it may only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: ``(file, module alias, private name)`` still used; remove an entry when it is fixed.
KNOWN: set[tuple[str, str, str]] = set()


def _private_uses(path: Path, root: Path = ROOT) -> Iterator[tuple[str, str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ours: set[str] = set()  # names bound to something imported from sendit_helpers
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sendit_helpers"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield rel, node.module or "", alias.name
                ours.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sendit_helpers"):
                    ours.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in ours
        ):
            yield rel, node.value.id, node.attr


def _all_uses() -> set[tuple[str, str, str]]:
    files = sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
    return {use for path in files for use in _private_uses(path)}


def test_no_new_private_names_in_tests_and_benchmarks() -> None:
    new = sorted(_all_uses() - KNOWN)
    assert not new, (
        f"tests/benchmarks use private names of sendit_helpers: {new}; "
        "test through a public function or make the name public"
    )


def test_known_private_uses_only_shrink() -> None:
    gone = sorted(KNOWN - _all_uses())
    assert not gone, f"no longer used, remove from KNOWN: {gone}"


def test_the_scanner_finds_both_forms(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from sendit_helpers.stages import engine\n"
        "from sendit_helpers.stages.engine import _probe\n"
        "engine._hidden\n"
        "engine.public\n"
    )
    found = set(_private_uses(probe, tmp_path))
    rel = "probe.py"
    assert found == {
        (rel, "sendit_helpers.stages.engine", "_probe"),
        (rel, "engine", "_hidden"),
    }
