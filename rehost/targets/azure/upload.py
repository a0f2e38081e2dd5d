"""Write a whole disk into a new page blob from a stream of extents (the uploader).

What a stage-then-boot target does when it has no replica of the point yet, and what the
one-time migration does with a managed disk opened for upload (create with
``uploadSizeBytes`` = padded size + 512, grant write access, Put Page, revoke): the data
arrives as ``Repository.iter_disk`` yields it (the target seam's ``Extent`` stream: offset
order, ``None`` for zeros, pieces that need not be page-aligned). Zeros are skipped (a new
blob reads as zeros), data is cut into 512-byte aligned Put Page requests of at most 4 MiB
(a page shared by data and zeros is written whole, its zero part filled in), several in
flight, and the fixed-VHD footer goes last. Only Put Page is used: a managed disk's upload
SAS allows nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

from rehost.targets.azure.blob import PageBlob
from rehost.targets.azure.plan import MAX_PUT, PAGE
from rehost.targets.azure.vhd import make_footer, padded_size

Extent = tuple[int, int, bytes | None]


@dataclass(frozen=True)
class UploadReport:
    blob: str
    bytes_written: int
    requests: int
    retries: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def page_writes(data: Iterable[Extent], size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) Put Page pieces for the data extents: 512-aligned, <= 4 MiB, zeros
    between extents on a shared page filled in, runs of zeros left out."""
    start = 0
    buf = bytearray()
    for off, length, piece in data:
        if piece is None or length == 0:
            continue
        if off + length > size:
            raise ValueError(f"extent {off}+{length} ends past the disk's {size} bytes")
        page = off - off % PAGE
        end = start + len(buf)
        if buf and page <= -(-end // PAGE) * PAGE:
            buf += bytes(off - end) if off > end else b""
        else:
            if buf:
                yield start, bytes(buf.ljust(-(-len(buf) // PAGE) * PAGE, b"\0"))
            start, buf = page, bytearray(off - page)
        buf += piece
        while len(buf) >= MAX_PUT:
            yield start, bytes(buf[:MAX_PUT])
            del buf[:MAX_PUT]
            start += MAX_PUT
    if buf:
        yield start, bytes(buf.ljust(-(-len(buf) // PAGE) * PAGE, b"\0"))


def upload_disk(
    blob: PageBlob, size: int, data: Iterable[Extent], *, workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> UploadReport:
    """Write a disk of ``size`` bytes into ``blob``, which must exist, be new (all zeros)
    and hold ``padded_size(size) + 512`` bytes; the footer is written last."""
    t0 = time.monotonic()
    req0, retry0 = blob.requests, blob.retries
    written = 0
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="upload") as pool:
        inflight: set[Future[None]] = set()
        for off, chunk in page_writes(data, size):
            while len(inflight) >= 2 * workers:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
            inflight.add(pool.submit(blob.put, off, chunk))
            written += len(chunk)
            if progress:
                progress(off + len(chunk), size)
        for f in wait(inflight).done:
            f.result()
    footer = make_footer(size)
    blob.put(padded_size(size), footer)
    return UploadReport(blob.url, written + len(footer), blob.requests - req0, blob.retries - retry0,
                        round(time.monotonic() - t0, 3))
