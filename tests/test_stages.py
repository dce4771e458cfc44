"""The pipeline declaration (run/stages.py): complete, and what reads it agrees with it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import SETTINGS
from sendit_helpers.run import cli
from sendit_helpers.run.stages import (
    EXECUTION_SETTINGS,
    PIPELINE,
    STAGES,
    Stage,
    downstream,
    markdown_table,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_read_by_a_stage_or_shapes_execution() -> None:
    declared = {name for spec in STAGES.values() for name in spec.settings}
    names = {s.name for s in SETTINGS}
    assert declared <= names, f"unknown settings declared: {sorted(declared - names)}"
    assert names - declared == EXECUTION_SETTINGS
    assert not declared & EXECUTION_SETTINGS


def test_pipeline_order_follows_upstream() -> None:
    assert PIPELINE == (Stage.INSPECT, Stage.DEIDENTIFY, Stage.REVIEW, Stage.UPLOAD)
    assert downstream(Stage.DEIDENTIFY) == [Stage.DEIDENTIFY, Stage.REVIEW, Stage.UPLOAD]
    assert downstream(Stage.UPLOAD) == [Stage.UPLOAD]


def test_products_are_layout_attributes_and_notebooks_exist() -> None:
    for spec in STAGES.values():
        assert spec.stage.source().is_file()
        assert spec.module.startswith("sendit_helpers.stages.")
        for product in spec.products:
            assert isinstance(getattr(BatchLayout, product), property), product


@pytest.mark.parametrize("stage", list(Stage))
def test_notebook_parameters_cell_is_the_declared_one(stage: Stage) -> None:
    nb = json.loads((ROOT / "notebooks" / stage.notebook).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert "".join(cells[0]["source"]).splitlines() == STAGES[stage].parameter_lines(), (
        "run python scripts/generate_from_stages.py"
    )


def test_architecture_table_is_the_declared_one() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert markdown_table() in doc, "run python scripts/generate_from_stages.py"


def test_commands_follow_the_declaration(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    for spec in STAGES.values():
        with pytest.raises(SystemExit):
            parser.parse_args([str(spec.stage), "--help"])
        shown = capsys.readouterr().out
        assert spec.stage.notebook in shown
        for option in spec.options:
            assert option.flag in shown
    args = parser.parse_args(["review", "b", "--work", "w", "--decisions", "d.csv"])
    assert cli.overrides_of(args)["REVIEW_DECISIONS"] == str(Path("d.csv").resolve())


@pytest.mark.parametrize("stage", list(Stage))
def test_notebook_is_narrative_and_one_call_per_code_cell(stage: Stage) -> None:
    nb = json.loads((ROOT / "notebooks" / stage.notebook).read_text())
    for number, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
            continue
        body = [
            node
            for node in ast.parse("".join(cell["source"])).body
            if not isinstance(node, ast.Import | ast.ImportFrom)
        ]
        where = f"{stage.notebook} cell {number}"
        assert len(body) == 1, f"{where}: {len(body)} statements; move the logic into a helper"
        assert isinstance(body[0], ast.Expr | ast.Assign), f"{where}: logic belongs in a helper"
