"""The replication server's client of an agent's API (mutual TLS, identity pinned).

Every connection checks, after the handshake with the vault's CA, that the agent presents
the certificate enrollment issued to *this* machine (common name and serial) and that it is
not revoked: another machine's certificate, even from the same CA, is refused.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

from rehost.agent.pki import CertificateAuthority
from rehost.agent.tls import peer_identity
from rehost.errors import RehostError


class AgentError(RehostError):
    """The agent answered with an error."""


class AgentUnreachable(AgentError):
    """No answer from the agent (network, agent down)."""


class AgentRefused(AgentError):
    """The peer is not the agent enrolled for the machine, or its certificate is revoked."""


class AgentClient:
    def __init__(
        self, ca: CertificateAuthority, machine: str, host: str, port: int, *, timeout: float = 60.0
    ) -> None:
        self.ca = ca
        self.machine = machine
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ctx = ca.client_ssl_context()

    def _check_peer(self, sock: ssl.SSLSocket) -> None:
        serial, cn = peer_identity(sock)
        entry = self.ca.machine(self.machine)
        if entry is None:
            raise AgentRefused(f"{self.machine} is not enrolled (or was revoked): register its agent")
        if cn != self.machine or str(serial) != str(entry["serial"]):
            raise AgentRefused(f"the agent at {self.host}:{self.port} is not {self.machine}'s agent")
        if self.ca.is_revoked(serial):
            raise AgentRefused(f"the certificate of the agent at {self.host}:{self.port} is revoked")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._ctx, timeout=timeout or self.timeout
        )
        try:
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as e:
                raise AgentUnreachable(
                    f"{self.machine}'s agent at {self.host}:{self.port} is unreachable: {e}"
                ) from None
            assert isinstance(conn.sock, ssl.SSLSocket)
            self._check_peer(conn.sock)
            data = json.dumps(body or {}).encode() if method == "POST" else None
            try:
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise AgentUnreachable(f"{self.machine}'s agent stopped answering ({path}): {e}") from None
            try:
                answer = json.loads(raw or b"{}")
            except ValueError:
                raise AgentError(f"{self.machine}'s agent sent an invalid answer to {path}") from None
            if resp.status != 200:
                raise AgentError(f"{self.machine}'s agent: {path}: {answer.get('error', resp.status)}")
            if not isinstance(answer, dict):
                raise AgentError(f"{self.machine}'s agent sent an invalid answer to {path}")
            return answer
        finally:
            conn.close()

    def heartbeat(self) -> dict[str, Any]:
        return self.request("GET", "/heartbeat", timeout=10)

    def inventory(self) -> dict[str, Any]:
        return self.request("GET", "/inventory")
