"""GuestAgent's protocol handling against a scripted fake agent (no VM: fast, exact)."""

from __future__ import annotations

import base64
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rehost.guest.agent import (
    ExecResult,
    GuestAgent,
    GuestAgentCommandError,
    GuestAgentError,
    GuestAgentTimeout,
    GuestExecTimeout,
    GuestFreezer,
)

Handler = Callable[[dict[str, Any]], Any]


class Refuse(Exception):
    """Raised by a fake handler: the fake answers with an error reply."""


class FakeAgent:
    """A UNIX-socket server speaking the agent protocol; ``stale`` is sent on connect."""

    def __init__(self, path: Path, handlers: dict[str, Handler], stale: bytes = b"") -> None:
        self.path = path
        self.handlers = handlers
        self.stale = stale
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(str(path))
        self._srv.listen(4)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        if self.stale:
            conn.sendall(self.stale)
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.replace(b"\xff", b"").strip()
                if not line:
                    continue
                req = json.loads(line)
                self.requests.append(req)
                name = req["execute"]
                args = req.get("arguments", {})
                if name == "guest-sync-delimited":
                    conn.sendall(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
                    continue
                handler = self.handlers.get(name)
                if handler is None:
                    err = {"class": "CommandNotFound", "desc": f"{name} not found"}
                    conn.sendall(json.dumps({"error": err}).encode() + b"\n")
                    continue
                try:
                    result = handler(args)
                except Refuse as exc:
                    err = {"class": "GenericError", "desc": str(exc)}
                    conn.sendall(json.dumps({"error": err}).encode() + b"\n")
                    continue
                if result == "CLOSE":
                    return
                if result == "SILENT":
                    continue
                conn.sendall(json.dumps({"return": result}).encode() + b"\n")

    def close(self) -> None:
        self._stop = True
        self._srv.close()


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rehost-qga-", dir="/tmp") as d:
        yield Path(d) / "qga.sock"


def test_sync_skips_stale_output_and_replies(sock_path: Path) -> None:
    stale = b'{"return": {}}\npartial garbage \xff{"return": 12345}\n\xff{"return": 7}\n{"ret'
    fake = FakeAgent(sock_path, {"guest-ping": lambda a: {},
                                 "guest-fsfreeze-freeze": lambda a: 2,
                                 "guest-fsfreeze-thaw": lambda a: 2,
                                 "guest-fsfreeze-status": lambda a: "thawed"}, stale)  # fmt: skip
    try:
        with GuestAgent(sock_path, timeout=5) as agent:
            agent.ping()
            assert agent.freeze() == 2
            assert agent.thaw() == 2
            assert agent.freeze_status() == "thawed"
            assert isinstance(agent, GuestFreezer)
        assert fake.requests[0]["execute"] == "guest-sync-delimited"
    finally:
        fake.close()


def test_error_reply_is_a_command_error(sock_path: Path) -> None:
    fake = FakeAgent(sock_path, {})
    try:
        agent = GuestAgent(sock_path, timeout=5)
        with pytest.raises(GuestAgentCommandError, match="CommandNotFound") as info:
            agent.execute("guest-nope")
        assert info.value.error_class == "CommandNotFound"
        with pytest.raises(GuestAgentCommandError):  # the connection is still usable
            agent.execute("guest-nope")
        assert fake.connections == 1
    finally:
        fake.close()


def test_vanishing_agent_is_an_error_not_a_hang(sock_path: Path) -> None:
    fake = FakeAgent(sock_path, {"guest-ping": lambda a: "CLOSE"})
    agent = GuestAgent(sock_path, timeout=30)
    started = time.monotonic()
    with pytest.raises(GuestAgentError, match="gone") as info:
        agent.ping()
    assert not isinstance(info.value, GuestAgentTimeout)
    fake.close()
    sock_path.unlink()
    with pytest.raises(GuestAgentError, match="cannot connect"):
        agent.ping()
    assert time.monotonic() - started < 5


def test_silent_agent_times_out_and_reconnects(sock_path: Path) -> None:
    calls = {"n": 0}

    def ping(_: dict[str, Any]) -> Any:
        calls["n"] += 1
        return "SILENT" if calls["n"] == 1 else {}

    fake = FakeAgent(sock_path, {"guest-ping": ping})
    try:
        agent = GuestAgent(sock_path, timeout=0.5)
        with pytest.raises(GuestAgentTimeout):
            agent.ping()
        agent.ping()  # a fresh connection, re-synchronised
        assert fake.connections == 2
    finally:
        fake.close()


def test_exec_polls_status_and_decodes_output(sock_path: Path) -> None:
    polls = {"n": 0}

    def status(args: dict[str, Any]) -> Any:
        assert args["pid"] == 42
        polls["n"] += 1
        if polls["n"] < 3:
            return {"exited": False}
        return {"exited": True, "exitcode": 3,
                "out-data": base64.b64encode(b"out").decode(),
                "err-data": base64.b64encode(b"err").decode()}  # fmt: skip

    fake = FakeAgent(sock_path, {"guest-exec": lambda a: {"pid": 42}, "guest-exec-status": status})
    try:
        agent = GuestAgent(sock_path, timeout=5)
        assert agent.exec(["sh", "-c", "x"], input=b"in", timeout=10) == ExecResult(3, b"out", b"err")
        exec_req = next(r for r in fake.requests if r["execute"] == "guest-exec")["arguments"]
        assert exec_req["path"] == "sh" and exec_req["arg"] == ["-c", "x"]
        assert base64.b64decode(exec_req["input-data"]) == b"in"
        assert exec_req["capture-output"] is True
    finally:
        fake.close()


def test_exec_timeout_kills_the_command(sock_path: Path) -> None:
    pids = iter(range(100, 200))
    fake = FakeAgent(sock_path, {"guest-exec": lambda a: {"pid": next(pids)},
                                 "guest-exec-status": lambda a: {"exited": False}})  # fmt: skip
    try:
        agent = GuestAgent(sock_path, timeout=5)
        with pytest.raises(GuestExecTimeout):
            agent.exec(["sleep", "100"], timeout=0.5)
        kill = [r["arguments"] for r in fake.requests if r["execute"] == "guest-exec"][-1]
        assert kill["path"] == "kill" and kill["arg"] == ["-9", "100"]
    finally:
        fake.close()


def test_shutdown_expects_no_reply_but_reports_refusal(sock_path: Path) -> None:
    state = {"frozen": False}

    def shutdown(args: dict[str, Any]) -> Any:
        assert args["mode"] == "powerdown"
        if state["frozen"]:
            raise Refuse("Command guest-shutdown has been disabled: the agent is in frozen state")
        return "SILENT"

    fake = FakeAgent(sock_path, {"guest-shutdown": shutdown})
    try:
        agent = GuestAgent(sock_path, timeout=5)
        started = time.monotonic()
        agent.shutdown(error_wait=0.3)
        assert time.monotonic() - started < 3
        assert not agent.connected  # the next command starts afresh
        state["frozen"] = True
        with pytest.raises(GuestAgentCommandError, match="frozen state"):
            agent.shutdown(error_wait=2)
        with pytest.raises(GuestAgentError, match="mode"):
            agent.shutdown("explode")
    finally:
        fake.close()


def test_thread_safe_concurrent_commands(sock_path: Path) -> None:
    fake = FakeAgent(sock_path, {"guest-info": lambda a: {"version": "7.2"},
                                 "guest-fsfreeze-status": lambda a: "thawed"})  # fmt: skip
    try:
        agent = GuestAgent(sock_path, timeout=5)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(50):
                    assert agent.info()["version"] == "7.2"
                    assert agent.freeze_status() == "thawed"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert fake.connections == 1
    finally:
        fake.close()


def test_file_write_and_read(sock_path: Path) -> None:
    files: dict[int, bytearray] = {}
    store: dict[str, bytes] = {"/etc/hostname": b"guest\n"}
    paths: dict[int, str] = {}
    pos: dict[int, int] = {}

    def open_(a: dict[str, Any]) -> Any:
        h = len(files) + 1
        files[h] = bytearray(b"" if a["mode"] == "w" else store.get(a["path"], b""))
        paths[h], pos[h] = a["path"], 0
        return h

    def write(a: dict[str, Any]) -> Any:
        data = base64.b64decode(a["buf-b64"])
        files[a["handle"]] += data
        return {"count": len(data), "eof": False}

    def read(a: dict[str, Any]) -> Any:
        h = a["handle"]
        chunk = bytes(files[h][pos[h] : pos[h] + a["count"]])
        pos[h] += len(chunk)
        return {"count": len(chunk), "buf-b64": base64.b64encode(chunk).decode(),
                "eof": pos[h] >= len(files[h])}  # fmt: skip

    def close(a: dict[str, Any]) -> Any:
        store[paths[a["handle"]]] = bytes(files[a["handle"]])
        return {}

    fake = FakeAgent(sock_path, {"guest-file-open": open_, "guest-file-write": write,
                                 "guest-file-read": read, "guest-file-flush": lambda a: {},
                                 "guest-file-close": close})  # fmt: skip
    try:
        agent = GuestAgent(sock_path, timeout=5)
        big = bytes(range(256)) * 9000  # > one 1 MiB chunk
        agent.file_write("/tmp/x", big)
        assert store["/tmp/x"] == big
        assert agent.file_read("/etc/hostname") == b"guest\n"
    finally:
        fake.close()


def test_freeze_without_an_agent_fails_fast_and_sends_nothing(sock_path: Path) -> None:
    """An agent socket nobody answers on (QEMU up, guest agent not running)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(1)
    try:
        agent = GuestAgent(sock_path, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(GuestAgentTimeout):
            agent.freeze()
        assert time.monotonic() - started < 2  # the constructor's timeout, no thaw attempt
    finally:
        srv.close()


def test_freeze_reply_lost_triggers_a_thaw(sock_path: Path) -> None:
    fake = FakeAgent(sock_path, {"guest-fsfreeze-freeze": lambda a: "SILENT",
                                 "guest-fsfreeze-thaw": lambda a: 1})  # fmt: skip
    try:
        agent = GuestAgent(sock_path, timeout=0.5)
        with pytest.raises(GuestAgentTimeout):
            agent.freeze()
        assert [r["execute"] for r in fake.requests if "fsfreeze" in r["execute"]] == [
            "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]  # fmt: skip
    finally:
        fake.close()
