"""A policy's bandwidth caps what a cycle reads from the source, and the point is still exact."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from rehost.disks import open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.replication.throttle import ThrottledDisk, throttled
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import MemoryStorage
from rehost.repository.storage.throttle import TokenBucket

MiB = 1 << 20


class FakeTime:
    """The bucket's clock: sleeping advances it (no real waiting, exact accounting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def test_reads_are_paced_at_the_limit_and_the_point_is_exact(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    rng = random.Random(3)
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
        f.write(rng.randbytes(6 * MiB))  # 6 MiB of data, 10 MiB of hole (never read)
        f.seek(12 * MiB)
        f.write(rng.randbytes(2 * MiB))
    t = FakeTime()
    bucket = TokenBucket(1 * MiB, burst=0, clock=t.clock, sleep=t.sleep)
    repo = Repository.create(MemoryStorage())
    with open_disk(probe(disk)) as d:
        r = run_cycle(repo, DigestCache(tmp_path / "c"), "m", [(0, ThrottledDisk(d, bucket))], parent=None)
    assert r.bytes_read == 8 * MiB
    assert abs(t.slept - 8.0) < 0.01  # 8 MiB read at 1 MiB/s: 8 s of pacing, holes are free
    got = b"".join(
        x if x is not None else bytes(min(MiB, 16 * MiB - o)) for o, x in iter_chunks(repo, r.point, 0)
    )
    assert hashlib.sha256(got).digest() == hashlib.sha256(disk.read_bytes()).digest()


def test_one_limit_for_all_disks_and_none_means_untouched(tmp_path: Path) -> None:
    disks = [(0, object()), (1, object())]
    assert throttled(disks, None) == disks  # type: ignore[arg-type]
    wrapped = throttled(disks, 5 * MiB)  # type: ignore[arg-type]
    assert [i for i, _ in wrapped] == [0, 1]
    buckets = {id(d.bucket) for _, d in wrapped if isinstance(d, ThrottledDisk)}
    assert len(buckets) == 1  # a machine's disks share the cycle's limit
