"""The tiny Linux carries qemu-ga + rehost-churn, and QemuVM wires the agent port (no boot)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rehost.testkit.qemu import QemuVM, VMError
from rehost.testkit.tinylinux import (
    CHURN_SCRIPT,
    TinyLinuxError,
    build_initramfs,
    find_kernel,
    find_qemu_ga,
)


def _listing(initrd: bytes) -> set[str]:
    out = subprocess.run(
        ["cpio", "-it"], input=gzip.decompress(initrd), capture_output=True, check=True
    ).stdout.decode()
    return set(out.split())


def _cpio_file(initrd: bytes, name: str, dest: Path) -> bytes:
    subprocess.run(["cpio", "-id", "--quiet", name], input=gzip.decompress(initrd), cwd=dest,
                   check=True, capture_output=True)  # fmt: skip
    return (dest / name).read_bytes()


def test_initramfs_carries_the_agent_its_libraries_and_module(tmp_path: Path) -> None:
    try:
        kernel = find_kernel()
    except TinyLinuxError as exc:
        pytest.skip(str(exc))
    if find_qemu_ga() is None:
        pytest.skip("qemu-guest-agent is not installed (run scripts/install)")
    with_agent = build_initramfs(kernel, guest_agent=True)
    names = _listing(with_agent)
    assert {"bin/qemu-ga", "bin/shutdown", "bin/rehost-churn", "lib/modules/virtio_console.ko",
            "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libglib-2.0.so.0"} <= names  # fmt: skip
    order = _cpio_file(with_agent, "lib/modules/load-order", tmp_path).decode().split()
    assert order.index("virtio_ring") < order.index("virtio_console")
    without = build_initramfs(kernel, guest_agent=False)
    assert "bin/qemu-ga" not in _listing(without)
    assert "bin/rehost-churn" in _listing(without)
    print(f"\ninitramfs: {len(with_agent) / 2**20:.1f} MiB with qemu-ga, {len(without) / 2**20:.1f} without")
    assert len(with_agent) - len(without) < 6 * 2**20


def test_qemu_command_has_the_agent_port_and_no_shutdown() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    plain = QemuVM()
    with pytest.raises(VMError, match="guest_agent"):
        _ = plain.guest_agent_socket
    with QemuVM(guest_agent=True, no_shutdown=True, name="ga-cmd") as vm:
        cmd = " ".join(vm.command())
        assert "-no-shutdown" in cmd
        assert f"path={vm.guest_agent_socket},server=on,wait=off" in cmd
        assert "name=org.qemu.guest_agent.0" in cmd
        chardevs = {c["label"] for c in vm.qmp("query-chardev")}
        assert "qga0" in chardevs
        assert vm.stop(graceful_timeout=0) == 0
    assert "-no-shutdown" not in QemuVM().extra_args


def test_churn_script_paces_writes(tmp_path: Path) -> None:
    """Run the guest's rehost-churn with the host's busybox applets (same shell, same dd)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("sh", "dd", "awk", "stat", "usleep", "cat", "printf"):
        os.symlink(busybox, bindir / applet)
    script = tmp_path / "rehost-churn"
    script.write_text(CHURN_SCRIPT)
    target = tmp_path / "churn.dat"
    proc = subprocess.run([str(bindir / "sh"), str(script), "4", "2", "8", str(target)],
                          capture_output=True, env={"PATH": str(bindir)}, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = re.search(rb"wrote (\d+) MiB in ([\d.]+) s", proc.stdout)
    assert m, proc.stdout
    assert 7 <= int(m.group(1)) <= 9  # 4 MiB/s for 2 s
    assert target.stat().st_size == 8 * 2**20
    bad = subprocess.run([str(bindir / "sh"), str(script), "0", "2"], capture_output=True,
                         env={"PATH": str(bindir)}, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and b"usage" in bad.stderr
