"""kill -9 in the middle of a failover job: the job shows as interrupted, cannot be cancelled
past its point of no return, and ``rehost job resume`` finishes it with nothing lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from rehost.testkit.tinylinux import set_marker
from tests.cli_helpers import REHOST, REPO, qemu_img_compare, rehost


def _job(vault: Path) -> dict | None:  # type: ignore[type-arg]
    jobs = rehost(vault, "jobs", "--json").json()
    return jobs[0] if jobs else None


def _running_steps(vault: Path) -> list[str]:
    """Read the job steps straight from the vault database: a CLI call takes ~0.8 s, longer
    than some steps, so polling through it could miss the moment to kill."""
    try:
        with sqlite3.connect(f"file:{vault / 'vault.db'}?mode=ro", uri=True, timeout=1) as db:
            return [r[0] for r in db.execute("SELECT name FROM job_steps WHERE state = 'running'")]
    except sqlite3.Error:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["verify_boot", "create_machine"])
def test_kill9_during_failover_then_resume(tmp_path: Path, tiny_image: Path, kill_at: str) -> None:
    vault, target = tmp_path / "vault", tmp_path / "target"
    set_marker(tiny_image, "resumed")
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    rehost(vault, "source", "add-image", "db", str(tiny_image))
    rehost(vault, "replicate", "db")
    expected = tmp_path / "expected.raw"
    rehost(vault, "export", "db", "--output", str(expected))

    env = {**os.environ, "REHOST_VAULT": str(vault)}
    proc = subprocess.Popen([*REHOST, "failover", "db", "--json"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if kill_at in _running_steps(vault):
                break
            assert proc.poll() is None, "the failover finished before the kill"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        job = _job(vault)
        assert job is not None and job["state"] == "interrupted"
        assert not job["cancellable"]
        r = rehost(vault, "job", "cancel", job["id"], check=False)
        assert r.code != 0 and "point of no return" in r.err
        assert rehost(vault, "machines", "--json").json()[0]["state"] == "failover_in_progress"

        rehost(vault, "job", "resume", job["id"])
        job = rehost(vault, "job", job["id"], "--json").json()
        assert job["state"] == "succeeded"
        assert "marker=resumed" in next(s for s in job["steps"] if s["name"] == "verify_boot")["detail"]
        assert rehost(vault, "machines", "--json").json()[0]["state"] == "failed_over"
        assert qemu_img_compare(target / "db" / "disk0.qcow2", expected, "qcow2", "raw")
        assert rehost(vault, "check", "--read-data").code == 0
    finally:
        out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
        for pid in out.split():
            subprocess.run(["kill", "-9", pid], check=False)
