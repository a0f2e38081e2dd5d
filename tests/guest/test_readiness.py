"""Readiness rules per target kind, on hand-made inspections (no libguestfs)."""

from __future__ import annotations

from rehost.guest.inspect import (
    WINDOWS_MISSING,
    FstabEntry,
    Inspection,
    Interface,
    KernelInfo,
    Swap,
)
from rehost.guest.readiness import evaluate
from tests.inspections import guest

V = "6.1.0-27-amd64"

def _is(req, status: str, text: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(req.status == status and text in req.detail)



_guest = guest  # a Debian guest ready for every target kind (tests/inspections.py)


def _by_name(r):  # type: ignore[no-untyped-def]
    return {q.name: q for q in r.requirements}


def test_a_prepared_guest_passes_everywhere() -> None:
    g = _guest()
    for kind in ("local", "azure"):
        r = evaluate(g, kind)
        assert r.status == "pass", [q for q in r.requirements if q.status != "pass"]
    assert evaluate(g, "memory").requirements == ()


def test_missing_disk_driver_fails_with_the_fix() -> None:
    r = evaluate(_guest(modules=("virtio_blk", "virtio_pci", "virtio_net")), "azure")
    storvsc = _by_name(r)["hv_storvsc driver"]
    assert r.status == "fail" and storvsc.status == "fail"
    assert "update-initramfs" in storvsc.fix and "hv_storvsc" in storvsc.fix
    assert evaluate(_guest(modules=("hv_vmbus",)), "local").failed()[0].name == "virtio_blk driver"


def test_built_in_drivers_count() -> None:
    g = _guest(modules=("virtio_net",), builtin=("virtio_blk", "virtio_pci"))
    r = _by_name(evaluate(g, "local"))
    assert _is(r["virtio_blk driver"], "pass", "built into")


def test_an_unreadable_initramfs_is_not_a_pass() -> None:
    k = KernelInfo(f"/boot/vmlinuz-{V}", V, f"/boot/initrd.img-{V}", None, (),
                   "lz4-compressed initramfs: not supported", None)
    r = _by_name(evaluate(_guest(kernels=(k,)), "local"))
    assert _is(r["virtio_blk driver"], "fail", "unknown")


def test_static_ip_device_names_swap_and_console_on_azure() -> None:
    g = _guest(
        interfaces=(Interface("eth0", "static", ("10.1.2.3/24",), "10.1.2.1", "/etc/network/interfaces",
                              "ifupdown"),),
        fstab=(FstabEntry("/dev/sda1", "/", "ext4", "defaults", "device"),
               FstabEntry("/dev/sda2", "none", "swap", "sw", "device")),
        swaps=(Swap("/dev/sda2", "device", 0, True),), cmdline="root=/dev/sda1 ro quiet", consoles=())
    az = _by_name(evaluate(g, "azure"))
    assert _is(az["DHCP on the primary NIC"], "fail", "10.1.2.3/24")
    assert _is(az["fstab by UUID or LABEL"], "warn", "/dev/sda1")
    assert _is(az["no swap on the OS disk"], "warn", "/dev/sda2")
    assert az["serial console on ttyS0"].status == "warn"
    local = _by_name(evaluate(g, "local"))
    assert local["DHCP on the primary NIC"].status == "warn"  # boots; the address may not fit
    assert "no swap on the OS disk" not in local


def test_unknown_is_reported_as_unknown() -> None:
    g = _guest(interfaces=(), network_known=False, swaps=(Swap("/dev/sdc9", "device", None, None),),
               fstab=(FstabEntry("/dev/sdc9", "none", "swap", "sw", "device"),))
    az = _by_name(evaluate(g, "azure"))
    assert _is(az["DHCP on the primary NIC"], "warn", "unknown")
    assert _is(az["no swap on the OS disk"], "warn", "could not be found")


def test_windows_says_which_checks_do_not_exist() -> None:
    w = Inspection(disks=("d0",), os_type="windows", product="Windows Server 2019 Standard", version="10.0",
                   not_checked=WINDOWS_MISSING)
    [req] = evaluate(w, "azure").requirements
    assert req.status == "warn" and "Windows Server 2019" in req.detail and "SYSTEM hive" in req.fix
    nothing = Inspection(disks=("d0",), os_type="unknown", notes=("no operating system found",))
    assert evaluate(nothing, "local").status == "fail"


def test_json_round_trip() -> None:
    g = _guest(swaps=(Swap("UUID=s", "uuid", 0, True),))
    assert Inspection.from_json(g.to_json()) == g


def test_a_uefi_only_disk_needs_the_fallback_loader() -> None:
    from dataclasses import replace

    from rehost.guest.inspect import EfiInfo

    name = "UEFI boot loader at the fallback path"
    vendor = EfiInfo("disk 0 partition 1", ("/EFI/debian/grubx64.efi", "/EFI/debian/shimx64.efi"),
                     False, False)
    local = _by_name(evaluate(_guest(efi=vendor), "local"))
    assert _is(local[name], "fail", "no /EFI/BOOT/BOOTX64.EFI")
    assert "/EFI/debian/shimx64.efi" in local[name].detail
    assert "--fix-up uefi-fallback" in local[name].fix
    assert _by_name(evaluate(_guest(efi=vendor), "azure"))[name].status == "warn"
    fine = replace(vendor, loaders=(*vendor.loaders, "/EFI/BOOT/BOOTX64.EFI"), fallback=True)
    assert _by_name(evaluate(_guest(efi=fine), "local"))[name].status == "pass"
    both_ways = replace(vendor, bios_boot_code=True)  # boots with a BIOS too: no requirement
    assert name not in _by_name(evaluate(_guest(efi=both_ways), "local"))
    g = _guest(efi=vendor)
    assert Inspection.from_json(g.to_json()) == g
