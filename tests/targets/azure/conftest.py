"""A container per test; the session's Azurite and Resource Manager fake come from
tests/conftest.py (one of each per run, shared with the repository and conformance tests)."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def container() -> str:
    return "t" + secrets.token_hex(6)
