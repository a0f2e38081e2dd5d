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
from rehost.replication.cycle import Resume, run_cycle
from rehost.replication.digests import DigestCache
from rehost.repository.repository import Repository
from rehost.repository.storage import LocalStorage
from rehost.sources.physical import PhysicalSource
from rehost.spec import MachineSpec

from .conftest import run_cmd
from .test_replication import _CutAfter, _cycle, _point_bytes

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


def test_agent_across_a_veth_link(
    netns: tuple[str, str], ext4_loop: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Agent and server in two namespaces; the source disk a loop device with ext4. Files
    written between cycles are in the points; the link dies 12 MiB into a 24 MiB transfer:
    no point, the retry does not fetch again what was stored, and the point is exact."""
    server_ns, agent_ns = netns
    backing, dev, mnt = ext4_loop
    (mnt / "hello.txt").write_text("before the first cycle\n")
    run_cmd(["mount", "-o", "remount,ro", str(mnt)])  # quiescent: points must equal the device
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
             passphrase, "--fingerprint", ca.server_fingerprint, "--disk", str(dev), "--listen", AGENT_IP],
            check=True, capture_output=True, env=env, timeout=60,
        )
    finally:
        enroll.stop()
    entry = ca.machine("far1")
    assert entry is not None and entry["address"] == AGENT_IP  # it came over the veth
    agent = subprocess.Popen(["ip", "netns", "exec", agent_ns, *py, "run"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        repo = Repository.create(LocalStorage.create(tmp_path / "repo"))
        cache = DigestCache(tmp_path / "cache")
        machine = MachineSpec(id="m-far1", name="far1")
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
        assert _point_bytes(repo, first.point) == backing.read_bytes()

        run_cmd(["mount", "-o", "remount,rw", str(mnt)])
        (mnt / "data.bin").write_bytes(os.urandom(24 * MiB))
        (mnt / "hello.txt").write_text("after the first cycle\n")
        run_cmd(["mount", "-o", "remount,ro", str(mnt)])

        def cut_cycle() -> None:
            with source.snapshot(machine, first.point) as snap:
                index, disk = snap.disks[0]
                cut = _CutAfter(disk, 12 * MiB, lambda: _ip("-n", server_ns, "link", "set", "vs", "down"))
                run_cycle(repo, cache, machine.id, [(index, cut)], parent=first.point, changed=snap.changed,
                          resume=Resume.of(cache, machine.id, first.point, snap.expected))

        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017
            in_netns(server_ns, cut_cycle)
        assert time.monotonic() - t0 < 60  # a dead link errors out, it does not hang
        assert [p.id for p in repo.list_points(machine.id)] == [first.point.id]
        _ip("-n", server_ns, "link", "set", "vs", "up")
        in_netns(server_ns, wait_ready)
        assert client_committed(ca, server_ns) == first.point.id  # the agent adopted nothing
        second = in_netns(server_ns, lambda: _cycle(source, repo, cache, machine, first.point))
        assert second.resumed_bytes >= 8 * MiB, second.resumed_bytes  # not all sent again
        assert second.bytes_read + second.resumed_bytes >= 24 * MiB
        assert second.bytes_read <= 24 * MiB - second.resumed_bytes + 2 * MiB  # metadata blocks
        assert _point_bytes(repo, second.point) == backing.read_bytes()
        restored = tmp_path / "restored.img"
        restored.write_bytes(_point_bytes(repo, second.point))
        assert run_cmd(["debugfs", "-R", "cat /hello.txt", str(restored)]) == "after the first cycle\n"
    finally:
        agent.terminate()
        agent.wait(20)


def client_committed(ca: CertificateAuthority, ns: str) -> str:
    hb = in_netns(ns, lambda: AgentClient(ca, "far1", AGENT_IP, 8743, timeout=5).heartbeat())
    return str(hb["committed"][0])
