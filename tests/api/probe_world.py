"""Services that stand in for a failed-over guest's ports on the memory target (a declared test
double): a tiny HTTP server, and a TCP server that accepts and closes without sending a byte
(what a forwarder does when nothing listens inside). The target's ``expose`` routes the
guest's port to them, so the probes run for real."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rehost.targets.memory import MemoryTarget
from rehost.vault import targets
from rehost.vault.vault import Vault

PAGE = b"<h1>hello from the shop</h1>"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/health"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_service() -> Iterator[int]:
    """An HTTP server on 127.0.0.1: ``/health`` answers 200 with ``PAGE``; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def silent_service() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and closes it at once; its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def expose(vault_path: Path, machine: str, port: int, host_port: int, target: str = "t") -> None:
    """The guest port ``port`` of ``machine`` (its test copy and its failed-over self) is
    answered by ``127.0.0.1:host_port``."""
    vault = Vault.open(vault_path)
    try:
        provider = targets.provider(targets.get_target(vault, target))
        assert isinstance(provider, MemoryTarget)
        provider.expose(machine, port, "127.0.0.1", host_port)
    finally:
        vault.close()
