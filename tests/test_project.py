"""The project's shape: notebooks without outputs, one parameters cell, dependencies in step."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_inspect", "02_deidentify", "03_review_phi", "04_upload", "05_query"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_clean_with_one_parameters_cell(name: str) -> None:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in code), (
        "outputs can hold PHI"
    )
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    for line in "".join(params[0]["source"]).splitlines():
        assert re.match(r"^\w+: \w+ = .+  # .+$", line), f"parameter without type or help: {line}"
    assert nb["cells"][0]["cell_type"] == "markdown", "narrative first"


def _names(requirements: list[str]) -> set[str]:
    names = (re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in requirements)
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}  # PEP 503: jupyter_client


def test_environment_yml_in_step_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    for extra in ("orthanc", "google", "dask", "ocr", "review"):
        wanted |= _names(project["optional-dependencies"][extra])
    wanted = {w.replace("dask", "dask") for w in wanted}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= _names([d for d in dep["pip"] if not d.startswith("-")])
        else:
            listed |= _names([dep])
    assert wanted <= listed, f"environment.yml lacks {sorted(wanted - listed)}"
    assert any(
        str(d).startswith("-e .")
        for dep in env["dependencies"]
        if isinstance(dep, dict)
        for d in dep["pip"]
    )


def test_quick_start_and_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_lint_and_types() -> None:
    """ruff and mypy --strict stay clean (pydicom and highdicom hold themselves to this too)."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    ruff = subprocess.run(
        [str(bin_dir / "ruff"), "check", "sendit_helpers", "tests", "benchmarks", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ruff.returncode == 0, ruff.stdout[-3000:]
    mypy = subprocess.run(
        [str(bin_dir / "mypy")], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert mypy.returncode == 0, mypy.stdout[-3000:]
