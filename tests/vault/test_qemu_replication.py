"""A running KVM/QEMU VM replicated continuously while its guest writes: changed-block
tracking, app- and crash-consistent points, then failover with source shutdown and a final
sync that loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rehost.testkit.diskimage import partition_extent
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import set_marker, set_mode
from tests.cli_helpers import REHOST, REPO, qemu_img_compare, rehost


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # UNIX sockets: 107-byte paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _loop(image: Path, *, readonly: bool) -> str:
    off, size = partition_extent(image)
    args = ["losetup", "--find", "--show", "-o", str(off), "--sizelimit", str(size)]
    return subprocess.run(
        [*args, *(["-r"] if readonly else []), str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()


def _fsck_clean(image: Path) -> subprocess.CompletedProcess[str]:
    dev = _loop(image, readonly=True)
    try:
        return subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _mounts_after_replay(image: Path, mnt: Path) -> str:
    dev = _loop(image, readonly=False)
    try:
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], check=True, capture_output=True, text=True)
        try:
            return (mnt / "rehost-marker").read_text().strip()
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.slow
def test_running_guest_replicated_then_failed_over(tmp_path: Path, tiny_image: Path, short_dir: Path) -> None:
    set_marker(tiny_image, "live-vm")
    set_mode(tiny_image, "stay")
    disk = tmp_path / "vm.qcow2"  # persistent dirty bitmaps need qcow2
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tiny_image), str(disk)], check=True
    )
    rehost_qmp = short_dir / "rehost-qmp.sock"
    vm = QemuVM(
        [Drive(disk, "qcow2")], guest_agent=True, extra_args=["-qmp", f"unix:{rehost_qmp},server=on,wait=off"]
    )
    vault, target = tmp_path / "vault", tmp_path / "target"
    serve: subprocess.Popen[str] | None = None
    with vm:
        vm.wait_for(r"REHOST-READY", 120)
        agent = vm.guest_agent_client(timeout=10)
        agent.exec_start(["/bin/rehost-churn", "2", "300"])  # the guest writes 2 MiB/s
        agent.close()  # the agent serves one client: rehost's from now on

        rehost(vault, "init")
        rehost(vault, "target", "add-local", "here", "--path", str(target))
        rehost(
            vault,
            "source",
            "add-qemu",
            "live",
            "--qmp",
            str(rehost_qmp),
            "--guest-agent",
            str(vm.guest_agent_socket),
        )
        rehost(
            vault,
            "policy",
            "create",
            "tight",
            "--rpo-threshold",
            "30s",
            "--crash-consistent-every",
            "2s",
            "--app-consistent-every",
            "8s",
            "--retention",
            "1h",
        )
        rehost(vault, "policy", "attach", "live", "tight")
        env = {**os.environ, "REHOST_VAULT": str(vault)}
        serve = subprocess.Popen(
            [*REHOST, "serve", "--tick", "0.5", "--listen", "off"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(25)
        finally:
            serve.send_signal(signal.SIGTERM)
            _, log = serve.communicate(timeout=120)
        points = rehost(vault, "points", "live", "--json").json()
        kinds = [p["consistency"] for p in points]
        assert len(points) >= 5, log
        assert "app-consistent" in kinds and "crash-consistent" in kinds, (kinds, log)
        machine = rehost(vault, "machines", "--json").json()[0]
        assert machine["health"]["status"] == "healthy", machine
        assert machine["last_cycle"]["error"] == ""

        # app-consistent: a clean file system; crash-consistent: mountable after journal replay
        app = next(p for p in reversed(points) if p["consistency"] == "app-consistent")
        crash = next(p for p in reversed(points) if p["consistency"] == "crash-consistent")
        app_img, crash_img = tmp_path / "app.raw", tmp_path / "crash.raw"
        rehost(vault, "export", "live", "--point", app["id"], "--output", str(app_img))
        rehost(vault, "export", "live", "--point", crash["id"], "--output", str(crash_img))
        fsck = _fsck_clean(app_img)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert _mounts_after_replay(crash_img, tmp_path / "mnt") == "live-vm"

        # failover: ACPI shutdown of the source, final sync, then QEMU is let go
        job = rehost(vault, "failover", "live", "--shutdown-source", "--json").json()
        assert job["state"] == "succeeded", job
        steps = {s["name"]: s for s in job["steps"]}
        assert steps["shutdown_source"]["state"] == "succeeded", steps["shutdown_source"]
        assert "QEMU quit" in steps["final_sync"]["detail"]
        assert "marker=live-vm" in steps["verify_boot"]["detail"]
        assert vm.wait_exit(30) is not None  # the source is off
    final = tmp_path / "final.raw"
    # nothing lost: the point the target booted equals the source disk as the guest left it
    with_points = rehost(vault, "points", "live", "--json").json()
    rehost(vault, "export", "live", "--point", with_points[-1]["id"], "--output", str(final))
    assert qemu_img_compare(final, disk, "raw", "qcow2")
    for line in subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split():
        subprocess.run(["kill", "-9", line], check=False)


@pytest.mark.slow
def test_qemu_killed_and_restarted_resyncs_and_says_why(tmp_path: Path, short_dir: Path) -> None:
    from tests.sources.test_qemu_source import start_vm, write

    disk = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    sock = short_dir / "rehost.sock"
    vault = tmp_path / "vault"
    rehost(vault, "init")
    vm = start_vm([(disk, "qcow2")], sock)
    try:
        write(vm, "drive0", 0x11, 0, 1 << 20)
        rehost(vault, "source", "add-qemu", "db", "--qmp", str(sock))
        rehost(vault, "replicate", "db")
        write(vm, "drive0", 0x22, 8 << 20, 65536)
        second = rehost(vault, "replicate", "db", "--json").json()
        assert second["digests"] == {"0": "cache+dirty-extents"}
        assert second["bytes_read"] <= 65536  # only the dirty extent was read
        write(vm, "drive0", 0x33, 16 << 20, 4096)
        os.kill(vm.pid or 0, signal.SIGKILL)  # QEMU dies mid-replication
        vm.wait_exit(10)
    finally:
        vm.stop(graceful_timeout=0)
    vm = start_vm([(disk, "qcow2")], sock)
    try:
        write(vm, "drive0", 0x44, 24 << 20, 4096)
        third = rehost(vault, "replicate", "db", "--json").json()
        assert third["digests"] == {"0": "cache"}  # no usable bitmap: hash-diff
        assert any("hash-diff" in n for n in third["notes"]), third["notes"]
        machine = rehost(vault, "machines", "--json").json()[0]
        assert machine["state"] == "protected" and "hash-diff" in machine["state_reason"]
        vm.qmp("stop")
        out = tmp_path / "out.raw"
        rehost(vault, "export", "db", "--output", str(out))
        r = subprocess.run(
            ["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(out), str(disk)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr  # nothing lost, the 0x33 write included
        vm.qmp("cont")
        fourth = rehost(vault, "replicate", "db", "--json").json()
        assert fourth["digests"] == {"0": "cache+dirty-extents"}  # tracking is back
    finally:
        vm.stop(graceful_timeout=0)
