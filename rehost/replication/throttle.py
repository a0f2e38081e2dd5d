"""A bandwidth limit on what a cycle reads from the source: for an agent, the traffic on the
link from the source machine (ASR throttles its process server the same way).

The repository side has its own wrapper (``rehost.repository.storage.ThrottledStorage``);
a policy's limit applies to both, so neither link carries more than it allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rehost.disks.extent import Extent
from rehost.replication.reading import ReadableDisk
from rehost.repository.storage.throttle import TokenBucket


class ThrottledDisk:
    """``inner`` read at most ``bucket.rate`` bytes per second (the bucket may be shared by
    every disk of the machine: the limit is per cycle, not per disk)."""

    def __init__(self, inner: ReadableDisk, bucket: TokenBucket) -> None:
        self.inner = inner
        self.bucket = bucket

    @property
    def size(self) -> int:
        return self.inner.size

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        return self.inner.extents(start, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        self.bucket.take(len(buf))
        return self.inner.readinto(offset, buf)

    def readinto_many(self, pieces: Sequence[tuple[int, memoryview]]) -> int:
        self.bucket.take(sum(len(v) for _, v in pieces))
        many = getattr(self.inner, "readinto_many", None)
        if many is not None:
            return int(many(pieces))
        return sum(self.inner.readinto(offset, view) for offset, view in pieces)


def throttled(disks: Sequence[tuple[int, ReadableDisk]], bps: int | None) -> list[tuple[int, ReadableDisk]]:
    """The snapshot's disks behind one shared limit of ``bps`` (None: as they are)."""
    if not bps:
        return list(disks)
    bucket = TokenBucket(bps)
    return [(index, ThrottledDisk(disk, bucket)) for index, disk in disks]
