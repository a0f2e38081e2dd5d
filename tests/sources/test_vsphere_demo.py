"""``rehost demo --source vsphere``: the whole lifecycle from a VM on vcsim (with the CBT shim,
a declared test double), as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rehost.testkit.vcsim import missing_reason
from tests.cli_helpers import REPO

pytestmark = pytest.mark.slow


def test_demo_from_vsphere(tmp_path: Path) -> None:
    if missing_reason():
        pytest.skip(missing_reason() or "")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (run scripts/install)")
    p = subprocess.run([sys.executable, "-m", "rehost.cli.main", "demo", "--source", "vsphere",
                        "--workdir", str(tmp_path / "demo")], cwd=REPO, capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-3000:]
    assert "guest vm01 shut down through VMware Tools" in text
    assert text.count("REHOST-BOOT-OK marker=v2") >= 2  # the test failover and the failover
    assert "TEST DOUBLE" in text  # the CBT shim says what it is
    # the delta cycle read only what set_marker wrote (tens of KiB), not the 64 MiB disk
    delta = next(line for line in text.splitlines() if "Delta replication" in line and "read" in line)
    assert "MiB" not in delta.split("read", 1)[1].split(",", 1)[0], delta
