"""NbdDisk: one NBD connection, with extents first and ~1 MiB pipelined I/O.

The data path asks for extents before it reads, and never reads holes or zeros
(``base:allocation``). Reads and writes are split into ``REQUEST_SIZE`` requests that are
all in flight at once (libnbd's aio calls straight into the caller's buffer, no copy),
so the per-request Python cost is paid per MiB, never per 4 KiB block. Capability
queries (``can_zero``, ``can_flush``...) are kept apart from operations, like nbdcopy.

One NbdDisk is one connection; use it from one thread at a time. Parallel readers open
several connections to the same server (qemu-nbd ``--shared``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import nbd

from rehost.disks.extent import Extent
from rehost.errors import DiskError

BASE_ALLOCATION = "base:allocation"
STATE_HOLE = 1
STATE_ZERO = 2
DIRTY = 1

#: Size of one read or write request: large enough to amortize Python, small enough
#: that servers accept it (qemu-nbd's maximum is 32 MiB).
REQUEST_SIZE = 1 << 20
#: Requests kept in flight by one readinto/pwrite call.
MAX_IN_FLIGHT = 16
#: One block-status or zero request covers at most this much (NBD counts are 32-bit).
STATUS_CHUNK = 1 << 30

Buffer = bytearray | memoryview
Data = bytes | bytearray | memoryview


class NbdDisk:
    """A disk behind one NBD connection (``size``, extents, reads, writes)."""

    def __init__(self, handle: Any, *, name: str = "") -> None:
        self._h: Any = handle
        self.name = name
        self.size: int = _call(handle.get_size)
        self.readonly: bool = bool(_call(handle.is_read_only))
        maximum = int(_call(handle.get_block_size, nbd.SIZE_MAXIMUM)) or REQUEST_SIZE
        self.request_size = min(REQUEST_SIZE, maximum)

    @classmethod
    def connect(
        cls,
        uri_or_socket: str | os.PathLike[str],
        export_name: str = "",
        meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
    ) -> NbdDisk:
        """Connect to an NBD server by ``nbd://``/``nbd+unix://`` URI or unix socket path."""
        h = nbd.NBD()
        h.set_handle_name("rehost")
        # Buffers are always filled by the server or the read fails: skip libnbd's memset.
        h.set_pread_initialize(False)
        for context in meta_contexts:
            h.add_meta_context(context)
        target = os.fspath(uri_or_socket)
        try:
            if target.startswith("nbd") and "://" in target:
                h.connect_uri(target)  # the export name is the URI's path
            else:
                h.set_export_name(export_name)
                h.connect_unix(target)
        except nbd.Error as e:
            raise DiskError(f"cannot connect to NBD server {target}: {e}") from None
        return cls(h, name=target)

    # -- capabilities ---------------------------------------------------------------

    @property
    def can_zero(self) -> bool:
        """The server zeroes ranges without us sending zeros."""
        return not self.readonly and bool(_call(self._handle.can_zero))

    @property
    def can_flush(self) -> bool:
        return not self.readonly and bool(_call(self._handle.can_flush))

    @property
    def can_trim(self) -> bool:
        return not self.readonly and bool(_call(self._handle.can_trim))

    @property
    def can_multi_conn(self) -> bool:
        """Several connections see each other's writes and flushes (safe to parallelize)."""
        return bool(_call(self._handle.can_multi_conn))

    def can_meta_context(self, context: str) -> bool:
        """The server negotiated ``context`` (e.g. ``qemu:dirty-bitmap:NAME``)."""
        return bool(_call(self._handle.can_meta_context, context))

    # -- extents --------------------------------------------------------------------

    def block_status(
        self, context: str, start: int = 0, length: int | None = None
    ) -> Iterator[tuple[int, int, int]]:
        """Raw ``(start, length, flags)`` entries of ``context``, clipped to the range.

        The server may answer less than asked, or beyond; this loops until the range is
        covered, asking at most ``STATUS_CHUNK`` at a time.
        """
        end = self._end(start, length)
        if start < end and not self.can_meta_context(context):
            raise DiskError(f"{self.name}: the NBD server does not report {context!r}")
        entries: list[int] = []

        def collect(meta: str, _off: int, got: list[int], err: Any) -> int:
            # Other negotiated contexts come too; a buggy server may repeat one: keep the
            # first answer for ours.
            if meta == context and not entries:
                entries.extend(got)
            return 0

        offset = start
        while offset < end:
            before = offset
            entries.clear()
            count = min(end - offset, STATUS_CHUNK)
            _call(self._handle.block_status, count, offset, collect)
            for i in range(0, len(entries) - 1, 2):
                n = min(entries[i], end - offset)
                if n <= 0:
                    break
                yield offset, n, entries[i + 1]
                offset += n
            if offset == before:  # a server that answers nothing would loop forever
                raise DiskError(f"{self.name}: no {context!r} status at offset {offset}")

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Data and zero extents (``base:allocation``), adjacent ones of a kind merged.

        A hole or a zero range (flag 1 or 2) is ``zero=True``: it reads as zeros and is
        never read.
        """
        mask = STATE_HOLE | STATE_ZERO
        yield from _coalesce(
            (off, n, bool(flags & mask))
            for off, n, flags in self.block_status(BASE_ALLOCATION, start, length)
        )

    def dirty_extents(
        self, context: str, start: int = 0, length: int | None = None
    ) -> Iterator[Extent]:
        """Only the dirty ranges (``flags & 1``) of a ``qemu:dirty-bitmap:NAME`` context."""
        entries = self.block_status(context, start, length)
        for ext in _coalesce((off, n, bool(flags & DIRTY)) for off, n, flags in entries):
            if ext.zero:  # here "zero" carries "dirty"
                yield Extent(ext.start, ext.length)

    # -- data -----------------------------------------------------------------------

    def readinto(self, offset: int, buf: Buffer) -> int:
        """Fill ``buf`` with the disk's bytes at ``offset``; returns ``len(buf)``."""
        view = memoryview(buf).cast("B")
        self._end(offset, len(view))
        self._pipeline(self._handle.aio_pread, offset, view)
        return len(view)

    def readinto_many(self, pieces: Sequence[tuple[int, Buffer]]) -> int:
        """Fill several buffers, each from its own offset, with all their requests in flight
        together: scattered small changes cost one round trip per MAX_IN_FLIGHT requests,
        not one each (44 ms apiece over TLS when Nagle meets delayed ACKs)."""
        views = [(offset, memoryview(b).cast("B")) for offset, b in pieces]
        for offset, view in views:
            self._end(offset, len(view))
        self._issue(self._handle.aio_pread, views)
        return sum(len(v) for _, v in views)

    def read(self, offset: int, length: int) -> bytearray:
        """Convenience: a new buffer with ``length`` bytes at ``offset``."""
        buf = bytearray(length)
        self.readinto(offset, buf)
        return buf

    def pwrite(self, offset: int, data: Data) -> None:
        self._writable()
        view = memoryview(data).cast("B")
        self._end(offset, len(view))
        self._pipeline(self._handle.aio_pwrite, offset, view)

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros: a zero request (may punch a hole), else write zeros."""
        self._writable()
        end = self._end(offset, length)
        if not self.can_zero:
            zeros = memoryview(bytearray(min(self.request_size * MAX_IN_FLIGHT, length)))
            while offset < end:
                n = min(len(zeros), end - offset)
                self._pipeline(self._handle.aio_pwrite, offset, zeros[:n])
                offset += n
            return
        while offset < end:
            n = min(STATUS_CHUNK, end - offset)
            _call(self._handle.zero, n, offset)
            offset += n

    def flush(self) -> None:
        if self.can_flush:
            _call(self._handle.flush)

    def close(self) -> None:
        """Disconnect (after in-flight commands). Safe to call twice."""
        h, self._h = self._h, None
        if h is not None:
            with contextlib.suppress(nbd.Error):  # the server is gone: nothing to finish
                h.shutdown()

    # -- helpers --------------------------------------------------------------------

    def _pipeline(self, submit: Callable[..., int], offset: int, view: memoryview) -> None:
        """Issue ``view`` as request-size commands, up to MAX_IN_FLIGHT at a time."""
        self._issue(submit, [(offset, view)])

    def _issue(self, submit: Callable[..., int], pieces: Sequence[tuple[int, memoryview]]) -> None:
        h = self._handle
        step = self.request_size
        requests = ((o + p, v[p : p + step]) for o, v in pieces for p in range(0, len(v), step))
        pending: list[int] = []
        at = pieces[0][0] if pieces else 0
        more = True
        try:
            while more or pending:
                while more and len(pending) < MAX_IN_FLIGHT:
                    nxt = next(requests, None)
                    if nxt is None:
                        more = False
                        break
                    at, part = nxt
                    pending.append(submit(part, at))
                if h.aio_in_flight() > 0:
                    h.poll(-1)
                pending = [c for c in pending if not h.aio_command_completed(c)]
        except nbd.Error as e:
            # Buffers must outlive their commands: let every command finish first.
            try:
                while h.aio_in_flight() > 0:
                    h.poll(-1)
            except nbd.Error:
                pass  # the connection is dead: libnbd has failed every command
            for cookie in pending:  # retire them; the first error is the one we report
                with contextlib.suppress(nbd.Error):
                    h.aio_command_completed(cookie)
            raise DiskError(f"{self.name}: I/O failed near offset {at}: {e}") from None

    def _end(self, start: int, length: int | None) -> int:
        end = self.size if length is None else start + length
        if start < 0 or end < start or end > self.size:
            raise DiskError(f"{self.name}: range {start}+{length} is outside the disk")
        return end

    @property
    def _handle(self) -> Any:
        if self._h is None:
            raise DiskError(f"{self.name}: the disk is closed")
        return self._h

    def _writable(self) -> None:
        if self.readonly:
            raise DiskError(f"{self.name}: the disk is read-only")

    def __enter__(self) -> NbdDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NbdDisk {self.name} size={self.size}{' ro' if self.readonly else ''}>"


def _coalesce(entries: Iterator[tuple[int, int, bool]]) -> Iterator[Extent]:
    """Merge adjacent entries of the same kind into one Extent."""
    current: list[Any] | None = None
    for off, n, zero in entries:
        if current is not None and current[2] == zero and current[0] + current[1] == off:
            current[1] += n
            continue
        if current is not None:
            yield Extent(current[0], current[1], current[2])
        current = [off, n, zero]
    if current is not None:
        yield Extent(current[0], current[1], current[2])


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call libnbd, turning its errors into DiskError."""
    try:
        return fn(*args)
    except nbd.Error as e:
        raise DiskError(f"NBD: {e}") from None
