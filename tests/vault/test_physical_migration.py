"""A physical machine's whole migration through the commands a user types: add-physical prints a
passphrase, the agent registers with ``rehost serve``'s enrollment endpoint, replicate, export
equals the disk, a dead agent is named by health, failover with the agent unreachable is
recorded and boots the latest point (the reachable path, freeze held and power-off through
the agent, runs in ``rehost demo --physical`` and tests/agent), complete revokes the agent's
certificate, and ``rehost-agent uninstall`` leaves no key behind. Secrets never reach a log."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rehost.agent.client import AgentClient, AgentError
from rehost.agent.pki import CertificateAuthority
from rehost.process import free_port
from rehost.testkit.tinylinux import set_marker
from rehost.vault import agents
from rehost.vault.vault import Vault
from tests.cli_helpers import REHOST, REPO, index_files, qemu_img_compare, rehost

AGENT = [sys.executable, "-m", "rehost.agent"]


@dataclass
class Lab:
    vault: Path
    target: Path
    disk: Path  # the "physical" machine's disk: a bootable tiny Linux image
    state: Path  # the agent's state folder
    enroll_url: str
    agent_port: int
    nbd_port: int
    serve: subprocess.Popen[str]
    agents: list[subprocess.Popen[str]]

    def start_agent(self) -> subprocess.Popen[str]:
        p = subprocess.Popen([*AGENT, "--state", str(self.state), "run"], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.agents.append(p)
        deadline = time.monotonic() + 30
        with _authority(self.vault) as ca:
            while True:
                try:
                    AgentClient(ca, "srv1", "127.0.0.1", self.agent_port, timeout=5).heartbeat()
                    return p
                except AgentError:
                    assert p.poll() is None and time.monotonic() < deadline, "the agent did not start"
                    time.sleep(0.2)


@contextmanager
def _authority(root: Path) -> Iterator[CertificateAuthority]:
    """The vault's agents' CA (in its database), as the server uses it."""
    vault = Vault.open(root)
    try:
        yield agents.authority(vault)
    finally:
        vault.close()


def _stop(p: subprocess.Popen[str]) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out or ""


def _wait_listening(port: int, serve: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            said = serve.stdout.read() if serve.stdout else ""
            raise AssertionError(f"rehost serve ended ({serve.returncode}): {said}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"rehost serve did not listen on {port} within {timeout:.0f}s")


@pytest.fixture
def lab(tmp_path: Path, tiny_image: Path) -> Iterator[Lab]:
    vault, target = tmp_path / "vault", tmp_path / "target"
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    port = free_port()
    serve = subprocess.Popen([*REHOST, "--vault", str(vault), "serve", "--listen", "off",
                              "--enroll-listen", f"127.0.0.1:{port}", "--tick", "0.5"],
                             cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "COLUMNS": "200"})
    lab = Lab(vault, target, tiny_image, tmp_path / "agent", f"https://127.0.0.1:{port}",
              free_port(), free_port(), serve, [])
    try:
        _wait_listening(port, serve)  # a busy host takes seconds to start rehost serve
        yield lab
    finally:
        for p in [*lab.agents, serve]:
            _stop(p)
        out = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True).stdout
        for line in out.splitlines():  # never leave a VM or a server behind
            if "pgrep" not in line:
                subprocess.run(["kill", "-9", line.split()[0]], check=False)


def _register(lab: Lab, passphrase: str, fingerprint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "--state", str(lab.state), "register", "--server", lab.enroll_url, "--passphrase",
         passphrase, "--fingerprint", fingerprint, "--disk", str(lab.disk), "--listen", "127.0.0.1",
         "--port", str(lab.agent_port), "--nbd-port", str(lab.nbd_port),
         "--shutdown-command", f"touch {lab.state}/powered-off"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.slow
def test_physical_machine_migrates_end_to_end(lab: Lab, tmp_path: Path) -> None:
    set_marker(lab.disk, "first")
    r = rehost(lab.vault, "source", "add-physical", "srv1", "--server-url", lab.enroll_url)
    passphrase = re.search(r"passphrase \(valid 60 min, shown once\): (\S+)", r.out)
    fingerprint = re.search(r"server fingerprint: (\S+)", r.out)
    assert passphrase and fingerprint, r.out
    assert f"rehost-agent register --server {lab.enroll_url} --passphrase {passphrase[1]}" in r.out
    r = rehost(lab.vault, "replicate", "srv1", check=False)
    assert r.code != 0 and "agent has not registered yet" in r.err

    wrong = _register(lab, "not-the-passphrase", fingerprint[1])
    assert wrong.returncode != 0 and "unknown or already used passphrase" in wrong.stderr
    ok = _register(lab, passphrase[1], fingerprint[1])
    assert ok.returncode == 0, ok.stderr
    again = _register(lab, passphrase[1], fingerprint[1])
    assert again.returncode != 0 and "unknown or already used passphrase" in again.stderr
    lab.start_agent()

    first = rehost(lab.vault, "replicate", "srv1", "--json").json()
    machine = rehost(lab.vault, "machines", "--json").json()[0]
    assert machine["source"] == "physical" and machine["state"] == "protected"
    reported = machine["agent"]["inventory"]  # what the agent told the server when it registered
    assert reported["disks"][0]["size"] == lab.disk.stat().st_size == machine["disks"][0]["size"]
    assert reported["disks"][0]["partition_table"]["type"] in ("msdos", "gpt")  # the image is bootable
    assert reported["os"] and reported["cpus"] >= 1 and any(n["name"] == "lo" for n in reported["nics"])
    assert reported["capabilities"]["block_snapshot"] is False
    assert machine["agent"]["address"] == "127.0.0.1"
    spec = machine["spec"]  # the agent's inventory became the machine's spec at its first look
    assert spec["cpus"] == reported["cpus"] and spec["memory_mib"] == reported["memory"] >> 20
    assert {n["mac"] for n in spec["nics"]} == {n["mac"] for n in reported["nics"]
                                                if n["name"] != "lo" and n["mac"].strip("0:")}
    assert "not crash-consistent" in "; ".join(first["notes"])
    set_marker(lab.disk, "second")
    second = rehost(lab.vault, "replicate", "srv1", "--json").json()
    assert 0 < second["bytes_read"] < first["bytes_read"] // 4  # only what the agent reports changed
    exported = tmp_path / "srv1.raw"
    rehost(lab.vault, "export", "srv1", "--output", str(exported))
    assert qemu_img_compare(exported, lab.disk)

    # the agent dies: the server's heartbeat says so, and health names it
    agent_log = _stop(lab.agents[-1])
    rehost(lab.vault, "serve", "--once")
    machine = rehost(lab.vault, "machines", "--json").json()[0]
    assert machine["health"]["status"] == "warning", machine
    assert "the agent has not answered" in machine["health"]["reason"]

    # failover with the source unreachable: recorded, no final sync, the latest point boots
    set_marker(lab.disk, "third")  # written after the last cycle: lost with the source
    r = rehost(lab.vault, "failover", "srv1", "--shutdown-source", "--json").json()
    steps = {s["name"]: s for s in r["steps"]}
    assert r["state"] == "succeeded", r
    assert steps["shutdown_source"]["state"] == "warning"
    assert "unreachable" in steps["shutdown_source"]["detail"]
    assert steps["final_sync"]["state"] == "skipped"
    assert "could not be reached" in steps["final_sync"]["detail"]
    assert "REHOST-BOOT-OK marker=second" in steps["verify_boot"]["detail"]

    rehost(lab.vault, "complete", "srv1")
    # the agent comes back: the server no longer talks to it
    lab.agents.append(subprocess.Popen([*AGENT, "--state", str(lab.state), "run"], cwd=REPO, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 30
    with _authority(lab.vault) as ca:
        assert ca.machine("srv1") is None and ca.revoked()
        while True:
            try:
                AgentClient(ca, "srv1", "127.0.0.1", lab.agent_port, timeout=5).heartbeat()
                raise AssertionError("a revoked agent answered")
            except AgentError as e:
                if "unreachable" not in str(e) or time.monotonic() > deadline:
                    assert "not enrolled" in str(e), e
                    break
                time.sleep(0.2)
    agent_log += _stop(lab.agents[-1])
    un = subprocess.run([*AGENT, "--state", str(lab.state), "uninstall"], cwd=REPO, capture_output=True,
                        text=True, check=True)
    assert "tls" in un.stdout and not (lab.state / "tls").exists()
    assert not (lab.state / "config.json").exists()

    serve_log = _stop(lab.serve)
    assert "agent of srv1 registered from 127.0.0.1" in serve_log
    assert "refused an enrollment" in serve_log
    for log in (serve_log, agent_log, wrong.stderr, ok.stdout + ok.stderr):
        assert passphrase[1] not in log and "PRIVATE KEY" not in log


@pytest.mark.slow
def test_a_server_killed_mid_cycle_resumes_without_fetching_again(lab: Lab, tmp_path: Path) -> None:
    """kill -9 of ``rehost replicate`` once four packs are indexed: no point, the vault checks
    clean, and the rerun takes what was stored from the journal instead of the agent."""
    lab.disk = tmp_path / "big.raw"
    lab.disk.write_bytes(os.urandom(128 << 20))  # eight packs: killed half way
    r = rehost(lab.vault, "source", "add-physical", "srv1")
    passphrase = re.search(r"shown once\): (\S+)", r.out)
    fingerprint = re.search(r"server fingerprint: (\S+)", r.out)
    assert passphrase and fingerprint
    assert _register(lab, passphrase[1], fingerprint[1]).returncode == 0
    lab.start_agent()
    cycle = subprocess.Popen([*REHOST, "--vault", str(lab.vault), "replicate", "srv1"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while index_files(lab.vault) < 1 and cycle.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cycle.poll() is None, "the cycle ended before it could be killed: make the disk bigger"
    cycle.kill()
    cycle.wait()
    assert rehost(lab.vault, "points", "srv1", "--json").json() == []  # nothing committed half
    assert rehost(lab.vault, "check", "--json").json()["ok"]
    again = rehost(lab.vault, "replicate", "srv1", "--json").json()
    assert again["resumed_bytes"] >= 64 << 20, again  # four packs at least: not fetched again
    assert again["bytes_read"] + again["resumed_bytes"] == 128 << 20
    exported = tmp_path / "srv1.raw"
    rehost(lab.vault, "export", "srv1", "--output", str(exported))
    assert qemu_img_compare(exported, lab.disk)
