"""Fixtures shared by every suite: one tiny bootable Linux image per session, a private copy
per test (built by rehost.testkit from Debian packages, see scripts/build-tiny-linux)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import build_tiny_linux

TOOLS = ("losetup", "mount", "parted", "mkfs.ext4", "extlinux", "partx")


def _can_build() -> str | None:
    if os.geteuid() != 0:
        return "building the tiny Linux image needs root (losetup, mount)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (run scripts/install)"
    return None


@pytest.fixture(scope="session")
def tiny_linux_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's pristine image (marker ``initial``, power-off mode). Do not modify it."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    dest = tmp_path_factory.mktemp("tinylinux") / "base.img"
    started = time.monotonic()
    build_tiny_linux(dest)
    print(f"\ntiny Linux image built in {time.monotonic() - started:.2f}s")
    return dest


@pytest.fixture
def tiny_image(tiny_linux_base: Path, tmp_path: Path) -> Path:
    """A private copy of the session image that the test may change."""
    dest = tmp_path / "disk.img"
    shutil.copyfile(tiny_linux_base, dest)
    return dest


@pytest.fixture
def need_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (run scripts/install)")
