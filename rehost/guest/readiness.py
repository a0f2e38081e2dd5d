"""Will it boot there? A target kind's requirements checked against an :class:`Inspection`.

Pure logic, no I/O: the inspection is made (and cached) elsewhere. Each requirement is
``pass``, ``warn`` (boots, but something the user should know or fix) or ``fail`` (will not
boot, or will boot unreachable), with the fix in words. What the inspection could not find
is never taken as a pass: a requirement that depends on it is a ``warn`` saying it is unknown
(or a ``fail`` when the thing must be there, e.g. a driver that no initramfs carries).

Target kinds:
  * ``local`` (rehost's QEMU target): disks on ``virtio-blk-pci``, the NIC ``virtio-net-pci``
    (rehost.targets.local), SeaBIOS; no IDE or e1000 fallback is offered there, so
    virtio_blk (with virtio_pci) must be in the initramfs or built in.
  * ``azure``: Azure's documented Linux needs: hv_vmbus, hv_storvsc, hv_netvsc in the
    initramfs (or built in), DHCP on the primary NIC, a serial console on ttyS0, no swap on
    the OS disk (Azure's temporary disk is for that), and fstab by UUID/LABEL (device names
    change on Hyper-V's SCSI).
  * ``memory``: the test double boots nothing; no requirements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rehost.guest.inspect import Inspection

Status = Literal["pass", "warn", "fail"]
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Requirement:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Readiness:
    target_kind: str
    requirements: tuple[Requirement, ...]

    @property
    def status(self) -> Status:
        """The worst requirement's status (``pass`` with none)."""
        worst: Status = "pass"
        for r in self.requirements:
            if _ORDER[r.status] > _ORDER[worst]:
                worst = r.status
        return worst

    @property
    def verdict(self) -> str:
        return {"pass": "ready", "warn": "ready, with warnings",
                "fail": "will not boot (or not be reachable) there"}[self.status]

    def failed(self) -> list[Requirement]:
        return [r for r in self.requirements if r.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        return {"target_kind": self.target_kind, "status": self.status, "verdict": self.verdict,
                "requirements": [asdict(r) for r in self.requirements]}


KINDS = ("local", "azure", "memory")
#: target kinds whose guest needs nothing (the test double boots nothing): not inspected
NO_RULES = frozenset({"memory"})


def has_rules(kind: str) -> bool:
    """Whether an inspection of the guest tells anything for target ``kind``."""
    return kind in RULES


def no_rules(kind: str) -> Readiness:
    """Target ``kind``'s readiness without an inspection: nothing (``NO_RULES``), or a
    warning that nobody checks its guests."""
    if kind in NO_RULES:
        return Readiness(kind, ())
    return Readiness(kind, (Requirement("target kind", "warn", f"no readiness rules for {kind!r} targets",
                                        "check the guest by hand"),))


def evaluate(ins: Inspection, kind: str) -> Readiness:
    """The requirements of target ``kind`` for the inspected guest."""
    rules = RULES.get(kind)
    if rules is None:
        return no_rules(kind)
    reqs = [*_os(ins)]
    if ins.os_type == "linux":
        reqs += rules(ins)
    return Readiness(kind, tuple(reqs))


def _os(ins: Inspection) -> Iterable[Requirement]:
    if ins.os_type == "linux":
        name = ins.product if ins.product != "unknown" else "Linux"
        yield Requirement("operating system", "pass", f"{name} ({ins.distro} {ins.version}) on disk "
                          f"{_disk(ins.os_disk)}")
    elif ins.os_type == "windows":
        yield Requirement("operating system", "warn", f"Windows: {ins.product} {ins.version}",
                          "these checks do not exist for Windows yet: " + "; ".join(ins.not_checked))
    else:
        yield Requirement("operating system", "fail", "no operating system found on the disks: "
                          + "; ".join(ins.notes), "check that the machine's boot disk is protected")


def _disk(i: int | None) -> str:
    return "unknown" if i is None else str(i)


# ------------------------------------------------------------------------------------------
# drivers


def _driver(ins: Inspection, names: tuple[str, ...], what: str, *, missing: Status = "fail",
            fix: str) -> Requirement:
    """One of ``names`` (alternatives) in the default kernel's initramfs, or built in."""
    k = ins.default_kernel
    label = " or ".join(names)
    if k is None:
        return Requirement(f"{label} driver", missing, f"no kernel found in /boot: {what} unknown", fix)
    where = f"kernel {k.version or k.path}"
    builtin = set(k.builtin_modules or ())
    carried = set(k.initrd_modules or ())
    for n in names:
        if n in builtin:
            return Requirement(f"{label} driver", "pass", f"{n} is built into {where}")
    for n in names:
        if n in carried:
            return Requirement(f"{label} driver", "pass", f"{n} is in {k.initrd}")
    if k.initrd_modules is None:
        why = k.initrd_error or "the initramfs could not be read"
        return Requirement(f"{label} driver", missing, f"{what}: unknown for {where} ({why})", fix)
    unknown_builtin = ("" if k.builtin_modules is not None else
                       " (no modules.builtin found: whether it is built in is unknown)")
    return Requirement(f"{label} driver", missing,
                       f"{what}: {label} is not in {k.initrd}{unknown_builtin}", fix)


def _rebuild(mods: str) -> str:
    return (f"add {mods} to the initramfs and rebuild it on the source (Debian: list them in "
            f"/etc/initramfs-tools/modules, then update-initramfs -u; RHEL: dracut --add-drivers "
            f"\"{mods}\" -f), then replicate again")


def _uefi(ins: Inspection, missing: Status) -> list[Requirement]:
    """A disk that boots by UEFI only (an ESP, no BIOS boot code: Hyper-V Generation 2) on a
    new VM, whose firmware has none of the source's boot entries: it starts the fallback
    path /EFI/BOOT/BOOTX64.EFI or nothing. Debian's grub-install, for one, does not write it."""
    e = ins.efi
    if e is None or e.bios_boot_code:
        return []
    name = "UEFI boot loader at the fallback path"
    if e.fallback:
        return [Requirement(name, "pass", f"/EFI/BOOT/BOOTX64.EFI on {e.partition}")]
    return [Requirement(
        name, missing, f"{e.partition} (the EFI system partition) has no /EFI/BOOT/BOOTX64.EFI, the path a "
        f"new VM's firmware starts; its loaders: {', '.join(e.loaders) or 'none'}",
        "fail over with --fix-up uefi-fallback (the distribution's loader is copied there on the copy), "
        "or on the source: grub-install --removable (Debian: grub2/force_efi_extra_removable)")]


def _local(ins: Inspection) -> list[Requirement]:
    return [
        *_uefi(ins, "fail"),
        _driver(ins, ("virtio_blk",), "the boot disk (virtio-blk-pci)",
                fix=_rebuild("virtio_blk virtio_pci")),
        _driver(ins, ("virtio_pci",), "the virtio PCI bus", fix=_rebuild("virtio_pci")),
        _driver(ins, ("virtio_net",), "the NIC (virtio-net-pci)", missing="warn",
                fix="boots without a network: " + _rebuild("virtio_net")),
        *_fstab(ins, "warn", "the local target's disks are /dev/vdX"),
        _dhcp(ins, "warn"),
    ]


def _azure(ins: Inspection) -> list[Requirement]:
    hv = _rebuild("hv_vmbus hv_storvsc hv_netvsc")
    return [
        *_uefi(ins, "warn"),
        _driver(ins, ("hv_vmbus",), "the Hyper-V VMBus", fix=hv),
        _driver(ins, ("hv_storvsc",), "the boot disk (Hyper-V storage)", fix=hv),
        _driver(ins, ("hv_netvsc",), "the NIC (Hyper-V network)", fix=_rebuild("hv_netvsc")),
        _dhcp(ins, "fail"),
        _console(ins),
        _swap(ins),
        *_fstab(ins, "warn", "Azure's disks are SCSI (/dev/sdX) in an order that is not guaranteed"),
        _agent(ins),
    ]


# ------------------------------------------------------------------------------------------
# network, console, swap, fstab, agents


def _primary(ins: Inspection) -> list[Any]:
    return [i for i in ins.interfaces if i.method != "loopback"]


def _dhcp(ins: Inspection, static_status: Status) -> Requirement:
    name = "DHCP on the primary NIC"
    ifaces = _primary(ins)
    if not ins.network_known:
        return Requirement(name, "warn", "no network configuration found (ifupdown, netplan, "
                           "systemd-networkd, NetworkManager, ifcfg): unknown",
                           "check how the guest configures its network")
    if not ifaces:
        return Requirement(name, "warn", "network configuration found, but no interface in it",
                           "configure the primary interface for DHCP")
    first = ifaces[0]
    if first.method == "dhcp":
        return Requirement(name, "pass", f"{first.name}: DHCP ({first.tool}, {first.source})")
    if first.method == "static":
        return Requirement(name, static_status,
                           f"{first.name}: static {', '.join(first.addresses) or 'address'} "
                           f"({first.source}): "
                           "the address will not be reachable on the target's network",
                           f"switch {first.name} to DHCP in {first.source} on the source (or map the "
                           "address on the target's network), then replicate again")
    return Requirement(name, "warn", f"{first.name}: {first.method} ({first.source})",
                       f"configure {first.name} for DHCP")


def _console(ins: Inspection) -> Requirement:
    name = "serial console on ttyS0"
    if ins.cmdline is None:
        return Requirement(name, "warn", "no boot entry found: the kernel command line is unknown",
                           "add console=ttyS0,115200 to the kernel command line")
    if any(c.split(",")[0] == "ttyS0" for c in ins.consoles):
        return Requirement(name, "pass", f"command line: {ins.cmdline}")
    return Requirement(name, "warn", f"no console=ttyS0 in the command line ({ins.cmdline or 'empty'}): "
                       "Azure's serial console and boot diagnostics stay empty",
                       "add console=ttyS0,115200 (Debian: GRUB_CMDLINE_LINUX in /etc/default/grub, "
                       "then update-grub)")


def _swap(ins: Inspection) -> Requirement:
    name = "no swap on the OS disk"
    if not ins.fstab_found:
        return Requirement(name, "warn", "no /etc/fstab found: swap unknown", "")
    on_os = [s for s in ins.swaps if s.on_os_disk]
    unknown = [s for s in ins.swaps if s.on_os_disk is None]
    if on_os:
        return Requirement(name, "warn", "swap on the OS disk: " + ", ".join(s.spec for s in on_os),
                           "Azure keeps swap on the temporary disk: remove the swap entry from /etc/fstab "
                           "and let the Azure agent or cloud-init make swap there")
    if unknown:
        return Requirement(name, "warn", "swap on a disk that could not be found: "
                           + ", ".join(s.spec for s in unknown), "check the swap entries in /etc/fstab")
    return Requirement(name, "pass", "no swap in /etc/fstab" if not ins.swaps else "swap is on a data disk")


def _fstab(ins: Inspection, status: Status, why: str) -> list[Requirement]:
    name = "fstab by UUID or LABEL"
    if not ins.fstab_found:
        return [Requirement(name, "pass", "no /etc/fstab: nothing is mounted by a device name")]
    named = [e for e in ins.fstab if e.by == "device"]
    if not named:
        return [Requirement(name, "pass", f"{len(ins.fstab)} entries, none by device name")]
    listed = ", ".join(f"{e.spec} ({e.mountpoint})" for e in named)
    return [Requirement(name, status, f"by device name: {listed}; {why}",
                        "use UUID=... (blkid) for these entries in /etc/fstab on the source")]


def _agent(ins: Inspection) -> Requirement:
    name = "provisioning agent"
    have = [a for a in ("walinuxagent", "cloud-init") if ins.agents.get(a)]
    vmware = ins.agents.get("vmware-tools")
    extra = " VMware Tools are installed: remove them after the migration." if vmware else ""
    if have:
        return Requirement(name, "warn" if vmware else "pass", f"{', '.join(have)} installed.{extra}".strip(),
                           "uninstall open-vm-tools after the failover" if vmware else "")
    return Requirement(name, "warn", "neither the Azure Linux agent nor cloud-init is installed: the VM "
                       "boots but reports no provisioning state, and extensions do not work." + extra,
                       "install walinuxagent (or cloud-init), or accept that Azure marks the VM "
                       "not provisioned")


#: the Linux rules of each target kind (the operating system is checked for every kind)
RULES: dict[str, Callable[[Inspection], list[Requirement]]] = {"local": _local, "azure": _azure}


def required_modules(kind: str) -> tuple[str, ...]:
    """The drivers a kind's boot needs (for messages and tests)."""
    needed = {"local": ("virtio_blk", "virtio_pci"), "azure": ("hv_vmbus", "hv_storvsc", "hv_netvsc")}
    return needed.get(kind, ())


