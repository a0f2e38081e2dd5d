"""``rehost-agent register``: enroll with the replication server.

The agent makes its key locally (it never leaves the machine), sends a CSR and its
inventory with the one-time passphrase over HTTPS to the server's enrollment endpoint, whose
certificate it pins by the SHA-256 fingerprint printed with the passphrase, and stores the
certificate and the CA it gets back.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from rehost.agent import inventory as inv
from rehost.agent.config import AgentConfig, tls_dir
from rehost.agent.tls import (
    csr_pem,
    fingerprint_der,
    key_pem,
    new_key,
    normalize_fingerprint,
)
from rehost.fs import write_atomic, write_private


class RegistrationError(Exception):
    pass


def _post_pinned(url: str, fingerprint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise RegistrationError("the server URL must be https://HOST:PORT")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pinned fingerprint, checked below
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=timeout)
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        if not der or fingerprint_der(der) != normalize_fingerprint(fingerprint):
            raise RegistrationError(
                "the server's certificate does not match the fingerprint given: not sending the passphrase"
            )
        data = json.dumps(body).encode()
        conn.request("POST", "/enroll", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"{}")
        if resp.status != 200:
            raise RegistrationError(
                f"the server refused the registration: {answer.get('error', resp.status)}"
            )
        if not isinstance(answer, dict):
            raise RegistrationError("unexpected answer from the server")
        return answer
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise RegistrationError(f"cannot register with {parts.hostname}: {e}") from None
    finally:
        conn.close()


def register(
    state: Path,
    server: str,
    passphrase: str,
    fingerprint: str,
    disks: list[str],
    *,
    listen: str = "0.0.0.0",
    port: int | None = None,
    nbd_port: int | None = None,
    shutdown_command: list[str] | None = None,
    timeout: float = 30.0,
) -> AgentConfig:
    """Enroll and write the agent's state folder; returns its configuration."""
    for d in disks:
        if not Path(d).exists():
            raise RegistrationError(f"disk {d} does not exist")
    key = new_key()
    inventory = inv.collect([Path(d) for d in disks])
    config_port = port or AgentConfig.__dataclass_fields__["port"].default
    inventory["agent"] = {
        "port": config_port,
        "nbd_port": nbd_port or AgentConfig.__dataclass_fields__["nbd_port"].default,
    }
    answer = _post_pinned(
        server,
        fingerprint,
        {
            "passphrase": passphrase,
            "csr": csr_pem(key, inventory["hostname"]).decode(),
            "inventory": inventory,
        },
        timeout,
    )
    tls = tls_dir(state)
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(tls / "server-key.pem", key_pem(key))
    write_atomic(tls / "server-cert.pem", str(answer["certificate"]).encode())
    write_atomic(tls / "ca-cert.pem", str(answer["ca"]).encode())
    config = AgentConfig(
        machine=str(answer["machine"]), server_serial=int(answer["server_serial"]), disks=disks, listen=listen
    )
    if port is not None:
        config.port = port
    if nbd_port is not None:
        config.nbd_port = nbd_port
    if shutdown_command:
        config.shutdown_command = shutdown_command
    config.save(state)
    return config
