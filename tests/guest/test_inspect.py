"""Offline inspection on real disks: the test kit's tiny Linux and a synthetic Debian disk
whose files the test chose, and the tiny Linux prepared for Azure. ONE appliance launch for
the whole module (the three machines in one batch, ~35-50 s under TCG)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rehost.guest.inspect import Inspection, inspect_batch
from rehost.guest.readiness import evaluate
from rehost.testkit.guestdisk import SWAP_UUID, build_guest_disk
from rehost.testkit.tinylinux import find_kernel

pytestmark = pytest.mark.slow

FSTAB = (f"/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"
         f"UUID={SWAP_UUID} none swap sw 0 0\n")
DPKG_STATUS = ("Package: open-vm-tools\nStatus: install ok installed\nArchitecture: amd64\n"
               "Version: 2:12.2.0-1+deb12u2\nDescription: Open VMware Tools\n\n")
INTERFACES = ("auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n"
              "  address 192.168.10.5/24\n  gateway 192.168.10.1\n")

def _is(req, status: str, text: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(req.status == status and text in req.detail)



@pytest.fixture(scope="module")
def inspected(tiny_linux_base: Path, azure_linux_base: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Inspection]:
    pytest.importorskip("guestfs", reason="python3-guestfs is not installed (run scripts/install)")
    synthetic = build_guest_disk(tmp_path_factory.mktemp("guest") / "debian.img", files={
        "etc/fstab": FSTAB, "etc/network/interfaces": INTERFACES, "usr/bin/cloud-init": "#!/bin/sh\n",
        "var/lib/dpkg/status": DPKG_STATUS,
    }, modules=("virtio_blk", "virtio_net", "virtio_pci", "ext4"), builtin=("hv_vmbus",))
    tiny, debian, azure = inspect_batch([[str(tiny_linux_base)], [str(synthetic)], [str(azure_linux_base)]])
    print(f"\ninspection: {tiny.seconds:.1f}s per machine (3 in one launch)")
    return {"tiny": tiny, "debian": debian, "azure": azure}


def test_tiny_linux(inspected: dict[str, Inspection]) -> None:
    ins = inspected["tiny"]
    assert ins.os_type == "linux" and ins.distro == "unknown"  # no os-release there: not guessed
    [kernel] = ins.kernels
    assert kernel.version == find_kernel().version  # the kernel build_tiny_linux copied in
    assert kernel.initrd == "/boot/initrd.img" and kernel.initrd_archives == ("gzip",)
    assert kernel.initrd_modules is not None
    assert {"virtio_blk", "virtio_net", "virtio_pci", "ext4"} <= set(kernel.initrd_modules)
    assert not [m for m in kernel.initrd_modules if m.startswith("hv_")]
    assert ins.bootloader.kind == "extlinux"
    assert ins.cmdline is not None and "console=ttyS0,115200" in ins.cmdline
    assert ins.os_disk == 0 and ins.root_free_bytes is not None and 0 < ins.root_free_bytes < 64 << 20
    assert not ins.fstab_found and not ins.network_known

    local = evaluate(ins, "local")
    assert local.status != "fail", local.failed()
    azure = evaluate(ins, "azure")
    storvsc = {r.name: r for r in azure.requirements}["hv_storvsc driver"]
    assert azure.status == "fail" and storvsc.status == "fail"
    assert "/boot/initrd.img" in storvsc.detail and "hv_storvsc" in storvsc.fix


def test_synthetic_debian_with_static_ip_device_names_and_swap(inspected: dict[str, Inspection]) -> None:
    ins = inspected["debian"]
    assert (ins.os_type, ins.distro, ins.hostname) == ("linux", "debian", "guest")
    assert ins.root_device == "disk 0 partition 1"  # the appliance calls it /dev/sdb1 in this batch
    assert ins.version.startswith("12.")
    [kernel] = ins.kernels
    v = find_kernel().version
    assert (kernel.path, kernel.version) == (f"/boot/vmlinuz-{v}", v)
    assert kernel.initrd_archives == ("plain", "gzip")  # microcode first, as initramfs-tools does
    assert kernel.initrd_modules == ("ext4", "virtio_blk", "virtio_net", "virtio_pci")
    assert kernel.builtin_modules == ("hv_vmbus",)
    assert ins.bootloader.kind == "grub" and ins.cmdline == "root=/dev/sda1 ro quiet" and ins.consoles == ()
    [eth0] = ins.interfaces
    assert (eth0.name, eth0.method, eth0.addresses, eth0.gateway) == (
        "eth0", "static", ("192.168.10.5/24",), "192.168.10.1")
    assert [(e.spec, e.by) for e in ins.fstab] == [
        ("/dev/sda1", "device"), ("/dev/sda2", "device"), (f"UUID={SWAP_UUID}", "uuid")]
    # both swap entries name partition 2 of this machine's first disk (its OS disk), although
    # the appliance sees this disk as its second (/dev/sdb): the guest's names are its own
    assert [(s.disk, s.on_os_disk) for s in ins.swaps] == [(0, True), (0, True)]
    assert ins.agents["cloud-init"] and not ins.agents["walinuxagent"]
    assert ins.agents["vmware-tools"]  # from the package database: no file of it is on the disk

    az = {r.name: r for r in evaluate(ins, "azure").requirements}
    assert _is(az["hv_vmbus driver"], "pass", "built into")
    assert az["hv_storvsc driver"].status == "fail"
    assert _is(az["DHCP on the primary NIC"], "fail", "192.168.10.5/24")
    assert _is(az["fstab by UUID or LABEL"], "warn", "/dev/sda1 (/)")
    assert az["no swap on the OS disk"].status == "warn"
    assert az["serial console on ttyS0"].status == "warn"
    assert _is(az["provisioning agent"], "warn", "VMware Tools are installed")
    local = {r.name: r for r in evaluate(ins, "local").requirements}
    assert local["virtio_blk driver"].status == "pass" and local["DHCP on the primary NIC"].status == "warn"


def test_the_tiny_linux_prepared_for_azure_has_its_drivers(inspected: dict[str, Inspection]) -> None:
    from rehost.cli.demo_azure import GUEST_MODULES

    ins = inspected["azure"]
    [kernel] = ins.kernels
    assert kernel.initrd_modules is not None and set(GUEST_MODULES) <= set(kernel.initrd_modules)
    azure = {r.name: r for r in evaluate(ins, "azure").requirements}
    for driver in ("hv_vmbus", "hv_storvsc", "hv_netvsc"):
        assert _is(azure[f"{driver} driver"], "pass", "/boot/initrd.img")
    assert azure["serial console on ttyS0"].status == "pass"
