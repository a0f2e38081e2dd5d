"""The inspection and readiness report of a real Debian 12 guest (debootstrap, systemd,
ifupdown), checked against what the test kit put on the disks and read back from them
independently (lsinitramfs, the kernel's file name, the ext4 superblock): the session's
DHCP guest (MODULES=most, fstab by UUID) and the unready one (MODULES=dep, a static address,
fstab and root= by device name), both in ONE appliance launch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rehost.guest.inspect import Inspection, inspect_batch
from rehost.guest.readiness import evaluate
from rehost.testkit.debian import initramfs_kernel_modules
from rehost.testkit.diskimage import mounted_root
from tests.conftest import UNREADY_ADDRESS
from tests.testkit.test_debian import fs_uuid

pytestmark = pytest.mark.slow


def _kernel_version(image: Path) -> str:
    with mounted_root(image, readonly=True) as root:
        [kernel] = sorted((root / "boot").glob("vmlinuz-*"))
        return kernel.name.removeprefix("vmlinuz-")


@pytest.fixture(scope="module")
def inspected(debian_base: Path, debian_unready: Path) -> dict[str, Inspection]:
    pytest.importorskip("guestfs", reason="python3-guestfs is not installed (run scripts/install)")
    ready, unready = inspect_batch([[str(debian_base)], [str(debian_unready)]])
    print(f"\ntwo Debian guests inspected in one launch: {ready.seconds:.1f}s each")
    return {"ready": ready, "unready": unready}


def test_the_dhcp_guest(inspected: dict[str, Inspection], debian_base: Path) -> None:
    ins = inspected["ready"]
    assert (ins.os_type, ins.distro, ins.version.split(".")[0], ins.hostname) == ("linux", "debian", "12",
                                                                                  "rehost-debian")
    k = ins.default_kernel
    assert k is not None and k.version == _kernel_version(debian_base)
    assert k.initrd == f"/boot/initrd.img-{k.version}"
    assert set(k.initrd_modules or ()) == initramfs_kernel_modules(debian_base)  # lsinitramfs agrees
    assert ins.bootloader.kind == "extlinux" and ins.consoles == ("ttyS0,115200",)
    [eth0] = ins.interfaces
    assert (eth0.name, eth0.method, eth0.tool, eth0.source) == ("eth0", "dhcp", "ifupdown",
                                                                "/etc/network/interfaces")
    [root] = ins.fstab
    assert (root.spec, root.mountpoint, root.by) == (f"UUID={fs_uuid(debian_base)}", "/", "uuid")
    assert ins.swaps == () and not any(ins.agents.values())
    assert ins.root_free_bytes is not None and 0 < ins.root_free_bytes < (ins.root_size_bytes or 0)
    for kind in ("local", "azure"):
        r = evaluate(ins, kind)
        failed = [x.name for x in r.failed()]
        assert failed == [], (kind, failed)
    # Azure wants a provisioning agent: the guest has none, a warning
    warned = [x.name for x in evaluate(ins, "azure").requirements if x.status == "warn"]
    assert warned == ["provisioning agent"]


def test_the_unready_guest(inspected: dict[str, Inspection], debian_unready: Path) -> None:
    ins = inspected["unready"]
    k = ins.default_kernel
    assert k is not None and k.version == _kernel_version(debian_unready)
    carried = set(k.initrd_modules or ())
    assert carried == initramfs_kernel_modules(debian_unready)
    assert not {"virtio_blk", "hv_storvsc", "ata_piix", "sd_mod"} & carried and "ext4" in carried
    [eth0] = ins.interfaces
    assert (eth0.method, eth0.addresses, eth0.gateway) == ("static", (UNREADY_ADDRESS,), "192.168.50.1")
    [root] = ins.fstab
    assert (root.spec, root.by) == ("/dev/vda1", "device")
    assert re.search(r"\broot=/dev/vda1\b", ins.cmdline or "")

    local = evaluate(ins, "local")
    by_name = {r.name: r for r in local.requirements}
    assert local.verdict == "will not boot (or not be reachable) there"
    assert by_name["virtio_blk driver"].status == "fail"
    assert f"virtio_blk is not in /boot/initrd.img-{k.version}" in by_name["virtio_blk driver"].detail
    assert by_name["DHCP on the primary NIC"].status == "warn"
    assert UNREADY_ADDRESS in by_name["DHCP on the primary NIC"].detail
    assert by_name["fstab by UUID or LABEL"].status == "warn"
    assert "/dev/vda1 (/)" in by_name["fstab by UUID or LABEL"].detail
    azure = {r.name for r in evaluate(ins, "azure").failed()}
    assert azure == {"hv_vmbus driver", "hv_storvsc driver", "hv_netvsc driver", "DHCP on the primary NIC"}
