"""Services that stand in for a failed-over guest's ports on the memory target (a declared test
double): a tiny HTTP server, and a TCP server that accepts and closes without sending a byte
(what a forwarder does when nothing listens inside). The target's ``expose`` routes the
guest's port to them, so the probes run for real."""

from __future__ import annotations

import http.server
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rehost.targets.memory import MemoryTarget
from rehost.vault import targets
from rehost.vault.vault import Vault
from tests import loopback

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


def http_service() -> AbstractContextManager[int]:
    """An HTTP server on 127.0.0.1: ``/health`` answers 200 with ``PAGE``; its port."""
    return loopback.http_service(_Page)


def silent_service() -> AbstractContextManager[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and closes it at once; its port."""
    return loopback.tcp_service()


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
