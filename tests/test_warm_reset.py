"""Between two notebooks a warm kernel forgets the first and freezes what it keeps (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import gc
from IPython.core.interactiveshell import InteractiveShell
from sendit_helpers.run.cellrunner import reset_kernel

shell = InteractiveShell.instance()
shell.run_cell("secret_of_batch_one = 42")
assert gc.get_freeze_count() == 0
reset_kernel()
assert "secret_of_batch_one" not in shell.user_ns
frozen = gc.get_freeze_count()
assert frozen > 0, frozen
shell.run_cell("import sys; sys.kept = [[i] for i in range(5000)]; made_later = 1")
reset_kernel()
assert "made_later" not in shell.user_ns
assert gc.get_freeze_count() >= frozen + 5000, "what a notebook left in use is frozen too"
print("ok")
"""


def test_reset_kernel_clears_the_namespace_and_freezes_what_is_kept() -> None:
    """A fresh interpreter: the freeze must not leak into the test process."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


DEIDENTIFY = """
import gc, sys
from pathlib import Path
from sendit_helpers.run import upstream
from sendit_helpers.run.cellrunner import reset_kernel
from sendit_helpers.run.runner import open_batch
from sendit_helpers.samples import synthetic
from tests.helpers_cli import TINY

root, warm = Path(sys.argv[1]), sys.argv[2] == "warm"
synthetic.make_batch(root / "in" / "b", TINY)
layout, settings = open_batch(root / "in" / "b", root / "work", [], {"PROGRESS": False})
if warm:
    reset_kernel()  # what a warm kernel does before each notebook
frozen = gc.get_freeze_count()
assert (frozen > 0) == warm, frozen
upstream.deidentify(layout, settings)
if warm:
    assert gc.get_freeze_count() >= frozen, "de-identification unfroze what the kernel froze"
else:
    assert gc.get_freeze_count() == 0, "de-identification left objects frozen"
print("ok")
"""


@pytest.mark.parametrize("kernel", ["warm", "plain"])
def test_deidentify_keeps_what_was_frozen_and_freezes_nothing_else(
    tmp_path: Path, kernel: str
) -> None:
    """A warm kernel's frozen heap stays frozen through a de-identification, and a plain
    process gets nothing frozen from it (a fresh interpreter each)."""
    done = subprocess.run(
        [sys.executable, "-c", DEIDENTIFY, str(tmp_path), kernel],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "SENDIT_SITE_SECRET": "6763667265657a65"},
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
