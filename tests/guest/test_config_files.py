"""The parsers behind an inspection, on the files as guests write them (no appliance)."""

from __future__ import annotations

from rehost.guest import config_files as gi


def test_ifupdown_static_and_dhcp() -> None:
    text = ("auto lo\niface lo inet loopback\n\nauto ens3\niface ens3 inet static\n  address 10.0.0.5/24\n"
            "  gateway 10.0.0.1\niface ens3 inet6 auto\n\nallow-hotplug ens4\niface ens4 inet dhcp\n")
    ifaces = gi.parse_ifupdown(text, "/etc/network/interfaces")
    assert [(i.name, i.method, i.addresses, i.gateway) for i in ifaces] == [
        ("lo", "loopback", (), ""), ("ens3", "static", ("10.0.0.5/24",), "10.0.0.1"),
        ("ens4", "dhcp", (), "")]


def test_netplan_networkd_networkmanager_ifcfg() -> None:
    netplan = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n    eth1:\n" \
              "      addresses: [192.168.1.9/24]\n"
    assert [(i.name, i.method) for i in gi.parse_netplan(netplan)] == [("eth0", "dhcp"), ("eth1", "static")]
    networkd = "[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n"
    assert [(i.name, i.method) for i in gi.parse_networkd(networkd)] == [("en*", "dhcp")]
    nm = "[connection]\nid=Wired\ntype=ethernet\ninterface-name=eth0\n\n[ipv4]\nmethod=manual\n" \
         "address1=172.16.0.4/16,172.16.0.1\n"
    [i] = gi.parse_nmconnection(nm)
    assert (i.name, i.method, i.addresses, i.gateway) == (
        "eth0", "static", ("172.16.0.4/16",), "172.16.0.1")
    [r] = gi.parse_ifcfg('DEVICE=eth0\nBOOTPROTO="dhcp"\nONBOOT=yes\n',
                         "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert (r.name, r.method) == ("eth0", "dhcp")


def test_fstab_by_name_and_by_uuid() -> None:
    entries = gi.parse_fstab("# comment\nUUID=abc / ext4 defaults 0 1\n/dev/sda2 none swap sw 0 0\n"
                             "/dev/vdb1 /data xfs defaults 0 2\nLABEL=boot /boot ext4 defaults 0 2\n"
                             "/dev/mapper/vg-home /home ext4 defaults 0 2\n/swapfile none swap sw 0 0\n"
                             "/dev/nvme0n1p3 /srv ext4 defaults 0 2\ntmpfs /tmp tmpfs defaults 0 0\n")
    assert [e.by for e in entries] == [
        "uuid", "device", "device", "label", "mapper", "file", "device", "other"]


def test_extlinux_and_grub() -> None:
    bl = gi.parse_extlinux("DEFAULT b\nLABEL a\n  LINUX /boot/vmlinuz\n  APPEND quiet\nLABEL b\n"
                           "  KERNEL /boot/vmlinuz\n"
                           "  APPEND initrd=/boot/initrd.img console=ttyS0,115200 ro\n")
    e = bl.default_entry()
    assert e is not None
    assert (e.label, e.initrd, e.cmdline) == ("b", "/boot/initrd.img", "console=ttyS0,115200 ro")
    grub = ("set default=\"Debian, recovery\"\nmenuentry 'Debian' --class debian {\n\tinsmod ext2\n"
            "\tif true; then\n\t\techo\n\tfi\n\tlinux\t/boot/vmlinuz-6.1.0-9-amd64 root=UUID=x ro quiet\n"
            "\tinitrd\t/boot/initrd.img-6.1.0-9-amd64\n"
            "}\nsubmenu 'Advanced' {\n}\nmenuentry 'Debian, recovery' {\n\tlinux /boot/vmlinuz-6.1.0-9-amd64 "
            "root=UUID=x ro single console=ttyS0\n}\n")
    g = gi.parse_grub_cfg(grub)
    assert [x.label for x in g.entries] == ["Debian", "Debian, recovery"]
    d = g.default_entry()
    assert d is not None and d.label == "Debian, recovery" and "console=ttyS0" in d.cmdline
    assert gi.parse_default_grub('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n') \
        == "console=ttyS0 quiet"
