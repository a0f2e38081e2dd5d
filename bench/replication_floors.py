#!/usr/bin/env python3
"""Benchmark (not a test): the floors under a rehost replication cycle, on one image.

How long do the pieces of a cycle take alone, one thread, on the same data: reading the
image from the page cache, the per-block XXH3 digests, keyed BLAKE3 blob ids, zstd at a few
levels, the whole image read and digested by one thread and by two (a hash-diff delta's floor
on two cores), the same with resident chunks taken as views of the file's mapping and digested
natively (as a cycle does now), a scattered delta's per-blob id and compression alone and
beside a thread running Python (the GIL's cost to small calls), then sealed natively a chunk
at a time, and a 1 % delta's chunks diffed and sealed in one native call each (as a cycle does
now: rehost/replication/_chunkdiff.c), alone and beside a thread running Python; reading the allocated
extents through qemu-nbd 1 MiB or 8 MiB per call (a cycle's read batch), with rehost's cache
mode (none: O_DIRECT) and with writeback, and in place as a cycle reads a raw image
(``FileDisk``: pages in the page cache through it, the others with O_DIRECT into aligned
buffers), once with the image resident and once evicted; and what an uncompressed initial
copy costs instead: stored zstd frames, and its packs written through the page cache or with
O_DIRECT (as rehost writes them).

    .venv/bin/python bench/replication_floors.py IMAGE

IMAGE is a raw image, e.g. one kept by ``bench/replication.py --keep``. Read it once first
(``cat IMAGE > /dev/null``) for the page-cache figures. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import blake3
import xxhash
import zstandard
from harness import MiB

from rehost.disks import DiskImage, FileDisk, QemuNbdServer, open_nbd
from rehost.disks.file_disk import aligned_buffer
from rehost.replication.digests import NATIVE_VARIANT, digest_blocks
from rehost.repository.crypto import NATIVE_ID_MAX, NATIVE_SEALING, ZSTD_LEVEL, KeyMaterial, Sealer
from rehost.repository.crypto import blob_ids as crypto_blob_ids

BLOCK = 4096


def chunks(image: Path) -> Iterator[bytes]:
    with image.open("rb", buffering=0) as f:
        buf = bytearray(MiB)
        while n := f.readinto(buf):
            yield bytes(buf[:n])


def timed(label: str, work: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    result = work()
    print(f"| {label} | {time.perf_counter() - t0:.2f} | {result} |", flush=True)


def digests(data: list[bytes]) -> str:
    h = xxhash.xxh3_64_digest
    n = sum(len(h(memoryview(c)[i : i + BLOCK])) for c in data for i in range(0, len(c), BLOCK))
    return f"{n // 8} blocks"


def compress(data: list[bytes], level: int) -> str:
    cctx = zstandard.ZstdCompressor(level=level)
    out = sum(len(cctx.compress(c)) for c in data)
    return f"ratio {out / (len(data) * MiB):.3f}"


def nbd_read(image: Path, cache: str, aio: str, window: int) -> str:
    """Read every allocated, non-zero extent through qemu-nbd, ``window`` MiB per call
    (ranges merged inside the window, like a cycle's read batch); return MiB read."""
    size = image.stat().st_size
    with QemuNbdServer(DiskImage(image, "raw", size, 0, None), cache=cache, aio=aio) as server:
        disk = open_nbd(server.socket_path)
        data = [(e.start, e.end) for e in disk.extents() if not e.zero]
        buf, read = memoryview(bytearray(window * MiB)), 0
        for start in range(0, size, window * MiB):
            end = min(start + window * MiB, size)
            for a, b in data:
                if a < end and b > start:
                    a, b = max(a, start), min(b, end)
                    disk.readinto(a, buf[a - start : b - start])
                    read += b - a
        disk.close()
    return f"{read / MiB:.0f} MiB"


def file_read(image: Path, window: int, resident: bool) -> str:
    """Read every allocated extent in place (``FileDisk``), ``window`` MiB of aligned buffer
    per call, as a cycle reads a raw image: the image first read whole (every page resident:
    ``FileDisk`` reads them through the page cache) or first evicted (``O_DIRECT``)."""
    with image.open("rb") as f:
        if resident:
            while f.read(8 * MiB):
                pass
        else:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    with FileDisk(image) as disk:
        data = [(e.start, e.end) for e in disk.extents() if not e.zero]
        buf, read = aligned_buffer(window * MiB), 0
        for start in range(0, disk.size, window * MiB):
            end = min(start + window * MiB, disk.size)
            pieces = [(max(a, start), buf[max(a, start) - start : min(b, end) - start])
                      for a, b in data if a < end and b > start]
            read += disk.readinto_many(pieces)
    return f"{read / MiB:.0f} MiB"


def page_cache_read(image: Path) -> str:
    return f"{sum(1 for _ in chunks(image))} MiB"


def read_and_digest(image: Path, threads: int) -> str:
    """What a hash-diff delta cannot do without: every byte read (8 MiB ``preadv`` into a
    buffer used again, from the page cache) and its 4 KiB blocks digested, split over
    ``threads``. On two cores this is the floor of a delta's cycle on an image without change
    tracking, before any bookkeeping."""
    size = image.stat().st_size
    fd = os.open(image, os.O_RDONLY)
    step = -(-size // threads // (8 * MiB)) * 8 * MiB

    def part(lo: int, hi: int) -> None:
        buf = memoryview(bytearray(8 * MiB))
        h = xxhash.xxh3_64_digest
        for off in range(lo, hi, 8 * MiB):
            n = os.preadv(fd, [buf], off)
            [h(buf[i : i + BLOCK]) for i in range(0, n, BLOCK)]

    try:
        workers = [threading.Thread(target=part, args=(i * step, min(size, (i + 1) * step)))
                   for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        os.close(fd)
    return f"{size // MiB} MiB"


def mapped_and_digest(image: Path, threads: int) -> str:
    """The same floor as a cycle now reaches it on a resident raw image: each 1 MiB chunk
    with data taken as a view of the file's mapping (``FileDisk.mapped``: no copy) and
    digested by rehost's ``digest_blocks`` (native where built: one call per chunk, without
    the GIL), chunks split over ``threads``."""
    with FileDisk(image) as disk:
        data = sorted({c for e in disk.extents() if not e.zero
                       for c in range(e.start - e.start % MiB, e.end, MiB)})
        views = [0]

        def part(offsets: list[int]) -> None:
            buf = aligned_buffer(MiB)
            for off in offsets:
                n = min(MiB, disk.size - off)
                view = disk.mapped(off, n)
                if view is None:
                    disk.readinto(off, buf[:n])
                    view = buf[:n]
                else:
                    views[0] += 1
                digest_blocks(view)

        workers = [threading.Thread(target=part, args=(data[i::threads],)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return f"{len(data)} chunks, {views[0]} mapped, digests {NATIVE_VARIANT or 'in Python'}"


@contextmanager
def python_beside(on: bool) -> Iterator[None]:
    """Another thread running pure Python meanwhile (when ``on``): what a native call that
    gives the GIL up meets in a cycle, where it waits a switch interval to take it back."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    other = threading.Thread(target=spin)
    if on:
        other.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            other.join()


def seal_blocks(count: int, beside_python: bool, native: bool = False) -> str:
    """A scattered delta's per-blob floor: keyed BLAKE3 id and zstd level 1 of ``count``
    random 4 KiB blocks (what a 10 % delta of the benchmark stores), one call each, alone or
    while another thread runs Python. Both libraries give the GIL up for every call, and
    taking it back waits for the other thread's switch interval (up to 5 ms). ``native``:
    as a cycle seals now (rehost/repository/_sealing.c), the ids of a chunk's 23 blocks (a
    10 % delta's share of 1 MiB) in one call and their compression in another."""
    rng = random.Random(1)
    blocks = [rng.randbytes(BLOCK) for _ in range(count)]
    key, cctx = bytes(32), zstandard.ZstdCompressor(level=1)
    if native and not NATIVE_SEALING:
        return "native sealing not built"
    sealer = Sealer(KeyMaterial(hash_key=key))
    groups = [blocks[i : i + 23] for i in range(0, count, 23)]
    with python_beside(beside_python):
        t0 = time.perf_counter()
        if native:
            for g in groups:
                sealer.seal_many(g, [i.encode() for i in crypto_blob_ids(key, g)])
        for b in blocks if not native else ():
            blake3.blake3(b, key=key).hexdigest()
            cctx.compress(b)
    return f"{(time.perf_counter() - t0) / count * 1e6:.1f} µs per block"


def chunk_diffs(data: list[bytes], beside_python: bool) -> str:
    """A 1 % delta's cycle work per chunk, in one native call each (``_chunkdiff``; a cycle
    passes a batch of eight): digest the chunk, compare with the old digests, cut and seal
    the changed runs. Every chunk differs from its "old" digests in 1 % of its blocks,
    scattered; alone, or while another thread runs Python (one GIL hand-off per chunk)."""
    try:
        from rehost.replication import _chunkdiff
    except ImportError:
        return "native chunk diff not built"
    rng = random.Random(1)
    olds = []
    for c in data:
        old = bytearray(digest_blocks(c))
        for b in rng.sample(range(len(c) // BLOCK), max(1, len(c) // BLOCK // 100)):
            old[8 * b : 8 * b + 8] = bytes(8)
        olds.append(bytes(old))
    args = {"hash_key": bytes(32), "id_max": NATIVE_ID_MAX, "level": ZSTD_LEVEL, "data_key": None,
            "raw": False}
    with python_beside(beside_python):
        t0 = time.perf_counter()
        blobs = sum(len(_chunkdiff.diff_and_seal_many([c], [o], **args)[0][2])
                    for c, o in zip(data, olds, strict=True))
    return f"{blobs:,} blobs sealed, {(time.perf_counter() - t0) / len(data) * 1e6:.0f} µs per chunk"


def raw_frames(data: list[bytes]) -> str:
    """What an initial copy's sealing costs when it stores instead of compressing."""
    sealer = Sealer(KeyMaterial.generate(encrypted=False))
    out = sum(len(f) for f in sealer.seal_many(data, [b""] * len(data), raw=True))
    return f"{out / MiB:,.0f} MiB of frames"


def write_packs(where: Path, data: list[bytes], direct: bool) -> str:
    """The data as 16 MiB packs saved by rehost's local storage (named as rehost names them:
    BLAKE3 since 2026-12-07, SHA-256 before; each file fsynced), with O_DIRECT (as it writes
    packs) or through the page cache."""
    import shutil

    from rehost.repository.pack import pack_id_of
    from rehost.repository.storage import Kind, LocalStorage, local

    root = where / "floor-packs"
    shutil.rmtree(root, ignore_errors=True)
    storage = LocalStorage.create(root)
    saved, local.DIRECT_MIN = local.DIRECT_MIN, local.DIRECT_MIN if direct else 1 << 62
    try:
        for i in range(0, len(data), 16):
            pack = b"".join(data[i : i + 16])
            storage.save(Kind.DATA, pack_id_of(pack), pack)
    finally:
        local.DIRECT_MIN = saved
        shutil.rmtree(root)
    return f"{-(-len(data) // 16)} packs"


def blob_ids(data: list[bytes]) -> str:
    key = bytes(32)
    return f"{len([blake3.blake3(c, key=key).digest() for c in data])} ids"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Floors under a rehost cycle, on one raw image.")
    p.add_argument("image", type=Path)
    image = p.parse_args(argv).image
    data = [c for c in chunks(image) if c.count(0) != len(c)]
    steps: list[tuple[str, Callable[[], str]]] = [
        ("read the image from the page cache (readinto, 1 MiB)", partial(page_cache_read, image)),
        ("XXH3-64 of every 4 KiB block", partial(digests, data)),
        *((f"read (8 MiB preadv, buffer used again) + XXH3 of every block, {n} thread{'s' * (n > 1)}",
           partial(read_and_digest, image, n)) for n in (1, 2)),
        *((f"resident chunks as views of the mapping + rehost's digest_blocks, {n} thread{'s' * (n > 1)}",
           partial(mapped_and_digest, image, n)) for n in (1, 2)),
        ("keyed BLAKE3 id + zstd 1 of 47,000 random 4 KiB blocks", partial(seal_blocks, 47_000, False)),
        # 2,000 only: at about 2 ms a block, 47,000 take minutes
        ("the same for 2,000 blocks, beside a thread running Python", partial(seal_blocks, 2_000, True)),
        ("the same 47,000 sealed natively, 23 blocks per call (rehost's sealing)",
         partial(seal_blocks, 47_000, False, True)),
        ("the same natively, beside a thread running Python", partial(seal_blocks, 47_000, True, True)),
        *((f"a 1 % delta's chunks diffed and sealed natively, one call each{how}",
           partial(chunk_diffs, data, beside))
          for beside, how in ((False, ""), (True, ", beside a thread running Python"))),
        ("keyed BLAKE3 of every 1 MiB chunk", partial(blob_ids, data)),
        *((f"zstd level {lvl} of every 1 MiB chunk", partial(compress, data, lvl)) for lvl in (3, 1, -1)),
        ("stored (raw) zstd frames of every 1 MiB chunk, natively (a deferred initial copy)",
         partial(raw_frames, data)),
        *((f"save the chunks as 16 MiB packs (BLAKE3 names, fsync), {how}",
           partial(write_packs, image.parent, data, d))
          for d, how in ((False, "through the page cache"), (True, "O_DIRECT (rehost)"))),
        *((f"NBD read, {w} MiB per call, qemu-nbd cache={cache}", partial(nbd_read, image, cache, aio, w))
          for w in (1, 8) for cache, aio in (("none", "native"), ("writeback", "threads"))),
        *((f"in-place read (FileDisk), {w} MiB per call, image {how}", partial(file_read, image, w, res))
          for res, how in ((True, "resident: page cache"), (False, "evicted: O_DIRECT")) for w in (1, 8)),
    ]
    print(f"{image}: {len(data)} non-zero 1 MiB chunks\n")
    print("| step (one thread unless said) | seconds | result |\n|---|--:|---|")
    for label, work in steps:
        timed(label, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
