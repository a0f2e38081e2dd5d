"""One Azurite per test run (a real blob service), a container per test, and recovery points
made by the real replication cycle from raw image files."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.testkit.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite_bin


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    if azurite_bin() is None:
        pytest.skip("azurite is not installed (run scripts/install)")
    with Azurite() as az:
        yield az


@pytest.fixture
def container() -> str:
    return "t" + secrets.token_hex(6)


def key_credential() -> dict[str, str]:
    return {"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}


def scatter(path: Path, fraction: float, seed: int, block: int = 4096) -> int:
    """Overwrite ``fraction`` of the 4 KiB blocks of ``path`` at random places; bytes changed."""
    rng = random.Random(seed)
    size = path.stat().st_size
    blocks = rng.sample(range(size // block), int(size // block * fraction))
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * block)
            f.write(rng.randbytes(block))
    return len(blocks) * block
