"""Chunk buffers are used again within a cycle: what a chunk does not read (holes, blocks
that are not dirty) must read as zeros, never as the bytes of an earlier chunk. The disks
here put random data in the first chunks and holes later, so a reused buffer would carry
that data into the point; the file's own bytes are the oracle."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import random
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rehost.disks import Extent, FileDisk, open_disk, probe
from rehost.replication.cycle import PIPELINE_DEPTH, CycleResult, run_cycle
from rehost.replication.digests import DigestCache
from rehost.replication.reading import READ_BATCH, UNMAP_BATCH
from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import CHUNK_SIZE, Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.storage import MemoryStorage

MiB = 1 << 20
FULL = 2 * (PIPELINE_DEPTH + READ_BATCH)  # chunks of random data: every buffer is used and given back
SIZE = (FULL + 24) * MiB


def _point_bytes(repo: Repository, point: RecoveryPoint, size: int = SIZE) -> bytes:
    p = repo.load_point_exact(point.id)
    return b"".join(d if d is not None else bytes(min(CHUNK_SIZE, size - o))
                    for o, d in iter_chunks(repo, p, 0))


@contextlib.contextmanager
def _held_in_page_cache(path: Path) -> Iterator[None]:
    """The file's pages locked in the page cache (mlock of a shared mapping): the tests run
    beside others that fill it, and "just written, so resident" did not always hold (CI: 58
    chunks of 64 taken from the mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        pages = (ctypes.c_char * len(m)).from_buffer(m)
        address = ctypes.addressof(pages)
        try:
            if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(len(m))) != 0:
                pytest.skip(f"mlock: {ctypes.get_errno()} (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)")
            yield
        finally:
            libc.munlock(ctypes.c_void_p(address), ctypes.c_size_t(len(m)))
            del pages


@pytest.mark.parametrize("reader", ["in place", "qemu-nbd"])
def test_holes_after_full_chunks_read_as_zeros(tmp_path: Path, reader: str) -> None:
    rng = random.Random(11)
    path = tmp_path / "d.raw"
    with path.open("wb") as f:  # random data first, then chunks with one small run and holes
        f.truncate(SIZE)
        f.write(rng.randbytes(FULL * MiB))
        for c in range(FULL, FULL + 24):
            f.seek(c * MiB + (c % 7) * 65536)
            f.write(rng.randbytes(4096 * (1 + c % 3)))
    repo, cache = Repository.create(MemoryStorage()), DigestCache(tmp_path / "cache")

    def cycle(parent: RecoveryPoint | None,
              changed: dict[int, list[Extent] | None] | None = None) -> CycleResult:
        if reader == "in place":
            with FileDisk(path) as d:
                return run_cycle(repo, cache, "m", [(0, d)], parent=parent, changed=changed)
        with open_disk(probe(path)) as n:
            return run_cycle(repo, cache, "m", [(0, n)], parent=parent, changed=changed)

    first = cycle(None)
    assert _point_bytes(repo, first.point) == path.read_bytes()
    # a hash-diff delta: new data in the holed chunks, and the start of the disk punched to a hole
    with path.open("r+b") as f:
        for c in range(FULL + 1, FULL + 24, 5):
            f.seek(c * MiB + 512 * 1024)
            f.write(rng.randbytes(8192))
    subprocess.run(["fallocate", "--punch-hole", "--offset", "0", "--length", str(3 * MiB), str(path)],
                   check=True)
    second = cycle(first.point)
    assert second.changed_bytes >= 3 * MiB
    assert _point_bytes(repo, second.point) == path.read_bytes()
    # a change-tracked delta whose dirty ranges cover holes of chunks read after full ones
    with path.open("r+b") as f:
        for c in range(FULL, FULL + 24, 3):
            f.seek(c * MiB + 4096)
            f.write(rng.randbytes(4096))
    dirty = [Extent(c * MiB, MiB) for c in range(FULL, FULL + 24, 3)]
    third = cycle(second.point, {0: dirty})
    assert _point_bytes(repo, third.point) == path.read_bytes()


class _CountingFileDisk(FileDisk):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.requests = 0

    def readinto_many(self, pieces: Sequence[tuple[int, bytearray | memoryview]]) -> int:
        self.requests += len(pieces)
        return super().readinto_many(pieces)


def test_islands_of_data_in_a_chunk_are_one_request(tmp_path: Path) -> None:
    """Scattered 4 KiB writes into a sparse file make islands of data between holes; reading
    a hole of a file costs no I/O, so the cycle reads each chunk's islands as one span (not
    one request per island) and still stores exactly the file, counting only the data read."""
    rng = random.Random(5)
    path = tmp_path / "d.raw"
    with path.open("wb") as f:
        f.truncate(8 * MiB)
        for _ in range(400):
            f.seek(rng.randrange(8 * MiB // 4096) * 4096)
            f.write(rng.randbytes(4096))
    repo = Repository.create(MemoryStorage())
    with _CountingFileDisk(path) as d:
        islands = [e for e in d.extents() if not e.zero]
        result = run_cycle(repo, DigestCache(tmp_path / "cache"), "m", [(0, d)], parent=None)
    assert len(islands) > 100 and d.requests == 8  # one span per 1 MiB chunk
    assert result.bytes_read == sum(e.length for e in islands)  # the data, not the holes between
    stored = b"".join(c if c is not None else bytes(MiB) for _, c in iter_chunks(repo, result.point, 0))
    assert stored == path.read_bytes()


class _ThreadRecordingFileDisk(FileDisk):
    """Records which threads read, and how many chunks came as views of the mapping; with
    ``mapped=False`` it hands out none, so every chunk is copied into a buffer."""

    def __init__(self, path: Path, parallel: bool, mapped: bool = True) -> None:
        super().__init__(path)
        self.parallel_reads = parallel
        self.use_mapping = mapped
        self.threads: set[str] = set()
        self.views = 0
        self.viewed: list[tuple[int, int]] = []
        self.unmapped: list[tuple[int, int]] = []

    def readinto_many(self, pieces: Sequence[tuple[int, bytearray | memoryview]]) -> int:
        import threading

        self.threads.add(threading.current_thread().name)
        return super().readinto_many(pieces)

    def mapped(self, offset: int, length: int) -> memoryview | None:
        import threading

        view = super().mapped(offset, length) if self.use_mapping else None
        if view is not None:
            self.threads.add(threading.current_thread().name)
            self.views += 1
            self.viewed.append((offset, offset + length))
        return view

    def unmap(self, offset: int, length: int) -> None:
        self.unmapped.append((offset, offset + length))
        super().unmap(offset, length)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "copied"])
@pytest.mark.parametrize("parallel", [True, False])
def test_a_disk_that_allows_it_is_read_by_the_workers(tmp_path: Path, parallel: bool, mapped: bool) -> None:
    """A raw image in place is read by the cycle's workers, a batch each (a delta's reading was
    the main thread's alone, and the cycle waited on it); a disk that does not say it may be
    read from several threads (an NBD connection) is read by the cycle's own thread. Either
    way the point holds exactly the file, a delta included, whether the chunks in the page
    cache are taken from the file's mapping or copied. An initial copy copies them: it stores
    every data block, and a view's stored runs are copied anyway."""
    rng = random.Random(3)
    path = tmp_path / "d.raw"
    with path.open("wb") as f:
        f.truncate(SIZE)
        f.write(rng.randbytes(FULL * MiB))
    repo, cache = Repository.create(MemoryStorage()), DigestCache(tmp_path / "cache")
    with _ThreadRecordingFileDisk(path, parallel, mapped) as d:
        first = run_cycle(repo, cache, "m", [(0, d)], parent=None)
    assert _point_bytes(repo, first.point) == path.read_bytes()
    assert d.views == 0
    with path.open("r+b") as f:
        for block in rng.sample(range(SIZE // 4096), 300):
            f.seek(block * 4096)
            f.write(rng.randbytes(4096))
    with _held_in_page_cache(path), _ThreadRecordingFileDisk(path, parallel, mapped) as d:
        second = run_cycle(repo, cache, "m", [(0, d)], parent=first.point)
        with_data = {o // MiB for e in d.extents() if not e.zero for o in range(e.start, e.end, 4096)}
    if not d.direct or not d._cachestat:
        assert d.views == 0  # no page-cache figures here: every chunk is read
    else:
        assert d.views == (len(with_data) if mapped else 0)  # the file was just written: all resident
    # each view handed back once its chunk was done, many chunks per call
    assert all(any(a <= s and e <= b for a, b in d.unmapped) for s, e in d.viewed)
    assert len(d.unmapped) == -(-len(d.viewed) // (UNMAP_BATCH // MiB))
    if parallel:
        assert d.threads and all(t.startswith("rehost-cycle") for t in d.threads), d.threads
    else:
        assert d.threads == {"MainThread"}, d.threads
    with FileDisk(path) as d:
        assert second.bytes_read == sum(e.length for e in d.extents() if not e.zero)
    assert _point_bytes(repo, second.point) == path.read_bytes()


class _LivePagesDisk(FileDisk):
    """A raw image whose chunks come as read-only views of ``pages`` (standing in for the
    file's page cache, which the image's user may write at any moment)."""

    def __init__(self, path: Path, pages: bytearray) -> None:
        super().__init__(path)
        self.pages = pages

    def mapped(self, offset: int, length: int) -> memoryview | None:
        return memoryview(self.pages).toreadonly()[offset : offset + length]


def test_a_block_written_while_its_chunk_is_diffed_is_stored_as_its_digests_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk read as a view of the file's pages may change after it was digested. What is
    stored must be what the remembered digests describe, or the next cycle, seeing the block
    back as it was digested, would keep the other content in the point for good."""
    from rehost.repository.writer import Writer

    rng = random.Random(9)
    path = tmp_path / "d.raw"
    path.write_bytes(rng.randbytes(2 * MiB))
    repo, cache = Repository.create(MemoryStorage()), DigestCache(tmp_path / "cache")
    with FileDisk(path) as d:
        first = run_cycle(repo, cache, "m", [(0, d)], parent=None)
    block = 10 * 4096
    written = rng.randbytes(4096)
    with path.open("r+b") as f:  # the change the next cycle is for
        f.seek(block)
        f.write(written)
    pages = bytearray(path.read_bytes())
    real = Writer.seal_blobs

    Sealed = list[tuple[str, bytes | None, int]]

    def write_meanwhile(self: Writer, pieces: Sequence[bytes | memoryview]) -> Sealed:
        pages[block : block + 4096] = rng.randbytes(4096)  # after the digests, before sealing
        return real(self, pieces)

    monkeypatch.setattr(Writer, "seal_blobs", write_meanwhile)
    with _LivePagesDisk(path, pages) as d:
        second = run_cycle(repo, cache, "m", [(0, d)], parent=first.point)
    monkeypatch.undo()
    # the file is quiet again, as it was when the block was digested: the next cycle must
    # see that the point holds something else there, and store the block again
    with FileDisk(path) as d:
        third = run_cycle(repo, cache, "m", [(0, d)], parent=second.point)
    assert _point_bytes(repo, third.point, 2 * MiB) == path.read_bytes()
