"""kill -9 at random moments of replication cycles: the repository stays consistent, the next
cycle completes with correct data, and what was stored before the kill is not stored again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_helpers import REHOST, REPO, index_files, qemu_img_compare, rehost

MiB = 1 << 20
SIZE = 256 * MiB  # 8 packs of random data in the first copy; an index file every 4


def _fill(disk: Path, rng: random.Random) -> None:
    with open(disk, "wb") as f:
        for _ in range(SIZE // MiB):
            f.write(rng.randbytes(MiB // 2) + bytes(MiB // 2))


def _churn(disk: Path, rng: random.Random) -> None:
    with open(disk, "r+b") as f:
        for _ in range(200):
            f.seek(rng.randrange(SIZE // 65536) * 65536)
            f.write(rng.randbytes(65536))


def _start(vault: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REHOST_VAULT": str(vault)}
    return subprocess.Popen([*REHOST, "replicate", name, "--json"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill9_during_cycles_leaves_a_consistent_resumable_repository(tmp_path: Path) -> None:
    rng = random.Random(9)
    disk = tmp_path / "disk.raw"
    _fill(disk, rng)
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add-image", "app", str(disk))

    # 1. kill the initial copy once a few packs are stored; the rerun must not store them again
    proc = _start(vault, "app")
    deadline = time.monotonic() + 120
    while index_files(vault) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the cycle finished before it could be killed; make the disk bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rehost(vault, "points", "app", "--json").json() == []  # no half point
    assert rehost(vault, "check", "--read-data").code == 0
    resumed = rehost(vault, "replicate", "app", "--json").json()
    assert resumed["changed_bytes"] == SIZE // 2  # it compared against nothing: a full copy
    assert resumed["new_bytes"] <= SIZE // 2 - 4 * 16 * MiB  # but the four packs indexed are reused

    # 2. many kills at random moments of delta cycles
    killed_mid_run = 0
    for _ in range(10):
        _churn(disk, rng)
        proc = _start(vault, "app")
        time.sleep(rng.uniform(0.2, 1.2))  # start-up ~0.8 s, then a short cycle
        if proc.poll() is None:
            killed_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report = rehost(vault, "check", "--read-data", "--json", check=False)
        assert report.code == 0, report.out + report.err
        assert report.json()["errors"] == []
    assert killed_mid_run >= 3, f"only {killed_mid_run} kills hit a running cycle"

    rehost(vault, "replicate", "app")
    out = tmp_path / "out.raw"
    rehost(vault, "export", "app", "--output", str(out))
    assert qemu_img_compare(out, disk)
    # every committed point still exports (the older ones included)
    for p in rehost(vault, "points", "app", "--json").json()[:2]:
        rehost(vault, "export", "app", "--point", p["id"], "--output", str(tmp_path / f"{p['id']}.raw"))


def test_killed_rehost_leaves_no_qemu_nbd_behind(tmp_path: Path) -> None:
    """A qcow2 image: a cycle reads it through qemu-nbd (a raw one is read in place)."""
    raw = tmp_path / "disk.raw"
    _fill(raw, random.Random(1))
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add-image", "app", str(disk))
    proc = _start(vault, "app")
    deadline = time.monotonic() + 60
    children: list[str] = []
    while not children and time.monotonic() < deadline and proc.poll() is None:
        children = subprocess.run(["pgrep", "-f", str(disk)], capture_output=True, text=True).stdout.split()
        time.sleep(0.01)
    assert children, "qemu-nbd never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(disk)], capture_output=True, text=True).stdout.split()
    assert left == []
