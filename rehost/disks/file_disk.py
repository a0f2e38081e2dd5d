"""FileDisk: a raw image file read in place, without qemu-nbd.

A raw image has no format to parse: its bytes are the disk's. Reading it straight from the
file saves a qemu-nbd process per cycle and, for every MiB, the trip through the NBD socket
(docs/benchmarks.md, "floors": the same extents read through qemu-nbd and in place). Every
other format still goes through QEMU, which parses it.

What stays the same as through qemu-nbd ``--cache=none``:
- extents: holes come from ``SEEK_DATA``/``SEEK_HOLE``, what QEMU's file driver reports as
  ``base:allocation`` for a raw file, so holes are never read;
- the page cache: reads use ``O_DIRECT`` so replicating a big image on a production host
  does not push its working set out of memory. ``O_DIRECT`` wants the buffer, the offset
  and the length aligned: the cycle asks ``buffer`` for page-aligned memory, and a piece
  that is not aligned (the tail of a file whose size is not a multiple of 4 KiB, a caller's
  own ``bytearray``) goes through an aligned bounce buffer. Where the file system refuses
  ``O_DIRECT`` (tmpfs), the file is read through the page cache, which tmpfs is anyway.

Pages already in the page cache are the exception: ``O_DIRECT`` would fetch them from the
device again (and write back the dirty ones first), while a buffered read copies them from
memory and evicts nothing, since they are resident already. ``cachestat`` says how many
pages of a span are (all or none, usually); where it is some, ``mincore`` on a short-lived
mapping of the span says which. Resident runs are read buffered, the rest with
``O_DIRECT``. On a host whose guest writes with ``cache=none`` nothing is resident and every
read is direct; on the benchmark's image, written just before, most of it is
(docs/benchmarks.md, issue 17). A page evicted between ``mincore`` and the read is read into
the cache once: one page, not the working set. Linux answers ``mincore`` truthfully only to
the file's owner or a process that may write it (otherwise it says "all resident"), so
anyone else reads every page direct.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import re
import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from rehost.disks.extent import Extent
from rehost.errors import DiskError

#: O_DIRECT alignment used for buffers, offsets and lengths (covers 512 and 4096 sectors)
ALIGN = 4096
#: the largest single ``preadv``: consecutive pieces are read together up to this size
MAX_READ = 8 << 20

Buffer = bytearray | memoryview

PAGE = mmap.PAGESIZE
_PROT_READ, _MAP_SHARED = 0x1, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
#: PyDLL: these calls keep the GIL. They take microseconds, and a call that gives the GIL up
#: waits to take it back while the cycle's workers run Python (up to the 5 ms switch interval)
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long
_libc.lseek.restype = ctypes.c_long
_libc.lseek.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
#: CDLL: calls that give the GIL up, for those that take long (the kernel walking many pages)
_libc_nogil = ctypes.CDLL(None, use_errno=True)
_libc_nogil.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc_nogil.syscall.restype = ctypes.c_long
#: how far ahead ``mapped`` asks whether pages are cached: one call (without the GIL) for a
#: worker's batch of chunks; one call per chunk, with the GIL, held it 43 ms of a 0.3 s delta
RESIDENT_WINDOW = 8 * 1024 * 1024
#: cachestat(2) (Linux 6.5): how many pages of a range are cached, without mapping the file
_SYS_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(os.uname().machine)
#: mincore's bytes: bit 0 is "resident", the others are reserved
_RESIDENT = bytes(i & 1 for i in range(256))
#: a page's kind in a run: 0 read direct, 1 read through the page cache, 2 a hole (zeros)
#: a hole's page that is not cached is zero-filled, one that is is read with its neighbours
_HOLE_UNLESS_CACHED = bytes([2, 1, *range(2, 256)])
_RUNS = re.compile(rb"\x00+|\x01+|\x02+")
_ZEROS = bytes(MAX_READ)


def aligned_buffer(length: int) -> memoryview:
    """Page-aligned, zero-filled memory (anonymous ``mmap``), freed with its last view."""
    return memoryview(mmap.mmap(-1, max(length, 1)))[:length]


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def _readonly_address(obj: mmap.mmap) -> int:
    """Where a read-only mapping starts (``from_buffer`` takes writable buffers only)."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), 0) != 0:
        raise DiskError("cannot take the address of the image's mapping")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class FileDisk:
    """A raw image file as a cycle's ``ReadableDisk`` (``size``, extents, reads)."""

    #: a read across a hole costs no I/O (the kernel fills zeros), so a cycle may read one span
    #: over several islands of data instead of one request per island
    holes_read_as_zeros = True
    #: every read is its own ``preadv`` (and ``mincore`` on its own mapping), so a cycle's
    #: workers may read batches side by side: a delta reads the whole allocated disk, mostly
    #: copies out of the page cache, and one thread doing all of it was the cycle's bottleneck
    parallel_reads = True

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = Path(path)
        self.name = str(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            self.direct = True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise DiskError(f"cannot open {self.path}: {e.strerror}") from None
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # tmpfs: no O_DIRECT
            self.direct = False
        st = os.fstat(self._fd)
        file_size = st.st_size
        self._holes: list[tuple[int, int]] = []  # of the last whole-disk map (``extents``)
        self._hole_ends: list[int] = []
        #: a buffered descriptor for resident pages, when mincore's answer can be trusted
        self._cached_fd = -1
        if self.direct and (os.geteuid() in (0, st.st_uid) or os.access(self.path, os.W_OK)):
            self._cached_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._cachestat = _SYS_CACHESTAT is not None
        self._map: mmap.mmap | None = None
        self._map_view: memoryview | None = None
        self._map_address = 0
        self._cached_span = threading.local()  # per thread: (start, end) found all cached
        self.size = file_size if size is None else size
        if self.size > file_size:
            self.close()
            raise DiskError(f"{self.path} holds {file_size} bytes, less than its disk's {self.size}")
        if self._cached_fd >= 0 and self._cachestat and self.size:
            self._map = mmap.mmap(self._cached_fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
            self._map_view = memoryview(self._map)
            self._map_address = _readonly_address(self._map)

    def close(self) -> None:
        if self._map is not None:
            self._map_view.release()  # type: ignore[union-attr]
            with contextlib.suppress(BufferError):  # a view still held: unmapped with it
                self._map.close()
            self._map = self._map_view = None
        for fd in (self._fd, self._cached_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._cached_fd = -1

    def __enter__(self) -> FileDisk:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def buffer(self, length: int) -> memoryview:
        """Memory a read can fill without a bounce copy."""
        return aligned_buffer(length)

    def mapped(self, offset: int, length: int) -> memoryview | None:
        """``[offset, offset + length)`` as a read-only view of the file's mapping when every
        page of it is in the page cache, else None (``readinto`` it then).

        A resident span is read without a copy: a hash-diff delta of the benchmark's image
        spent more time copying 1.6 GiB out of the page cache than hashing it, and the
        digests, ids and compression read the view directly. Nothing enters the page cache
        this way (``cachestat`` said all of it is there), so the rule of ``O_DIRECT`` for the
        rest still holds (the page cache is asked for ``RESIDENT_WINDOW`` at once, so what it
        said may be milliseconds old, as it always was by the time the view is read). The
        file's size is checked first: one cut shorter since the disk was
        opened is read, and its end is a ``DiskError``. Cut shorter in the milliseconds a
        chunk's view is in use, it ends the process with SIGBUS, and the vault is as after any
        kill: consistent, the cycle resumable."""
        view = self._map_view
        if view is None or length <= 0 or offset < 0 or offset + length > self.size:
            return None
        start, end = getattr(self._cached_span, "span", (0, 0))
        if not start <= offset < offset + length <= end:
            end = min(self.size, offset + RESIDENT_WINDOW)
            if self._cached_pages(offset, end - offset, _libc_nogil) == -(-(end - offset) // PAGE):
                self._cached_span.span = (offset, end)
            elif self._cached_pages(offset, length) != -(-length // PAGE):
                return None
        # the size, without os.fstat giving the GIL up (this descriptor is only read by preadv)
        if _libc.lseek(self._cached_fd, 0, os.SEEK_END) < offset + length:
            return None
        return view[offset : offset + length]

    def unmap(self, offset: int, length: int) -> None:
        """A view from ``mapped`` is no longer read: drop its pages from this process's page
        tables (the page cache keeps them). Otherwise every page a cycle looked at would stay
        mapped until the disk is closed: the process's RSS would grow to the image's size and
        its page tables by 2 MiB per GiB. Touching the view again only maps the pages again.
        The GIL is given up meanwhile (``mmap.madvise`` keeps it): a delta's 2 GiB took 37 ms
        of the cycle's thread, and the workers waited for them."""
        if self._map is not None and offset % PAGE == 0 and length > 0:
            length = min(length, self.size - offset)
            _libc_nogil.madvise(self._map_address + offset, length, mmap.MADV_DONTNEED)

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Data and holes of ``[start, start + length)`` from the file system's own map.

        The holes of a whole-disk map are kept: a read that spans one of them (a cycle reads a
        chunk as one span) fills it with zeros instead of asking the kernel, which would be one
        more system call per hole (2,542 holes in the benchmark's ext4 image, each call waiting
        for the GIL while the workers hash). A cycle works from the map it asked for, so what
        that map called a hole is zeros for the whole cycle, as when holes were never read."""
        whole = start == 0 and length is None
        holes: list[tuple[int, int]] = []
        for e in self._extents(start, length):
            if whole and e.zero:
                holes.append((e.start, e.end))
            yield e
        if whole:
            self._holes, self._hole_ends = holes, [b for _, b in holes]

    def _extents(self, start: int, length: int | None) -> Iterator[Extent]:
        end = self.size if length is None else min(self.size, start + length)
        at = start
        while at < end:
            try:
                data = os.lseek(self._fd, at, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise DiskError(f"{self.path}: SEEK_DATA failed: {e.strerror}") from None
                data = end
            data = min(data, end)
            if data > at:
                yield Extent(at, data - at, zero=True)
            if data >= end:
                return
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            yield Extent(data, hole - data)
            at = hole

    def readinto(self, offset: int, buf: Buffer) -> int:
        return self.readinto_many([(offset, buf)])

    def readinto_many(self, pieces: Sequence[tuple[int, Buffer]]) -> int:
        """Fill each buffer from its offset; consecutive aligned pieces are one ``preadv``."""
        views = [(offset, memoryview(b).cast("B")) for offset, b in pieces]
        for offset, view in views:
            if offset < 0 or offset + len(view) > self.size:
                raise DiskError(f"{self.path}: read of {len(view)} bytes at {offset} is outside the disk "
                                f"({self.size} bytes)")
        run: list[memoryview] = []
        run_start = run_end = 0
        for offset, view in sorted(views, key=lambda p: p[0]):
            if not len(view):
                continue
            if not self._aligned(offset, view):
                self._bounce(offset, view)
                continue
            if run and offset == run_end and run_end - run_start + len(view) <= MAX_READ:
                run.append(view)
                run_end += len(view)
                continue
            if run:
                self._preadv(run, run_start)
            run, run_start, run_end = [view], offset, offset + len(view)
        if run:
            self._preadv(run, run_start)
        return sum(len(v) for _, v in views)

    def _aligned(self, offset: int, view: memoryview) -> bool:
        if not self.direct:
            return True
        return (offset % ALIGN == 0 and len(view) % ALIGN == 0 and not view.readonly
                and _address(view) % ALIGN == 0)

    def _preadv(self, views: list[memoryview], offset: int) -> None:
        """An aligned run: holes of the map zero-filled, resident pages through the page
        cache, the rest direct."""
        want = sum(len(v) for v in views)
        pages = -(-want // PAGE)
        resident = self._resident(offset, want) if self._cached_fd >= 0 and want else None
        kinds = bytearray(resident if resident is not None else pages)  # 0: direct, 1: cached
        i = bisect_right(self._hole_ends, offset)
        while i < len(self._holes) and self._holes[i][0] < offset + want:
            a, b = self._holes[i]
            first, end = max(0, -(-(a - offset) // PAGE)), min(pages, (b - offset) // PAGE)
            if end > first:  # whole pages only: 1 KiB fs blocks
                # a cached page of a hole is read with the data around it (zeros, from memory):
                # one ``preadv`` per island of data cost more than the copy it saves
                kinds[first:end] = kinds[first:end].translate(_HOLE_UNLESS_CACHED)
            i += 1
        for run in _RUNS.finditer(kinds):
            first, length = run.start() * PAGE, min(run.end() * PAGE, want) - run.start() * PAGE
            pieces = _skip(views, first, length)
            kind = kinds[run.start()]
            if kind == 2:
                for piece in pieces:
                    piece[:] = _ZEROS[: len(piece)]
            else:
                self._read(self._cached_fd if kind == 1 else self._fd, pieces, offset + first)

    def _resident(self, offset: int, length: int) -> bytes | None:
        """One byte per page of ``[offset, offset + length)``: 1 where it is in the page cache;
        None when the kernel will not say (the read is then direct).

        ``cachestat`` counts the cached pages without a mapping: all or none of them, the
        common answers, need nothing more. ``mincore`` maps the span, and the mapping's set-up
        and tear-down serialise the cycle's reading threads (the mapping lock, a TLB flush)."""
        pages = -(-length // PAGE)
        if self._cachestat:
            cached = self._cached_pages(offset, length)
            if cached == pages:
                return b"\1" * pages
            if cached == 0:
                return bytes(pages)
        addr = _libc.mmap(None, length, _PROT_READ, _MAP_SHARED, self._fd, offset)
        if addr is None or addr == _MAP_FAILED:
            return None
        try:
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, length, vec) != 0:
                return None
            return vec.raw[:pages].translate(_RESIDENT)
        finally:
            _libc.munmap(addr, length)

    def _cached_pages(self, offset: int, length: int, libc: ctypes.CDLL = _libc) -> int | None:
        """Pages of the range in the page cache (``cachestat``), or None where the kernel
        has no such call (before 6.5) or refuses it: ``mincore`` answers from then on.
        ``libc``: ``_libc_nogil`` for a long range, the GIL given up meanwhile."""
        span = (ctypes.c_uint64 * 2)(offset, length)
        stat = (ctypes.c_uint64 * 5)()
        if libc.syscall(_SYS_CACHESTAT, self._fd, span, stat, 0) != 0:
            self._cachestat = False
            return None
        return int(stat[0])

    def _read(self, fd: int, views: list[memoryview], offset: int) -> None:
        want = sum(len(v) for v in views)
        done = 0
        while done < want:
            try:
                n = os.preadv(fd, _skip(views, done), offset + done)
            except OSError as e:
                raise DiskError(f"{self.path}: read at {offset + done} failed: {e.strerror}") from None
            if n == 0:
                raise DiskError(f"{self.path}: unexpected end of file at {offset + done}")
            done += n

    def _bounce(self, offset: int, view: memoryview) -> None:
        """An unaligned piece: read the aligned span around it, copy the piece out."""
        start = offset - offset % ALIGN
        end = -(-(offset + len(view)) // ALIGN) * ALIGN
        scratch = aligned_buffer(end - start)
        got = 0
        while got < end - start:
            try:
                n = os.preadv(self._fd, [scratch[got:]], start + got)
            except OSError as e:
                raise DiskError(f"{self.path}: read at {start + got} failed: {e.strerror}") from None
            if n == 0:
                break  # end of file inside the last aligned block
            got += n
        if got < offset - start + len(view):
            raise DiskError(f"{self.path}: unexpected end of file at {start + got}")
        view[:] = scratch[offset - start : offset - start + len(view)]


def _skip(views: list[memoryview], done: int, length: int | None = None) -> list[memoryview]:
    """The views' bytes from ``done`` on, ``length`` of them or all (a short ``preadv`` goes
    on where it stopped; a run is split where residency changes)."""
    out: list[memoryview] = []
    left = sum(len(v) for v in views) if length is None else length
    for v in views:
        if left <= 0:
            break
        if done >= len(v):
            done -= len(v)
            continue
        piece = v[done : done + left]
        out.append(piece)
        left -= len(piece)
        done = 0
    return out
