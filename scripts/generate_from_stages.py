"""Write what the pipeline declaration (``sendit_helpers/run/stages.py``) gives.

- the parameters cell of every notebook under ``notebooks/`` (the shared lines and the
  stage's own parameters, :meth:`StageSpec.parameter_lines`);
- the stage table of ``docs/architecture.md`` (between its ``stages:begin`` and
  ``stages:end`` markers, :func:`markdown_table`).

Run ``python scripts/generate_from_stages.py`` after changing the declaration;
``--check`` only says what differs (exit status 1).  ``tests/test_stages.py`` fails
when a notebook or the table differs from the declaration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sendit_helpers.run.stages import STAGES, markdown_table

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- stages:begin (scripts/generate_from_stages.py) -->", "<!-- stages:end -->"


def notebook_text(path: Path, lines: list[str]) -> str:
    """The notebook at ``path`` with its parameters cell made of ``lines``."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = [f"{line}\n" for line in lines[:-1]] + lines[-1:]
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def doc_text(text: str) -> str:
    """``docs/architecture.md``'s text with the stage table between the markers."""
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the generated parts; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say what differs")
    args = parser.parse_args(argv)
    wanted = {
        ROOT / "notebooks" / spec.notebook: notebook_text(
            ROOT / "notebooks" / spec.notebook, spec.parameter_lines()
        )
        for spec in STAGES.values()
    }
    doc = ROOT / "docs" / "architecture.md"
    wanted[doc] = doc_text(doc.read_text())
    differ = [path for path, text in wanted.items() if path.read_text() != text]
    for path in differ:
        if args.check:
            print(f"{path.relative_to(ROOT)} differs from sendit_helpers/run/stages.py")
        else:
            path.write_text(wanted[path])
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
