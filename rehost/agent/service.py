"""The agent's HTTPS API (mutual TLS; only the replication server's certificate is served).

- ``GET /heartbeat``, ``GET /inventory``
- ``POST /changes {point}``: scan every disk; per disk the block runs that differ from the
  committed digests of ``point`` (``extents: null`` when the agent has none for it: the
  server then reads all allocated data); opens a cycle.
- ``POST /commit {cycle, point, disks: {N: base64(zlib(digests of the cycle's blocks))}}``:
  adopt the server's digests of what it stored as ``point``; nothing changes before.
- ``POST /freeze {timeout}`` / ``POST /thaw``: fsfreeze the file systems on the disks.
- ``POST /shutdown``: shut the machine down (after answering).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rehost.agent import AGENT_VERSION, SERVER_CN
from rehost.agent import inventory as inv
from rehost.agent.config import AgentConfig, revoked, tls_dir
from rehost.agent.exports import NbdExports
from rehost.agent.freeze import Freezer, mounts_of
from rehost.agent.http import send_json
from rehost.agent.tls import peer_identity, server_context
from rehost.agent.tracker import (
    DigestStore,
    Extents,
    apply_digests,
    device_size,
    diff,
    pack_digests,
    scan,
    zero_digests,
)

log = logging.getLogger("rehost.agent")
MAX_BODY = 64 << 20


class NoCycle(Exception):
    pass


@dataclass
class _Cycle:
    token: str
    parent: str | None
    started: float
    disks: dict[int, tuple[int, Extents]] = field(default_factory=dict)  # index -> size, extents


class Agent:
    """The agent's state and operations, independent of HTTP."""

    def __init__(self, state: Path, config: AgentConfig) -> None:
        self.state = state
        self.config = config
        self.disks = [Path(d) for d in config.disks]
        self.store = DigestStore(state / "digests")
        self.freezer = Freezer(config.freeze_limit)
        self.started = time.time()
        self._cycle: _Cycle | None = None
        self._lock = threading.Lock()

    def heartbeat(self) -> dict[str, Any]:
        return {
            "machine": self.config.machine,
            "version": AGENT_VERSION,
            "time": datetime.now(UTC).isoformat(),
            "uptime": round(time.time() - self.started, 1),
            "frozen": self.freezer.frozen,
            "cycle": self._cycle.token if self._cycle else None,
            "committed": [self.store.committed_point(i) for i in range(len(self.disks))],
        }

    def inventory(self) -> dict[str, Any]:
        return inv.collect(self.disks)

    def changes(self, point: str | None, digests: bool = False) -> dict[str, Any]:
        """Open a cycle. Per disk: the runs that changed since ``point`` and the digests of
        their blocks now (with no baseline, only when asked: ``digests``, a retry that wants
        to skip what it already stored; that costs a read of the whole disk here)."""
        with self._lock:
            cycle = _Cycle(secrets.token_hex(16), point, time.time())
            taken = datetime.now(UTC).isoformat()
            out = []
            for i, path in enumerate(self.disks):
                size = device_size(path)
                base = self.store.load(i, point, size) if point else None
                new: bytes | None = None
                if base is None:
                    extents: Extents = [(0, size)]
                    reported: Extents | None = None
                    if digests:
                        new = scan(path, size)
                else:
                    new = scan(path, size)
                    extents = diff(base, new, size)
                    reported = extents
                cycle.disks[i] = (size, extents)
                out.append(
                    {
                        "index": i,
                        "size": size,
                        "export": f"disk{i}",
                        "port": self.config.nbd_port + i,
                        "extents": reported,
                        "digests": None
                        if new is None
                        else base64.b64encode(pack_digests(new, extents)).decode(),
                    }
                )
            self._cycle = cycle
            return {
                "cycle": cycle.token,
                "taken_at": taken,
                "disks": out,
                "mounts": mounts_of(self.disks),
                "frozen": self.freezer.frozen,
            }

    def commit(self, token: str, point: str, digests: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            cycle = self._cycle
            if cycle is None or cycle.token != token:
                raise NoCycle("no such cycle (superseded or the agent restarted): nothing adopted")
            if not point or "\n" in point or len(point) > 100:
                raise ValueError("bad point id")
            new: dict[int, bytes] = {}
            for i, (size, extents) in cycle.disks.items():
                packed = digests.get(str(i))
                if packed is None:
                    raise ValueError(f"digests of disk {i} are missing")
                old = self.store.load(i, cycle.parent, size) if cycle.parent else None
                full = len(extents) == 1 and extents[0] == (0, size)
                if old is None and not full:
                    raise NoCycle("the committed digests changed during the cycle: nothing adopted")
                base = old if old is not None and not full else zero_digests(size)
                new[i] = apply_digests(base, extents, base64.b64decode(packed))
            for i, d in new.items():  # each file atomic; a mix of points only costs a full read
                self.store.save(i, point, d)
            self._cycle = None
            return {"adopted": point, "disks": sorted(new)}

    def freeze(self, limit: float | None, hold: bool = False) -> dict[str, Any]:
        """Freeze the disks' file systems; the watchdog thaws them after the agent's limit
        (``hold``: the longer limit for a failover's final sync)."""
        cap = self.config.hold_limit if hold else self.freezer.limit
        limit = min(limit or cap, cap)
        frozen = self.freezer.freeze(mounts_of(self.disks), limit, cap)
        return {"frozen": frozen, "limit": limit}

    def thaw(self) -> dict[str, Any]:
        watchdog = self.freezer.last_watchdog_thaw
        return {"thawed": self.freezer.thaw(), "watchdog_thawed": watchdog}

    def shutdown_machine(self) -> dict[str, Any]:
        cmd = list(self.config.shutdown_command)

        def later() -> None:
            time.sleep(0.5)
            self.freezer.thaw()
            subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, timeout=120)

        threading.Thread(target=later, name="rehost-agent-shutdown", daemon=True).start()
        return {"shutdown": "requested"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s failed", client_address[0] if client_address else "?")


class AgentService:
    """The HTTPS listener plus the NBD exports."""

    def __init__(self, state: Path, config: AgentConfig | None = None, *, exports: bool = True) -> None:
        self.state = state
        self.config = config or AgentConfig.load(state)
        self.agent = Agent(state, self.config)
        tls = tls_dir(state)
        ctx = server_context(tls / "server-cert.pem", tls / "server-key.pem", tls / "ca-cert.pem")
        self.httpd = _Server((self.config.listen, self.config.port), _handler(self))
        # The handshake happens in the request's thread: a slow client cannot stall accept().
        self.httpd.socket = ctx.wrap_socket(
            self.httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.exports = (
            NbdExports(self.agent.disks, tls, self.config.listen, self.config.nbd_port) if exports else None
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> AgentService:
        if self.exports is not None:
            self.exports.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rehost-agent", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self.exports is not None:
            self.exports.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        self.agent.freezer.thaw()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()
        if self.exports is not None:
            self.exports.stop()

    def __enter__(self) -> AgentService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorized(self, sock: ssl.SSLSocket) -> str | None:
        """None if the peer is the replication server we enrolled with, else why not."""
        serial, cn = peer_identity(sock)
        if cn != SERVER_CN or serial != self.config.server_serial:
            return "not the replication server this agent is registered with"
        if serial in revoked(self.state):
            return "revoked certificate"
        return None


def _handler(service: AgentService) -> type[BaseHTTPRequestHandler]:
    agent = service.agent

    class Handler(BaseHTTPRequestHandler):
        server_version = "rehost-agent"
        sys_version = ""
        timeout = 60

        def setup(self) -> None:
            super().setup()
            sock = self.request
            assert isinstance(sock, ssl.SSLSocket)
            sock.settimeout(self.timeout)
            sock.do_handshake()
            why = service.authorized(sock)
            if why:
                log.warning("refused %s: %s", self.client_address[0], why)
                raise ConnectionRefusedError(why)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.client_address[0], format % args)

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            send_json(self, code, body)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 <= length <= MAX_BODY:
                raise ValueError("body too large")
            data = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            return data

        def do_GET(self) -> None:
            if self.path == "/heartbeat":
                self._reply(200, agent.heartbeat())
            elif self.path == "/inventory":
                self._reply(200, agent.inventory())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            try:
                body = self._body()
                if self.path == "/changes":
                    point = body.get("point")
                    self._reply(200, agent.changes(str(point) if point else None, bool(body.get("digests"))))
                elif self.path == "/commit":
                    self._reply(
                        200, agent.commit(str(body["cycle"]), str(body["point"]), dict(body["disks"]))
                    )
                elif self.path == "/freeze":
                    limit = float(body["timeout"]) if body.get("timeout") else None
                    self._reply(200, agent.freeze(limit, bool(body.get("hold"))))
                elif self.path == "/thaw":
                    self._reply(200, agent.thaw())
                elif self.path == "/shutdown":
                    self._reply(200, agent.shutdown_machine())
                else:
                    self._reply(404, {"error": "not found"})
            except NoCycle as e:
                self._reply(409, {"error": str(e)})
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                self._reply(400, {"error": f"bad request: {e}"})
            except OSError as e:
                self._reply(500, {"error": str(e)})

    return Handler
