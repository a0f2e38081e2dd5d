"""One Azurite per test run (a real blob service) and a container per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from rehost.testkit.azure_arm import ArmFake
from rehost.testkit.azurite import Azurite, azurite_bin


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    if azurite_bin() is None:
        pytest.skip("azurite is not installed (run scripts/install)")
    with Azurite() as az:
        yield az


@pytest.fixture
def container() -> str:
    return "t" + secrets.token_hex(6)


@pytest.fixture(scope="session")
def arm_fake(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmFake]:
    """One Resource Manager contract fake (a test fake, not Azure) per test run, on the
    session's Azurite; each test seeds a resource group of its own."""
    with ArmFake(tmp_path_factory.mktemp("armfake"), azurite) as fake:
        yield fake
