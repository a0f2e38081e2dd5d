"""Real network separation: the agent in its own network namespace, the server in another,
joined by a veth pair (10.234.0.0/30, namespaces made by this test). The link cut in the
middle of a cycle: nothing committed; link up: the next cycle completes and is exact."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rehost.agent.client import AgentClient, AgentError
from rehost.agent.pki import CertificateAuthority, EnrollmentServer
from rehost.replication.cycle import run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.storage import LocalStorage
from rehost.sources.physical import PhysicalSource
from rehost.vault.models import MachineRow

from .test_replication import _cycle, _point_bytes

MiB = 1 << 20
SERVER_IP, AGENT_IP = "10.234.0.1", "10.234.0.2"
CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    tag = f"{os.getpid() % 100000}"
    server, agent = f"rhsrv{tag}", f"rhagt{tag}"
    try:
        _ip("netns", "add", server)
        _ip("netns", "add", agent)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create network namespaces: {e.stderr}")
    try:
        _ip("-n", server, "link", "add", "vs", "type", "veth", "peer", "name", "va", "netns", agent)
        _ip("-n", server, "addr", "add", f"{SERVER_IP}/30", "dev", "vs")
        _ip("-n", agent, "addr", "add", f"{AGENT_IP}/30", "dev", "va")
        for ns, dev in ((server, "vs"), (agent, "va"), (server, "lo"), (agent, "lo")):
            _ip("-n", ns, "link", "set", dev, "up")
        yield server, agent
    finally:
        subprocess.run(["ip", "netns", "del", server], capture_output=True)
        subprocess.run(["ip", "netns", "del", agent], capture_output=True)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that joined network namespace ``ns`` (its sockets live there)."""
    box: dict[str, Any] = {}

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def test_agent_across_a_veth_link(netns: tuple[str, str], tmp_path: Path) -> None:
    server_ns, agent_ns = netns
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(16 * MiB))
    ca = CertificateAuthority(tmp_path / "vault" / "agents")
    state = tmp_path / "agent-state"
    py = [sys.executable, "-m", "rehost.agent", "--state", str(state)]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    enroll = in_netns(server_ns, lambda: EnrollmentServer(ca, SERVER_IP, 0))
    enroll.start()
    try:
        passphrase = ca.issue_passphrase("far1")
        subprocess.run(
            ["ip", "netns", "exec", agent_ns, *py, "register", "--server", enroll.url, "--passphrase",
             passphrase, "--fingerprint", ca.server_fingerprint, "--disk", str(disk), "--listen", AGENT_IP],
            check=True, capture_output=True, env=env, timeout=60,
        )
    finally:
        enroll.stop()
    agent = subprocess.Popen(["ip", "netns", "exec", agent_ns, *py, "run"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
        cache = DigestCache(tmp_path / "cache")
        machine = MachineRow(id="m-far1", name="far1")
        source = PhysicalSource(ca, cache, link_timeout=3, timeout=20)
        client = AgentClient(ca, "far1", AGENT_IP, 8743, timeout=5)

        def wait_ready() -> None:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.heartbeat()
                    return
                except AgentError:
                    if time.monotonic() > deadline or agent.poll() is not None:
                        raise
                    time.sleep(0.2)

        in_netns(server_ns, wait_ready)
        first = in_netns(server_ns, lambda: _cycle(source, repo, cache, machine, None))
        assert _point_bytes(repo, first.point) == disk.read_bytes()

        with open(disk, "r+b") as f:
            f.seek(5 * MiB)
            f.write(os.urandom(MiB))

        def cut_cycle() -> None:
            with source.snapshot(machine, first.point) as snap:
                _ip("-n", server_ns, "link", "set", "vs", "down")
                run_cycle(repo, cache, machine.id, snap.disks, parent=first.point, changed=snap.changed)

        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017
            in_netns(server_ns, cut_cycle)
        assert time.monotonic() - t0 < 60  # a dead link errors out, it does not hang
        assert [p.id for p in repo.list_points(machine.id)] == [first.point.id]
        _ip("-n", server_ns, "link", "set", "vs", "up")
        in_netns(server_ns, wait_ready)
        assert client_committed(ca, server_ns) == first.point.id  # the agent adopted nothing
        second = in_netns(server_ns, lambda: _cycle(source, repo, cache, machine, first.point))
        assert second.bytes_read == MiB
        assert _point_bytes(repo, second.point) == disk.read_bytes()
    finally:
        agent.terminate()
        agent.wait(20)


def client_committed(ca: CertificateAuthority, ns: str) -> str:
    hb = in_netns(ns, lambda: AgentClient(ca, "far1", AGENT_IP, 8743, timeout=5).heartbeat())
    return str(hb["committed"][0])
