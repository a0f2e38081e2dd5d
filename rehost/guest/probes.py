"""Is the failed-over guest's service really there? TCP and HTTP probes with a verdict.

A port counts only when bytes come back from the guest. A connection that opens is not
enough: QEMU's user-mode networking (and any NAT or load balancer in front of a machine)
accepts a forwarded connection even when nothing listens inside, then closes it. So a TCP
probe sends what the check says (or nothing, for services that speak first, like SSH) and
passes only on a reply; an HTTP probe wants the status and, if asked, a fragment of the body.

Services come up after the boot marker, so a probe keeps trying until its deadline and, when
it fails, says what it saw the last time (refused, closed without a byte, a 502, the body it
got instead). Probes know nothing of vaults or targets: they are given an address.
"""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rehost.errors import UsageError

CheckKind = Literal["tcp", "http", "script"]
KINDS: tuple[CheckKind, ...] = ("tcp", "http", "script")
ATTEMPT_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 1.0
DEFAULT_TIMEOUT_S = 120.0
BODY_LIMIT = 1 << 20


@dataclass(frozen=True)
class Check:
    """A named check of a machine: ``tcp`` (``port``, ``send``, ``expect``), ``http``
    (``port``, ``path``, ``status``, ``expect`` in the body) or ``script`` (run on the rehost
    host, passes on exit 0); ``timeout_s``: how long to keep trying."""

    name: str
    kind: CheckKind
    port: int = 0
    send: str = ""
    expect: str = ""
    path: str = "/"
    status: int = 200
    script: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown check kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if not self.name or len(self.name) > 64 or not self.name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"invalid check name {self.name!r}: letters, digits, - and _, at most 64")
        if self.kind in ("tcp", "http") and not 1 <= self.port <= 65535:
            raise UsageError(f"check {self.name}: port {self.port} is not a TCP port (1-65535)")
        if self.kind == "http" and not self.path.startswith("/"):
            raise UsageError(f"check {self.name}: the HTTP path must start with / (not {self.path!r})")
        if self.kind == "http" and not 100 <= self.status <= 599:
            raise UsageError(f"check {self.name}: {self.status} is not an HTTP status")
        if self.kind == "script" and not self.script:
            raise UsageError(f"check {self.name}: a script check needs the script's path")
        if not 0 < self.timeout_s <= 3600:
            raise UsageError(f"check {self.name}: timeout {self.timeout_s:g}s is not within 0-3600 s")

    def describe(self) -> str:
        if self.kind == "tcp":
            what = f"TCP {self.port}" + (f", send {self.send!r}" if self.send else "")
            return what + (f", reply contains {self.expect!r}" if self.expect else ", any reply")
        if self.kind == "http":
            return f"HTTP GET :{self.port}{self.path} → {self.status}" + (
                f", body contains {self.expect!r}" if self.expect else "")
        return f"script {self.script} (exit 0)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Check:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Result:
    """One check's verdict; ``detail`` says what was seen, pass or fail."""

    name: str
    kind: str
    ok: bool
    detail: str
    machine: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tcp_once(host: str, port: int, send: str, expect: str) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=ATTEMPT_TIMEOUT_S) as sock:
            if send:
                sock.sendall(send.encode().decode("unicode_escape").encode("latin-1"))
            got = b""
            try:
                while len(got) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                    if not expect or expect.encode() in got:
                        break
            except TimeoutError:
                pass
    except OSError as e:
        return False, f"no connection to {host}:{port}: {e.strerror or e}"
    if not got:
        return False, (f"{host}:{port} accepted the connection but no byte came back "
                       "(a forwarder answers even when nothing listens inside)")
    if expect and expect.encode() not in got:
        return False, f"the reply did not contain {expect!r}: {got[:120]!r}"
    return True, f"{len(got)} byte(s) back from {host}:{port}: {got[:60]!r}"


def _http_once(host: str, port: int, path: str, status: int, expect: str) -> tuple[bool, str]:
    conn = http.client.HTTPConnection(host, port, timeout=ATTEMPT_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"User-Agent": "rehost-check", "Connection": "close"})
        r = conn.getresponse()
        body = r.read(BODY_LIMIT)
    except (OSError, http.client.HTTPException) as e:
        return False, f"GET http://{host}:{port}{path}: {type(e).__name__}: {e}"
    finally:
        conn.close()
    text = body.decode("utf-8", "replace")
    if r.status != status:
        return False, f"GET {path} answered {r.status} (wanted {status}): {text[:120]!r}"
    if expect and expect not in text:
        return False, f"GET {path} answered {r.status} without {expect!r}; the body: {text[:160]!r}"
    return True, f"GET {path} → {r.status}, {len(body)} bytes" + (f", contains {expect!r}" if expect else "")


def probe(check: Check, host: str, port: int, *, clock: Any = time.monotonic,
          sleep: Any = time.sleep) -> Result:
    """Try ``check`` against ``host:port`` until it passes or its timeout ends."""
    if check.kind == "script":
        raise UsageError("a script check is run by the caller, not probed")
    deadline = clock() + check.timeout_s
    tries = 0
    while True:
        tries += 1
        if check.kind == "tcp":
            ok, detail = _tcp_once(host, port, check.send, check.expect)
        else:
            ok, detail = _http_once(host, port, check.path, check.status, check.expect)
        if ok or clock() + RETRY_PAUSE_S >= deadline:
            suffix = "" if ok else f" (after {tries} tries in {check.timeout_s:g}s)"
            return Result(check.name, check.kind, ok, detail + suffix)
        sleep(RETRY_PAUSE_S)
