"""The fix-ups' text edits, read back with the same readers the inspection uses."""

from __future__ import annotations

import pytest

from rehost.errors import UsageError
from rehost.guest.config_edits import (
    console_default_grub,
    console_extlinux,
    console_grub_cfg,
    fstab_specs,
    ifcfg_dhcp,
    ifupdown_dhcp,
    modules_file,
    netplan_dhcp,
    networkd_dhcp,
    nmconnection_dhcp,
    root_args,
)
from rehost.guest.config_files import (
    parse_default_grub,
    parse_extlinux,
    parse_fstab,
    parse_grub_cfg,
    parse_ifcfg,
    parse_ifupdown,
    parse_netplan,
    parse_networkd,
    parse_nmconnection,
)
from rehost.guest.fixups import fixup_for, parse_fixups

IFUPDOWN = """# The loopback network interface
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
    address 192.168.50.7/24
    gateway 192.168.50.1
    dns-nameservers 192.168.50.1   # kept: harmless under DHCP
iface eth0 inet6 auto

auto eth1
iface eth1 inet static
    address 10.9.9.9/24
"""


def test_ifupdown_switches_only_the_named_ipv4_stanza() -> None:
    new = ifupdown_dhcp(IFUPDOWN, "eth0")
    by_name = {i.name: i for i in parse_ifupdown(new)}
    eth0 = by_name["eth0"]
    assert (eth0.method, eth0.addresses, eth0.gateway) == ("dhcp", (), "")
    assert by_name["eth1"].method == "static" and by_name["eth1"].addresses == ("10.9.9.9/24",)
    assert "dns-nameservers 192.168.50.1" in new and "iface eth0 inet6 auto" in new
    assert new.startswith("# The loopback network interface\nauto lo\n")


def test_the_other_network_tools() -> None:
    netplan = ("network:\n  version: 2\n  ethernets:\n    ens3:\n      addresses: [192.168.1.5/24]\n"
               "      gateway4: 192.168.1.1\n      nameservers: {addresses: [1.1.1.1]}\n")
    [i] = parse_netplan(netplan_dhcp(netplan, "ens3"))
    assert (i.method, i.addresses, i.gateway) == ("dhcp", (), "")
    assert "1.1.1.1" in netplan_dhcp(netplan, "ens3")

    networkd = "[Match]\nName=ens3\n\n[Network]\nAddress=192.168.1.5/24\nGateway=192.168.1.1\nDNS=1.1.1.1\n"
    [i] = parse_networkd(networkd_dhcp(networkd))
    assert (i.method, i.addresses) == ("dhcp", ()) and "DNS=1.1.1.1" in networkd_dhcp(networkd)
    assert parse_networkd(networkd_dhcp("[Match]\nName=ens3\n"))[0].method == "dhcp"  # no [Network] yet

    nm = ("[connection]\nid=wired\ntype=ethernet\ninterface-name=ens3\n\n[ipv4]\nmethod=manual\n"
          "address1=192.168.1.5/24,192.168.1.1\ndns=1.1.1.1;\n\n[ipv6]\nmethod=auto\n")
    out = nmconnection_dhcp(nm)
    [i] = parse_nmconnection(out)
    assert (i.method, i.addresses) == ("dhcp", ()) and "[ipv6]\nmethod=auto" in out and "dns=1.1.1.1;" in out

    ifcfg = 'DEVICE=eth0\nBOOTPROTO="none"\nIPADDR=192.168.1.5\nPREFIX=24\nGATEWAY=192.168.1.1\nONBOOT=yes\n'
    [i] = parse_ifcfg(ifcfg_dhcp(ifcfg), "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert (i.method, i.addresses) == ("dhcp", ()) and "ONBOOT=yes" in ifcfg_dhcp(ifcfg)


def test_fstab_and_root_arguments_by_uuid() -> None:
    fstab = ("# /etc/fstab\n/dev/vda1  /  ext4  errors=remount-ro  0 1\n/dev/vda10 /srv ext4 defaults 0 2\n"
             "/dev/vdb1 none swap sw 0 0\n#/dev/vda1 /old ext4 defaults 0 0\n")
    names = {"/dev/vda1": "UUID=1111", "/dev/vdb1": "UUID=2222"}
    out = fstab_specs(fstab, names)
    entries = {e.mountpoint: e for e in parse_fstab(out)}
    assert entries["/"].spec == "UUID=1111" and entries["/"].by == "uuid"
    assert entries["/srv"].spec == "/dev/vda10"  # another partition, not a prefix match
    assert entries["none"].spec == "UUID=2222"
    assert "#/dev/vda1 /old" in out  # comments are kept as they were

    ext = "DEFAULT d\nLABEL d\n  KERNEL /boot/vmlinuz\n  APPEND root=/dev/vda1 ro quiet\n"
    assert parse_extlinux(root_args(ext, names)).entries[0].cmdline == "root=UUID=1111 ro quiet"
    assert root_args("APPEND root=/dev/vda10 ro", names) == "APPEND root=/dev/vda10 ro"
    grub = 'GRUB_CMDLINE_LINUX="root=/dev/vda1 quiet"\n'
    assert parse_default_grub(root_args(grub, names)) == "root=UUID=1111 quiet"


def test_serial_console_added_once() -> None:
    ext = ("DEFAULT a\nLABEL a\n  KERNEL /boot/vmlinuz-1\n  APPEND root=UUID=1 ro quiet\n"
           "LABEL b\n  KERNEL /boot/vmlinuz-2\n")
    out = console_extlinux(ext)
    entries = parse_extlinux(out).entries
    assert [e.cmdline for e in entries] == ["root=UUID=1 ro quiet console=ttyS0,115200",
                                            "console=ttyS0,115200"]
    assert console_extlinux(out) == out

    cfg = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6 root=UUID=1 ro quiet\n\tinitrd /boot/initrd\n}\n"
    out = console_grub_cfg(cfg)
    assert parse_grub_cfg(out).entries[0].cmdline.endswith("quiet console=ttyS0,115200")
    assert console_grub_cfg(out) == out

    default = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
    out = console_default_grub(default)
    assert parse_default_grub(out) == "console=ttyS0,115200 quiet"
    assert console_default_grub(out) == out
    assert parse_default_grub(console_default_grub("GRUB_DEFAULT=0\n")) == "console=ttyS0,115200"


def test_initramfs_modules_file() -> None:
    text = "# List of modules\nloop\nvirtio_pci  # already there\n"
    out = modules_file(text, ["virtio_pci", "virtio_blk"])
    assert out.splitlines()[-1] == "virtio_blk" and out.count("virtio_pci") == 1
    assert modules_file(out, ["virtio_blk"]) == out
    assert modules_file("", ["hv_vmbus"]).endswith("hv_vmbus\n")


def test_fixup_names() -> None:
    assert parse_fixups(["dhcp,initramfs", "fstab"]) == ("initramfs", "dhcp", "fstab")
    assert parse_fixups(["all"]) == ("initramfs", "dhcp", "fstab", "serial-console", "remove-agents",
                                    "uefi-fallback")
    assert parse_fixups([]) == ()
    with pytest.raises(UsageError, match="unknown fix-up 'dchp': choose from initramfs, dhcp"):
        parse_fixups(["dchp"])
    assert fixup_for("virtio_blk driver") == "initramfs" and fixup_for("hv_storvsc driver") == "initramfs"
    assert fixup_for("DHCP on the primary NIC") == "dhcp" and fixup_for("operating system") is None
    assert fixup_for("UEFI boot loader at the fallback path") == "uefi-fallback"
