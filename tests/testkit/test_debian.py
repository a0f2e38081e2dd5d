"""The Debian 12 test guest (rehost.testkit.debian): what the built disks hold, read back from
the images (fstab, interfaces, extlinux, initramfs via lsinitramfs), and a boot under TCG of
the session's DHCP guest, printing its marker and its address 10.0.2.15 on the serial console.
A static-address guest with fstab by device name boots in tests/vault/test_fixups_debian.py
(after the fix-ups, on DHCP): one boot fewer per CI run."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest

from rehost.testkit.debian import (
    build_debian_guest,
    chroot_mounts,
    initramfs_kernel_modules,
    initramfs_listing,
)
from rehost.testkit.diskimage import partition_extent
from rehost.testkit.qemu import Drive, QemuVM
from rehost.testkit.tinylinux import read_file, read_marker

pytestmark = pytest.mark.slow

#: what MODULES=most must carry for the targets rehost knows: KVM (virtio), IDE, Hyper-V
MOST_MUST_HAVE = {"virtio_blk", "virtio_pci", "virtio_scsi", "ata_piix", "hv_storvsc", "hv_vmbus",
                  "ext4"}  # fmt: skip
BOOT_TIMEOUT = 300  # ~50-100 s here under TCG; the host is shared


def fs_uuid(image: Path) -> str:
    """The ext4 UUID of partition 1, read from its superblock (offset 1024, s_uuid at 0x68)."""
    start, _ = partition_extent(image)
    with image.open("rb") as f:
        f.seek(start + 1024 + 0x68)
        return str(uuid.UUID(bytes=f.read(16)))


def text(image: Path, path: str) -> str:
    return read_file(image, path).decode()


def boot_to_marker(image: Path, log_dir: Path) -> tuple[float, str, str]:
    """Boot with a virtio NIC on QEMU's user network: seconds to the marker, the marker, the
    console once REHOST-NET was printed."""
    with QemuVM([Drive(image)], memory_mib=512, network="user", name="debian-guest",
                log_dir=log_dir) as vm:  # fmt: skip
        m = vm.wait_for(r"REHOST-BOOT-OK marker=(\S+)\r?\n", BOOT_TIMEOUT)
        seconds = time.monotonic() - (vm.started_at or 0)
        vm.wait_for(r"REHOST-NET (ip=\S+|none)\r?\n", 30)
        console = vm.console_text()
    return seconds, m.group(1), console


def test_base_image_holds_what_was_asked(debian_base: Path) -> None:
    root_uuid = fs_uuid(debian_base)
    fstab = text(debian_base, "/etc/fstab")
    assert re.search(rf"^UUID={root_uuid}\s+/\s+ext4\s", fstab, re.M), fstab
    interfaces = text(debian_base, "/etc/network/interfaces")
    assert re.search(r"^auto eth0$", interfaces, re.M)
    assert re.search(r"^iface eth0 inet dhcp$", interfaces, re.M), interfaces
    extlinux = text(debian_base, "/boot/extlinux/extlinux.conf")
    assert f"root=UUID={root_uuid} " in extlinux and "console=ttyS0" in extlinux
    conf = text(debian_base, "/etc/initramfs-tools/conf.d/rehost")
    assert "MODULES=most" in conf
    assert read_marker(debian_base) == "debian"
    modules = initramfs_kernel_modules(debian_base)
    assert modules >= MOST_MUST_HAVE, MOST_MUST_HAVE - modules
    assert "virtio_net" in modules and "hv_netvsc" in modules
    assert "scripts/local" in initramfs_listing(debian_base)  # initramfs-tools' own boot scripts


def test_variant_from_cache_static_device_dep(tmp_path: Path, debian_base: Path) -> None:
    """A variant is made from the cached root in seconds; ``dep`` leaves every disk driver out
    (the build host's root is a loop device) except the ones asked for by name."""
    started = time.monotonic()
    img = build_debian_guest(tmp_path / "v.img", marker="variant-1", network="static",
                             fstab_by="device", initramfs_modules="dep",
                             initramfs_extra_modules=("virtio_pci", "virtio_blk"))  # fmt: skip
    print(f"\nvariant (dep initramfs) built in {time.monotonic() - started:.1f}s")
    fstab = text(img, "/etc/fstab")
    assert re.search(r"^/dev/vda1\s+/\s+ext4\s", fstab, re.M) and "UUID=" not in fstab
    interfaces = text(img, "/etc/network/interfaces")
    assert "iface eth0 inet static" in interfaces and "address 10.0.2.15/24" in interfaces
    assert "gateway 10.0.2.2" in interfaces and "dhcp" not in interfaces
    assert "root=/dev/vda1 " in text(img, "/boot/extlinux/extlinux.conf")
    assert "MODULES=dep" in text(img, "/etc/initramfs-tools/conf.d/rehost")
    assert read_marker(img) == "variant-1"
    modules = initramfs_kernel_modules(img)
    print(f"dep initramfs modules: {sorted(modules)}")
    assert {"virtio_blk", "virtio_pci", "ext4"} <= modules
    assert not {"hv_storvsc", "hv_vmbus", "ata_piix", "virtio_scsi", "hv_netvsc"} & modules
    assert fs_uuid(img) != fs_uuid(debian_base)  # every build gets its own file system

    bare = build_debian_guest(tmp_path / "bare.img", initramfs_modules="dep")
    modules = initramfs_kernel_modules(bare)
    assert "ext4" in modules
    assert not {"virtio_blk", "virtio_scsi", "ata_piix", "sd_mod", "hv_storvsc", "nvme"} & modules


@pytest.mark.usefixtures("need_qemu")
def test_debian_guest_boots_and_gets_dhcp(debian_image: Path, tmp_path: Path) -> None:
    seconds, marker, console = boot_to_marker(debian_image, tmp_path)
    print(f"\nDebian guest: marker after {seconds:.1f}s under TCG")
    assert marker == "debian"
    assert "REHOST-NET ip=10.0.2.15" in console, console[-3000:]
    assert re.search(r"REHOST-SYSTEMD state=running", console), console[-3000:]


def test_chroot_mounts_are_undone_even_on_error(tmp_path: Path) -> None:
    """/proc, /sys and /dev bound into a guest root for in-guest tools never outlive the step,
    so the root can be unmounted (and a build tree removed without following /dev)."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RuntimeError), chroot_mounts(root):
        assert (root / "proc/self").exists() and (root / "dev/null").exists()
        raise RuntimeError("a failing in-guest step")
    assert str(root) not in Path("/proc/self/mounts").read_text()
    assert not (root / "dev/null").exists()
