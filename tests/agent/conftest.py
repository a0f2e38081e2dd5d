"""Fixtures: a vault CA, its enrollment endpoint, and registered agents on loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.agent.config import AgentConfig
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.agent.register import register
from rehost.agent.service import AgentService


def free_port(count: int = 1) -> int:
    """A port p such that p .. p+count-1 were free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base + 1, base + count):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "vault" / "agents")


@pytest.fixture
def enrollment(ca: CertificateAuthority) -> Iterator[EnrollmentServer]:
    with EnrollmentServer(ca, "127.0.0.1", 0) as server:
        yield server


Registrar = Callable[[str, list[str]], Path]


@pytest.fixture
def registered(ca: CertificateAuthority, enrollment: EnrollmentServer, tmp_path: Path) -> Registrar:
    """register(machine, disks) -> the agent's state folder (enrolled, not running)."""

    def make(machine: str, disks: list[str]) -> Path:
        state = tmp_path / f"agent-{machine}"
        passphrase = ca.issue_passphrase(machine)
        register(
            state, enrollment.url, passphrase, ca.server_fingerprint, disks, listen="127.0.0.1",
            port=free_port(), nbd_port=free_port(len(disks)), shutdown_command=["touch", str(state / "off")],
        )
        return state

    return make


@pytest.fixture
def run_agent() -> Iterator[Callable[[Path], AgentService]]:
    started: list[AgentService] = []

    def start(state: Path) -> AgentService:
        service = AgentService(state, AgentConfig.load(state)).start()
        started.append(service)
        return service

    yield start
    for s in started:
        s.close()
