"""Enrollment and mutual TLS: only the right passphrase, once, in time; only the right peers."""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from rehost.agent.client import AgentClient, AgentRefused, AgentUnreachable
from rehost.agent.config import tls_dir
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.agent.register import RegistrationError, register
from rehost.agent.service import AgentService
from rehost.agent.tls import client_context
from rehost.process import free_port

from .conftest import Registrar


def _disk(tmp_path: Path) -> str:
    p = tmp_path / "disk.raw"
    p.write_bytes(b"x" * 65536)
    return str(p)


def test_passphrase_once_in_time_and_right(
    ca: CertificateAuthority, enrollment: EnrollmentServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    disk = _disk(tmp_path)
    fp = ca.server_fingerprint
    good = ca.issue_passphrase("web1")
    with pytest.raises(RegistrationError, match="refused"):
        register(tmp_path / "a", enrollment.url, good + "x", fp, [disk])
    with pytest.raises(RegistrationError, match="fingerprint"):  # not sent to an unpinned server
        register(tmp_path / "a", enrollment.url, good, "AB" * 32, [disk])
    config = register(tmp_path / "a", enrollment.url, good, fp, [disk])
    assert config.machine == "web1"
    assert ca.machine("web1") is not None
    with pytest.raises(RegistrationError, match="already used"):
        register(tmp_path / "b", enrollment.url, good, fp, [disk])
    expired = ca.issue_passphrase("web2", ttl=-1)
    with pytest.raises(RegistrationError, match="expired"):
        register(tmp_path / "c", enrollment.url, expired, fp, [disk])
    with pytest.raises(RegistrationError, match="already used"):  # an expired one is spent too
        register(tmp_path / "c", enrollment.url, expired, fp, [disk])
    # secrets never reach logs, output or the CA's state
    key = (tls_dir(tmp_path / "a") / "server-key.pem").read_text()
    out, err = capfd.readouterr()
    for secret in (good, expired):
        assert secret not in caplog.text + out + err
        assert secret not in (ca.folder / "state.json").read_text()
    assert key not in caplog.text + out + err


def test_plain_http_is_refused(enrollment: EnrollmentServer, registered: Registrar,
                               run_agent: Callable[[Path], AgentService], tmp_path: Path) -> None:
    service = run_agent(registered("m1", [_disk(tmp_path)]))
    host, port = enrollment.httpd.server_address[:2]
    for h, p in ((str(host), int(port)), ("127.0.0.1", service.port)):
        conn = http.client.HTTPConnection(h, p, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/heartbeat")
            conn.getresponse().read()
        conn.close()


def _raw_get(ctx: ssl.SSLContext, port: int) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/heartbeat")
        return conn.getresponse().status
    finally:
        conn.close()


def test_only_the_enrolled_peers_talk(
    ca: CertificateAuthority, registered: Registrar, run_agent: Callable[[Path], AgentService],
    tmp_path: Path,
) -> None:
    s1 = registered("m1", [_disk(tmp_path)])
    s2 = registered("m2", [_disk(tmp_path)])
    a1, a2 = run_agent(s1), run_agent(s2)
    assert AgentClient(ca, "m1", "127.0.0.1", a1.port).heartbeat()["machine"] == "m1"
    # the server refuses an agent presenting another machine's certificate
    with pytest.raises(AgentRefused, match="not m1's agent"):
        AgentClient(ca, "m1", "127.0.0.1", a2.port).heartbeat()
    # an agent refuses another machine's client certificate (same CA, not the server)
    t2 = tls_dir(s2)
    other_machine = client_context(t2 / "server-cert.pem", t2 / "server-key.pem", ca.ca_cert)
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        _raw_get(other_machine, a1.port)
    # ... and a certificate of another CA
    foreign = CertificateAuthority(tmp_path / "other-ca")
    foreign_cert = client_context(foreign.server_cert, foreign.server_key, ca.ca_cert)
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        _raw_get(foreign_cert, a1.port)
    # a server of another CA cannot verify the agent at all
    with pytest.raises(AgentUnreachable):
        AgentClient(foreign, "m1", "127.0.0.1", a1.port).heartbeat()
    # the agent's revoked list is checked on every request
    assert _raw_get(ca.client_ssl_context(), a1.port) == 200
    (s1 / "revoked.json").write_text(f'["{ca.server_serial}"]')
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        _raw_get(ca.client_ssl_context(), a1.port)
    # a revoked machine certificate is refused by the server
    assert ca.revoke("m2") is not None
    with pytest.raises(AgentRefused):
        AgentClient(ca, "m2", "127.0.0.1", a2.port).heartbeat()
    assert ca.is_revoked(_serial(t2 / "server-cert.pem"))


def _serial(pem: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def test_uninstall_removes_credentials(registered: Registrar, tmp_path: Path) -> None:
    from rehost.agent.config import uninstall

    state = registered("m1", [_disk(tmp_path)])
    assert (tls_dir(state) / "server-key.pem").is_file()
    uninstall(state)
    assert not state.exists()


def test_free_port_helper() -> None:
    assert free_port(2) > 0
