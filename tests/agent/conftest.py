"""Fixtures: a vault CA, its enrollment endpoint, and registered agents on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rehost.agent.config import AgentConfig
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.agent.register import register
from rehost.agent.service import AgentService
from rehost.process import free_port


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


LOOP_SIZE = 64 << 20


def run_cmd(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ext4_loop(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(backing file, loop device, mount point) of a mounted ext4."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root, losetup and mkfs.ext4")
    backing = tmp_path / "physical.img"
    with open(backing, "wb") as f:
        f.truncate(LOOP_SIZE)
    # no lazy init: nothing writes behind the test's back
    run_cmd(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(backing)])
    dev = Path(run_cmd(["losetup", "-f", "--show", str(backing)]).strip())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run_cmd(["mount", "-t", "ext4", str(dev), str(mnt)])
        try:
            yield backing, dev, mnt
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", str(dev)], capture_output=True)
