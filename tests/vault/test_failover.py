"""The migration lifecycle on the local QEMU target, with real boots under emulation: test
failover, cleanup, failover with instant recovery and hydration, complete — and refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rehost.targets.local import LocalSettings, LocalTarget
from rehost.testkit.tinylinux import set_marker
from tests.cli_helpers import qemu_img_compare, rehost


@dataclass
class Setup:
    vault: Path
    target: Path
    disk: Path
    points: list[str]  # oldest first: marker "first", then "second"


def _processes(needle: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", needle], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


@pytest.fixture
def setup(tmp_path: Path, tiny_image: Path) -> Setup:
    vault, target = tmp_path / "vault", tmp_path / "target"
    set_marker(tiny_image, "first")
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    rehost(vault, "source", "add-image", "web", str(tiny_image))
    p1 = rehost(vault, "replicate", "web", "--json").json()["point"]
    set_marker(tiny_image, "second")
    p2 = rehost(vault, "replicate", "web", "--json").json()["point"]
    yield Setup(vault, target, tiny_image, [p1, p2])
    for line in _processes(str(tmp_path)):  # never leave a VM or a server behind
        subprocess.run(["kill", "-9", line.split()[0]], check=False)


@pytest.mark.slow
def test_test_failover_boots_the_point_asked_for_and_cleanup_leaves_nothing(setup: Setup) -> None:
    points_before = rehost(setup.vault, "points", "web", "--json").json()
    r = rehost(setup.vault, "failover", "web", "--test", "--json").json()
    assert r["state"] == "succeeded"
    boot = next(s for s in r["steps"] if s["name"] == "verify_boot")
    assert "REHOST-BOOT-OK marker=second" in boot["detail"]
    assert rehost(setup.vault, "machines", "--json").json()[0]["state"] == "test_failover"
    # replication goes on during a test failover and the recovery points are untouched
    rehost(setup.vault, "replicate", "web")
    rehost(setup.vault, "failover", "web", "--cleanup")
    assert not (setup.target / "web-test").exists()
    assert _processes(str(setup.vault)) == [] and _processes("web-test") == []
    assert rehost(setup.vault, "machines", "--json").json()[0]["state"] == "protected"
    assert rehost(setup.vault, "points", "web", "--json").json()[:2] == points_before

    r = rehost(setup.vault, "failover", "web", "--test", "--point", setup.points[0][:12], "--json").json()
    boot = next(s for s in r["steps"] if s["name"] == "verify_boot")
    assert "REHOST-BOOT-OK marker=first" in boot["detail"]  # the older point's data booted
    rehost(setup.vault, "failover", "web", "--cleanup")


@pytest.mark.slow
def test_failover_then_complete_keeps_the_machine_and_purges_replicas(setup: Setup, tmp_path: Path) -> None:
    expected = tmp_path / "expected.raw"
    bad = rehost(setup.vault, "replicate", "web", "--network-map", "default=internet", check=False)
    assert bad.code != 0 and "does not exist" in bad.err
    rehost(setup.vault, "replicate", "web", "--target", "here", "--network-map", "default=isolated")
    r = rehost(setup.vault, "failover", "web", "--shutdown-source", "--json").json()
    assert r["state"] == "succeeded", r
    steps = {s["name"]: s for s in r["steps"]}
    assert "on the isolated network" in steps["start"]["detail"]  # the network map was applied
    assert steps["shutdown_source"]["state"] == "skipped"  # recorded, and failover went on
    assert "no running machine" in steps["shutdown_source"]["detail"]
    assert steps["final_sync"]["state"] == "succeeded"
    assert "marker=second" in steps["verify_boot"]["detail"]
    assert not r["cancellable"]
    machine = rehost(setup.vault, "machines", "--json").json()[0]
    assert machine["state"] == "failed_over" and machine["runs_at"] == str(setup.target / "web")
    vm_disk = setup.target / "web" / "disk0.qcow2"
    info = subprocess.run(["qemu-img", "info", "-U", str(vm_disk)], capture_output=True, text=True).stdout
    assert "backing file" not in info  # hydrated: it no longer needs the repository
    rehost(setup.vault, "export", "web", "--output", str(expected))
    assert qemu_img_compare(vm_disk, expected, "qcow2", "raw")  # the guest mounted it read-only
    assert qemu_img_compare(expected, setup.disk)

    rehost(setup.vault, "complete", "web")
    machine = rehost(setup.vault, "machines", "--json").json()[0]
    assert machine["state"] == "migration_completed" and machine["points"] == 0
    assert machine["target"] == "here" and vm_disk.exists()
    check = rehost(setup.vault, "check", "--json").json()
    assert check["packs"] == 0 and check["ok"]
    r = rehost(setup.vault, "replicate", "web", check=False)
    assert r.code != 0 and "migration of web is complete" in r.err


def test_refusals_name_the_reason(tmp_path: Path, tiny_image: Path) -> None:
    vault, target = tmp_path / "vault", tmp_path / "target"
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    rehost(vault, "source", "add-image", "web", str(tiny_image))
    r = rehost(vault, "failover", "web", check=False)
    assert r.code != 0 and "no recovery point yet" in r.err
    r = rehost(vault, "complete", "web", check=False)
    assert r.code != 0 and "complete comes after failover" in r.err
    rehost(vault, "replicate", "web")
    r = rehost(vault, "complete", "web", check=False)
    assert r.code != 0 and "run rehost failover web first" in r.err
    r = rehost(vault, "failover", "web", "--point", "abcdef12", check=False)
    assert r.code != 0 and "no recovery point 'abcdef12'" in r.err

    # a target that fails verification: nothing is started, the item stays protected
    target.rmdir()
    target.write_text("not a folder")
    r = rehost(vault, "target", "verify", "here", check=False)
    assert r.code != 0 and "is not a folder" in r.err
    r = rehost(vault, "failover", "web", "--test", check=False)
    assert r.code != 0 and "failed verification" in r.err
    assert rehost(vault, "machines", "--json").json()[0]["state"] != "failover_in_progress"
    assert rehost(vault, "jobs", "--json").json()[0]["state"] == "failed"


@pytest.mark.slow
def test_a_second_test_failover_is_refused_while_one_runs(setup: Setup) -> None:
    rehost(setup.vault, "failover", "web", "--test")
    r = rehost(setup.vault, "failover", "web", "--test", check=False)
    assert r.code != 0 and "already running" in r.err and "--cleanup" in r.err
    r = rehost(setup.vault, "failover", "web", check=False)
    assert r.code != 0 and "clean it up first" in r.err
    rehost(setup.vault, "failover", "web", "--cleanup")


@pytest.mark.slow
def test_live_hydration_leaves_a_disk_that_boots_on_its_own(tmp_path: Path, tiny_image: Path) -> None:
    """A guest that keeps running (stay mode): QMP block-stream copies the data in while it
    runs; afterwards — even after QEMU is killed — the disk boots with no repository and no
    NBD server at all."""
    from rehost.testkit.boot import boot_and_wait
    from rehost.testkit.tinylinux import set_mode

    set_marker(tiny_image, "live")
    set_mode(tiny_image, "stay")
    vault, target = tmp_path / "vault", tmp_path / "target"
    rehost(vault, "init")
    rehost(vault, "target", "add-local", "here", "--path", str(target))
    rehost(vault, "source", "add-image", "app", str(tiny_image))
    rehost(vault, "replicate", "app")
    vm = LocalTarget(LocalSettings(target))
    try:
        job = rehost(vault, "failover", "app", "--json").json()
        assert job["state"] == "succeeded"
        assert rehost(vault, "machines", "--json").json()[0]["state"] == "failed_over"
        assert vm.running("app"), "the migrated machine keeps running after failover"
        assert not [p for p in _processes("serve-point") if str(vault) in p]  # repository no longer needed
        pid = vm.pid("app")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash right after hydration must not lose the disk
        deadline = time.monotonic() + 10
        while vm.running("app") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not vm.running("app")
    finally:
        for line in _processes(str(tmp_path)):
            subprocess.run(["kill", "-9", line.split()[0]], check=False)
    disk = target / "app" / "disk0.qcow2"
    info = subprocess.run(["qemu-img", "info", "-U", str(disk)], capture_output=True, text=True).stdout
    assert "backing file" not in info
    result = boot_and_wait(disk, fmt="qcow2", timeout=120)
    assert result.marker == "live"
