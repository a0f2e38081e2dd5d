"""A qemu-guest-agent client: freeze/thaw file systems, run commands, power off a guest.

Why: an application-consistent replication point needs the guest's file systems quiesced
for the instant the source's dirty bitmap is cut over (``guest-fsfreeze-freeze`` /
``-thaw``), and a final sync after a planned failover needs the guest shut down cleanly.
QEMU exposes the agent as a virtio-serial port whose host side is a chardev — here a UNIX
socket (``-chardev socket,id=qga0,path=...,server=on,wait=off`` + ``-device
virtserialport,chardev=qga0,name=org.qemu.guest_agent.0``). This module speaks the agent's
JSON protocol on that socket directly; libvirt's ``qemu-agent-command`` does the same.

Protocol facts this client relies on (verified with Debian's qemu-ga 7.2):
  * The stream may hold stale output (replies to a previous client's requests, requests
    queued while the agent was not running yet). So every connection starts with a raw
    ``0xFF`` (resets the agent's JSON parser) and ``guest-sync-delimited`` with a random id;
    the agent answers ``0xFF`` + ``{"return": id}``: everything before that is discarded.
  * An empty read means QEMU closed the socket: the VM (or its chardev) is gone. A missing
    reply means the agent is not running in the guest (not booted yet, crashed, powered off
    under ``-no-shutdown``) — that is a timeout, not a hang.
  * Only one client at a time: QEMU's chardev serves one connection; a second client's
    requests wait until the first disconnects (and so time out here).
  * While file systems are frozen the agent refuses almost everything (``guest-exec``,
    ``guest-file-*``, ``guest-shutdown``) except ping/info/sync/``guest-fsfreeze-status``/
    ``-thaw``.
  * ``guest-shutdown`` sends no reply when it works; ``guest-exec`` returns a pid whose
    ``guest-exec-status`` carries base64 output once ``exited`` (and is then forgotten).
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, runtime_checkable

from rehost.errors import RehostError

DELIMITER = b"\xff"
_MAX_LINE = 64 * 1024 * 1024  # guest-exec output is capped at 16 MiB, base64 grows it 4/3
_FILE_CHUNK = 1024 * 1024


class GuestAgentError(RehostError):
    """The guest agent could not be reached, went away, or refused a command."""

    user_error = False


class GuestAgentTimeout(GuestAgentError):
    """No reply in time: the agent is not running (yet), or the guest is busy or off."""


class GuestAgentCommandError(GuestAgentError):
    """The agent answered with an error (``error_class`` is QMP's class, e.g.
    ``GenericError``; ``desc`` its message)."""

    def __init__(self, message: str = "", *, error_class: str = "", desc: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.desc = desc


class GuestExecTimeout(GuestAgentTimeout):
    """A command run with ``exec`` did not finish in time (it was sent SIGKILL if possible)."""


@runtime_checkable
class GuestFreezer(Protocol):
    """What the replication code needs to quiesce a source around a bitmap cut-over."""

    def ping(self) -> object: ...

    def freeze(self) -> int: ...

    def thaw(self) -> int: ...


class ExecResult(NamedTuple):
    """Outcome of a guest command; ``exitcode`` is ``-N`` when killed by signal ``N``."""

    exitcode: int
    stdout: bytes
    stderr: bytes


class GuestAgent:
    """Client of one VM's qemu-guest-agent socket. Thread-safe; (re)connects on demand.

    Every command holds a lock for its request/reply, so threads can share an instance
    (``exec`` polls between commands, so others interleave). After any transport error the
    connection is dropped and the next command reconnects and re-synchronises.
    """

    def __init__(self, socket_path: Path, timeout: float = 10) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = float(timeout)
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.RLock()

    # ---- connection ---------------------------------------------------------------------

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            self._sock = None
            self._buf = b""

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout: float | None = None) -> None:
        """Connect and synchronise (``0xFF`` + ``guest-sync-delimited``); no-op if connected."""
        with self._lock:
            if self._sock is None:
                self._connect(time.monotonic() + (self.timeout if timeout is None else timeout))

    def _connect(self, deadline: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise GuestAgentError(
                f"cannot connect to the guest agent socket {self.socket_path}: {exc} "
                "(is the VM running with a guest agent port?)"
            ) from exc
        self._sock = sock
        self._buf = b""
        try:
            self._sync(deadline)
        except BaseException:
            self.close()
            raise

    def _sync(self, deadline: float) -> None:
        sync_id = random.SystemRandom().randrange(1, 2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        self._send(DELIMITER + json.dumps(request).encode() + b"\n", "guest-sync-delimited")
        while True:
            idx = self._buf.find(DELIMITER)
            if idx < 0:
                self._buf = b""  # stale output before any delimiter
                self._fill(deadline, "guest-sync-delimited")
                continue
            rest = self._buf[idx + 1 :]
            while b"\n" not in rest:
                self._buf = DELIMITER + rest
                self._fill(deadline, "guest-sync-delimited")
                rest = self._buf[1:]
            line, after = rest.split(b"\n", 1)
            if DELIMITER in line:  # a newer delimiter inside: resume scanning from it
                self._buf = rest
                continue
            self._buf = after
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("return") == sync_id:
                    return

    def _send(self, data: bytes, what: str) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise GuestAgentError(f"guest agent connection lost sending {what}: {exc}") from exc

    def _fill(self, deadline: float, what: str) -> None:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.close()
            raise GuestAgentTimeout(
                f"no reply from the guest agent to {what} (agent not running, guest busy or off)"
            )
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError as exc:
            self.close()
            raise GuestAgentTimeout(
                f"no reply from the guest agent to {what} within the timeout "
                "(agent not running, guest busy or off)"
            ) from exc
        except OSError as exc:
            self.close()
            raise GuestAgentError(f"guest agent connection failed during {what}: {exc}") from exc
        if not chunk:
            self.close()
            raise GuestAgentError(
                f"guest agent connection closed during {what}: the VM (QEMU) is gone"
            )
        self._buf += chunk
        if len(self._buf) > _MAX_LINE:
            self.close()
            raise GuestAgentError(f"guest agent sent an oversized reply to {what}")

    def _read_reply(self, deadline: float, what: str) -> dict[str, Any]:
        while True:
            while b"\n" not in self._buf:
                self._fill(deadline, what)
            line, self._buf = self._buf.split(b"\n", 1)
            line = line.replace(DELIMITER, b"").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError as exc:
                self.close()
                raise GuestAgentError(f"guest agent sent invalid JSON to {what}: {line[:200]!r}") from exc
            if isinstance(msg, dict) and ("return" in msg or "error" in msg):
                return msg

    # ---- commands -----------------------------------------------------------------------

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expect_reply: bool = True,
    ) -> Any:
        """Run one agent command and return its ``return`` value.

        Raises ``GuestAgentCommandError`` when the agent answers with an error,
        ``GuestAgentTimeout`` without a reply, ``GuestAgentError`` when the VM is gone.
        ``expect_reply=False`` (``guest-shutdown``) sends and returns None.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        data = json.dumps(request).encode() + b"\n"
        with self._lock:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            if self._sock is None:
                self._connect(deadline)
            self._send(data, command)
            if not expect_reply:
                return None
            msg = self._read_reply(deadline, command)
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            cls, desc = str(err.get("class", "")), str(err.get("desc", msg["error"]))
            raise GuestAgentCommandError(
                f"guest agent {command} failed: {cls}: {desc}", error_class=cls, desc=desc
            )
        return msg["return"]

    def wait_ready(
        self, timeout: float, *, alive: Callable[[], bool] | None = None, attempt: float = 3.0
    ) -> None:
        """Wait until the agent answers a ping (the guest may still be booting).

        ``alive`` (e.g. ``vm.is_running``) stops the wait early once it returns False.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping(timeout=min(attempt, max(0.1, deadline - time.monotonic())))
                return
            except GuestAgentCommandError:
                raise
            except GuestAgentError as exc:
                if alive is not None and not alive():
                    raise GuestAgentError(f"the VM stopped before its guest agent answered: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise GuestAgentTimeout(f"guest agent not ready within {timeout:.0f}s: {exc}") from exc
                if not isinstance(exc, GuestAgentTimeout):
                    time.sleep(0.2)  # socket not there yet / refused: do not spin

    def ping(self, *, timeout: float | None = None) -> None:
        self.execute("guest-ping", timeout=timeout)

    def info(self) -> dict[str, Any]:
        """``guest-info``: ``version`` and ``supported_commands`` (name, enabled, ...)."""
        result: dict[str, Any] = self.execute("guest-info")
        return result

    def freeze(self, *, timeout: float | None = None) -> int:
        """Freeze the guest's file systems; the number frozen.

        Freezing flushes dirty data first, which can take seconds on a busy guest: pass a
        ``timeout`` above the default (the constructor's) there. If the agent cannot be
        reached nothing was frozen and the error is raised at once; if the freeze request
        went out but its reply did not come back, the guest may be frozen with nobody to
        thaw it, so we try a thaw (same timeout) before raising.
        """
        with self._lock:
            self.connect(timeout)  # unreachable: raise here, nothing was asked of the guest
            try:
                return int(self.execute("guest-fsfreeze-freeze", timeout=timeout))
            except GuestAgentCommandError:
                raise  # refused (e.g. already frozen): this call froze nothing
            except GuestAgentError:
                with contextlib.suppress(GuestAgentError):
                    self.thaw(timeout=timeout)
                raise

    def thaw(self, *, timeout: float | None = None) -> int:
        """Thaw the guest's file systems; the number thawed (0 if none were frozen)."""
        return int(self.execute("guest-fsfreeze-thaw", timeout=timeout))

    def freeze_status(self) -> str:
        """``"thawed"`` or ``"frozen"``."""
        return str(self.execute("guest-fsfreeze-status"))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[int]:
        """``with agent.frozen() as n:`` — freeze, and thaw whatever happens inside."""
        n = self.freeze()
        try:
            yield n
        finally:
            self.thaw()

    def shutdown(self, mode: str = "powerdown", *, error_wait: float = 1.0) -> None:
        """Ask the guest to shut down (``powerdown``, ``halt`` or ``reboot``).

        The agent sends no reply when it works, so we only wait ``error_wait`` seconds for
        an error (e.g. refused while frozen) and then drop the connection. Wait for the
        power-off on the VM side (``QemuVM.wait_exit``/``wait_powered_off``).
        """
        if mode not in ("powerdown", "halt", "reboot"):
            raise GuestAgentError(f"shutdown mode must be powerdown, halt or reboot, not {mode!r}")
        with self._lock:
            try:
                self.execute("guest-shutdown", {"mode": mode}, expect_reply=False)
                msg = self._read_reply(time.monotonic() + error_wait, "guest-shutdown")
            except GuestAgentTimeout:
                return  # no error reply: the shutdown is under way
            except GuestAgentError as exc:
                if "connection closed" in str(exc):
                    return  # QEMU exited already
                raise
            finally:
                self.close()
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            cls, desc = str(err.get("class", "")), str(err.get("desc", msg["error"]))
            raise GuestAgentCommandError(
                f"guest agent guest-shutdown failed: {cls}: {desc}", error_class=cls, desc=desc
            )

    # ---- running commands ---------------------------------------------------------------

    def exec_start(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        capture: bool = True,
    ) -> int:
        """Start ``argv`` in the guest (``PATH`` is searched); its guest pid. No waiting."""
        if not argv:
            raise GuestAgentError("exec needs a command")
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": capture}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        if env is not None:
            args["env"] = [f"{k}={v}" for k, v in env.items()]
        return int(self.execute("guest-exec", args)["pid"])

    def exec_status(self, pid: int) -> ExecResult | None:
        """None while ``pid`` runs; its result once exited (the agent then forgets it)."""
        st = self.execute("guest-exec-status", {"pid": pid})
        if not st.get("exited"):
            return None
        code = -int(st["signal"]) if "signal" in st else int(st.get("exitcode", 0))
        out = base64.b64decode(st.get("out-data", ""))
        err = base64.b64decode(st.get("err-data", ""))
        return ExecResult(code, out, err)

    def exec(
        self,
        argv: Sequence[str],
        input: bytes | None = None,
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the guest and wait: ``(exitcode, stdout, stderr)``.

        On timeout the command is sent SIGKILL (best effort: impossible while the file
        systems are frozen) and ``GuestExecTimeout`` is raised.
        """
        pid = self.exec_start(argv, input=input, env=env)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            result = self.exec_status(pid)
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                with contextlib.suppress(GuestAgentError):
                    self.exec_start(["kill", "-9", str(pid)], capture=False)
                raise GuestExecTimeout(f"guest command {list(argv)} did not finish within {timeout:.0f}s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)

    # ---- files --------------------------------------------------------------------------

    def file_write(self, path: str, data: bytes, *, append: bool = False) -> None:
        """Write ``data`` to ``path`` in the guest (created/truncated, or appended)."""
        handle = int(self.execute("guest-file-open", {"path": path, "mode": "a" if append else "w"}))
        try:
            view = memoryview(data)
            for off in range(0, len(data), _FILE_CHUNK):
                chunk = bytes(view[off : off + _FILE_CHUNK])
                res = self.execute(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()},
                )
                if int(res.get("count", -1)) != len(chunk):
                    raise GuestAgentError(f"short write to {path} in the guest: {res}")
            self.execute("guest-file-flush", {"handle": handle})
        finally:
            with contextlib.suppress(GuestAgentError):
                self.execute("guest-file-close", {"handle": handle})

    def file_read(self, path: str) -> bytes:
        """The whole content of ``path`` in the guest."""
        handle = int(self.execute("guest-file-open", {"path": path, "mode": "r"}))
        parts: list[bytes] = []
        try:
            while True:
                res = self.execute("guest-file-read", {"handle": handle, "count": _FILE_CHUNK})
                parts.append(base64.b64decode(res.get("buf-b64", "")))
                if res.get("eof") or int(res.get("count", 0)) == 0:
                    break
        finally:
            with contextlib.suppress(GuestAgentError):
                self.execute("guest-file-close", {"handle": handle})
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"<GuestAgent {self.socket_path} {'connected' if self.connected else 'idle'}>"


__all__ = [
    "ExecResult",
    "GuestAgent",
    "GuestAgentCommandError",
    "GuestAgentError",
    "GuestAgentTimeout",
    "GuestExecTimeout",
    "GuestFreezer",
]
