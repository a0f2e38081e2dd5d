"""Hand-made inspections of a guest, and a point's inspection cache filled with one, so a
(test) failover's readiness step reads it as it reads any cached inspection: no libguestfs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rehost.guest import readiness as guest_readiness
from rehost.guest.config_files import BootEntry, Bootloader, FstabEntry, Interface
from rehost.guest.inspect import Inspection, KernelInfo
from rehost.vault import readiness as vault_readiness
from rehost.vault.vault import Vault

V = "6.1.0-27-amd64"
ALL_DRIVERS = ("virtio_blk", "virtio_pci", "virtio_net", "hv_vmbus", "hv_storvsc", "hv_netvsc")


def guest(modules: tuple[str, ...] | None = ALL_DRIVERS, builtin: tuple[str, ...] | None = (),
          **kw: object) -> Inspection:
    """A Debian guest ready for every target kind; ``kw`` changes what the test is about."""
    kernel = KernelInfo(f"/boot/vmlinuz-{V}", V, f"/boot/initrd.img-{V}", modules, ("gzip",), "", builtin)
    base = Inspection(
        disks=("d0",), os_type="linux", distro="debian", product="Debian GNU/Linux 12", version="12.8",
        root_device="disk 0 partition 1", os_disk=0, kernels=(kernel,),
        bootloader=Bootloader("grub", "/boot/grub/grub.cfg",
                              (BootEntry("Debian", f"/boot/vmlinuz-{V}", f"/boot/initrd.img-{V}",
                                         "root=UUID=x ro console=ttyS0,115200"),), "Debian"),
        cmdline="root=UUID=x ro console=ttyS0,115200", consoles=("ttyS0,115200",),
        interfaces=(Interface("eth0", "dhcp", source="/etc/network/interfaces", tool="ifupdown"),),
        network_known=True, fstab=(FstabEntry("UUID=x", "/", "ext4", "defaults", "uuid"),), fstab_found=True,
        agents={"walinuxagent": True, "cloud-init": False, "vmware-tools": False})
    return replace(base, **kw)  # type: ignore[arg-type]


#: fails three Azure requirements: two drivers missing from the initramfs, a static address
UNREADY_FOR_AZURE = guest(modules=("virtio_blk", "virtio_pci", "virtio_net", "hv_vmbus"),
                          interfaces=(Interface("eth0", "static", ("10.0.0.5/24",),
                                                source="/etc/network/interfaces", tool="ifupdown"),))
#: boots on Azure, with one warning: no serial console
WARNED_FOR_AZURE = guest(cmdline="root=UUID=x ro quiet", consoles=())


def seed(vault: Vault, machine: str, point_id: str, ins: Inspection) -> None:
    """The point's cached inspection, as ``rehost readiness`` leaves it after inspecting."""
    path = vault_readiness.cache_path(vault, machine, point_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ins.to_json()))


def judge_memory_as_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory target stands in for Azure (upload-then-boot); here its guests are judged by
    Azure's rules too (by default a test double's guests need nothing)."""
    monkeypatch.setitem(guest_readiness.RULES, "memory", guest_readiness.RULES["azure"])
