"""A small read-only NBD server in Python: serve any ``BlockReader`` on a unix socket.

Why our own server: instant recovery boots a failed-over VM from a recovery point that
lives only in the repository (packs of compressed, maybe encrypted blobs). No image file
exists for ``qemu-nbd`` to open, so rehost answers NBD itself, reading blobs on demand
(``rehost.repository.point_reader.PointReader``). QEMU opens the export as the backing
file of a local qcow2 overlay: the guest writes to the overlay, reads fall through to
the point, and QMP ``block-stream`` hydrates the overlay in the background.

What it speaks (the NBD protocol, fixed newstyle handshake), enough for QEMU 7.2, libnbd
1.14 and the kernel client:

- options: ``EXPORT_NAME``, ``GO``/``INFO`` (size, flags, block sizes), ``LIST``,
  ``ABORT``, ``STRUCTURED_REPLY``, ``LIST_META_CONTEXT``/``SET_META_CONTEXT`` with
  ``base:allocation``; anything else gets ``NBD_REP_ERR_UNSUP``;
- commands: ``READ`` (structured replies when negotiated, with hole chunks for zero
  ranges so clients skip them), ``BLOCK_STATUS`` (``base:allocation`` from the map, no
  data read), ``FLUSH`` (a no-op, nothing is ever written), ``DISC``; ``WRITE``,
  ``TRIM`` and ``WRITE_ZEROES`` fail with ``EPERM`` (the export is read-only).

Every request is validated (range inside the export, read length at most 32 MiB) and a bad
one gets ``EINVAL`` without ending the connection. A read the reader cannot verify
(``IntegrityError``) or fetch (``BackendError``) gets ``EIO``: the guest sees an I/O error,
never wrong bytes. Only a protocol violation (bad magic, garbage) closes a connection.

Concurrency: one thread per connection receives requests; reads and block-status queries
run on that connection's small worker pool and replies may go out of order (NBD matches
them by handle), so a cache hit is not stuck behind a slow blob load, and one client's
slow reads never stall another client. ``NBD_FLAG_CAN_MULTI_CONN`` is advertised: the
export never changes, so every connection sees the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol

from rehost.disks.extent import Extent
from rehost.errors import DiskError, RehostError

log = logging.getLogger("rehost.nbd")

# -- protocol constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_TOO_BIG = 0x80000009

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

STATE_HOLE = 1
STATE_ZERO = 2

EPERM = 1
EIO = 5
EINVAL = 22
ESHUTDOWN = 108

BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1

#: Largest read we answer (qemu-nbd's limit too); advertised as the maximum block size.
MAX_REQUEST = 32 << 20
#: Advertised preferred block size: the repository's block (``BLOCK_SIZE``).
PREFERRED_BLOCK = 4096
#: Option payloads are names and short queries; a larger one is drained in pieces and refused.
MAX_OPTION = 64 << 10
#: A zero run inside a read shorter than this goes out as data: a chunk header per tiny hole
#: would cost more than the zeros.
MIN_HOLE_CHUNK = 4096
#: Descriptors in one BLOCK_STATUS reply; a client asks again for the rest.
MAX_DESCRIPTORS = 4096
#: Replies a connection has in preparation at once (read-ahead of one client).
MAX_IN_FLIGHT = 16
#: A client must finish the handshake within this many seconds.
HANDSHAKE_TIMEOUT = 30.0

_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")


class BlockReader(Protocol):
    """What the server serves: a fixed-size, read-only byte range with extents.

    ``pread`` is called from worker threads, several at once: implementations must be
    thread-safe. It raises on any doubt about the data (the client then gets EIO).
    """

    @property
    def size(self) -> int: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]: ...


class _Disconnect(Exception):
    """The connection must end: the peer left, violated the protocol, or the server stops."""


# -- the server -------------------------------------------------------------------------------


class NbdExportServer:
    """Serve ``reader`` read-only as one NBD export on the unix socket ``socket_path``.

    ``start()`` returns once the socket listens; ``stop()`` (or leaving the ``with``) stops
    accepting, lets in-flight replies go out, closes every connection and removes the
    socket. Clients may ask for ``export_name`` or for the default export (an empty name).
    ``socket_mode`` protects the disk's content from other local users (0600: only the
    owner; QEMU running as another user needs a group or a wider mode).
    """

    def __init__(
        self,
        reader: BlockReader,
        socket_path: str | os.PathLike[str],
        *,
        export_name: str = "",
        description: str = "",
        max_connections: int = 16,
        workers: int = 4,
        socket_mode: int = 0o600,
    ) -> None:
        if len(export_name.encode()) > 4096 or len(description.encode()) > 4096:
            raise ValueError("NBD names and descriptions are at most 4096 bytes")
        if workers < 1 or max_connections < 1:
            raise ValueError("workers and max_connections must be at least 1")
        self.reader = reader
        self.socket_path = Path(socket_path)
        self.export_name = export_name
        self.description = description
        self.max_connections = max_connections
        self.workers = workers
        self.socket_mode = socket_mode
        self.size = reader.size
        # Counters (read them any time; updated under _lock).
        self.requests = 0
        self.bytes_served = 0
        self.errors = 0
        self.connections_total = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._socket_ino: int | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[_Connection] = set()
        self._stopping = threading.Event()

    @property
    def uri(self) -> str:
        """The NBD URI clients (qemu-img, nbdinfo, libnbd) connect to."""
        return f"nbd+unix:///{self.export_name}?socket={self.socket_path}"

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._conns)

    @property
    def transmission_flags(self) -> int:
        return FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NbdExportServer:
        if self._thread is not None:
            raise DiskError("the NBD server is already running")
        self._stopping.clear()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale_socket(self.socket_path)
            listener.bind(os.fspath(self.socket_path))
            os.chmod(self.socket_path, self.socket_mode)
            self._socket_ino = os.stat(self.socket_path).st_ino
            listener.listen(self.max_connections)
            listener.setblocking(False)
        except OSError as e:
            listener.close()
            raise DiskError(f"cannot serve NBD on {self.socket_path}: {e}") from None
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"rehost-nbd-accept {self.socket_path.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and clean up. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        thread.join(timeout)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.shutdown()
        for conn in conns:
            conn.join(timeout)
            if conn.alive:  # stuck sending to a client that does not read: cut it off
                conn.shutdown(socket.SHUT_RDWR)
                conn.join(1.0)
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listener = self._wake_r = self._wake_w = None
        self._unlink_socket()

    def _unlink_socket(self) -> None:
        """Remove our socket file, not one another server has put there since."""
        try:
            if os.stat(self.socket_path).st_ino == self._socket_ino:
                self.socket_path.unlink()
        except OSError:
            pass

    def serve_forever(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (the accept loop already runs in its thread)."""
        if self._thread is None:
            self.start()
        try:
            while not stop.wait(0.5):  # a timed wait lets signal handlers run promptly
                pass
        finally:
            self.stop()

    def __enter__(self) -> NbdExportServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NbdExportServer {self.uri} size={self.size}>"

    # -- accepting ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._listener:
                        self._accept()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE and friends: log, keep serving the others
            log.warning("NBD accept failed: %s", e)
            return
        sock.setblocking(True)
        conn: _Connection | None = None
        with self._lock:
            if not self._stopping.is_set() and len(self._conns) < self.max_connections:
                self.connections_total += 1
                conn = _Connection(self, sock, self.connections_total)
                self._conns.add(conn)
        if conn is None:
            log.warning("NBD: refusing a connection (limit %d reached)", self.max_connections)
            sock.close()
            return
        conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _count(self, *, requests: int = 0, served: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_served += served
            self.errors += errors

    def _name_ok(self, name: bytes) -> bool:
        return name in (b"", self.export_name.encode())


# -- one connection ---------------------------------------------------------------------------


class _Connection:
    """Handshake, then requests: a receiving thread plus a small pool preparing replies."""

    def __init__(self, server: NbdExportServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.reader = server.reader
        self.sock = sock
        self.number = number
        self.structured = False
        self.meta_contexts: dict[int, str] = {}  # selected: id -> name
        self._send_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._thread = threading.Thread(
            target=self._run, name=f"rehost-nbd-conn-{number}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self, how: int = socket.SHUT_RD) -> None:
        """Stop receiving (wakes the receiving thread); replies in flight still go out."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)

    def _run(self) -> None:
        try:
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            if self._handshake():
                self.sock.settimeout(None)
                self._transmission()
        except (_Disconnect, OSError, struct.error) as e:
            log.debug("NBD connection %d ends: %s", self.number, e)
        except Exception:  # a bug must end one connection, never the server
            log.exception("NBD connection %d failed", self.number)
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.server._forget(self)

    # -- I/O helpers -------------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise _Disconnect("the client closed the connection")
            got += k
        return bytes(buf)

    def _discard(self, n: int) -> None:
        """Read and drop a payload we refuse (a write), so the stream stays in step."""
        chunk = bytearray(min(n, 1 << 20))
        while n > 0:
            k = self.sock.recv_into(chunk, min(n, len(chunk)))
            if k == 0:
                raise _Disconnect("the client closed the connection")
            n -= k

    def _send(self, *parts: bytes | memoryview) -> None:
        with self._send_lock:
            for p in parts:
                self.sock.sendall(p)

    # -- handshake ---------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Option haggling; True when the client entered the transmission phase."""
        self.sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = struct.unpack(">I", self._recv(4))
        if cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise _Disconnect(f"unknown client flags {cflags:#x}")
        no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
        while True:
            magic, opt, length = _OPT_HEADER.unpack(self._recv(_OPT_HEADER.size))
            if magic != IHAVEOPT:
                raise _Disconnect(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                self._discard(length)
                self._opt_reply(opt, REP_ERR_TOO_BIG, b"option data too large")
                continue
            data = self._recv(length)
            if opt == OPT_EXPORT_NAME:
                if not self.server._name_ok(data):
                    raise _Disconnect(f"unknown export {data[:64]!r}")
                reply = struct.pack(">QH", self.server.size, self._flags())
                self.sock.sendall(reply if no_zeroes else reply + bytes(124))
                return True
            if opt == OPT_ABORT:
                with contextlib.suppress(OSError):
                    self._opt_reply(opt, REP_ACK)
                return False
            if opt in (OPT_GO, OPT_INFO):
                if self._opt_info(opt, data) and opt == OPT_GO:
                    return True
            elif opt == OPT_LIST:
                if data:
                    self._opt_reply(opt, REP_ERR_INVALID, b"LIST takes no data")
                else:
                    name = self.server.export_name.encode()
                    self._opt_reply(opt, REP_SERVER, struct.pack(">I", len(name)) + name)
                    self._opt_reply(opt, REP_ACK)
            elif opt == OPT_STRUCTURED_REPLY:
                if data:
                    self._opt_reply(opt, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
                else:
                    self.structured = True
                    self._opt_reply(opt, REP_ACK)
            elif opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
                self._opt_meta(opt, data)
            else:  # STARTTLS, EXTENDED_HEADERS and whatever comes next
                self._opt_reply(opt, REP_ERR_UNSUP, b"option not supported")

    def _flags(self) -> int:
        return self.server.transmission_flags

    def _opt_reply(self, opt: int, reply: int, data: bytes = b"") -> None:
        self.sock.sendall(_OPT_REPLY.pack(OPTION_REPLY_MAGIC, opt, reply, len(data)) + data)

    def _opt_info(self, opt: int, data: bytes) -> bool:
        """NBD_OPT_INFO / NBD_OPT_GO; True if the export was described and acknowledged."""
        parsed = _parse_info(data)
        if parsed is None:
            self._opt_reply(opt, REP_ERR_INVALID, b"malformed INFO/GO request")
            return False
        name, requests = parsed
        if not self.server._name_ok(name):
            self._opt_reply(opt, REP_ERR_UNKNOWN, b"no such export")
            return False
        s = self.server
        self._opt_reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, s.size, self._flags()))
        if INFO_NAME in requests:
            self._opt_reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + s.export_name.encode())
        if INFO_DESCRIPTION in requests and s.description:
            self._opt_reply(
                opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + s.description.encode()
            )
        if INFO_BLOCK_SIZE in requests:
            self._opt_reply(
                opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST)
            )
        self._opt_reply(opt, REP_ACK)
        return True

    def _opt_meta(self, opt: int, data: bytes) -> None:
        """LIST/SET_META_CONTEXT: only ``base:allocation`` exists."""
        if not self.structured:
            self._opt_reply(opt, REP_ERR_INVALID, b"negotiate structured replies first")
            return
        parsed = _parse_meta(data)
        if parsed is None:
            self._opt_reply(opt, REP_ERR_INVALID, b"malformed meta context request")
            return
        name, queries = parsed
        if not self.server._name_ok(name):
            self._opt_reply(opt, REP_ERR_UNKNOWN, b"no such export")
            return
        if opt == OPT_LIST_META_CONTEXT:
            # No query lists everything; a namespace alone ("base:") lists its contexts.
            if not queries or any(q in ("base:", BASE_ALLOCATION) for q in queries):
                self._opt_reply(opt, REP_META_CONTEXT, struct.pack(">I", 0) + BASE_ALLOCATION.encode())
        else:
            self.meta_contexts = {}
            if BASE_ALLOCATION in queries:
                self.meta_contexts[BASE_ALLOCATION_ID] = BASE_ALLOCATION
                self._opt_reply(
                    opt,
                    REP_META_CONTEXT,
                    struct.pack(">I", BASE_ALLOCATION_ID) + BASE_ALLOCATION.encode(),
                )
        self._opt_reply(opt, REP_ACK)

    # -- transmission ------------------------------------------------------------------------

    def _transmission(self) -> None:
        pool = ThreadPoolExecutor(self.server.workers, thread_name_prefix=f"rehost-nbd-{self.number}")
        try:
            while True:
                try:
                    header = self._recv(_REQUEST.size)
                except _Disconnect:
                    return  # a hard disconnect (or server stop) between requests
                magic, flags, cmd, handle, offset, length = _REQUEST.unpack(header)
                if magic != REQUEST_MAGIC:
                    raise _Disconnect(f"bad request magic {magic:#x}")
                self.server._count(requests=1)
                if cmd == CMD_DISC:
                    return
                if cmd == CMD_WRITE:
                    self._discard(length)
                    self._error(cmd, handle, EPERM, "the export is read-only")
                elif cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
                    self._error(cmd, handle, EPERM, "the export is read-only")
                elif cmd == CMD_FLUSH:
                    self._send(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle))
                elif cmd in (CMD_READ, CMD_BLOCK_STATUS):
                    problem = self._invalid(cmd, offset, length)
                    if problem:
                        self._error(cmd, handle, EINVAL, problem)
                        continue
                    self._slots.acquire()
                    pool.submit(self._serve, cmd, flags, handle, offset, length)
                else:
                    self._error(cmd, handle, EINVAL, f"command {cmd} is not supported")
        finally:
            pool.shutdown(wait=True)  # in-flight replies go out before the socket closes

    def _invalid(self, cmd: int, offset: int, length: int) -> str:
        """Why a READ/BLOCK_STATUS request is invalid, or '' if it is fine."""
        size = self.server.size
        if length == 0:
            return "zero-length request"
        if offset + length > size:
            return f"range {offset}+{length} is beyond the end of the export ({size})"
        if cmd == CMD_READ and length > MAX_REQUEST:
            return f"read of {length} bytes exceeds the maximum {MAX_REQUEST}"
        if cmd == CMD_BLOCK_STATUS and (not self.structured or not self.meta_contexts):
            return "no metadata context was negotiated"
        return ""

    def _serve(self, cmd: int, flags: int, handle: int, offset: int, length: int) -> None:
        """Worker: answer one READ or BLOCK_STATUS. Never raises (the pool would hide it)."""
        try:
            if cmd == CMD_READ:
                self._read(flags, handle, offset, length)
            else:
                self._block_status(flags, handle, offset, length)
        except OSError as e:  # the reply could not be sent: the connection is gone
            log.debug("NBD connection %d: reply failed: %s", self.number, e)
            self.shutdown()
        except Exception:
            log.exception("NBD connection %d: unexpected failure", self.number)
            self.shutdown()
        finally:
            self._slots.release()

    def _read(self, flags: int, handle: int, offset: int, length: int) -> None:
        try:
            pieces: list[tuple[int, int, bool]] = []
            if self.structured and not flags & CMD_FLAG_DF:
                pieces = self._read_pieces(offset, length)
            if pieces and all(hole for _, _, hole in pieces):
                data = b""  # nothing to read: the reply is hole chunks only
            else:
                data = self.reader.pread(offset, length)
                if len(data) != length:
                    raise DiskError(f"reader returned {len(data)} bytes for a read of {length}")
        except ValueError as e:
            self._error(CMD_READ, handle, EINVAL, str(e))
            return
        except RehostError as e:
            log.warning("NBD read %d+%d failed: %s", offset, length, e)
            self._error(CMD_READ, handle, EIO, str(e))
            return
        except Exception as e:
            log.exception("NBD read %d+%d failed", offset, length)
            self._error(CMD_READ, handle, EIO, f"internal error: {e}")
            return
        self.server._count(served=length)
        if not self.structured:
            self._send(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle), data)
            return
        if not pieces:
            pieces = [(offset, length, False)]
        view = memoryview(data)
        out: list[bytes | memoryview] = []
        for i, (start, n, hole) in enumerate(pieces):
            done = REPLY_FLAG_DONE if i == len(pieces) - 1 else 0
            if hole:
                out.append(
                    _CHUNK.pack(STRUCTURED_REPLY_MAGIC, done, REPLY_TYPE_OFFSET_HOLE, handle, 12)
                    + struct.pack(">QI", start, n)
                )
            else:
                out.append(
                    _CHUNK.pack(STRUCTURED_REPLY_MAGIC, done, REPLY_TYPE_OFFSET_DATA, handle, 8 + n)
                    + struct.pack(">Q", start)
                )
                out.append(view[start - offset : start - offset + n])
        self._send(*out)

    def _read_pieces(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """Data and hole chunks of a read: zero runs of MIN_HOLE_CHUNK or more become holes."""
        pieces: list[tuple[int, int, bool]] = []
        for ext in _clip(self.reader.extents(offset, length), offset, offset + length):
            hole = ext.zero and ext.length >= MIN_HOLE_CHUNK
            if pieces and not hole and not pieces[-1][2]:  # merge data with data
                start, n, _ = pieces[-1]
                pieces[-1] = (start, n + ext.length, False)
            else:
                pieces.append((ext.start, ext.length, hole))
        if sum(n for _, n, _ in pieces) != length:
            raise DiskError(f"extents do not cover the read {offset}+{length}")
        return pieces

    def _block_status(self, flags: int, handle: int, offset: int, length: int) -> None:
        try:
            descriptors: list[int] = []
            for ext in _clip(self.reader.extents(offset, length), offset, offset + length):
                descriptors += (ext.length, STATE_HOLE | STATE_ZERO if ext.zero else 0)
                if flags & CMD_FLAG_REQ_ONE or len(descriptors) >= 2 * MAX_DESCRIPTORS:
                    break
            if not descriptors:
                raise DiskError(f"no extents for {offset}+{length}")
        except ValueError as e:
            self._error(CMD_BLOCK_STATUS, handle, EINVAL, str(e))
            return
        except Exception as e:
            log.warning("NBD block status %d+%d failed: %s", offset, length, e)
            self._error(CMD_BLOCK_STATUS, handle, EIO, str(e))
            return
        payload = struct.pack(f">I{len(descriptors)}I", BASE_ALLOCATION_ID, *descriptors)
        header = _CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, len(payload)
        )
        self._send(header + payload)

    def _error(self, cmd: int, handle: int, errno: int, message: str) -> None:
        """An error reply: structured (with the message) for reads when negotiated."""
        self.server._count(errors=1)
        if self.structured and cmd in (CMD_READ, CMD_BLOCK_STATUS):
            text = message.encode()[:4096]
            payload = struct.pack(">IH", errno, len(text)) + text
            self._send(
                _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, len(payload))
                + payload
            )
        else:
            self._send(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno, handle))


# -- parsing helpers --------------------------------------------------------------------------


def _parse_info(data: bytes) -> tuple[bytes, set[int]] | None:
    """(export name, info types requested) of an INFO/GO payload, or None if malformed."""
    if len(data) < 6:
        return None
    (nlen,) = struct.unpack_from(">I", data, 0)
    if 4 + nlen + 2 > len(data):
        return None
    name = data[4 : 4 + nlen]
    (count,) = struct.unpack_from(">H", data, 4 + nlen)
    if len(data) != 4 + nlen + 2 + 2 * count:
        return None
    return name, set(struct.unpack_from(f">{count}H", data, 6 + nlen))


def _parse_meta(data: bytes) -> tuple[bytes, list[str]] | None:
    """(export name, queries) of a LIST/SET_META_CONTEXT payload, or None if malformed."""
    try:
        (nlen,) = struct.unpack_from(">I", data, 0)
        name = data[4 : 4 + nlen]
        pos = 4 + nlen
        (count,) = struct.unpack_from(">I", data, pos)
        pos += 4
        queries = []
        for _ in range(count):
            (qlen,) = struct.unpack_from(">I", data, pos)
            pos += 4
            if pos + qlen > len(data):
                return None
            queries.append(data[pos : pos + qlen].decode())
            pos += qlen
    except (struct.error, UnicodeDecodeError):
        return None
    if len(name) != nlen or pos != len(data):
        return None
    return name, queries


def _clip(extents: Iterator[Extent], start: int, end: int) -> Iterator[Extent]:
    """Extents cut to [start, end): a reader may answer more than asked, the protocol may not."""
    for e in extents:
        a, b = max(e.start, start), min(e.end, end)
        if a < b:
            yield Extent(a, b - a, e.zero)
        if e.end >= end:
            return


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on (a server that was killed); refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")


# -- a process that only serves ---------------------------------------------------------------


def serve_forever(
    reader: BlockReader,
    socket_path: str | os.PathLike[str],
    *,
    export_name: str = "",
    description: str = "",
    max_connections: int = 16,
    workers: int = 4,
    socket_mode: int = 0o600,
    ready: Callable[[NbdExportServer], None] | None = None,
    stop: threading.Event | None = None,
) -> NbdExportServer:
    """Serve ``reader`` until SIGTERM/SIGINT (or ``stop`` is set); for a daemon process.

    ``ready`` is called once the socket listens (write a pid file, notify a parent). Signal
    handlers are installed only when called from the main thread, and restored after.
    Returns the stopped server, whose counters tell what was served.
    """
    stop = stop or threading.Event()
    server = NbdExportServer(
        reader, socket_path, export_name=export_name, description=description,
        max_connections=max_connections, workers=workers, socket_mode=socket_mode,
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        server.start()
        if ready is not None:
            ready(server)
        server.serve_forever(stop)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server
