"""Random access to one disk of a recovery point: what instant recovery serves over NBD.

``Repository.iter_disk`` and ``restore.iter_chunks`` read a point front to back, which is
what an export wants. A failed-over VM booting from a point (instant recovery) reads
wherever the guest looks, a few KiB at a time, while ``block-stream`` copies the disk in
the background: so the resolved extent map is searched with ``bisect`` and every read
cuts the bytes it needs out of whole blobs.

Why a cache of its own: a blob is the unit of decoding (up to 1 MiB, zstd, maybe
AES-GCM, then re-hashed), while a guest reads 4-64 KiB pieces of it. The repository keeps
only the last 8 blobs it decoded, by count: enough for one sequential reader, not for a
booting guest and a background stream interleaving at two places of a disk, and far too
little when a delta holds thousands of 4 KiB blobs. This reader keeps the most recently
used blobs up to a byte budget (``cache_bytes``).

Integrity is the repository's: every blob goes through ``Repository.read_blob``, which
verifies it against its keyed hash and raises ``IntegrityError`` rather than return
wrong bytes. A map that points past the end of its blob is damage too. Nothing here
ever returns data it did not verify.
"""

from __future__ import annotations

import contextlib
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator

from rehost.disks.extent import Extent
from rehost.errors import IntegrityError, NotFound
from rehost.repository.manifest import MapEntry, RecoveryPoint
from rehost.repository.repository import Repository

#: Decoded blobs kept by one reader. 64 MiB holds 64 full 1 MiB blobs: a guest's working
#: set during boot next to a sequential stream, without growing with the disk.
DEFAULT_CACHE_BYTES = 64 << 20
#: A failed blob read reloads the index (at most this often) and tries once more: ``prune``
#: may have repacked the blob into a new pack while we serve (it writes the new pack and
#: index before it deletes the old ones), so a stale index is not damage.
INDEX_REFRESH_INTERVAL = 30.0


class PointReader:
    """``pread`` and ``extents`` over one disk of a recovery point, safe across threads.

    ``size`` is the disk's size in bytes. Reads never go past it (``ValueError``). Damaged or
    missing data raises ``IntegrityError`` (and a failing storage its ``BackendError``); a
    read either returns the point's exact bytes or raises.
    """

    def __init__(
        self,
        repo: Repository,
        point: RecoveryPoint,
        disk: int,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        dmap = next((d for d in point.disks if d.index == disk), None)
        if dmap is None:
            raise NotFound(f"recovery point {point.short_id} has no disk {disk}")
        self.repo = repo
        self.point = point
        self.disk = disk
        self.size: int = dmap.size
        self._entries: list[MapEntry] = repo.resolve_map(point, disk)
        _check_map(self._entries, self.size, point)
        self._starts = [e.offset for e in self._entries]
        self._cache_limit = max(0, cache_bytes)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        # Two locks: cache lookups never wait behind a slow storage load. The load lock
        # exists because Repository.read_blob shares one OrderedDict cache (and the lazy
        # index load) between threads without a lock, so it is one lock per Repository,
        # shared by every reader of it (the disks of one machine). Holding it also makes
        # concurrent misses of one blob decode it once (the second finds it in our cache).
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one decode per missed blob, not one per thread
        self._last_refresh = float("-inf")
        self.cache_hits = 0
        self.cache_misses = 0

    # -- reading ---------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the disk at ``offset``: blob bytes where mapped, zeros elsewhere."""
        end = self._check_range(offset, length)
        if length == 0:
            return b""
        i = self._first(offset)
        entries = self._entries
        # Fast path: one entry covers the whole range (most reads of a full map).
        if i < len(entries) and entries[i].offset <= offset and end <= entries[i].end:
            e = entries[i]
            if e.blob is None:
                return bytes(length)
            data = self._blob_of(e)
            start = e.blob_offset + offset - e.offset
            return data[start : start + length]
        buf = bytearray(length)
        while i < len(entries) and entries[i].offset < end:
            e = entries[i]
            i += 1
            if e.blob is None:
                continue
            a, b = max(e.offset, offset), min(e.end, end)
            data = self._blob_of(e)
            start = e.blob_offset + a - e.offset
            buf[a - offset : b - offset] = memoryview(data)[start : start + b - a]
        return bytes(buf)

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Data and zero extents of ``[start, start+length)`` from the map alone (no reads).

        Adjacent extents of one kind are merged; the first and last are clipped to the
        range. Same contract as ``NbdDisk.extents``.
        """
        end = self._check_range(start, self.size - start if length is None else length)
        pos = start
        kind: bool | None = None  # zero-ness of the extent being built
        run = start
        i = self._first(start)
        entries = self._entries
        while pos < end:
            e = entries[i] if i < len(entries) else None
            if e is None or e.offset >= end:
                piece_end, zero = end, True
            elif e.offset > pos:
                piece_end, zero = e.offset, True
            else:
                piece_end, zero = min(e.end, end), e.blob is None
                i += 1
            if kind is not None and zero != kind:
                yield Extent(run, pos - run, kind)
                run = pos
            kind = zero
            pos = piece_end
        if kind is not None:
            yield Extent(run, end - run, kind)

    # -- internals -------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> int:
        end = offset + length
        if offset < 0 or length < 0 or end > self.size:
            raise ValueError(f"range {offset}+{length} is outside the disk (size {self.size})")
        return end

    def _first(self, offset: int) -> int:
        """Index of the first entry that ends after ``offset``."""
        i = bisect_right(self._starts, offset) - 1
        if i < 0:
            return 0
        return i if self._entries[i].end > offset else i + 1

    def _blob_of(self, e: MapEntry) -> bytes:
        """The verified blob of a data entry, checked to hold the bytes the map says."""
        assert e.blob is not None
        data = self._blob(e.blob)
        if e.blob_offset + e.length > len(data):
            raise IntegrityError(
                f"blob {e.blob[:12]} is shorter than the map of point {self.point.short_id} says"
            )
        return data

    def _blob(self, bid: str) -> bytes:
        with self._cache_lock:
            data = self._cache.get(bid)
            if data is not None:
                self._cache.move_to_end(bid)
                self.cache_hits += 1
                return data
        with self._load_lock:
            with self._cache_lock:  # another thread may have loaded it while we waited
                data = self._cache.get(bid)
                if data is not None:
                    self._cache.move_to_end(bid)
                    self.cache_hits += 1
                    return data
                self.cache_misses += 1
            data = self._load(bid)
        with self._cache_lock:
            if bid not in self._cache and len(data) <= self._cache_limit:
                self._cache[bid] = data
                self._cached_bytes += len(data)
                while self._cached_bytes > self._cache_limit:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= len(old)
        return data

    def _load(self, bid: str) -> bytes:
        """``read_blob``; on failure, once per interval, reload the index and try again."""
        try:
            return self.repo.read_blob(bid)
        except IntegrityError:
            now = time.monotonic()
            if now - self._last_refresh < INDEX_REFRESH_INTERVAL:
                raise
            self._last_refresh = now
            with contextlib.suppress(Exception):  # the first error says more than this one
                self.repo.load_index()
            return self.repo.read_blob(bid)

    def __repr__(self) -> str:
        return f"<PointReader point {self.point.short_id} disk {self.disk} size={self.size}>"


def _check_map(entries: list[MapEntry], size: int, point: RecoveryPoint) -> None:
    """A resolved map must be sorted, non-overlapping and inside the disk; bisect relies on it."""
    pos = 0
    for e in entries:
        if e.length <= 0 or e.offset < pos or e.end > size or e.blob_offset < 0:
            raise IntegrityError(
                f"recovery point {point.short_id} has a malformed extent map near offset {e.offset}"
            )
        pos = e.end
