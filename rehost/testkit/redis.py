"""A throwaway Redis server (Debian's ``redis-server``) for the tests of ``rehost worker``: the
broker that carries jobs to Celery workers.

Each ``RedisServer`` listens on a free loopback port with a folder of its own, keeps nothing
on disk (no RDB snapshots, no AOF: a test broker is thrown away) and is killed by ``stop``
(and at exit). ``scripts/install`` installs the package; ``.ci/run`` needs no Redis service,
the tests start their own.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from rehost.errors import RehostError
from rehost.process import free_port
from rehost.testkit.service import ServerProcess


class RedisError(RehostError):
    """redis-server is missing or did not start."""

    user_error = False


def redis_bin() -> Path | None:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    return Path(found) if found else None


class RedisServer(ServerProcess):
    """``with RedisServer() as r: r.url`` -> ``redis://127.0.0.1:PORT/0``."""

    log_name = "redis.log"
    stop_signal = None  # nothing on disk to keep: killed at once

    def __init__(self, folder: Path | None = None, *, start_timeout: float = 15.0) -> None:
        super().__init__(folder, prefix="rehost-redis-", start_timeout=start_timeout)
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_bin()
        if binary is None:
            raise RedisError("redis-server is not installed (run scripts/install)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        proc = self._spawn(
            [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"])
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail(400)
                self.stop()
                raise RedisError(f"redis-server did not start on port {self.port}: {tail}")
            time.sleep(0.05)

