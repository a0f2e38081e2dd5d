"""PointReader: random reads of a recovery point equal a front-to-back restore, byte for byte.

Points are made with the real code: ``put_blob``/``save_point`` for hand-made maps with odd
shapes (unaligned entries, offsets inside blobs, zero entries, an unaligned disk end), and
``run_cycle`` over a real sparse image for a full point and a delta on top of it.
"""

from __future__ import annotations

import itertools
import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rehost.disks import open_disk, probe
from rehost.disks.extent import Extent
from rehost.errors import IntegrityError, NotFound
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.index import Index
from rehost.repository.manifest import Consistency, DiskMap, MapEntry, RecoveryPoint
from rehost.repository.point_reader import PointReader
from rehost.repository.repository import Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import FaultyStorage, MemoryStorage
from rehost.repository.storage.base import Kind
from tests.disks.images import make_master

MiB = 1 << 20


def _point(repo: Repository, size: int, entries: list[MapEntry], disk: int = 0) -> RecoveryPoint:
    return repo.save_point(
        RecoveryPoint(
            machine="m", time=datetime.now(UTC).isoformat(), consistency=Consistency.CRASH,
            parent=None, sequence=0, disks=[DiskMap(disk, size, None, entries)],
        )
    )


def _random_point(
    repo: Repository, seed: int = 1, *, zero_entries: bool = True
) -> tuple[RecoveryPoint, bytes]:
    """A hand-made map with every shape a resolved map can have, and the disk it describes.

    Entries start and end anywhere (not block-aligned), read from the middle of blobs
    larger than the entry (as ``overlay`` cuts make them), share blobs, include zero
    entries (the format allows them; ``Repository.iter_disk`` does not read them), sit
    next to each other or leave gaps, and the disk ends off a block boundary with data up
    to its last byte.
    """
    rng = random.Random(seed)
    size = 6 * MiB + 3 * 4096 + 123
    disk = bytearray(size)
    blobs = [rng.randbytes(rng.choice([4096, 65536, MiB, rng.randrange(1, MiB)])) for _ in range(12)]
    ids = [repo.put_blob(b) for b in blobs]
    entries: list[MapEntry] = []
    pos = 0
    while pos < size:
        pos += rng.choice([0, 0, rng.randrange(1, 5000), rng.randrange(1, 2 * MiB)])
        if pos >= size:
            break
        k = rng.randrange(len(blobs))
        boff = rng.randrange(len(blobs[k]))
        n = min(rng.randrange(1, len(blobs[k]) - boff + 1), size - pos)
        if zero_entries and rng.random() < 0.1:
            entries.append(MapEntry(pos, n, None, 0))
        else:
            entries.append(MapEntry(pos, n, ids[k], boff))
            disk[pos : pos + n] = blobs[k][boff : boff + n]
        pos += n
    # The very last bytes are data.
    if not entries or entries[-1].end < size:
        start = max(entries[-1].end if entries else 0, size - 5000)
        tail = rng.randbytes(size - start)
        entries.append(MapEntry(start, size - start, repo.put_blob(tail), 0))
        disk[start:size] = tail
    assert len(disk) == size
    return _point(repo, size, entries), bytes(disk)


def _data_bytes(entries: list[MapEntry], size: int) -> bytes:
    """One byte per disk byte: 1 where a blob maps it, 0 where it reads as zeros."""
    kinds = bytearray(size)
    for e in entries:
        if e.blob is not None:
            kinds[e.offset : e.end] = b"\x01" * e.length
    return bytes(kinds)


def _expected_extents(kinds: bytes, start: int, end: int) -> list[Extent]:
    """Reference extents: runs of equal bytes of ``_data_bytes``."""
    out: list[Extent] = []
    pos = start
    while pos < end:
        data = kinds[pos] == 1
        q = kinds.find(b"\x00" if data else b"\x01", pos, end)
        q = end if q < 0 else q
        out.append(Extent(pos, q - pos, not data))
        pos = q
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["blobs", "blobs+zero-entries"])
def made(request: pytest.FixtureRequest) -> tuple[Repository, RecoveryPoint, bytes]:
    repo = Repository.create(MemoryStorage())
    point, disk = _random_point(repo, zero_entries=request.param)
    return repo, point, disk


def test_random_reads_match_the_disk(made: tuple[Repository, RecoveryPoint, bytes]) -> None:
    repo, point, disk = made
    reader = PointReader(repo, point, 0)
    assert reader.size == len(disk)
    rng = random.Random(7)
    entries = repo.resolve_map(point, 0)
    edges = [e.offset for e in entries] + [e.end for e in entries]
    for _ in range(1500):
        kind = rng.random()
        if kind < 0.3:  # start right at, just before or just after an entry edge
            off = min(max(0, rng.choice(edges) + rng.randrange(-3, 4)), len(disk) - 1)
        elif kind < 0.4:  # the end of the disk
            off = len(disk) - rng.randrange(1, 9000)
        else:
            off = rng.randrange(len(disk))
        n = rng.randrange(1, min(3 * MiB, len(disk) - off) + 1)
        assert reader.pread(off, n) == disk[off : off + n], (off, n)
    assert reader.pread(0, len(disk)) == disk
    assert reader.pread(len(disk), 0) == b""


def test_reads_equal_a_restore() -> None:
    repo = Repository.create(MemoryStorage())
    point, disk = _random_point(repo, seed=2, zero_entries=False)
    reader = PointReader(repo, point, 0)
    restored = bytearray(len(disk))
    for off, length, data in repo.iter_disk(point, 0):
        if data is not None:
            restored[off : off + length] = data
    assert bytes(restored) == disk
    for off, data in iter_chunks(repo, point, 0):
        n = len(data) if data is not None else min(MiB, len(disk) - off)
        assert reader.pread(off, n) == (data if data is not None else bytes(n))


def test_extents_come_from_the_map(made: tuple[Repository, RecoveryPoint, bytes]) -> None:
    repo, point, disk = made
    entries = repo.resolve_map(point, 0)
    reader = PointReader(repo, point, 0, cache_bytes=0)  # any blob access would count a miss
    kinds = _data_bytes(entries, len(disk))
    whole = list(reader.extents())
    assert whole == _expected_extents(kinds, 0, len(disk))
    assert sum(e.length for e in whole) == len(disk)
    assert all(a.end == b.start and a.zero != b.zero for a, b in itertools.pairwise(whole))
    rng = random.Random(3)
    for _ in range(200):
        off = rng.randrange(len(disk))
        n = rng.randrange(1, len(disk) - off + 1)
        assert list(reader.extents(off, n)) == _expected_extents(kinds, off, off + n)
    assert list(reader.extents(5, 0)) == []
    assert reader.cache_misses == 0


def test_bad_ranges_and_disks(made: tuple[Repository, RecoveryPoint, bytes]) -> None:
    repo, point, disk = made
    reader = PointReader(repo, point, 0)
    for off, n in [(-1, 10), (len(disk) - 10, 11), (0, len(disk) + 1), (5, -1)]:
        with pytest.raises(ValueError):
            reader.pread(off, n)
        with pytest.raises(ValueError):
            list(reader.extents(off, n))
    with pytest.raises(NotFound):
        PointReader(repo, point, 1)


def test_malformed_map_is_damage() -> None:
    repo = Repository.create(MemoryStorage())
    bid = repo.put_blob(b"x" * 8192)
    overlapping = _point(repo, MiB, [MapEntry(0, 8192, bid, 0), MapEntry(4096, 4096, bid, 0)])
    with pytest.raises(IntegrityError, match="malformed"):
        PointReader(repo, overlapping, 0)
    beyond = _point(repo, MiB, [MapEntry(MiB - 4096, 8192, bid, 0)])
    with pytest.raises(IntegrityError, match="malformed"):
        PointReader(repo, beyond, 0)
    short = _point(repo, MiB, [MapEntry(0, 8192, bid, 4096)])  # wants bytes past the blob's end
    reader = PointReader(repo, short, 0)
    with pytest.raises(IntegrityError, match="shorter"):
        reader.pread(0, 10)


@pytest.fixture(scope="module")
def cycled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, list[RecoveryPoint], list[bytes]]:
    """A full point and a delta point made by run_cycle from a real sparse image."""
    folder = tmp_path_factory.mktemp("cycled")
    src = folder / "disk.raw"
    make_master(src, 16 * MiB, seed=5)
    repo = Repository.create(MemoryStorage())
    cache = DigestCache(folder / "cache")
    points, images = [], []
    with open_disk(probe(src)) as disk:
        points.append(run_cycle(repo, cache, "m", [(0, disk)], parent=None).point)
    images.append(src.read_bytes())
    rng = random.Random(9)
    with open(src, "r+b") as f:  # changes: new data in a hole, overwrite data, zero data
        for off, data in [
            (5 * MiB + 100, rng.randbytes(70000)),
            (1 * MiB + 8192, rng.randbytes(4096)),
            (0, bytes(16384)),
            (16 * MiB - 1000, rng.randbytes(1000)),
        ]:
            f.seek(off)
            f.write(data)
    with open_disk(probe(src)) as disk:
        points.append(run_cycle(repo, cache, "m", [(0, disk)], parent=points[0]).point)
    images.append(src.read_bytes())
    assert points[1].disks[0].base == points[0].id  # really a delta
    return repo, points, images


def test_full_and_delta_points_from_cycles(
    cycled: tuple[Repository, list[RecoveryPoint], list[bytes]],
) -> None:
    repo, points, images = cycled
    rng = random.Random(11)
    for point, image in zip(points, images, strict=True):
        reader = PointReader(repo, point, 0)
        assert reader.pread(0, len(image)) == image
        for _ in range(300):
            off = rng.randrange(len(image))
            n = rng.randrange(1, min(2 * MiB, len(image) - off) + 1)
            assert reader.pread(off, n) == image[off : off + n]
        # Zero extents really read as zeros, and every data extent holds some data.
        for ext in reader.extents():
            chunk = image[ext.start : ext.end]
            assert (chunk == bytes(ext.length)) if ext.zero else chunk != bytes(ext.length)


def test_concurrent_readers_with_a_tiny_cache(
    cycled: tuple[Repository, list[RecoveryPoint], list[bytes]],
) -> None:
    """Many threads, two readers of one repository (a machine's disks), constant eviction:
    the repository's shared blob cache must not break."""
    repo, points, images = cycled
    readers = [PointReader(repo, p, 0, cache_bytes=2 * MiB) for p in points]
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        reader, image = readers[seed % 2], images[seed % 2]
        try:
            for _ in range(150):
                off = rng.randrange(len(image))
                n = rng.randrange(1, min(MiB, len(image) - off) + 1)
                if reader.pread(off, n) != image[off : off + n]:
                    failures.append(f"{off}+{n}")
        except Exception as e:  # a thread's exception would not fail the test by itself
            failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert all(r.cache_misses > 0 for r in readers)


def test_sequential_small_reads_decode_each_blob_once() -> None:
    storage = FaultyStorage(MemoryStorage())  # nothing injected: it counts loads
    repo = Repository.create(storage)
    rng = random.Random(2)
    blobs = [rng.randbytes(MiB) for _ in range(12)]
    entries = [MapEntry(i * MiB, MiB, repo.put_blob(b), 0) for i, b in enumerate(blobs)]
    point = _point(repo, 12 * MiB, entries)
    reopened = Repository.open(storage)
    reopened.load_index()
    reader = PointReader(reopened, point, 0)
    before = storage.calls["load"]
    # Two interleaved sequential streams (a guest and block-stream): 24 blobs' worth of
    # 64 KiB reads, more distinct blobs alive than the repository's 8-entry cache holds.
    for i in range(0, 12 * MiB, 64 << 10):
        j = (i + 6 * MiB) % (12 * MiB)
        assert reader.pread(i, 64 << 10) == blobs[i // MiB][i % MiB : i % MiB + (64 << 10)]
        assert reader.pread(j, 64 << 10) == blobs[j // MiB][j % MiB : j % MiB + (64 << 10)]
    assert storage.calls["load"] - before == 12
    assert reader.cache_misses == 12


def test_corrupt_blob_raises_never_returns_data(tmp_path: Path) -> None:
    inner = MemoryStorage()
    repo = Repository.create(inner)
    good, bad = b"g" * 65536, random.Random(1).randbytes(65536)
    entries = [MapEntry(0, 65536, repo.put_blob(good), 0), MapEntry(MiB, 65536, repo.put_blob(bad), 0)]
    point = _point(repo, 4 * MiB, entries)
    repo.flush()
    # Every pack load returns one flipped byte: the damaged blob's hash check fails.
    faulty = FaultyStorage(inner, corrupt_load=lambda kind, name: kind is Kind.DATA)
    reader = PointReader(Repository.open(faulty), point, 0)
    with pytest.raises(IntegrityError):
        reader.pread(0, 100)
    with pytest.raises(IntegrityError):
        reader.pread(MiB + 10, 100)
    assert reader.pread(2 * MiB, 4096) == bytes(4096)  # holes need no blob
    assert faulty.corrupted >= 2


def test_stale_index_is_reloaded_after_a_repack() -> None:
    """prune moves a blob to a new pack (new pack + index first, then old ones removed)."""
    storage = MemoryStorage()
    repo = Repository.create(storage)
    data = random.Random(4).randbytes(100_000)
    bid = repo.put_blob(data)
    point = _point(repo, MiB, [MapEntry(0, len(data), bid, 0)])
    old_packs = {o.name for o in storage.list(Kind.DATA)}
    old_index = {o.name for o in storage.list(Kind.INDEX)}
    server_repo = Repository.open(storage)
    server_repo.load_index()
    reader = PointReader(server_repo, point, 0)
    # The "prune": a writer with an empty index stores the blob again in a new pack...
    writer = Repository.open(storage)
    writer.load_index()
    writer.index = Index()  # forget the blob is stored, so it is stored again (a repack)
    writer.put_blob(b"another blob, so the new pack is not byte-identical to the old one")
    writer.put_blob(data)
    writer.flush()
    # ...then removes the old pack and index file.
    for name in old_packs:
        storage.remove(Kind.DATA, name)
    for name in old_index:
        storage.remove(Kind.INDEX, name)
    stale = server_repo.index.get(bid)
    assert stale is not None and stale.pack in old_packs
    assert reader.pread(0, len(data)) == data
    fresh = server_repo.index.get(bid)
    assert fresh is not None and fresh.pack not in old_packs  # the reader reloaded the index
