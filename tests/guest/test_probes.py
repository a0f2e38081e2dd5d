"""Probes against real sockets on loopback: a port counts only when bytes come back."""

from __future__ import annotations

import http.server
import socket
from collections.abc import Iterator

import pytest

from rehost.errors import UsageError
from rehost.guest.probes import Check, probe
from tests.loopback import http_service, tcp_service


@pytest.fixture
def http_port() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path.startswith("/ok") else 503
            body = f"hello from {self.path}".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_service(Handler) as port:
        yield port


def test_tcp_passes_only_when_bytes_come_back() -> None:
    with tcp_service(lambda c: c.sendall(b"SSH-2.0-test\r\n")) as banner, \
            tcp_service() as silent:  # closes at once: a forwarder when nothing listens inside
        ok = probe(Check("ssh", "tcp", port=banner, expect="SSH-", timeout_s=5), "127.0.0.1", banner)
        assert ok.ok and "SSH-2.0" in ok.detail
        bad = probe(Check("db", "tcp", port=silent, timeout_s=2), "127.0.0.1", silent)
        assert not bad.ok and "no byte came back" in bad.detail and "tries" in bad.detail
        wrong = probe(Check("ssh", "tcp", port=banner, expect="HTTP/", timeout_s=1.5), "127.0.0.1", banner)
        assert not wrong.ok and "did not contain 'HTTP/'" in wrong.detail


def test_tcp_sends_first_then_reads_the_answer() -> None:
    def echo(c: socket.socket) -> None:
        c.sendall(c.recv(100).upper())

    with tcp_service(echo) as port:
        r = probe(Check("echo", "tcp", port=port, send="ping\\r\\n", expect="PING", timeout_s=5),
                  "127.0.0.1", port)
        assert r.ok, r.detail


def test_refused_port_is_retried_until_the_deadline() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ticks = iter(range(1000))
    slept: list[float] = []
    r = probe(Check("gone", "tcp", port=port, timeout_s=10), "127.0.0.1", port,
              clock=lambda: float(next(ticks)), sleep=slept.append)
    assert not r.ok and "no connection" in r.detail
    assert len(slept) >= 3  # it kept trying until its deadline


def test_http_status_and_body(http_port: int) -> None:
    ok = probe(Check("web", "http", port=http_port, path="/ok/page", expect="hello"), "127.0.0.1", http_port)
    assert ok.ok and "200" in ok.detail
    status = probe(Check("web", "http", port=http_port, path="/down", timeout_s=1.5), "127.0.0.1", http_port)
    assert not status.ok and "answered 503 (wanted 200)" in status.detail
    body = probe(Check("web", "http", port=http_port, path="/ok", expect="blue", timeout_s=1.5),
                 "127.0.0.1", http_port)
    assert not body.ok and "without 'blue'" in body.detail and "hello from /ok" in body.detail


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "a b", "kind": "tcp", "port": 1}, "invalid check name"),
    ({"name": "x", "kind": "udp", "port": 1}, "unknown check kind"),
    ({"name": "x", "kind": "tcp", "port": 70000}, "not a TCP port"),
    ({"name": "x", "kind": "http", "port": 80, "path": "index"}, "must start with /"),
    ({"name": "x", "kind": "script"}, "needs the script"),
    ({"name": "x", "kind": "tcp", "port": 1, "timeout_s": 0}, "timeout"),
])
def test_bad_checks_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Check(**kwargs)  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    c = Check("web", "http", port=80, path="/x", expect="y", timeout_s=30)
    assert Check.from_json(c.to_json()) == c
