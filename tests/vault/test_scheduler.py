"""Continuous replication under a policy: points keep coming while the source changes, health
tells the RPO, and policy changes apply to running replication."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_helpers import REHOST, REPO, qemu_img_compare, rehost

MiB = 1 << 20


def test_policy_validation(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    rehost(vault, "init")
    for args, msg in [
        (["--rpo-threshold", "soon"], "not a duration"),
        (["--rpo-threshold", "10s", "--crash-consistent-every", "1m"], "must not exceed"),
        (["--retention", "1m", "--rpo-threshold", "5m"], "at least the --rpo-threshold"),
        (["--bandwidth", "fast"], "not a bandwidth"),
    ]:
        r = rehost(vault, "policy", "create", "p", *args, check=False)
        assert r.code != 0 and msg in r.err, r.err
    rehost(vault, "policy", "create", "gold", "--rpo-threshold", "5m", "--retention", "24h",
           "--app-consistent-every", "1h", "--crash-consistent-every", "30s", "--bandwidth", "100MB/s")
    p = rehost(vault, "policy", "list", "--json").json()[0]
    assert p == {"name": "gold", "rpo_threshold_s": 300, "retention_s": 86400, "app_consistent_every_s": 3600,
                 "crash_consistent_every_s": 30, "bandwidth_bps": 100_000_000, "bandwidth_schedule": [],
                 "bandwidth_windows": []}
    rehost(vault, "policy", "update", "gold", "--rpo-threshold", "2m")
    assert rehost(vault, "policy", "list", "--json").json()[0]["rpo_threshold_s"] == 120


@pytest.mark.slow
def test_serve_keeps_points_coming_within_rpo(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    rng = random.Random(1)
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
        f.write(rng.randbytes(4 * MiB))
    vault = tmp_path / "vault"
    rehost(vault, "init")
    rehost(vault, "source", "add-image", "app", str(disk))
    rehost(vault, "policy", "create", "fast", "--rpo-threshold", "10s", "--crash-consistent-every", "1s",
           "--retention", "1h")
    rehost(vault, "policy", "attach", "app", "fast")
    h = rehost(vault, "machines", "--json").json()[0]["health"]
    assert h["status"] == "not-protected"

    env = {**os.environ, "REHOST_VAULT": str(vault)}
    proc = subprocess.Popen([*REHOST, "serve", "--tick", "0.5", "--listen", "off"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(8):  # the source keeps changing while serve runs
            with open(disk, "r+b") as f:
                f.seek(rng.randrange(16 * MiB // 4096) * 4096)
                f.write(rng.randbytes(4096))
            time.sleep(0.7)
        time.sleep(2)
        machine = rehost(vault, "machines", "--json").json()[0]
        assert machine["points"] >= 4, machine
        assert machine["health"]["status"] == "healthy" and machine["health"]["rpo_seconds"] <= 10
        assert machine["last_cycle"]["error"] == ""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "point" in stderr
    out = tmp_path / "out.raw"
    rehost(vault, "replicate", "app")
    rehost(vault, "export", "app", "--output", str(out))
    assert qemu_img_compare(out, disk)

    # the source disappears: serve records the failure, health names the cause
    disk.rename(tmp_path / "moved.raw")
    # the point of that replicate is recent: a pass sooner than --crash-consistent-every after
    # it has nothing due (the CLI starts fast enough now for that to happen)
    time.sleep(1.2)
    rehost(vault, "serve", "--once")
    machine = rehost(vault, "machines", "--json").json()[0]
    assert "no longer exists" in machine["last_cycle"]["error"]
