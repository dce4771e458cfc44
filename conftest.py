"""Session setup shared by the tests and the notebook runs (nbval).

The notebooks' default parameters use the demo sample batch; here it is made
in a temporary folder (``SENDIT_DEMO_DIR``) so test runs never touch ``demo/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_servers"]


def pytest_configure(config: pytest.Config) -> None:
    if "SENDIT_DEMO_DIR" not in os.environ:
        os.environ["SENDIT_DEMO_DIR"] = tempfile.mkdtemp(prefix="sendit-demo-")
    os.environ.setdefault("PROGRESS", "false")
    os.environ.setdefault("OCR_SCREEN", "off")  # tests that want OCR turn it on explicitly
    os.environ.setdefault("MPLBACKEND", "Agg")
    Path(os.environ["SENDIT_DEMO_DIR"]).mkdir(parents=True, exist_ok=True)
