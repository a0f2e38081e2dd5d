"""Reading a recovery point back as aligned chunks (export, digest rebuild, NBD serving)."""

from __future__ import annotations

from collections.abc import Iterator

from rehost.repository.manifest import RecoveryPoint
from rehost.repository.repository import CHUNK_SIZE, Repository


def iter_chunks(
    repo: Repository, point: RecoveryPoint, disk: int, chunk: int = CHUNK_SIZE
) -> Iterator[tuple[int, bytes | None]]:
    """(offset, data) per aligned chunk in order; data is None when the chunk is all zeros."""
    size = next(d.size for d in point.disks if d.index == disk)
    buf: bytearray | None = None
    cur = 0  # start of the chunk being assembled
    for off, length, data in repo.iter_disk(point, disk, chunk):
        end = off + length
        while off < end:
            cstart = off - off % chunk
            if cstart != cur:
                yield cur, (bytes(buf) if buf is not None else None)
                for skipped in range(cur + chunk, cstart, chunk):
                    yield skipped, None
                cur, buf = cstart, None
            piece_end = min(end, cstart + chunk)
            if data is not None:
                if buf is None:
                    buf = bytearray(min(chunk, size - cstart))
                start = off - (end - len(data))
                buf[off - cstart : piece_end - cstart] = data[start : start + piece_end - off]
            off = piece_end
    if cur < size:
        yield cur, (bytes(buf) if buf is not None else None)
        for skipped in range(cur + chunk, size, chunk):
            yield skipped, None
