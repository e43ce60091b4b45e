"""Tests that drive an outside tool (Chromium and Playwright, a compose CLI, the compose-spec schema, optional
packages) skip where it is missing, and fail instead where LRKV_TOOLS_REQUIRED is set: CI (`.ci/run`) installs
every tool and sets it."""
import importlib
import os
from typing import NoReturn

import pytest

TOOLS_REQUIRED = bool(os.environ.get("LRKV_TOOLS_REQUIRED"))


def missing_tool(message: str) -> NoReturn:
    """Skip the calling test for a missing tool, or fail it where every tool is required."""
    if TOOLS_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def import_tool(module: str):
    """The module, or `missing_tool` naming it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing_tool(f"needs the {module} package (pip install -e '.[test]')")
