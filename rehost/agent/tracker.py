"""Which 4 KiB blocks of a disk changed since the last committed recovery point.

The agent keeps, per disk, the XXH3-64 digest of every block as the *server* stored it at
the committed point (the server sends the digests of what it read at commit time: a live
disk may change between the agent's scan and the server's read, and the agent must then
see the block as changed again next cycle). A cycle scans the disk locally (a full local
read, no network) and reports the runs of blocks whose digest differs.

Digest files: magic, the point id, then 8 bytes per block; written atomically; the same
algorithm as ``rehost.replication.digests`` (which this module must not import: it runs
on the agent).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import stat
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import xxhash

from rehost.fs import write_private

BLOCK_SIZE = 4096
DIGEST_SIZE = 8
READ_SIZE = 1 << 20
#: reads in flight during a scan (queue depth)
SCAN_THREADS = 4
ZERO_DIGEST: bytes = xxhash.xxh3_64_digest(bytes(BLOCK_SIZE))
_MAGIC = b"RHAG1\n"

Extents = list[tuple[int, int]]  # (start, length) in bytes


def block_count(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


def digest_blocks(data: bytes | bytearray | memoryview) -> bytes:
    h = xxhash.xxh3_64_digest
    mv = memoryview(data)
    return b"".join([h(mv[i : i + BLOCK_SIZE]) for i in range(0, len(mv), BLOCK_SIZE)])


def zero_digests(size: int) -> bytes:
    n = block_count(size)
    out = ZERO_DIGEST * n
    if size % BLOCK_SIZE:
        out = out[:-DIGEST_SIZE] + xxhash.xxh3_64_digest(bytes(size % BLOCK_SIZE))
    return out


def device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _open_direct(path: Path) -> tuple[int, bool]:
    """Open for reading with O_DIRECT where the file system allows it (bypass caches that
    may be stale for a device a mounted file system writes to)."""
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        with contextlib.suppress(OSError):
            return os.open(path, os.O_RDONLY | flag), True
    return os.open(path, os.O_RDONLY), False


def _data_ranges(fd: int, size: int) -> Extents:
    """Allocated ranges of a regular file (SEEK_DATA/SEEK_HOLE); the whole of anything else."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return [(0, size)]
    out: Extents = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
    except OSError:  # ENXIO: no data after pos
        pass
    return out


def _reads(ranges: Extents, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the reads that cover ``ranges``: block aligned, at most READ_SIZE."""
    for start, length in ranges:
        a = start - start % BLOCK_SIZE
        end = start + length
        while a < end:
            n = min(READ_SIZE, size - a, end - a + (-(end - a)) % BLOCK_SIZE)
            yield a, n
            a += n


def scan(path: Path, size: int | None = None) -> bytes:
    """The digests of every block of the disk at ``path`` (holes are not read).

    SCAN_THREADS reads are in flight at once: with O_DIRECT one read at a time leaves the
    device idle between requests (the scan was ~80 % waiting at queue depth 1).
    """
    size = device_size(path) if size is None else size
    digests = bytearray(zero_digests(size))
    fd, direct = _open_direct(path)
    buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
    for _ in range(SCAN_THREADS):
        buffers.put(mmap.mmap(-1, READ_SIZE))  # page aligned, as O_DIRECT needs

    def read(a: int, n: int) -> tuple[int, bytes]:
        buf = buffers.get()
        try:
            want = n if not direct else n + (-n) % 512
            with memoryview(buf) as whole, whole[:want] as view:
                got = os.preadv(fd, [view], a)
                if got < n:  # the file shrank meanwhile: what is gone reads as zeros
                    view[got:n] = bytes(n - got)
                return a, digest_blocks(view[:n])
        finally:
            buffers.put(buf)

    def store(fut: Future[tuple[int, bytes]]) -> None:
        off, d = fut.result()
        b0 = off // BLOCK_SIZE * DIGEST_SIZE
        digests[b0 : b0 + len(d)] = d

    try:
        with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="rehost-scan") as pool:
            inflight: deque[Future[tuple[int, bytes]]] = deque()
            for a, n in _reads(_data_ranges(fd, size), size):
                inflight.append(pool.submit(read, a, n))
                while len(inflight) > 2 * SCAN_THREADS or (inflight and inflight[0].done()):
                    store(inflight.popleft())
            for fut in inflight:
                store(fut)
    finally:
        os.close(fd)
        while not buffers.empty():
            buffers.get().close()
    return bytes(digests)


def diff(old: bytes, new: bytes, size: int) -> Extents:
    """Byte runs (block aligned, clipped to ``size``) whose digests differ."""
    out: Extents = []
    n = len(new) // DIGEST_SIZE
    stride = 512 * DIGEST_SIZE  # equal stretches (most of a disk) are skipped 2 MiB at a time
    i = 0
    while i < n:
        if i % 512 == 0 and new[i * DIGEST_SIZE : i * DIGEST_SIZE + stride] == old[
            i * DIGEST_SIZE : i * DIGEST_SIZE + stride
        ]:
            i += 512
            continue
        if new[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE] == old[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]:
            i += 1
            continue
        j = i + 1
        while (
            j < n
            and new[j * DIGEST_SIZE : (j + 1) * DIGEST_SIZE] != old[j * DIGEST_SIZE : (j + 1) * DIGEST_SIZE]
        ):
            j += 1
        start = i * BLOCK_SIZE
        out.append((start, min(j * BLOCK_SIZE, size) - start))
        i = j
    return out


def blocks_of(extents: Extents) -> list[tuple[int, int]]:
    """Block index ranges [a, b) of byte extents."""
    return [(s // BLOCK_SIZE, -(-(s + n) // BLOCK_SIZE)) for s, n in extents]


def pack_digests(digests: bytes, extents: Extents) -> bytes:
    """The digests of the blocks of ``extents``, in order, compressed (what commit sends)."""
    parts = [digests[a * DIGEST_SIZE : b * DIGEST_SIZE] for a, b in blocks_of(extents)]
    return zlib.compress(b"".join(parts), 6)


def apply_digests(base: bytes, extents: Extents, packed: bytes) -> bytes:
    """``base`` with the blocks of ``extents`` replaced by the packed digests."""
    data = zlib.decompress(packed)
    out = bytearray(base)
    pos = 0
    for a, b in blocks_of(extents):
        n = (b - a) * DIGEST_SIZE
        if pos + n > len(data) or b * DIGEST_SIZE > len(out):
            raise ValueError("the digests do not match the cycle's extents")
        out[a * DIGEST_SIZE : b * DIGEST_SIZE] = data[pos : pos + n]
        pos += n
    if pos != len(data):
        raise ValueError("the digests do not match the cycle's extents")
    return bytes(out)


class DigestStore:
    """Per disk, the digests of the committed point: ``<folder>/disk<N>.digests``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, index: int) -> Path:
        return self.folder / f"disk{index}.digests"

    def load(self, index: int, point: str, size: int) -> bytes | None:
        """The digests of ``point`` for disk ``index``, or None (another point, another size)."""
        try:
            data = self._path(index).read_bytes()
        except OSError:
            return None
        head = _MAGIC + point.encode() + b"\n"
        if not data.startswith(head) or len(data) - len(head) != block_count(size) * DIGEST_SIZE:
            return None
        return data[len(head) :]

    def committed_point(self, index: int) -> str | None:
        try:
            with open(self._path(index), "rb") as f:
                head = f.read(len(_MAGIC) + 128)
        except OSError:
            return None
        if not head.startswith(_MAGIC):
            return None
        return head[len(_MAGIC) :].split(b"\n", 1)[0].decode()

    def save(self, index: int, point: str, digests: bytes) -> None:
        if "\n" in point:
            raise ValueError("bad point id")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._path(index), _MAGIC + point.encode() + b"\n" + digests)
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
