"""Shared fixtures for disk tests: one sparse raw master per session (see images.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .images import make_master


@pytest.fixture(scope="session")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB sparse raw image with random data regions; do not modify it."""
    path = tmp_path_factory.mktemp("master") / "master.raw"
    make_master(path)
    return path


@pytest.fixture(scope="session")
def master_bytes(master: Path) -> bytes:
    return master.read_bytes()
