"""Every ``Storage`` the conformance suite holds to the contract, as one ``storage`` fixture.

Adding a backend (s3, azure) means adding one entry to ``BACKENDS``. The object stores,
which need a real server, run the same tests from test_s3.py and test_azure_blob.py with
the session services below instead.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.disks import open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.check import check
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
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


# -- real object stores for test_s3.py and test_azure_blob.py ------------------------------
# The session's one SeaweedFS and one Azurite come from tests/conftest.py.


MiB = 1 << 20
#: (offset, length) of the random data in the test disk; the rest is holes (never stored).
DISK_DATA = [(0, 3 * MiB + 5), (5 * MiB, 1 * MiB), (9 * MiB - 4096, 2 * MiB)]
DISK_SIZE = 12 * MiB


@pytest.fixture
def backup_and_restore(tmp_path: Path) -> Callable[[Callable[[], Storage]], None]:
    """Check a whole repository on a backend: ``Repository.create``, a full and a delta cycle
    of a small disk image, then, through a fresh open of the storage, both points restored
    byte for byte and ``check --read-data`` clean. ``open_backend`` opens the storage."""

    def run(open_backend: Callable[[], Storage]) -> None:
        rng = random.Random(11)
        disk = tmp_path / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
            for offset, length in DISK_DATA:
                f.seek(offset)
                f.write(rng.randbytes(length))
        first_image = disk.read_bytes()
        writer_repo = Repository.create(open_backend())
        cache = DigestCache(tmp_path / "digests")
        with open_disk(probe(disk)) as d:
            first = run_cycle(writer_repo, cache, "m1", [(0, d)], parent=None).point
        with open(disk, "r+b") as f:  # change 1 MiB across a data/hole border
            f.seek(4 * MiB - 512 * 1024)
            f.write(rng.randbytes(MiB))
        with open_disk(probe(disk)) as d:
            second = run_cycle(writer_repo, cache, "m1", [(0, d)], parent=first).point
        writer_repo.close()

        reader = Repository.open(open_backend())
        try:
            reader.load_index()
            assert {p.id for p in reader.list_points("m1")} == {first.id, second.id}
            for point, image in ((first, first_image), (second, disk.read_bytes())):
                got = b"".join(
                    data if data is not None else bytes(min(MiB, DISK_SIZE - offset))
                    for offset, data in iter_chunks(reader, reader.load_point_exact(point.id), 0)
                )
                assert hashlib.sha256(got).hexdigest() == hashlib.sha256(image).hexdigest()
            assert check(reader, read_data=True).ok
        finally:
            reader.close()

    return run
