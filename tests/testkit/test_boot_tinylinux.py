"""Boot the tiny Linux under QEMU (TCG) and read its marker: the end-to-end proof tool."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from rehost.testkit.boot import BootFailed, BootTimeout, boot_and_wait
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import (
    READY_LINE,
    TinyLinuxError,
    extlinux_conf,
    read_file,
    set_marker,
    set_mode,
    write_files,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_qemu")]


def _qemu_pids_using(path: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(path.resolve()).encode() in cmdline:
            pids.append(int(pid))
    return pids


def test_boot_shows_marker_then_changed_marker(tiny_image: Path) -> None:
    first = boot_and_wait(tiny_image)
    assert first.marker == "initial"
    assert "EXT4-fs (vda1): mounted" in first.console
    set_marker(tiny_image, "second")
    second = boot_and_wait(tiny_image)
    assert second.marker == "second"
    print(f"\nboot to marker under TCG: {first.seconds:.1f}s, {second.seconds:.1f}s")
    assert not _qemu_pids_using(tiny_image)


def test_qcow2_snapshot_isolated_network_leaves_disk_untouched(
    tiny_image: Path, tmp_path: Path
) -> None:
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(tiny_image), str(qcow)], check=True)
    before = hashlib.sha256(qcow.read_bytes()).hexdigest()
    result = boot_and_wait(qcow, fmt="qcow2", network="user-restrict", snapshot=True)
    assert result.marker == "initial"
    assert hashlib.sha256(qcow.read_bytes()).hexdigest() == before


def test_corrupted_data_fails_the_boot_fast(tiny_image: Path) -> None:
    write_files(tiny_image, {"rehost-payload": b"not the payload"})
    started = time.monotonic()
    with pytest.raises(BootFailed, match="checksum mismatch"):
        boot_and_wait(tiny_image, timeout=120)
    assert time.monotonic() - started < 60


def test_timeout_reports_console_tail_and_kills_qemu(tiny_image: Path) -> None:
    set_mode(tiny_image, "stay")  # the guest stays up: only the timeout can end the wait
    started = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        boot_and_wait(tiny_image, marker_regex=r"NEVER-PRINTED", timeout=8)
    assert time.monotonic() - started < 20
    tail = str(info.value).split("--- console tail ---", 1)[1]
    assert len(tail.strip()) > 50  # the last thing the guest said, to debug from
    assert not _qemu_pids_using(tiny_image)


def test_guest_exit_before_marker_is_reported_at_once(tiny_image: Path) -> None:
    with pytest.raises(BootFailed, match="QEMU exited"):
        boot_and_wait(tiny_image, marker_regex=r"NEVER-PRINTED", timeout=120)


def test_stay_mode_console_writes_and_graceful_powerdown(tiny_image: Path) -> None:
    set_mode(tiny_image, "stay")
    with QemuVM([Drive(tiny_image)], name="stay") as vm:
        ready = vm.wait_for(READY_LINE, 120)
        assert vm.qmp("query-status")["status"] == "running"
        vm.send_console("echo from-guest > /mnt/guest.txt; sync; echo WROTE-$((20+22))\n")
        vm.wait_for(r"WROTE-42", 30, start=ready.end())
        assert vm.stop(graceful_timeout=30) == 0  # ACPI powerdown -> guest unmounts, exits
    assert "REHOST-POWERDOWN" in vm.console_text()
    assert read_file(tiny_image, "guest.txt") == b"from-guest\n"


def test_mode_file_keeps_the_guest_up(tiny_image: Path) -> None:
    set_mode(tiny_image, "stay")
    result = boot_and_wait(tiny_image, marker_regex=READY_LINE + r" root=(\S+)")
    assert result.marker == "/dev/vda1"
    assert "REHOST-POWERDOWN" in result.console  # boot_and_wait stopped it via ACPI


def test_kernel_cmdline_overrides_mode_file(tiny_image: Path) -> None:
    set_mode(tiny_image, "stay")
    conf = extlinux_conf(default_label="rehost-poweroff")
    write_files(tiny_image, {"boot/extlinux/extlinux.conf": conf})
    with QemuVM([Drive(tiny_image)], name="cmdline") as vm:
        vm.wait_for(r"REHOST-BOOT-OK marker=initial", 120)
        assert vm.wait_exit(30) == 0  # powered itself off despite /rehost-mode = stay
    assert READY_LINE not in vm.console_text()


def test_writing_into_a_running_vms_disk_is_refused(tiny_image: Path) -> None:
    set_mode(tiny_image, "stay")
    with QemuVM([Drive(tiny_image)], name="locked") as vm:
        vm.wait_for(READY_LINE, 120)
        with pytest.raises(TinyLinuxError, match="in use"):
            set_marker(tiny_image, "clobber")
