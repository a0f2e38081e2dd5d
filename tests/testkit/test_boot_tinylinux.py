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
from rehost.testkit.tinylinux import READY_LINE, read_file, set_marker, set_mode, write_files

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
    with pytest.raises(BootTimeout) as info:
        boot_and_wait(tiny_image, marker_regex=r"NEVER-PRINTED", timeout=15)
    assert "console tail" in str(info.value) and "SYSLINUX" in str(info.value)
    assert not _qemu_pids_using(tiny_image)


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


def test_kernel_cmdline_label_overrides_mode_file(tiny_image: Path) -> None:
    # The default label reads /rehost-mode; "stay" there keeps the guest up after the marker.
    set_mode(tiny_image, "stay")
    result = boot_and_wait(tiny_image, marker_regex=READY_LINE + r" root=(\S+)")
    assert result.marker == "/dev/vda1"
