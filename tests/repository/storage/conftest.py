"""Every ``Storage`` the conformance suite holds to the contract, as one ``storage`` fixture.

Adding a backend (s3, azure) means adding one entry to ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.repository.storage import (
    FaultyStorage,
    LocalStorage,
    MemoryStorage,
    RetryingStorage,
    Storage,
    ThrottledStorage,
)
from rehost.repository.storage.faults import random_failures


def _flaky_retrying(store_before_failing: bool) -> Storage:
    # 30 % of calls fail; 20 tries make giving up a 0.3**20 (~3e-11) event per call.
    faulty = FaultyStorage(
        MemoryStorage(),
        fail_when=random_failures(0.3, seed=7),
        store_before_failing=store_before_failing,
    )
    return RetryingStorage(faulty, attempts=20, base_delay=0.0, max_delay=0.0)


BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "local": lambda tmp: LocalStorage.create(tmp / "repo"),
    "memory": lambda tmp: MemoryStorage(),
    "faulty(memory)": lambda tmp: FaultyStorage(MemoryStorage()),
    "retrying(memory)": lambda tmp: RetryingStorage(MemoryStorage()),
    "throttled(memory)": lambda tmp: ThrottledStorage(MemoryStorage(), 1 << 30),
    "retrying(flaky memory)": lambda tmp: _flaky_retrying(store_before_failing=False),
    "retrying(flaky memory, lost replies)": lambda tmp: _flaky_retrying(True),
    # ReadOnlyStorage refuses the writes this suite needs; test_storage_wrappers.py covers it.
}


@pytest.fixture(params=list(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()
