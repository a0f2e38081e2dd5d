"""Servers on 127.0.0.1 that stand in for a guest's ports in tests: a TCP server that hands
each connection to a function (closing it at once, by default: what a forwarder does when
nothing listens inside), and an HTTP server with a given handler."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def tcp_service(handle: Callable[[socket.socket], None] = lambda conn: None) -> Iterator[int]:
    """A TCP server calling ``handle`` on each connection, then closing it; its port."""
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
            with conn:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


@contextmanager
def http_service(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server answering with ``handler``; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
