"""A tiny HTTP proxy that answers an error instead of forwarding every k-th matching request.

Put in front of Azurite, it makes the storage SDK meet real 500/429/503 answers on the wire,
so the retry policy is tested as it runs in production. Requests it fails never reach
Azurite. With ``every=0`` it fails nothing and only counts: ``bytes_up`` is what clients
sent upstream in request bodies (the bytes "written to Azure", measured on the wire rather
than taken from rehost's own report). Loopback only; it stops with ``close``.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class FaultProxy:
    def __init__(
        self, upstream_port: int, *, every: int, status: int = 500, match: str = "comp=page",
        retry_after: float = 0,
    ) -> None:
        self.every, self.status, self.match = every, status, match
        self.retry_after = retry_after
        self.seen = 0
        self.failed = 0
        self.bytes_up = 0
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            methods: ClassVar[tuple[str, ...]] = ("GET", "PUT", "HEAD", "DELETE", "POST")

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests += 1
                if proxy._should_fail(self.path):
                    self.send_response(proxy.status)
                    self.send_header("Content-Length", "0")
                    self.send_header("Retry-After", f"{proxy.retry_after:g}")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                with proxy._lock:
                    proxy.bytes_up += len(body)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _should_fail(self, path: str) -> bool:
        if not self.every or self.match not in path:
            return False
        with self._lock:
            self.seen += 1
            if self.seen % self.every == 0:
                self.failed += 1
                return True
        return False

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
