"""Reading a disk's chunks for a cycle (``rehost.replication.cycle``): what a disk must
offer, the allocation map, the read batches, the chunk buffers used again, and the dirty
ranges of a change tracker per chunk.

Only allocated data is read; a chunk that is all holes is no read at all, and one whose
pages a raw image holds in the page cache is a view of them (``FileDisk.mapped``).
"""

from __future__ import annotations

import contextlib
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Protocol

from rehost.disks.extent import Extent
from rehost.repository.repository import BLOCK_SIZE, CHUNK_SIZE

#: Chunks read with one call (their NBD requests are in flight together).
READ_BATCH = 8
#: Views handed back are dropped from the page tables this many bytes at a time: one
#: ``madvise`` per 1 MiB chunk cost the cycle's own thread 0.1 s on a 2 GiB image (a page-table
#: walk and a TLB flush on every core the workers run on, per call), while the workers waited
#: for it; 32 MiB keeps the process's mapped pages as few.
UNMAP_BATCH = 32 * CHUNK_SIZE
_ZEROS = bytes(CHUNK_SIZE)


class ReadableDisk(Protocol):
    """What a cycle needs from a source disk (``rehost.disks.NbdDisk`` is one)."""

    @property
    def size(self) -> int: ...

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]: ...

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int: ...


class ExtentMap:
    """Sorted extents with O(log n) lookup of those touching a range."""

    def __init__(self, extents: Iterator[Extent]) -> None:
        self.extents = sorted(extents, key=lambda e: e.start)
        self.ends = [e.end for e in self.extents]

    def data_in(self, start: int, end: int) -> list[Extent]:
        out = []
        i = bisect_right(self.ends, start)
        while i < len(self.extents) and self.extents[i].start < end:
            if not self.extents[i].zero:
                out.append(self.extents[i])
            i += 1
        return out


def batches(offsets: list[int]) -> Iterator[list[int]]:
    """Groups of up to READ_BATCH chunk offsets: one read call per group keeps many NBD
    requests in flight (one request at a time is latency-bound), whether the chunks are
    consecutive (a full read) or scattered (changed blocks all over the disk)."""
    for i in range(0, len(offsets), READ_BATCH):
        yield offsets[i : i + READ_BATCH]


class ChunkBuffers:
    """Chunk buffers used again once their chunk is done: a fresh 1 MiB buffer per chunk costs
    its page faults and zero-filling every time, which doubled the time of an in-place read
    (docs/benchmarks.md). Memory comes from the disk where it has its own (``buffer``:
    page-aligned for O_DIRECT)."""

    def __init__(self, disk: ReadableDisk) -> None:
        self._alloc: Callable[[int], memoryview] | None = getattr(disk, "buffer", None)
        self._unmap: Callable[[int, int], None] | None = getattr(disk, "unmap", None)
        self._free: list[memoryview] = []
        self._done: tuple[int, int] | None = None  # views handed back, not yet unmapped

    def take(self, length: int) -> memoryview:
        """A buffer of ``length`` (at most CHUNK_SIZE) bytes; its content is not defined.
        Safe in worker threads (``list.pop`` is atomic; an empty list allocates)."""
        with contextlib.suppress(IndexError):
            return self._free.pop()[:length]
        full = self._alloc(CHUNK_SIZE) if self._alloc is not None else memoryview(bytearray(CHUNK_SIZE))
        return full[:length]

    def give(self, offset: int, buf: memoryview | None) -> None:
        """A chunk's buffer back, once nothing reads it any more (its result was taken). A view
        of the disk's mapping (``mapped``) goes back to the disk instead, with the views handed
        back before it: chunks are handed back in the order of their offsets, so the span from
        the first to this one holds no view still in use (``flush`` hands back the rest)."""
        if buf is None:
            return
        if buf.readonly:
            if self._unmap is None:
                return
            start, end = offset, offset + len(buf)
            if self._done is not None and self._done[1] <= start:
                start = self._done[0]
            elif self._done is not None:  # not after the last one: hand that back now
                self.flush()
            self._done = (start, end)
            if end - start >= UNMAP_BATCH:
                self.flush()
        elif buf.obj is not None and len(buf.obj) == CHUNK_SIZE:  # type: ignore[arg-type]
            self._free.append(memoryview(buf.obj))  # type: ignore[arg-type]

    def flush(self) -> None:
        """Hand back the views ``give`` holds (at the end of a disk)."""
        if self._done is not None and self._unmap is not None:
            start, end = self._done
            self._unmap(start, end - start)
        self._done = None


def read_batch(
    disk: ReadableDisk,
    extents: ExtentMap,
    batch: list[int],
    size: int,
    wanted: dict[int, list[tuple[int, int]]] | None,
    buffers: ChunkBuffers | None = None,
    views: bool = True,
) -> list[tuple[int, memoryview | None, int]]:
    """(offset, data or None if all holes/zeros, bytes read) per chunk of ``batch``.

    Only allocated data is read, and with ``wanted`` (dirty ranges) only that. Every byte of
    a chunk's buffer that is not read is zeroed (buffers are used again): a hole's blocks, a
    dirty hole's included, are digested as zeros. Every range of the batch is requested at
    once where the disk can (``readinto_many``). A chunk the disk holds in memory already
    (``mapped``: every page of it in the page cache) is its view there, read by nothing;
    ``views=False`` reads it anyway, for a pass that will copy nearly all of it regardless.
    """
    out: list[tuple[int, memoryview | None, int]] = []
    pieces: list[tuple[int, memoryview]] = []
    buffers = buffers or ChunkBuffers(disk)
    holes_free = bool(getattr(disk, "holes_read_as_zeros", False))
    mapped: Callable[[int, int], memoryview | None] | None = getattr(disk, "mapped", None) if views else None
    for off in batch:
        c_end = min(size, off + CHUNK_SIZE)
        ranges = [(max(e.start, off), min(e.end, c_end)) for e in extents.data_in(off, c_end)]
        if wanted is not None:
            ranges = [
                (max(a, c), min(b, d)) for a, b in ranges for c, d in wanted[off] if max(a, c) < min(b, d)
            ]
        merged: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            if merged and merged[-1][1] >= a:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        if not merged:
            out.append((off, None, 0))
            continue
        data = sum(b - a for a, b in merged)
        view = mapped(off, c_end - off) if mapped is not None else None
        if view is not None:  # all in the page cache: no copy (holes read as zeros there)
            out.append((off, view, data))
            continue
        if holes_free and len(merged) > 1:
            # one request for the chunk: its holes read as zeros without I/O, and a block read
            # that is not dirty is never used; a disk full of small islands of data (scattered
            # writes into holes) is otherwise thousands of 4 KiB reads
            merged = [(merged[0][0], merged[-1][1])]
        buf = buffers.take(c_end - off)
        at = off  # what is not read is a hole (or not dirty): zeros, as a fresh buffer was
        for a, b in [*merged, (c_end, c_end)]:
            if a > at:
                buf[at - off : a - off] = _ZEROS[: a - at]
            at = b
        pieces += [(a, buf[a - off : b - off]) for a, b in merged]
        out.append((off, buf, data))
    many = getattr(disk, "readinto_many", None)
    if pieces and many is not None:
        many(pieces)
    else:
        for a, view in pieces:
            disk.readinto(a, view)
    return out


def dirty_chunks(dirty: list[Extent], size: int) -> dict[int, list[tuple[int, int]]]:
    """chunk offset -> block-aligned absolute byte ranges reported dirty inside it."""
    out: dict[int, list[tuple[int, int]]] = {}
    for e in dirty:
        a = e.start - e.start % BLOCK_SIZE
        b = min(size, -(-e.end // BLOCK_SIZE) * BLOCK_SIZE)
        while a < b:
            c0 = a - a % CHUNK_SIZE
            end = min(b, c0 + CHUNK_SIZE)
            ranges = out.setdefault(c0, [])
            if ranges and ranges[-1][1] >= a:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
            else:
                ranges.append((a, end))
            a = end
    return out
