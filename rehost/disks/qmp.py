"""A minimal synchronous QMP client: the one way rehost talks to QEMU's monitor."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rehost.errors import RehostError


class QmpError(RehostError):
    """A QMP command failed or the monitor could not be reached."""

    user_error = False


class QmpClient:
    """Minimal synchronous QMP client (JSON lines over a UNIX socket).

    Events arriving between replies are kept in ``events``; callers that need them (block
    job completion, for instance) can inspect or clear the list.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def connect(
        self, *, deadline: float | None = None, alive: Callable[[], bool] | None = None
    ) -> None:
        """Connect and negotiate capabilities; retry until ``deadline`` (socket appears late).

        ``alive`` is an optional callable returning False once QEMU is gone (stop retrying).
        """
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout
        last: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                last = exc
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise QmpError(f"cannot connect to QMP socket {self.path}: {last}") from exc
                time.sleep(0.05)
        self._sock = sock
        greeting = self._read_message()
        if "QMP" not in greeting:
            raise QmpError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError("QMP reply timed out") from exc
            except OSError as exc:
                raise QmpError(f"QMP connection failed: {exc}") from exc
            if not chunk:
                raise QmpError("QMP connection closed (QEMU exited?)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value; raise ``QmpError`` on error."""
        if self._sock is None:
            raise QmpError("QMP client is not connected")
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = dict(arguments)
        with self._lock:
            try:
                self._sock.sendall(json.dumps(req).encode() + b"\n")
            except OSError as exc:
                raise QmpError(f"QMP send failed: {exc}") from exc
            while True:
                msg = self._read_message()
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if "error" in msg:
                    err = msg["error"]
                    raise QmpError(f"QMP {command} failed: {err.get('class')}: {err.get('desc')}")
                if "return" in msg:
                    return msg["return"]

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
            self._buf = b""
