"""Offline inspection of a machine's disks: what decides whether it boots somewhere else.

One libguestfs appliance is launched for all the disks given (read-only drives: image files
or NBD exports of a recovery point), every check runs inside that one launch, and the result is
a frozen, JSON-able :class:`Inspection`. A launch costs 15–27 s under TCG, so callers cache the
result (``rehost.vault.readiness`` keeps one per recovery point) and batch machines
(:func:`inspect_batch`).

libguestfs here runs with the ``direct`` backend and ``force_tcg`` (set on the handle; the
libvirt backend and KVM hang on this host). Set ``REHOST_GUESTFS_KVM=1`` on a host whose KVM
works.

What is found is reported; what cannot be found is reported as unknown (``None`` or
``"unknown"``), never guessed: a kernel version comes from the kernel image's own header, the
modules of an initramfs from its archive listing, the disk of a swap area from its UUID/LABEL
(or from a device name only when that partition really is a swap area).
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from rehost.disks.firmware import ESP_GUID, FALLBACK_LOADER
from rehost.errors import DiskError
from rehost.guest.config_files import (
    DEVICE_NAME_RE,
    BootEntry,
    Bootloader,
    FstabEntry,
    Interface,
    parse_default_grub,
    parse_extlinux,
    parse_fstab,
    parse_grub_cfg,
    parse_ifcfg,
    parse_ifupdown,
    parse_netplan,
    parse_networkd,
    parse_nmconnection,
    split_cmdline,
)
from rehost.guest.initramfs import InitramfsError, builtin_names, list_initramfs

#: files whose presence means an agent is installed (besides the package database)
AGENT_FILES: dict[str, tuple[str, ...]] = {
    "rehost-agent": ("/usr/local/bin/rehost-agent", "/usr/bin/rehost-agent", "/opt/rehost-agent",
                     "/var/lib/rehost-agent", "/etc/systemd/system/rehost-agent.service"),
    "vmware-tools": ("/usr/bin/vmtoolsd", "/usr/sbin/vmtoolsd", "/etc/vmware-tools"),
    "hyperv-daemons": ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd",
                       "/usr/lib/linux-tools/hv_kvp_daemon"),
    "cloud-init": ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg"),
    "walinuxagent": ("/usr/sbin/waagent", "/usr/bin/waagent"),
    "qemu-guest-agent": ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"),
}
#: package names (dpkg/rpm) per agent
AGENT_PACKAGES: dict[str, tuple[str, ...]] = {
    "rehost-agent": ("rehost-agent",),
    "vmware-tools": ("open-vm-tools", "vmware-tools"),
    "hyperv-daemons": ("hyperv-daemons", "hyperv-daemons-license", "hypervkvpd"),
    "cloud-init": ("cloud-init",),
    "walinuxagent": ("walinuxagent", "WALinuxAgent"),
    "qemu-guest-agent": ("qemu-guest-agent",),
}
#: what is not inspected on Windows yet, said plainly in every Windows report
WINDOWS_MISSING = (
    "boot drivers (storvsc, vmbus, storflt, intelide, atapi; viostor/netkvm) from the SYSTEM hive",
    "network configuration (DHCP or static per adapter)",
    "installed agents (VMware Tools, Azure VM Agent, rehost agent)",
    "boot configuration (BCD) and serial console (EMS)",
    "page file location",
)
_INITRD_NAMES = ("initrd.img-{v}", "initrd-{v}.img", "initramfs-{v}.img", "initrd-{v}", "initramfs-{v}")
_PLAIN_INITRDS = ("initrd.img", "initrd", "initramfs.img", "initramfs.cpio.gz", "initrd.gz")
INITRD_LIMIT = 512 << 20
#: bumped when an Inspection would come out different for the same disks (cached ones are redone)
FORMAT = 2


@dataclass(frozen=True)
class KernelInfo:
    path: str
    #: from the image's own header ("6.1.0-27-amd64"); None when it has none
    version: str | None
    initrd: str | None = None
    #: modules the initramfs carries; None: no initramfs, or it could not be read (initrd_error)
    initrd_modules: tuple[str, ...] | None = None
    initrd_archives: tuple[str, ...] = ()
    initrd_error: str = ""
    #: modules built into this kernel (``modules.builtin`` in the guest or its initramfs);
    #: None: no list found, so "built in" is unknown
    builtin_modules: tuple[str, ...] | None = None










@dataclass(frozen=True)
class Swap:
    spec: str
    by: str
    #: index of the machine's disk that holds it; None when unknown
    disk: int | None
    on_os_disk: bool | None


@dataclass(frozen=True)
class EfiInfo:
    """The machine's EFI system partition, as a UEFI firmware with no boot entries of its own
    (a new VM's) sees it: it starts ``FALLBACK_LOADER`` or nothing."""

    #: "disk 0 partition 2"
    partition: str
    #: every .efi file under /EFI, as named on the ESP (/EFI/debian/shimx64.efi)
    loaders: tuple[str, ...]
    #: /EFI/BOOT/BOOTX64.EFI is there
    fallback: bool
    #: the disk's MBR carries BIOS boot code too (it boots both ways)
    bios_boot_code: bool


@dataclass(frozen=True)
class Inspection:
    disks: tuple[str, ...]
    #: linux, windows, or unknown (nothing recognised)
    os_type: str
    distro: str = "unknown"
    product: str = "unknown"
    version: str = "unknown"
    hostname: str = "unknown"
    #: where the root filesystem is, as the machine's disks count ("disk 0 partition 1")
    root_device: str = ""
    #: index of the disk holding the root filesystem (the OS disk); None when unknown
    os_disk: int | None = None
    kernels: tuple[KernelInfo, ...] = ()
    bootloader: Bootloader = field(default_factory=lambda: Bootloader("unknown"))
    #: the command line the default boot entry passes (None: no boot entry found)
    cmdline: str | None = None
    consoles: tuple[str, ...] = ()
    #: empty with network_known False: no configuration found at all
    interfaces: tuple[Interface, ...] = ()
    network_known: bool = False
    fstab: tuple[FstabEntry, ...] = ()
    fstab_found: bool = False
    swaps: tuple[Swap, ...] = ()
    root_size_bytes: int | None = None
    root_free_bytes: int | None = None
    #: agent name -> True (found), False (looked for, absent)
    agents: dict[str, bool] = field(default_factory=dict)
    #: checks that do not exist for this OS yet (Windows)
    not_checked: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    #: the EFI system partition of the OS disk's machine; None: there is none (a BIOS disk)
    efi: EfiInfo | None = None

    @property
    def default_kernel(self) -> KernelInfo | None:
        entry = self.bootloader.default_entry()
        if entry is not None:
            for k in self.kernels:
                if _same_path(k.path, entry.kernel):
                    return k
        return self.kernels[0] if len(self.kernels) == 1 else (self.kernels[-1] if self.kernels else None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Inspection:
        d = dict(d)
        d["disks"] = tuple(d["disks"])
        d["kernels"] = tuple(KernelInfo(**{
            **k, "initrd_modules": _tuple_or_none(k.get("initrd_modules")),
            "initrd_archives": tuple(k.get("initrd_archives", ())),
            "builtin_modules": _tuple_or_none(k.get("builtin_modules"))}) for k in d.get("kernels", ()))
        b = d.get("bootloader") or {"kind": "unknown"}
        d["bootloader"] = Bootloader(**{**b, "entries": tuple(BootEntry(**e) for e in b.get("entries", ()))})
        d["interfaces"] = tuple(Interface(**{**i, "addresses": tuple(i.get("addresses", ()))})
                                for i in d.get("interfaces", ()))
        d["fstab"] = tuple(FstabEntry(**e) for e in d.get("fstab", ()))
        d["swaps"] = tuple(Swap(**s) for s in d.get("swaps", ()))
        if d.get("efi"):
            d["efi"] = EfiInfo(**{**d["efi"], "loaders": tuple(d["efi"]["loaders"])})
        for k in ("consoles", "not_checked", "notes"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)


def _tuple_or_none(v: Any) -> tuple[str, ...] | None:
    return None if v is None else tuple(v)


def _same_path(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a == "/boot" + b or b == "/boot" + a


# ------------------------------------------------------------------------------------------
# the launch


def appliance() -> Any:
    try:
        import guestfs
    except ImportError as e:
        raise DiskError("libguestfs is not installed (python3-guestfs; run scripts/install)") from e
    g = guestfs.GuestFS(python_return_dict=True)
    if not os.environ.get("REHOST_GUESTFS_KVM"):
        g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])
    return g


def _add_drive(g: Any, source: str, fmt: str) -> None:
    if source.startswith("nbd"):
        u = urlparse(source)
        if u.scheme == "nbd+unix":
            sock = parse_qs(u.query).get("socket", [""])[0]
            server = [f"unix:{sock}"]
        else:
            server = [f"{u.hostname}:{u.port or 10809}"]
        g.add_drive_opts(u.path.lstrip("/"), readonly=True, format=fmt, protocol="nbd", server=server)
    else:
        if not Path(source).exists():
            raise DiskError(f"{source}: no such disk image")
        g.add_drive_opts(source, readonly=True, format=fmt)


def inspect_disks(sources: Sequence[str], formats: Sequence[str] | str = "raw") -> Inspection:
    """Inspect one machine's disks (image paths or ``nbd+unix:///?socket=...`` URIs, disk 0
    first) in one appliance launch. ``formats``: one for all, or one per disk."""
    return inspect_batch([sources], [formats])[0]


def inspect_batch(machines: Sequence[Sequence[str]],
                  formats: Sequence[Sequence[str] | str] | None = None) -> list[Inspection]:
    """Inspect several machines in ONE appliance launch (each a list of disk sources); the
    launch's cost is shared, and each Inspection's ``seconds`` is the total over the count."""
    started = time.monotonic()
    formats = formats if formats is not None else ["raw"] * len(machines)
    g = appliance()
    owner: list[tuple[int, int]] = []  # appliance drive index -> (machine, disk)
    for m, (sources, fmts) in enumerate(zip(machines, formats, strict=True)):
        per = [fmts] * len(sources) if isinstance(fmts, str) else list(fmts)
        if not sources or len(per) != len(sources):
            raise DiskError("each machine needs at least one disk and one format per disk")
        for d, (src, fmt) in enumerate(zip(sources, per, strict=True)):
            _add_drive(g, src, fmt)
            owner.append((m, d))
    try:
        try:
            g.launch()
        except RuntimeError as e:
            raise DiskError(f"the libguestfs appliance did not start: {e}") from e
        devices = list(g.list_devices())
        dev_owner = {dev: owner[i] for i, dev in enumerate(devices)}
        roots: dict[int, list[str]] = {}
        try:
            found = list(g.inspect_os())
        except RuntimeError:
            found = []
        for root in found:
            if (whole := whole_device(g, root)) in dev_owner:
                roots.setdefault(dev_owner[whole][0], []).append(root)
        results = []
        filesystems: dict[str, str] = {}  # listed once, and only if a machine needs it (slow)
        for m, sources in enumerate(machines):
            mine = {dev: d for dev, (mm, d) in dev_owner.items() if mm == m}
            if m not in roots and not filesystems:
                filesystems = dict(g.list_filesystems())
            results.append(inspect_machine(g, tuple(sources), roots.get(m, []), mine, filesystems))
        elapsed = (time.monotonic() - started) / len(machines)
        return [_with_seconds(r, elapsed) for r in results]
    finally:
        try:
            g.shutdown()
        finally:
            g.close()


def _with_seconds(r: Inspection, s: float) -> Inspection:
    return replace(r, seconds=round(s, 2))


def whole_device(g: Any, device: str) -> str:
    try:
        return str(g.part_to_dev(device))
    except RuntimeError:
        return device


def inspect_machine(g: Any, sources: tuple[str, ...], roots: list[str], disks: dict[str, int],
                     filesystems: dict[str, str]) -> Inspection:
    notes: list[str] = []
    root, os_type, info, mounts = locate(g, roots, disks, filesystems, notes)
    if not root:
        return Inspection(disks=sources, os_type="unknown",
                          notes=("no operating system found on these disks",))
    os_disk = disks.get(whole_device(g, root))
    where = _relative(g, root, disks)
    for mp, dev in mounts:
        if whole_device(g, dev) not in disks:
            notes.append(f"{mp} not mounted: the guest's fstab names a device that is not one of its disks")
            continue
        try:
            g.mount_ro(dev, mp)
        except RuntimeError as e:
            if mp == "/":  # nothing below can be read: say so rather than read the appliance's /
                g.umount_all()
                return Inspection(disks=sources, os_type=os_type, root_device=where, os_disk=os_disk,
                                  notes=(*notes, f"the root filesystem could not be mounted: {e}"), **info)
            notes.append(f"{_relative(g, dev, disks)} not mounted on {mp}: {e}")
    try:
        if os_type == "windows":
            return Inspection(disks=sources, os_type="windows", root_device=where, os_disk=os_disk,
                              not_checked=WINDOWS_MISSING, notes=tuple(notes), **info)
        if os_type != "linux":
            notes.append(f"{os_type}: only Linux and Windows are inspected")
            return Inspection(disks=sources, os_type=os_type, root_device=where, os_disk=os_disk,
                              notes=tuple(notes), **info)
        size, free = _space(g)
        bootloader = _bootloader(g)
        entry = bootloader.default_entry()
        cmdline = entry.cmdline if entry else None
        interfaces, net_known = _network(g, notes)
        fstab, fstab_found = _fstab(g)
        found = Inspection(
            disks=sources, os_type="linux", root_device=where, os_disk=os_disk,
            kernels=_kernels(g, bootloader, notes), bootloader=bootloader, cmdline=cmdline,
            consoles=tuple(a.split("=", 1)[1] for a in split_cmdline(cmdline or "")
                           if a.startswith("console=")),
            interfaces=interfaces, network_known=net_known, fstab=fstab, fstab_found=fstab_found,
            swaps=_swaps(g, fstab, disks, os_disk), root_size_bytes=size, root_free_bytes=free,
            agents=_agents(g, root if roots else None), notes=tuple(notes), **info)
    finally:
        g.umount_all()
    return replace(found, efi=efi_info(g, disks))


def locate(g: Any, roots: list[str], disks: dict[str, int], filesystems: dict[str, str],
           notes: list[str]) -> tuple[str, str, dict[str, Any], list[tuple[str, str]]]:
    """The machine's root device, OS type, what libguestfs knows of the OS, and its mounts
    (mountpoint, appliance device; ``/`` first); ``("", "unknown", {}, [])`` when none."""
    if len(roots) > 1:
        notes.append(f"{len(roots)} operating systems found ({', '.join(roots)}); the first is reported")
    if roots:
        root = roots[0]
        os_type = g.inspect_get_type(root)
        info: dict[str, Any] = {
            "distro": g.inspect_get_distro(root), "product": g.inspect_get_product_name(root),
            "version": f"{g.inspect_get_major_version(root)}.{g.inspect_get_minor_version(root)}",
            "hostname": g.inspect_get_hostname(root),
        }
        mounts = sorted(g.inspect_get_mountpoints(root).items(), key=lambda kv: len(kv[0]))
    else:
        root, os_type, info, mounts = _find_linux_root(g, disks, filesystems)
        if not root:
            return "", "unknown", {}, []
        notes.append("the distribution is not recognised (no /etc/os-release); found a Linux kernel in /boot")
    # libguestfs maps the guest's fstab names onto the appliance's devices: a /dev/sda1 in a
    # guest's fstab may be another machine's disk in a batch, so the root is mounted from its
    # own device and other mounts only from this machine's disks
    return root, os_type, info, [("/", root)] + [(mp, dev) for mp, dev in mounts if mp != "/"]


def _relative(g: Any, device: str, disks: dict[str, int]) -> str:
    """A device as the machine knows it ("disk 0 partition 1"): the appliance's own names
    (/dev/sdb1) depend on the order of the batch."""
    disk = disks.get(whole_device(g, device))
    if disk is None:
        return device
    try:
        return f"disk {disk} partition {g.part_to_partnum(device)}"
    except RuntimeError:
        return f"disk {disk}"


def _find_linux_root(g: Any, disks: dict[str, int],
                     filesystems: dict[str, str]) -> tuple[str, str, dict[str, Any], list[tuple[str, str]]]:
    """No distribution recognised: a filesystem with a Linux kernel in /boot is a Linux root."""
    for dev, fstype in filesystems.items():
        if whole_device(g, dev) not in disks or fstype in ("swap", "unknown", ""):
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        try:
            if g.is_dir("/boot") and any(_kernel_version(g, f"/boot/{n}") for n in g.ls("/boot")
                                         if n.startswith(("vmlinuz", "bzImage", "vmlinux"))):
                return dev, "linux", {}, [("/", dev)]
        finally:
            g.umount_all()
    return "", "unknown", {}, []


def read_text(g: Any, path: str) -> str | None:
    try:
        if g.is_file(path, followsymlinks=True):
            return bytes(g.read_file(path)).decode(errors="replace")
    except RuntimeError:
        pass
    return None


def _space(g: Any) -> tuple[int | None, int | None]:
    try:
        st = g.statvfs("/")
    except RuntimeError:
        return None, None
    return st["blocks"] * st["frsize"], st["bavail"] * st["frsize"]


def _kernel_version(g: Any, path: str) -> str | None:
    """The version string of an x86 bzImage's setup header (offset 0x20E points at it)."""
    try:
        if not g.is_file(path, followsymlinks=True):
            return None
        head = bytes(g.pread(path, 16, 0x200))
        if head[2:6] != b"HdrS":
            return None
        (ptr,) = struct.unpack_from("<H", head, 0x0E)
        text = bytes(g.pread(path, 256, ptr + 0x200)).split(b"\0", 1)[0].decode(errors="replace")
    except RuntimeError:
        return None
    return text.split()[0] if text.strip() else None


def _kernels(g: Any, bootloader: Bootloader, notes: list[str]) -> tuple[KernelInfo, ...]:
    if not g.is_dir("/boot"):
        notes.append("no /boot folder")
        return ()
    names = sorted(g.ls("/boot"))
    paired = {_norm(e.kernel): _norm(e.initrd) for e in bootloader.entries if e.initrd}
    out = []
    for n in names:
        if not n.startswith(("vmlinuz", "bzImage")) or n.endswith((".sig", ".hmac")):
            continue
        path = f"/boot/{n}"
        version = _kernel_version(g, path)
        suffix = n.split("-", 1)[1] if "-" in n else ""
        initrd = paired.get(path)
        if initrd is None:
            cands = [c.format(v=suffix) for c in _INITRD_NAMES] if suffix else list(_PLAIN_INITRDS)
            initrd = next((f"/boot/{c}" for c in cands if c in names), None)
        mods: tuple[str, ...] | None = None
        archives: tuple[str, ...] = ()
        error = ""
        builtin: tuple[str, ...] | None = None
        if initrd and g.is_file(initrd, followsymlinks=True):
            try:
                listing = list_initrd(g, initrd)
                mods, archives, builtin = listing.modules, listing.archives, listing.builtin
            except (InitramfsError, RuntimeError) as e:
                error = str(e)
        elif initrd:
            error = f"{initrd} is named by the boot loader but does not exist"
        else:
            error = "no initramfs found for this kernel"
        if version:
            text = read_text(g, f"/lib/modules/{version}/modules.builtin") or read_text(
                g, f"/usr/lib/modules/{version}/modules.builtin")
            if text is not None:
                builtin = builtin_names(text)
        out.append(KernelInfo(path, version, initrd, mods, archives, error, builtin))
    return tuple(out)


def _norm(p: str) -> str:
    return p if p.startswith("/boot/") else "/boot" + (p if p.startswith("/") else "/" + p)


def list_initrd(g: Any, path: str) -> Any:
    size = g.filesize(path)
    if size > INITRD_LIMIT:
        raise InitramfsError(f"{path} is {size} bytes: too big to list")
    with tempfile.TemporaryDirectory(prefix="rehost-initrd-") as d:
        local = Path(d) / "initrd"
        g.download(path, str(local))
        return list_initramfs(local.read_bytes())




# ------------------------------------------------------------------------------------------
# boot loader


def _bootloader(g: Any) -> Bootloader:
    for path in ("/boot/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/extlinux.conf",
                 "/boot/extlinux.conf", "/syslinux/syslinux.cfg"):
        text = read_text(g, path)
        if text is not None:
            return parse_extlinux(text, path)
    default_grub = read_text(g, "/etc/default/grub")
    grub_cmdline = parse_default_grub(default_grub) if default_grub is not None else None
    for path in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/debian/grub.cfg"):
        text = read_text(g, path)
        if text is not None:
            bl = parse_grub_cfg(text, path)
            return Bootloader(bl.kind, bl.config, bl.entries, bl.default, grub_cmdline)
    return Bootloader("unknown", default_grub_cmdline=grub_cmdline)










# ------------------------------------------------------------------------------------------
# network


def _files(g: Any, folder: str, suffix: str = "") -> list[str]:
    try:
        if not g.is_dir(folder):
            return []
        return [f"{folder}/{n}" for n in sorted(g.ls(folder)) if n.endswith(suffix) and not n.startswith(".")]
    except RuntimeError:
        return []


def _network(g: Any, notes: list[str]) -> tuple[tuple[Interface, ...], bool]:
    out: list[Interface] = []
    known = False
    for path in ["/etc/network/interfaces", *_files(g, "/etc/network/interfaces.d")]:
        text = read_text(g, path)
        if text is not None:
            known = True
            out += parse_ifupdown(text, path)
    for path in [*_files(g, "/etc/netplan", ".yaml"), *_files(g, "/etc/netplan", ".yml")]:
        text = read_text(g, path)
        if text is not None:
            known = True
            try:
                out += parse_netplan(text, path)
            except ValueError as e:
                notes.append(f"{path}: {e}")
    for path in _files(g, "/etc/systemd/network", ".network"):
        text = read_text(g, path)
        if text is not None:
            known = True
            out += parse_networkd(text, path)
    for path in _files(g, "/etc/NetworkManager/system-connections"):
        text = read_text(g, path)
        if text is not None:
            known = True
            out += parse_nmconnection(text, path)
    for path in _files(g, "/etc/sysconfig/network-scripts"):
        if path.rsplit("/", 1)[1].startswith("ifcfg-") and (text := read_text(g, path)) is not None:
            known = True
            out += parse_ifcfg(text, path)
    return tuple(i for i in out if i.name != "lo"), known














# ------------------------------------------------------------------------------------------
# fstab and swap






def _fstab(g: Any) -> tuple[tuple[FstabEntry, ...], bool]:
    text = read_text(g, "/etc/fstab")
    return (parse_fstab(text), True) if text is not None else ((), False)


def _swaps(g: Any, fstab: tuple[FstabEntry, ...], disks: dict[str, int],
           os_disk: int | None) -> tuple[Swap, ...]:
    out = []
    for e in fstab:
        if e.fstype != "swap":
            continue
        disk = _swap_disk(g, e, disks, os_disk)
        out.append(Swap(e.spec, e.by, disk, None if disk is None or os_disk is None else disk == os_disk))
    return tuple(out)


def _swap_disk(g: Any, e: FstabEntry, disks: dict[str, int], os_disk: int | None) -> int | None:
    try:
        if e.by == "file":
            return os_disk if g.is_file(e.spec) and _mount_of(g, e.spec) == "/" else None
        dev = None
        value = e.spec.split("=", 1)[1] if "=" in e.spec else e.spec.rsplit("/", 1)[1]
        if e.by in ("uuid", "label"):
            # this machine's partitions only: cloned machines in one batch share UUIDs
            read = g.vfs_uuid if e.by == "uuid" else g.vfs_label
            for part in [*g.list_partitions(), *g.list_devices()]:
                if whole_device(g, part) in disks and safe_read(read, part).lower() == value.lower():
                    dev = part
                    break
        elif e.by == "device":
            # the guest's own name: the same letter and number here is that disk only if that
            # partition really is a swap area (else unknown)
            cand = guest_device(g, e.spec, disks)
            if cand is not None and cand in g.list_partitions() and g.vfs_type(cand) == "swap":
                dev = cand
        if dev:
            return disks.get(whole_device(g, dev))
    except RuntimeError:
        return None
    return None


# ------------------------------------------------------------------------------------------
# the EFI system partition


def esp_device(g: Any, disks: dict[str, int]) -> str | None:
    """The first EFI system partition (GPT type, or MBR id 0xEF) on the machine's disks."""
    for part in g.list_partitions():
        whole = whole_device(g, part)
        if whole not in disks:
            continue
        try:
            number = g.part_to_partnum(part)
        except RuntimeError:
            continue
        try:
            if str(g.part_get_gpt_type(whole, number)).upper() == ESP_GUID:
                return str(part)
            continue
        except RuntimeError:
            pass  # not a GPT disk
        try:
            if int(g.part_get_mbr_id(whole, number)) == 0xEF:
                return str(part)
        except RuntimeError:
            pass
    return None


def efi_loaders(g: Any) -> tuple[str, ...]:
    """The .efi files under /EFI of the ESP mounted at / (FAT: names as stored)."""
    top = next((n for n in g.ls("/") if n.upper() == "EFI"), None)
    if top is None:
        return ()
    return tuple(sorted(f"/{top}/{p.lstrip('/')}" for p in g.find(f"/{top}") if p.lower().endswith(".efi")))


def efi_info(g: Any, disks: dict[str, int]) -> EfiInfo | None:
    """Read with nothing else mounted: the ESP goes on / read-only, then off again."""
    dev = esp_device(g, disks)
    if dev is None:
        return None
    try:
        g.mount_ro(dev, "/")
    except RuntimeError:
        return EfiInfo(_relative(g, dev, disks), (), False, _bios_code(g, whole_device(g, dev)))
    try:
        loaders = efi_loaders(g)
    except RuntimeError:
        loaders = ()
    finally:
        g.umount_all()
    fallback = any(p.upper() == FALLBACK_LOADER for p in loaders)
    return EfiInfo(_relative(g, dev, disks), loaders, fallback, _bios_code(g, whole_device(g, dev)))


def _bios_code(g: Any, whole: str) -> bool:
    try:
        return any(bytes(g.pread_device(whole, 440, 0)))
    except RuntimeError:
        return False


def guest_device(g: Any, spec: str, disks: dict[str, int]) -> str | None:
    """The appliance's device for a name the guest uses (``/dev/vdb2``: the machine's disk 1,
    partition 2; ``/dev/nvme0n1p1``: disk 0, partition 1), None when the name is not one of
    these or that disk is not the machine's. Whether it is the right partition is for the
    caller to check (its type, its UUID)."""
    m = DEVICE_NAME_RE.match(spec)
    if not m:
        return None
    if m.group(1):
        idx = 0
        for ch in m.group(1):
            idx = idx * 26 + (ord(ch) - 96)
        idx, part = idx - 1, m.group(2)
    else:
        idx, part = int(m.group(3)), m.group(4) or ""
    whole = next((d for d, i in disks.items() if i == idx), None)
    if whole is None:
        return None
    return f"{whole}{part}" if part else whole


def safe_read(read: Any, device: str) -> str:
    try:
        return str(read(device))
    except RuntimeError:
        return ""


def _mount_of(g: Any, path: str) -> str:
    mounts = sorted((mp for mp in g.mountpoints().values()), key=len, reverse=True)
    return next((mp for mp in mounts if path.startswith(mp.rstrip("/") + "/") or mp == "/"), "/")


# ------------------------------------------------------------------------------------------
# agents


def _agents(g: Any, root: str | None) -> dict[str, bool]:
    installed: set[str] = set()
    if root is not None:
        try:
            installed = {a["app2_name"] for a in g.inspect_list_applications2(root)}
        except RuntimeError:
            installed = set()
    found = {}
    for agent, files in AGENT_FILES.items():
        present = any(p in installed for p in AGENT_PACKAGES[agent])
        if not present:
            try:
                present = any(g.exists(f) for f in files)
            except RuntimeError:
                present = False
        found[agent] = present
    return found
