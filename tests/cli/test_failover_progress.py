"""The CLI shows a failover's progress as it goes: the hydration of a 1 GiB disk, read from a
real pseudo-terminal (rich draws its bar only on a terminal), shows several percentages."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import set_mode
from tests.api.portal import kill_leftovers
from tests.cli_helpers import REHOST, REPO, rehost

GiB = 1 << 30
MiB = 1 << 20


def _data_disk(path: Path) -> Path:
    """1 GiB with 256 MiB of random data in 32 stretches: hydration has real bytes to copy."""
    with open(path, "wb") as f:
        f.truncate(GiB)
        for i in range(32):
            f.seek(i * 32 * MiB)
            f.write(os.urandom(8 * MiB))
    return path


def _in_pty(args: list[str], timeout: float) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; its exit code and all it wrote."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40", "REHOST_VAULT": ""}
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env, cwd=REPO)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the follower side closed: the process is done
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
        code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_failover_shows_the_hydration_progress_on_a_terminal(tmp_path: Path, tiny_image: Path,
                                                              need_qemu: None) -> None:
    set_mode(tiny_image, "stay")  # hydration streams while the machine runs
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "target", "add", "local", "here", "--path", str(tmp_path / "target"))
    rehost(vault, "source", "add", "image", "web", str(tiny_image), str(_data_disk(tmp_path / "data.raw")))
    rehost(vault, "replicate", "web")
    try:
        code, drawn = _in_pty([*REHOST, "--vault", str(vault), "failover", "web"], timeout=600)
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # the terminal's colours and moves
        assert code == 0, shown
        hydration = shown[shown.index("Copy disks to target while running"):]
        percents = {int(p) for p in re.findall(r"\b(\d{1,3})%", hydration)}
        assert len(percents) >= 3, hydration[-3000:]
        assert re.search(r"[0-9.]+ [kMG]i?B/s", hydration), hydration[-3000:]  # the rate is shown
        # and when it is done, the step's line says so (the bar was transient)
        assert re.search(r"✓.*Copy disks to target while running", shown)
    finally:
        kill_leftovers(str(tmp_path))
