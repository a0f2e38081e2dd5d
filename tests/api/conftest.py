"""Fixtures: a portal over a real vault (target ``here``, machine ``web`` replicated once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.portal import Portal, make_disk, make_vault, portal_for


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    tokens = make_vault(tmp_path, make_disk(tmp_path / "disk.raw"))
    with portal_for(tmp_path, tokens) as p:
        yield p
