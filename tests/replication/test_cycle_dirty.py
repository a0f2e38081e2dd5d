"""Cycles fed by a change tracker read only the dirty extents and still produce exact points."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from rehost.disks import Extent, open_disk, probe
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import MemoryStorage

MiB = 1 << 20
SIZE = 32 * MiB


def _point_bytes(repo: Repository, point_id: str) -> bytes:
    p = repo.load_point_exact(point_id)
    return b"".join(d if d is not None else bytes(min(MiB, SIZE - o)) for o, d in iter_chunks(repo, p, 0))


@pytest.mark.parametrize("granularity", [4096, 65536])
def test_dirty_extents_cycle(tmp_path: Path, granularity: int) -> None:
    rng = random.Random(granularity)
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
        f.write(rng.randbytes(8 * MiB))
    repo = Repository.create(MemoryStorage())
    cache = DigestCache(tmp_path / "cache")
    with open_disk(probe(disk)) as d:
        first = run_cycle(repo, cache, "m", [(0, d)], parent=None)
    writes = [rng.randrange(SIZE // 4096) * 4096 for _ in range(50)]
    with open(disk, "r+b") as f:
        for off in writes:
            f.seek(off)
            f.write(rng.randbytes(4096))
        f.seek(2 * MiB)
        f.write(bytes(8192))  # data that became zeros
    dirty_offsets = {*(o - o % granularity for o in writes), 2 * MiB - 2 * MiB % granularity}
    dirty = [Extent(o, granularity) for o in sorted(dirty_offsets)]
    if granularity < 8192:
        dirty.append(Extent(2 * MiB + 4096, 4096))
    with open_disk(probe(disk)) as d:
        second = run_cycle(repo, cache, "m", [(0, d)], parent=first.point, changed={0: dirty})
    assert second.digest_source[0] == "cache+dirty-extents"
    assert second.bytes_read <= sum(e.length for e in dirty)  # only dirty extents were read
    assert 0 < second.changed_bytes <= 52 * 4096
    expected = disk.read_bytes()
    assert hashlib.sha256(_point_bytes(repo, second.point.id)).digest() == hashlib.sha256(expected).digest()
    assert _point_bytes(repo, first.point.id) != expected
