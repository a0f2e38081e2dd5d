"""The native modules (setup.py) in tests: where ``REHOST_NATIVE_REQUIRED`` is set (CI, via
scripts/test) a module that was not built fails the test instead of skipping it."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def native_module(name: str, needs: str) -> ModuleType:
    """``rehost.<name>``, the native module; ``needs``: the packages its build needs."""
    try:
        return importlib.import_module(f"rehost.{name}")
    except ImportError:
        if os.environ.get("REHOST_NATIVE_REQUIRED"):
            pytest.fail(f"rehost.{name} is not built: ./scripts/install needs {needs}")
        pytest.skip(f"rehost.{name} is not built here")
