"""A throwaway Redis server (Debian's ``redis-server``) for the tests of ``rehost worker``: the
broker that carries jobs to Celery workers.

Each ``RedisServer`` listens on a free loopback port with a folder of its own, keeps nothing
on disk (no RDB snapshots, no AOF: a test broker is thrown away) and is killed by ``stop``
(and at exit). ``scripts/install`` installs the package; ``.ci/run`` needs no Redis service,
the tests start their own.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from rehost.errors import RehostError
from rehost.process import free_port


class RedisError(RehostError):
    """redis-server is missing or did not start."""

    user_error = False


def redis_bin() -> Path | None:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    return Path(found) if found else None


class RedisServer:
    """``with RedisServer() as r: r.url`` -> ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, folder: Path | None = None, *, start_timeout: float = 15.0) -> None:
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="rehost-redis-"))
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_bin()
        if binary is None:
            raise RedisError("redis-server is not installed (run scripts/install)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self._proc = subprocess.Popen(
            [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "redis.log").read_text(errors="replace")[-400:]
                self.stop()
                raise RedisError(f"redis-server did not start on port {self.port}: {tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
