"""Time from failover to a started VM must not grow with disk size: points are served over
NBD straight from the repository (instant recovery) and copied in after the VM starts."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.cli_helpers import rehost

MiB = 1 << 20


def _data_disk(path: Path, size_mib: int) -> None:
    """A data disk a quarter full of incompressible data, the rest never written."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
        for off in range(0, size_mib * MiB, 4 * MiB):
            f.seek(off)
            f.write(os.urandom(MiB))


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _failover_timings(tmp: Path, tiny_image: Path, data_mib: int) -> dict[str, float]:
    vault, target = tmp / "vault", tmp / "target"
    data = tmp / "data.raw"
    _data_disk(data, data_mib)
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    rehost(vault, "source", "add-image", "big", str(tiny_image), str(data))
    rehost(vault, "replicate", "big")
    job = rehost(vault, "failover", "big", "--point", "latest-processed", "--json").json()
    assert job["state"] == "succeeded", job
    steps = {s["name"]: s for s in job["steps"]}

    def took(name: str) -> float:
        return _seconds(steps[name]["started_at"], steps[name]["ended_at"])

    return {
        "to_vm_start": _seconds(steps["choose_point"]["started_at"], steps["start"]["ended_at"]),
        "create_machine": took("create_machine"),
        "boot": took("verify_boot"),
        "hydrate": took("hydrate"),
    }


@pytest.mark.slow
def test_time_to_vm_start_does_not_grow_with_disk_size(tmp_path: Path, tiny_image: Path) -> None:
    timings = {}
    try:
        for gib in (1, 8):
            d = tmp_path / f"{gib}g"
            d.mkdir()
            timings[gib] = _failover_timings(d, tiny_image, gib * 1024)
    finally:
        out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
        for pid in out.split():
            subprocess.run(["kill", "-9", pid], check=False)
    for gib, t in timings.items():
        print(f"\n{gib} GiB data disk: failover->VM start {t['to_vm_start']:.2f}s "
              f"(create machine {t['create_machine']:.2f}s), boot {t['boot']:.1f}s, "
              f"hydration {t['hydrate']:.1f}s")
    assert timings[8]["to_vm_start"] < timings[1]["to_vm_start"] * 1.5 + 1.0
    assert timings[8]["hydrate"] > timings[1]["hydrate"]  # the copy happens, after the start
