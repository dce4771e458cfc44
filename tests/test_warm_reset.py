"""Between two notebooks a warm kernel forgets the first and freezes its heap once (issue 15)."""

from __future__ import annotations

import subprocess
import sys

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
assert gc.get_freeze_count() < frozen + 5000, "frozen once per kernel, not at every reset"
print("ok")
"""


def test_reset_kernel_clears_the_namespace_and_freezes_once() -> None:
    """A fresh interpreter: the freeze must not leak into the test process."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
