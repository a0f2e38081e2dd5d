"""One replication cycle: a machine's disks in, one recovery point out (design §3, §5).

The cycle compares 4 KiB block digests with the previous point and stores only runs of
changed blocks, so the first cycle (compared with an all-zero disk) and every later one are
the same code. Hashing and sealing run in worker threads; the C libraries release the GIL.
A disk that may be read from several threads at once (a raw image read in place) is read by
the workers too, a batch of chunks each: reading was the main thread's work alone and, on a
delta where little is sealed, the cycle waited on it while the workers idled.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rehost.disks.extent import Extent
from rehost.replication.chunk_diff import ChunkResult, diff_batch, diff_chunk, native
from rehost.replication.digests import (
    DIGEST_SIZE,
    DigestCache,
    block_count,
    digest_blocks,
    zero_digests,
)
from rehost.replication.reading import (
    ChunkBuffers,
    ExtentMap,
    ReadableDisk,
    batches,
    dirty_chunks,
    read_batch,
)
from rehost.replication.resume import ResumeJournal
from rehost.repository.manifest import (
    FULL_EVERY,
    Consistency,
    DiskMap,
    MapEntry,
    RecoveryPoint,
    overlay,
)
from rehost.repository.repository import BLOCK_SIZE, CHUNK_SIZE, Repository
from rehost.repository.restore import iter_chunks
from rehost.repository.writer import Writer, WriteStats

#: Chunks in flight between the reader and the hashing/sealing workers.
PIPELINE_DEPTH = 12
WORKERS = 2
#: Batches in flight when the workers read them (``parallel_reads`` disks): 32 MiB of buffers.
BATCHES_IN_FLIGHT = 4

Progress = Callable[[int], None]


@dataclass
class CycleResult:
    point: RecoveryPoint
    stats: WriteStats
    bytes_read: int = 0
    changed_bytes: int = 0
    seconds: float = 0.0
    digest_source: dict[int, str] = field(default_factory=dict)  # per disk: cache|rebuilt|initial
    resumed_bytes: int = 0  # taken from an interrupted try's journal instead of the source
    notes: list[str] = field(default_factory=list)  # the source's word on fallbacks
    #: what the sync of the target's replica did after the cycle (figures, or its error)
    replica: dict[str, Any] | None = None


#: a chunk done: (offset, its buffer or None, bytes read, what the diff found)
_Done = tuple[int, memoryview | None, int, ChunkResult]


def _old_digests(
    repo: Repository, cache: DigestCache, machine: str, index: int, size: int, parent: RecoveryPoint | None
) -> tuple[bytearray, str]:
    nblocks = block_count(size)
    if parent is None or not any(d.index == index and d.size == size for d in parent.disks):
        return zero_digests(nblocks), "initial"
    cached = cache.load(machine, index, parent.id, nblocks)
    if cached is not None:
        return cached, "cache"
    digests = bytearray()
    no_writes = repo.writer()  # diff_chunk of a hole seals nothing
    for off, data in iter_chunks(repo, parent, index):
        length = min(CHUNK_SIZE, size - off)
        if data is not None:
            digests += digest_blocks(data)
        else:
            digests += diff_chunk(no_writes, off, None, length, b"").digests
    return digests, "rebuilt"


@dataclass
class _DiskScan:
    digests: bytearray
    entries: list[MapEntry] = field(default_factory=list)
    bytes_read: int = 0
    changed: int = 0
    resumed: int = 0  # bytes of chunks taken from an interrupted try's journal


@dataclass
class Resume:
    """A cycle's way back after an interruption: the journal of what it stored, and per disk
    the source's digests of the disk as it will be sent (see ``rehost.replication.resume``)."""

    journal: ResumeJournal
    expected: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def of(
        cls, cache: DigestCache, machine: str, parent: RecoveryPoint | None, expected: dict[int, bytes] | None
    ) -> Resume | None:
        """For a snapshot with the source's digests (``Snapshot.expected``); else None."""
        if expected is None:
            return None
        return cls(ResumeJournal(cache.root, machine, parent.id if parent else None), expected)


def _scan_disk(
    repo: Writer,
    pool: ThreadPoolExecutor,
    disk: ReadableDisk,
    old: bytearray,
    progress: Progress | None,
    dirty: list[Extent] | None = None,
    resume: Resume | None = None,
    index: int = 0,
    views: bool = True,
) -> _DiskScan:
    """Read a disk chunk by chunk; workers diff and seal while the next chunk is read (or,
    where the disk allows reads from several threads, read a batch each and diff it).

    With ``dirty`` (from changed-block tracking) only the chunks and blocks it names are
    read; every other block keeps its digest from the previous point. With ``resume``, the
    chunks an interrupted try already stored are taken from its journal, not read again.
    ``views``: a cached chunk may be a view of the image's pages (``read_batch``).
    """
    size = disk.size
    scan = _DiskScan(bytearray(old) if dirty is not None else bytearray(len(old)))
    wanted = dirty_chunks(sorted(dirty, key=lambda e: e.start), size) if dirty is not None else None
    extents = ExtentMap(disk.extents())
    inflight: deque[Future[list[_Done]]] = deque()
    buffers = ChunkBuffers(disk)
    parallel = bool(getattr(disk, "parallel_reads", False))

    def adopt(off: int, digests: bytes, entries: list[MapEntry], changed: int) -> None:
        b0 = off // BLOCK_SIZE * DIGEST_SIZE
        scan.digests[b0 : b0 + len(digests)] = digests
        scan.entries.extend(entries)
        scan.changed += changed
        if progress:
            progress(min(CHUNK_SIZE, size - off))

    def drain(limit: int) -> None:
        while len(inflight) > limit:
            for off, data, nread, r in inflight.popleft().result():
                buffers.give(off, data)
                scan.bytes_read += nread
                repo.add_sealed_many(r.sealed)
                adopt(off, r.digests, r.entries, r.changed)
                if resume is not None:
                    resume.journal.record(index, off, r.digests, r.entries, r.changed)

    def old_of(off: int) -> bytes:
        b0 = off // BLOCK_SIZE * DIGEST_SIZE
        return bytes(old[b0 : b0 + block_count(min(CHUNK_SIZE, size - off)) * DIGEST_SIZE])

    def diff(off: int, data: memoryview | None, nread: int) -> _Done:
        length = min(CHUNK_SIZE, size - off)
        only = wanted[off] if wanted is not None else None
        blocks = [((a - off) // BLOCK_SIZE, -(-(b - off) // BLOCK_SIZE)) for a, b in only] if only else None
        return off, data, nread, diff_chunk(repo, off, data, length, old_of(off), blocks)

    def read_and_diff(batch: list[int]) -> list[_Done]:
        chunks = read_batch(disk, extents, batch, size, wanted, buffers, views)
        if wanted is not None or not native():
            return [diff(*chunk) for chunk in chunks]
        # the chunks read whole, diffed in one native call (a hole's chunk has no data)
        whole = [(off, data) for off, data, _ in chunks if data is not None]
        done = iter(diff_batch(repo, whole, [old_of(off) for off, _ in whole]))
        return [(off, data, nread, next(done)) if data is not None else diff(off, data, nread)
                for off, data, nread in chunks]

    offsets = list(range(0, size, CHUNK_SIZE)) if wanted is None else sorted(wanted)
    expected = resume.expected.get(index) if resume is not None else None
    if resume is not None and expected is not None and resume.journal.chunks:
        todo = []
        for off in offsets:
            b0 = off // BLOCK_SIZE * DIGEST_SIZE
            want = expected[b0 : b0 + block_count(min(CHUNK_SIZE, size - off)) * DIGEST_SIZE]
            hit = resume.journal.lookup(index, off, want, repo.repo.index)
            if hit is None:
                todo.append(off)
            else:
                adopt(off, bytes(want), *hit)
                scan.resumed += sum(b - a for a, b in wanted[off]) if wanted else min(CHUNK_SIZE, size - off)
        offsets = todo
    try:
        for batch in batches(offsets):
            if parallel:  # a worker reads the batch and diffs its chunks
                inflight.append(pool.submit(read_and_diff, batch))
                drain(BATCHES_IN_FLIGHT)
                continue
            for off, data, nread in read_batch(disk, extents, batch, size, wanted, buffers, views):
                inflight.append(pool.submit(lambda *c: [diff(*c)], off, data, nread))
                drain(PIPELINE_DEPTH)
    except Exception:
        if resume is not None:  # chunks read before the failure are sealed and journaled
            with contextlib.suppress(Exception):
                drain(0)
        raise
    drain(0)
    buffers.flush()
    if wanted is not None and progress:
        progress(size - len(wanted) * CHUNK_SIZE if size > len(wanted) * CHUNK_SIZE else 0)
    return scan


def _prev_map(parent: RecoveryPoint | None, index: int, size: int) -> DiskMap | None:
    if parent is None:
        return None
    return next((d for d in parent.disks if d.index == index and d.size == size), None)


def _next_map(
    repo: Repository,
    parent: RecoveryPoint | None,
    prev: DiskMap | None,
    index: int,
    size: int,
    sequence: int,
    changes: list[MapEntry],
) -> DiskMap:
    """A full map every FULL_EVERY points (or when there is nothing to be a delta of),
    otherwise the previous delta merged with this cycle's changes, against the same base."""
    if parent is None or prev is None or sequence % FULL_EVERY == 0:
        resolved = repo.resolve_map(parent, index) if parent is not None and prev is not None else []
        return DiskMap(index, size, None, [e for e in overlay(resolved, changes) if e.blob])
    if prev.base is None:
        return DiskMap(index, size, parent.id, changes)
    return DiskMap(index, size, prev.base, overlay(prev.entries, changes, keep_zero=True))


def run_cycle(
    repo: Repository,
    cache: DigestCache,
    machine: str,
    disks: Sequence[tuple[int, ReadableDisk]],
    *,
    parent: RecoveryPoint | None,
    consistency: Consistency = Consistency.CRASH,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    changed: dict[int, list[Extent] | None] | None = None,
    taken_at: datetime | None = None,
    resume: Resume | None = None,
    writer: Writer | None = None,
) -> CycleResult:
    """Read every disk, store what changed since ``parent``, commit one recovery point.

    ``changed``: per disk, the extents a change tracker (QEMU dirty bitmap, the agent) says
    may differ from ``parent``; None for a disk means unknown, and the disk is hash-diffed.
    ``taken_at``: the instant the source froze the disks (the point's time; default now).
    ``resume``: journal what is stored as it goes, and skip what an interrupted try stored.
    ``writer``: the cycle's own repository writer (e.g. through a bandwidth limit); by
    default a new one, so cycles of several machines write side by side.
    """
    t0 = time.monotonic()
    w = writer or repo.writer()
    before = WriteStats(*w.stats.astuple())
    repo.refresh_index()
    stamp = (taken_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sequence = parent.sequence + 1 if parent else 0
    maps: list[DiskMap] = []
    new_digests: dict[int, bytearray] = {}
    result_read = result_changed = result_resumed = 0
    digest_source: dict[int, str] = {}

    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="rehost-cycle") as pool:
            for index, disk in disks:
                size = disk.size
                old, digest_source[index] = _old_digests(repo, cache, machine, index, size, parent)
                dirty = (changed or {}).get(index)
                if dirty is not None and digest_source[index] == "initial":
                    dirty = None  # nothing to be a delta of: read everything
                # an initial copy stores every data block, and a view's changed runs are copied
                # and digested again (_stable_runs): a plain read digests each block once
                views = digest_source[index] != "initial"
                # and on cheap storage it is stored uncompressed, for prune to compress later:
                # compressing every block inline bounds an initial copy (docs/benchmarks.md)
                w.compress_later = not views and w.may_compress_later(size)
                scan = _scan_disk(w, pool, disk, old, progress, dirty, resume, index, views)
                w.compress_later = False
                result_resumed += scan.resumed
                if dirty is not None:
                    digest_source[index] += "+dirty-extents"
                result_read += scan.bytes_read
                result_changed += scan.changed
                new_digests[index] = scan.digests
                prev = _prev_map(parent, index, size) if digest_source[index] != "initial" else None
                maps.append(_next_map(repo, parent, prev, index, size, sequence, scan.entries))
    except BaseException:
        if resume is not None:  # what was sealed is kept (no point refers to it) for the retry
            with contextlib.suppress(Exception):
                w.flush()
            resume.journal.close()
        if writer is None:
            with contextlib.suppress(Exception):
                w.__exit__(None, None, None)
        raise

    point = w.save_point(
        RecoveryPoint(
            machine=machine,
            time=stamp,
            consistency=consistency,
            parent=parent.id if parent else None,
            sequence=sequence,
            disks=maps,
            source=source or {},
        )
    )
    for index, digests in new_digests.items():
        cache.save(machine, index, point.id, digests)
    if resume is not None:
        resume.journal.discard()
    after = w.stats
    if writer is None:
        w.close()
    return CycleResult(
        point=point,
        stats=WriteStats(*(a - b for a, b in zip(after.astuple(), before.astuple(), strict=True))),
        bytes_read=result_read,
        changed_bytes=result_changed,
        seconds=time.monotonic() - t0,
        digest_source=digest_source,
        resumed_bytes=result_resumed,
    )
