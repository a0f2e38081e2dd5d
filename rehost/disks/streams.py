"""Disks that QEMU cannot read in place: gzip-compressed or chunked export files, and blank
disks that have no file at all.

A compressed or chunked disk is a *stream*: its pieces (tar members or files) read in order,
concatenated, then gunzipped. QEMU needs random access (a streamOptimized VMDK's grain
directory sits at its end), so the stream is written once into a cache file, named by what
it was made from (path, offsets, sizes, modification time): the next cycle reuses it, a
re-exported file makes a new one. A blank disk is ``ZeroDisk``: all zeros, nothing to read.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rehost.disks.extent import Extent
from rehost.disks.ovf import MAX_CAPACITY, OvfError

#: read and write in pieces of this size
_BLOCK = 1 << 20
#: VMDK sparse extent header: magic "KDMV", version, flags, capacity (sectors)
_VMDK_MAGIC = b"KDMV"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Piece:
    """A byte range of a file: a tar member or a whole chunk file."""

    path: Path
    offset: int
    length: int


def read_stream(pieces: Sequence[Piece], compression: str, where: str,
                consumed: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The disk's bytes: the pieces in order, gunzipped if ``compression`` is gzip.

    A gzip stream may have several members (``gzip -c a b``); each is decompressed in turn.
    A damaged or truncated stream is an OvfError naming ``where``. ``consumed`` hears how many
    bytes of the pieces have been read (a progress bar's measure: the uncompressed size of a
    gzip stream is unknown until its end)."""
    raw = _raw(pieces, consumed)
    if compression != "gzip":
        yield from raw
        return
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fed = False  # the current gzip member has begun
    try:
        for data in raw:
            while data or fed:
                fed = True
                out = inflater.decompress(data, _BLOCK)
                if out:
                    yield out
                data = inflater.unconsumed_tail
                if inflater.eof:
                    data = inflater.unused_data
                    inflater, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                elif not data and len(out) < _BLOCK:
                    break  # all input taken, nothing pending: the next piece
        if fed:
            raise OvfError(f"{where}: the gzip stream is truncated")
    except zlib.error as e:
        raise OvfError(f"{where}: not a valid gzip stream ({e})") from None


def _raw(pieces: Sequence[Piece], consumed: Callable[[int], None] | None) -> Iterator[bytes]:
    done = 0
    for p in pieces:
        with open(p.path, "rb") as f:
            f.seek(p.offset)
            left = p.length
            while left:
                data = f.read(min(_BLOCK, left))
                if not data:
                    raise OvfError(f"{p.path}: ends before byte {p.offset + p.length} (truncated)")
                left -= len(data)
                done += len(data)
                if consumed:
                    consumed(done)
                yield data


def virtual_size(pieces: Sequence[Piece], compression: str, capacity: int | None, where: str) -> int:
    """The disk's size without unpacking it all: a VMDK's header says it in its first sector;
    otherwise the descriptor's capacity must."""
    head = b""
    for data in read_stream(pieces, compression, where):
        head += data
        if len(head) >= 512:
            break
    if head[:4] == _VMDK_MAGIC and len(head) >= 20:
        sectors = struct.unpack_from("<Q", head, 12)[0]
        if 0 < sectors * 512 <= MAX_CAPACITY:
            return int(sectors) * 512
    if capacity:
        return capacity
    raise OvfError(f"{where}: packed disk with no capacity in the descriptor and no VMDK header")


def cache_key(pieces: Sequence[Piece], compression: str) -> str:
    """A name for the unpacked stream that changes whenever its sources do."""
    h = hashlib.sha256(compression.encode())
    for p in pieces:
        st = p.path.stat()
        h.update(f"{p.path.resolve()}\0{p.offset}\0{p.length}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:32]


def unpack(pieces: Sequence[Piece], compression: str, dest: Path, where: str,
           progress: Progress | None = None) -> Path:
    """Write the stream into ``dest`` once (atomically: a cut unpack leaves no half file that a
    later cycle would take for whole); an existing ``dest`` is reused. Zero runs become holes."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.length for p in pieces)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    consumed = (lambda done: progress(done, total)) if progress else None
    try:
        with open(tmp, "wb") as out:
            for data in read_stream(pieces, compression, where, consumed):
                if data.count(0) == len(data):
                    out.seek(len(data), os.SEEK_CUR)
                else:
                    out.write(data)
            out.truncate()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class ZeroDisk:
    """A blank disk (``ovf:capacity`` only): ``size`` bytes of zeros, one zero extent, so a
    cycle stores nothing for it."""

    def __init__(self, size: int, name: str = "blank disk") -> None:
        self._size = size
        self.name = name

    @property
    def size(self) -> int:
        return self._size

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self._size if length is None else min(self._size, start + length)
        if end > start:
            yield Extent(start, end - start, zero=True)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        if offset < 0 or offset + len(view) > self._size:
            raise ValueError(f"{self.name}: read past the end ({offset}+{len(view)} > {self._size})")
        view[:] = bytes(len(view))
        return len(view)
