"""A VM's disk read over a vCenter's or ESXi's datastore HTTP interface (``/folder``).

Why not NFC or VDDK: ``/folder/<path>-flat.vmdk?dcPath=..&dsName=..`` needs nothing but the
vSphere session (its cookie) and answers HTTP ``Range`` requests, so a cycle reads exactly the
areas ``QueryChangedDiskAreas`` named, with several requests in flight (one connection per
worker thread, kept alive). It reads a flat (monolithic or VMFS) base disk only; a sparse or
delta disk has no ``-flat`` file, and the source refuses such a disk before reading.

TLS: the certificate is pinned by its SHA-1 (or SHA-256) thumbprint, checked on every new
connection before the cookie is sent; without a thumbprint, ``insecure`` skips verification
(said loudly where it is chosen), otherwise the system's CAs verify it.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from rehost.disks.extent import Extent
from rehost.errors import RehostError

#: at most this much per request: a large changed area becomes several requests in flight
REQUEST_BYTES = 4 << 20
WORKERS = 4


class DatastoreError(RehostError):
    """The datastore refused a read (session expired, file gone, certificate changed)."""


def normalize_thumbprint(value: str) -> str:
    """``AB:CD:..`` or ``abcd..`` -> lower-case hex without separators."""
    return value.replace(":", "").replace(" ", "").strip().lower()


class ThumbprintMismatch(ssl.SSLCertVerificationError):
    """The host's certificate is not the pinned one: nothing (no password, no cookie) is sent."""


def tls_context(thumbprint: str | None, insecure: bool) -> ssl.SSLContext:
    """The TLS trust of every connection to the host, SOAP and datastore alike.

    A pinned thumbprint is checked inside the handshake of every socket the context wraps
    (``sslsocket_class``), so no connection, however a library opens or re-opens it, can
    skip it. pyvmomi's own ``thumbprint=`` is not used: it checks the pin only when CA
    verification failed first (never for 127.0.0.1, where it turns verification off).
    """
    if thumbprint is None:
        return ssl._create_unverified_context() if insecure else ssl.create_default_context()
    want = normalize_thumbprint(thumbprint)
    algo = {40: hashlib.sha1, 64: hashlib.sha256}.get(len(want), hashlib.sha1)

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            seen = algo(self.getpeercert(binary_form=True) or b"").hexdigest()
            if seen != want:
                self.close()
                raise ThumbprintMismatch(f"the host's certificate has thumbprint {seen}, not the pinned "
                                         f"{want}: refusing to talk to it")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust is the pin, checked above
    ctx.sslsocket_class = PinnedSocket
    return ctx


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the host's HTTP side: the same host, port and trust as the SOAP
    session, and that session's cookie (``vmware_soap_session=...``)."""

    scheme: str
    host: str
    port: int
    cookie: str
    thumbprint: str | None = None
    insecure: bool = False

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, self.port, timeout=120)
        ctx = tls_context(self.thumbprint, self.insecure)
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=120, context=ctx)
        conn.connect()  # the pin is checked in the handshake, before the cookie is sent
        return conn


class DatastoreDisk:
    """A ``ReadableDisk`` (``rehost.replication.reading``) over ``/folder``.

    ``allocated`` (from ``QueryChangedDiskAreas`` with ``*``) are the areas that hold data;
    everything else is reported as zero extents and never read. None: all of it is data.
    ``bytes_read`` counts what came over the wire.
    """

    def __init__(self, endpoint: Endpoint, datacenter: str, datastore: str, path: str, size: int,
                 allocated: list[Extent] | None = None, workers: int = WORKERS) -> None:
        self.endpoint = endpoint
        query = urlencode({"dcPath": datacenter, "dsName": datastore})
        self.url = f"/folder/{quote(path)}?{query}"
        self._size = size
        self.allocated = allocated
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rehost-datastore")

    @property
    def size(self) -> int:
        return self._size

    def extents(self, start: int = 0, length: int | None = None) -> Iterator[Extent]:
        end = self._size if length is None else min(self._size, start + length)
        if self.allocated is None:
            if start < end:
                yield Extent(start, end - start)
            return
        pos = start
        for e in sorted(self.allocated, key=lambda e: e.start):
            a, b = max(e.start, pos), min(e.end, end)
            if a >= b:
                continue
            if a > pos:
                yield Extent(pos, a - pos, zero=True)
            yield Extent(a, b - a)
            pos = b
        if pos < end:
            yield Extent(pos, end - pos, zero=True)

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.endpoint.connect()
            with self._lock:
                self._conns.append(conn)
        return conn

    def _get(self, offset: int, view: memoryview) -> None:
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, fresh
            conn = self._conn()
            try:
                conn.request("GET", self.url, headers={
                    "Cookie": self.endpoint.cookie, "Range": f"bytes={offset}-{offset + len(view) - 1}"})
                resp = conn.getresponse()
                if resp.status != 206:
                    body = resp.read()[:200]
                    raise DatastoreError(f"GET {self.url} bytes {offset}+{len(view)}: HTTP {resp.status} "
                                         f"{resp.reason} {body!r}")
                got = 0
                while got < len(view):
                    n = resp.readinto(view[got:])
                    if not n:
                        raise DatastoreError(f"GET {self.url}: {got} of {len(view)} bytes at {offset}")
                    got += n
                resp.read()
                with self._lock:
                    self.bytes_read += got
                return
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        if offset < 0 or offset + len(view) > self._size:
            raise DatastoreError(f"read {offset}+{len(view)} is outside the disk ({self._size} bytes)")
        self.readinto_many([(offset, view)])
        return len(view)

    def readinto_many(self, pieces: Sequence[tuple[int, bytearray | memoryview]]) -> int:
        """Fill every piece, with up to ``workers`` range requests in flight."""
        jobs: list[tuple[int, memoryview]] = []
        for offset, buf in pieces:
            view = memoryview(buf).cast("B")
            for i in range(0, len(view), REQUEST_BYTES):
                jobs.append((offset + i, view[i : i + REQUEST_BYTES]))
        for f in [self._pool.submit(self._get, off, v) for off, v in jobs]:
            f.result()
        return sum(len(v) for _, v in jobs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
